"""Real peerd daemons for the tests: configs on free loopback ports, start, kill, restart."""

from __future__ import annotations

import json
import poplib
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from tests.procs import Proc, free_port, wait_until

__all__ = ["Node", "make_pair", "make_single"]

TOKEN = "test-token"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
        lines.append("")
    path.write_text("\n".join(lines))


@dataclass
class Node:
    name: str
    workdir: Path
    ports: dict[str, int]
    config: Path
    proc: Proc | None = None
    starts: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    @property
    def db_path(self) -> Path:
        return self.workdir / "var" / self.name / "peerd.db"

    def start(self, wait: bool = True, preexec: Callable[[], None] | None = None) -> Node:
        self.starts += 1
        self.proc = Proc(
            [sys.executable, "-m", "peerd", "run", "-c", str(self.config)],
            self.workdir / f"{self.name}.log",
            cwd=self.workdir,
            preexec=preexec,
        ).start()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if not self.proc.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.proc.tail()}")
            try:
                with urllib.request.urlopen(f"{self.api}/v1/health", timeout=1) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_until(ready, timeout, f"{self.name} to become ready")

    def stop(self) -> int | None:
        return self.proc.stop(sig=signal.SIGTERM) if self.proc else None

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill9()

    def call(self, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.api + path, data=data, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def add_account(self, name: str, password: str = "secret", **extra: Any) -> Any:
        return self.call("POST", "/v1/accounts", {"name": name, "password": password, **extra})

    def mailbox(self, account: str, mailbox: str = "INBOX", expunged: bool = False) -> Any:
        from urllib.parse import quote

        query = "?expunged=1" if expunged else ""
        return self.call(
            "GET", f"/v1/accounts/{quote(account)}/mailboxes/{quote(mailbox, safe='')}{query}"
        )

    def replicate(self, account: str, **extra: Any) -> Any:
        return self.call("POST", "/v1/replicate", {"account": account, **extra})


class _Configured(Protocol):
    @property
    def config(self) -> Path: ...

    @property
    def workdir(self) -> Path: ...


def peerctl(
    node: _Configured,
    *args: str,
    stdin: str | None = None,
    config: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``peerctl -c CONFIG ARGS`` run for real against ``node`` (its config
    unless ``config`` is given), from the node's working directory."""
    return subprocess.run(
        [sys.executable, "-m", "peerd.cli", "-c", str(config or node.config), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=node.workdir,
        timeout=timeout,
    )


def _sections(
    name: str, ports: dict[str, int], partner: str, partner_ports: dict[str, int] | None
) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {
        "node": {"name": name, "data_dir": f"var/{name}", "local_domains": ["example.test"]},
        "database": {"url": f"sqlite:///var/{name}/peerd.db"},
        "listen": {
            "lmtp": f"127.0.0.1:{ports['lmtp']}",
            "imap": f"127.0.0.1:{ports['imap']}",
            "pop3": f"127.0.0.1:{ports['pop3']}",
            "sync": f"127.0.0.1:{ports['sync']}",
            "http": f"127.0.0.1:{ports['http']}",
        },
        "api": {"token": TOKEN},
        "lmtp": {"shutdown_grace": "10s"},
    }
    if partner_ports is not None:
        sections["sync"] = {
            "sync_host": "127.0.0.1",
            "sync_port": partner_ports["sync"],
            "sync_authname": "repl",
            "sync_password": "repl-secret",
            "sync_compress": True,
            "sync_log": True,
            "sync_repeat_interval": "200ms",
            "sync_reconnect_maxwait": "1s",
        }
        sections["partner"] = {"name": partner, "api": f"http://127.0.0.1:{partner_ports['http']}"}
        sections["routing"] = {
            "partner_imap": f"127.0.0.1:{partner_ports['imap']}",
            "partner_pop3": f"127.0.0.1:{partner_ports['pop3']}",
            "partner_lmtp": f"127.0.0.1:{partner_ports['lmtp']}",
        }
    else:
        sections["sync"] = {"sync_authname": "repl", "sync_password": "repl-secret"}
    return sections


def _ports() -> dict[str, int]:
    return {k: free_port() for k in ("lmtp", "imap", "pop3", "sync", "http")}


@contextmanager
def running(*nodes: Node) -> Iterator[tuple[Node, ...]]:
    """Start the nodes together, wait until each serves, stop them all (by pid) at the end."""
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            node.wait_ready()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def make_single(
    workdir: Path, name: str = "alpha", overrides: dict[str, dict[str, Any]] | None = None
) -> Node:
    ports = _ports()
    sections = _sections(name, ports, "", None)
    for section, values in (overrides or {}).items():
        sections.setdefault(section, {}).update(values)
    config = workdir / f"{name}.toml"
    write_config(config, sections)
    return Node(name, workdir, ports, config)


def make_pair(
    workdir: Path, overrides: dict[str, dict[str, dict[str, Any]]] | None = None
) -> tuple[Node, Node]:
    pa, pb = _ports(), _ports()
    nodes = []
    for name, ports, partner, partner_ports in (
        ("alpha", pa, "beta", pb),
        ("beta", pb, "alpha", pa),
    ):
        sections = _sections(name, ports, partner, partner_ports)
        for section, values in (overrides or {}).get(name, {}).items():
            sections.setdefault(section, {}).update(values)
        config = workdir / f"{name}.toml"
        write_config(config, sections)
        nodes.append(Node(name, workdir, ports, config))
    return nodes[0], nodes[1]


def idling(node: Node, account: str = "alice") -> tuple[socket.socket, BinaryIO]:
    """A raw IMAP session of ``account`` (password "secret") in IDLE on INBOX."""
    sock = socket.create_connection(("127.0.0.1", node.ports["imap"]), timeout=20)
    stream = sock.makefile("rb")
    stream.readline()
    sock.sendall(f"a LOGIN {account} secret\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())
    while not stream.readline().startswith(b"+"):
        pass
    return sock, stream


def pop3_refusal(port: int, user: str, password: str) -> str:
    """The -ERR a POP3 login gets on ``port`` (AssertionError if it is let in)."""
    client = poplib.POP3("127.0.0.1", port, timeout=20)
    try:
        client.user(user)
        try:
            client.pass_(password)
        except poplib.error_proto as exc:
            return str(exc.args[0], "utf-8", "replace")
        raise AssertionError(f"{user} was let in on port {port}")
    finally:
        client.close()
