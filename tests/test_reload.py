"""SIGHUP reloads what can change while the node runs (docs/configuration.md
"Reloading"): a certificate renewed in place (IMAP STARTTLS and the sync
listener serve the new one; the partner keeps replicating), the log level,
limits, proxy hooks; a changed key that needs a restart is logged and keeps
its old value; a config with an error changes nothing.
"""

from __future__ import annotations

import imaplib
import json
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from peerd.app.reload import merge, reloadable
from peerd.node.config import parse_config
from tests.nodes import Node, make_pair, running
from tests.procs import wait_until


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(directory: Path) -> tuple[Path, Path]:
    key, crt = directory / "ca.key", directory / "ca.crt"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
        "-days", "2", "-subj", "/CN=reload test CA",
    )  # fmt: skip
    return crt, key


def _leaf(directory: Path, ca: tuple[Path, Path], name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 whose common name is ``name``, signed by ``ca``."""
    key, csr, crt = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", f"/CN={name}")  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(ext),
    )  # fmt: skip
    return crt, key


def _common_name(peer: dict[str, Any]) -> str:
    return str(next(value for rdn in peer["subject"] for key, value in rdn if key == "commonName"))


def _imap_cert(node: Node, ca: Path) -> str:
    client = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=20)
    try:
        client.starttls(ssl.create_default_context(cafile=str(ca)))
        return _common_name(client.sock.getpeercert())  # type: ignore[attr-defined]
    finally:
        client.logout()


def _sync_cert(node: Node, ca: Path) -> str:
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", node.ports["sync"]), timeout=20) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        peer = tls.getpeercert()
        assert peer is not None
        return _common_name(peer)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


def _rewrite(node: Node, changes: dict[str, dict[str, Any]]) -> None:
    data = tomllib.loads(node.config.read_text())
    for table, values in changes.items():
        data.setdefault(table, {}).update(values)
    node.config.write_text(
        "".join(
            f"[{table}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items()) + "\n"
            for table, values in data.items()
        )
    )


def _log(node: Node) -> str:
    return (node.workdir / f"{node.name}.log").read_text(errors="replace")


def _hup_and_wait(node: Node, marker: str, count: int) -> None:
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGHUP)
    wait_until(lambda: _log(node).count(marker) >= count, 20, f"{marker!r} x{count} in the log")


def _login(node: Node) -> tuple[str, imaplib.IMAP4]:
    client = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=20)
    try:
        return client.login("amy", "secret")[0], client
    except imaplib.IMAP4.error as exc:
        client.logout()
        return str(exc), client


def _lhlo_size(node: Node) -> str:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=20) as lmtp:
        code, text = lmtp.docmd("LHLO", "t")
        assert code == 250
        return next(
            line.split()[1] for line in text.decode().splitlines() if line.startswith("SIZE")
        )


def test_a_sighup_reloads_certificates_limits_log_level_and_hooks(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    first, second = _leaf(tmp_path, ca, "first"), _leaf(tmp_path, ca, "second")
    cert, key = tmp_path / "alpha.crt", tmp_path / "alpha.key"
    shutil.copy(first[0], cert)
    shutil.copy(first[1], key)
    alpha, beta = make_pair(
        tmp_path,
        {
            "alpha": {"tls": {"cert": str(cert), "key": str(key)}},
            "beta": {"sync": {"sync_tls": True, "sync_tls_ca": str(ca[0])}},
        },
    )
    hook_out = tmp_path / "hook.json"
    recorder = [
        sys.executable,
        "-c",
        f"import sys; open({str(hook_out)!r}, 'w').write(sys.stdin.read())",
    ]
    with running(alpha, beta):
        alpha.add_account("amy")
        assert _imap_cert(alpha, ca[0]) == "first" == _sync_cert(alpha, ca[0])
        size = _lhlo_size(alpha)
        sessions = [_login(alpha) for _ in range(2)]
        assert [s[0] for s in sessions] == ["OK", "OK"]
        for _, client in sessions:
            client.logout()

        # The certificate renewed in place, and settings changed in the file.
        shutil.copy(second[0], cert)
        shutil.copy(second[1], key)
        _rewrite(
            alpha,
            {
                "imap": {"max_sessions_per_account": 1},
                "routing": {"hooks": [{"name": "recorder", "command": recorder}]},
                "lmtp": {"max_message_size": "1K"},
                "log": {"level": "WARNING"},
            },
        )
        _hup_and_wait(alpha, "only a restart applies them", 1)
        log = _log(alpha)
        assert "(kept as they were): [lmtp] max_message_size" in log
        # The level went to WARNING first: this reload's INFO line is not written.
        assert "SIGHUP: " + str(alpha.config) + " reloaded" not in log

        assert _imap_cert(alpha, ca[0]) == "second" == _sync_cert(alpha, ca[0])
        first_session = _login(alpha)
        assert first_session[0] == "OK"
        refused, _ = _login(alpha)
        assert refused != "OK" and "LIMIT" in refused.upper(), refused
        first_session[1].logout()
        assert _lhlo_size(alpha) == size  # needs a restart: unchanged
        assert "recorder" in alpha.call("GET", "/v1/status")["proxy_hooks"]

        # The partner verifies the new certificate (same CA) and keeps replicating.
        with smtplib.LMTP("127.0.0.1", alpha.ports["lmtp"], timeout=20) as lmtp:
            lmtp.sendmail("s@example.test", ["amy@example.test"], b"Subject: after\r\n\r\nx\r\n")
        wait_until(lambda: len(beta.mailbox("amy")["messages"]) == 1, 30, "amy's mail on beta")
        # The reloaded hook is called by the next pair operation.
        alpha.call("POST", "/v1/switchover", {"accounts": ["amy"]})
        wait_until(hook_out.exists, 20, "the reloaded hook to be called")
        assert json.loads(hook_out.read_text())["routes"][0]["account"] == "amy"

        # A file with an error changes nothing; the node goes on serving.
        alpha.config.write_text(alpha.config.read_text() + "\n[imap\n")
        _hup_and_wait(alpha, "config not reloaded, the running one stays", 1)
        assert alpha.call("GET", "/v1/health")
        counters = alpha.call("GET", "/v1/status")["counters"]
        assert counters["config_reloads"] == 1 and counters["config_reload_failures"] == 1


def test_which_keys_reload() -> None:
    old = parse_config({"node": {"name": "alpha"}, "imap": {"max_line": 1000}})
    new = parse_config(
        {
            "node": {"name": "alpha", "data_dir": "elsewhere"},
            "imap": {"max_line": 2000, "starttls": False},
            "log": {"level": "DEBUG"},
        }
    )
    running_config, applied, restart = merge(old, new)
    assert applied == ["[imap] max_line", "[log] level"]
    assert restart == ["[node] data_dir", "[imap] starttls"]
    assert running_config.imap.max_line == 2000 and running_config.log.level == "DEBUG"
    assert running_config.node.data_dir == old.node.data_dir
    assert running_config.imap.starttls is True
    assert reloadable("pop3", "max_line") and reloadable("routing", "hooks")
    assert not reloadable("listen", "imap") and not reloadable("database", "url")
