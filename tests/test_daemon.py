"""The daemon's life: sd_notify, config errors, the control API's auth and problems, peerctl."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from peerd.config import ConfigError, load_config, parse_config, parse_duration, parse_size
from tests.nodes import TOKEN, Node, make_single
from tests.procs import wait_until


def test_sd_notify_ready_and_stopping(tmp_path: Path) -> None:
    node = make_single(tmp_path)
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    os.environ["NOTIFY_SOCKET"] = str(path)
    try:
        node.start()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    try:
        assert sock.recv(100) == b"READY=1"
        assert node.stop() == 0
        assert sock.recv(100) == b"STOPPING=1"
    finally:
        node.stop()
        sock.close()


def test_config_is_checked_strictly(tmp_path: Path) -> None:
    assert parse_duration("250ms").total_seconds() == 0.25
    assert parse_duration("3d").days == 3
    assert parse_size("50M") == 50 << 20
    with pytest.raises(ValueError):
        parse_duration("soon")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"node": {"name": "a", "colour": "red"}})
    with pytest.raises(ConfigError, match="unknown table"):
        parse_config({"node": {"name": "a"}, "nodes": {}})
    with pytest.raises(ConfigError, match="name is required"):
        parse_config({"node": {}})
    with pytest.raises(ConfigError, match="token is required"):
        parse_config({"node": {"name": "a"}, "listen": {"http": "127.0.0.1:1"}})
    with pytest.raises(ConfigError, match="sync_port"):
        parse_config({"node": {"name": "a"}, "sync": {"sync_port": "many"}})
    for example in Path("configs").glob("*.toml"):
        load_config(example)
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nname=")
    result = subprocess.run(
        [sys.executable, "-m", "peerd", "run", "-c", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "bad.toml" in result.stderr


def api(
    node: Node, method: str, path: str, body: object = None, token: str | None = TOKEN
) -> tuple[int, str, dict[str, object]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(node.api + path, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], json.loads(exc.read())


def test_control_api_auth_and_problems(node: Node) -> None:
    assert api(node, "GET", "/v1/health", token=None)[0] == 200
    status, ctype, body = api(node, "GET", "/v1/accounts", token=None)
    assert status == 401 and ctype.startswith("application/problem+json")
    assert api(node, "GET", "/v1/accounts", token="wrong")[0] == 401
    assert api(node, "POST", "/v1/accounts", {"name": "zoe", "password": "pw"})[0] == 201
    status, ctype, body = api(node, "POST", "/v1/accounts", {"name": "zoe", "password": "pw"})
    assert (status, body["code"]) == (409, "already_exists") and ctype.startswith(
        "application/problem+json"
    )
    assert api(node, "GET", "/v1/accounts/nobody")[0] == 404
    assert api(node, "POST", "/v1/accounts", {"name": "bad name", "password": "pw"})[0] == 422
    assert (
        api(node, "POST", "/v1/accounts", {"name": "x", "password": "pw", "owner": "mars"})[0]
        == 422
    )
    document = api(node, "GET", "/v1/openapi.json", token=None)[2]
    assert "/v1/accounts" in document["paths"]  # type: ignore[operator]


def peerctl(node: Node, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peerd.cli", "-c", str(node.config), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=node.workdir,
        timeout=60,
    )


def test_peerctl(node: Node) -> None:
    assert (
        peerctl(
            node, "account", "add", "amy", "--password-stdin", "--quota", "1000000", stdin="pw\n"
        ).returncode
        == 0
    )
    listing = peerctl(node, "account", "list")
    assert "amy" in listing.stdout and "alpha" in listing.stdout
    as_json = json.loads(peerctl(node, "--json", "account", "list").stdout)
    assert as_json["accounts"][0]["name"] == "amy"
    assert (
        peerctl(node, "account", "passwd", "amy", "--password-stdin", stdin="new\n").returncode == 0
    )
    assert "INBOX" in peerctl(node, "mailbox", "list", "amy").stdout
    assert "UID" in peerctl(node, "mailbox", "show", "amy", "INBOX").stdout
    assert "node alpha" in peerctl(node, "status").stdout
    missing = peerctl(node, "account", "del", "nobody")
    assert missing.returncode == 1 and "nobody" in missing.stderr
    assert peerctl(node, "account", "del", "amy").returncode == 0
    node.stop()
    wait_until(lambda: node.proc is not None and not node.proc.alive(), 10, "stop")
    assert peerctl(node, "status").returncode == 3
