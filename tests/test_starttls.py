"""STARTTLS/STLS on IMAP and POP3 (issue 9 item 3, the CVE-2011-0411 class).

Plaintext a client (or a man in the middle) sends after STARTTLS and before
the handshake must never be run as if it came over TLS: the server refuses
STARTTLS when such bytes are already there, and closes instead of upgrading
when they arrive while it answers. A failed handshake is one log line.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from peerd.services.starttls import TlsFailed, upgrade
from tests.conftest import LoneNode
from tests.harness.certs import self_signed
from tests.harness.daemons import ModuleNodes

NodeFactory = Callable[..., LoneNode]


def test_upgrade_refuses_bytes_the_stream_already_holds(tmp_path: Path) -> None:
    """Deterministic: the injected command is in the StreamReader's buffer when
    the server upgrades (the window the race hits). ``start_tls`` alone would
    carry it into the TLS session."""
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    outcome: list[str] = []

    async def main() -> None:
        injected_seen = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert await reader.readline() == b"a STARTTLS\r\n"
            await injected_seen.wait()
            writer.write(b"a OK Begin TLS negotiation now\r\n")
            await writer.drain()
            try:
                await upgrade(reader, writer, server_ctx, core_buffered=0, service="test")
                outcome.append("upgraded")
            except TlsFailed:
                outcome.append("refused")
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"a STARTTLS\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"b CAPABILITY\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # now in the server's reader buffer
        injected_seen.set()
        assert await reader.readline() == b"a OK Begin TLS negotiation now\r\n"
        assert await reader.read() == b""  # closed, not upgraded
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert outcome == ["refused"]


@pytest.fixture(scope="module")
def module_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The certificate (and key) of the module's TLS node."""
    return self_signed(tmp_path_factory.mktemp("cert"))


@pytest.fixture
def tls_node(module_nodes: ModuleNodes, module_cert: tuple[Path, Path]) -> LoneNode:
    """The module's lone node with a [tls] certificate (started once: the
    tests only connect to it, each reads only the log lines written since it
    began) and one fresh account, tlsuser."""
    cert, key = module_cert
    node = module_nodes.lone({"tls": {"cert": str(cert), "key": str(key)}})
    node.add_account("tlsuser")
    return node


def client_context(node: LoneNode) -> ssl.SSLContext:
    """Trusts the node's certificate only (and checks it names 127.0.0.1)."""
    cert = tomllib.loads(node.config.read_text())["tls"]["cert"]
    return ssl.create_default_context(cafile=str(cert))


class Dialect:
    """What differs between IMAP and POP3 for this test."""

    def __init__(
        self,
        listener: str,
        starttls: bytes,
        ok: bytes,
        inject: bytes,
        probe: bytes,
        probe_ok: bytes,
    ) -> None:
        self.listener = listener
        self.starttls = starttls
        self.ok = ok
        self.inject = inject
        self.probe = probe
        self.probe_ok = probe_ok


IMAP = Dialect("imap", b"a STARTTLS\r\n", b"a OK", b"b CAPABILITY\r\n", b"c NOOP\r\n", b"c OK")
POP3 = Dialect("pop3", b"STLS\r\n", b"+OK", b"XYZZY\r\n", b"QUIT\r\n", b"+OK")
DIALECTS = pytest.mark.parametrize("dialect", [IMAP, POP3], ids=["imap", "pop3"])


def greeted(node: LoneNode, dialect: Dialect) -> tuple[socket.socket, Any]:
    raw = socket.create_connection(("127.0.0.1", node.port(dialect.listener)), timeout=30)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = raw.makefile("rb")
    assert reader.readline().startswith((b"* OK", b"+OK"))
    return raw, reader


@DIALECTS
def test_plaintext_in_the_same_segment_is_refused(tls_node: LoneNode, dialect: Dialect) -> None:
    raw, reader = greeted(tls_node, dialect)
    with raw:
        raw.sendall(dialect.starttls + dialect.inject)
        answer = reader.readline()
        assert answer.startswith((b"a BAD", b"-ERR")), answer
        assert b"last command" in answer


@DIALECTS
def test_plaintext_sent_while_the_handshake_starts_is_never_answered_over_tls(
    tls_node: LoneNode, dialect: Dialect
) -> None:
    context = client_context(tls_node)
    answered_over_tls = handshakes = 0
    for attempt in range(40):
        raw, reader = greeted(tls_node, dialect)
        with raw:
            raw.sendall(dialect.starttls)
            time.sleep(0.0005 * (attempt % 6))
            raw.sendall(dialect.inject)
            first = reader.readline()
            if not first.startswith(dialect.ok):
                assert first.startswith((b"a BAD", b"-ERR")), first  # refused before the OK
                continue
            try:
                tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
            except (ssl.SSLError, ConnectionError):
                continue  # the plaintext broke the handshake, or the server closed
            with tls:
                handshakes += 1
                try:
                    tls.sendall(dialect.probe)
                    line = tls.makefile("rb").readline()
                except (ssl.SSLError, ConnectionError):
                    continue
                if line:
                    answered_over_tls += not line.startswith(dialect.probe_ok)
    assert answered_over_tls == 0, f"{answered_over_tls} of {handshakes} TLS sessions"


@DIALECTS
def test_a_clean_starttls_still_works_and_a_failed_handshake_is_one_line(
    tls_node: LoneNode, dialect: Dialect
) -> None:
    logged = tls_node.log.stat().st_size  # the node is the module's: read only this test's lines
    raw, reader = greeted(tls_node, dialect)
    with raw:
        raw.sendall(dialect.starttls)
        assert reader.readline().startswith(dialect.ok)
        with client_context(tls_node).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(dialect.probe)
            assert tls.makefile("rb").readline().startswith(dialect.probe_ok)
    # A client that answers the OK with plaintext instead of a ClientHello.
    for _ in range(3):
        raw, reader = greeted(tls_node, dialect)
        with raw:
            raw.sendall(dialect.starttls)
            assert reader.readline().startswith(dialect.ok)
            raw.sendall(b"this is not a TLS record\r\n" * 4)
            assert reader.read() == b""

    def new_log() -> str:
        return tls_node.log.read_bytes()[logged:].decode(errors="replace")

    line = f"{dialect.listener}: TLS handshake with 127.0.0.1 failed"
    deadline = time.monotonic() + 10
    while line not in new_log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line in new_log()
    assert "Traceback" not in tls_node.log.read_text(errors="replace")


# --- logins in the clear (issue 9 item 8) -------------------------------------


def remote(node: LoneNode, listener: str) -> tuple[socket.socket, Any]:
    """A connection from another address (127.0.0.2): not this host, as far as
    the daemon can tell, so the connection is not secure until TLS."""
    raw = socket.create_connection(
        ("127.0.0.1", node.port(listener)), timeout=30, source_address=("127.0.0.2", 0)
    )
    return raw, raw.makefile("rb")


def test_imap_login_in_the_clear_is_refused_when_tls_is_configured(tls_node: LoneNode) -> None:
    raw, reader = remote(tls_node, "imap")
    with raw:
        greeting = reader.readline()
        assert b"LOGINDISABLED" in greeting and b"AUTH=PLAIN" not in greeting
        raw.sendall(b"a LOGIN tlsuser secret\r\n")
        assert reader.readline().startswith(b"a NO [PRIVACYREQUIRED]")
        raw.sendall(b"b AUTHENTICATE PLAIN AHRsc3VzZXIAc2VjcmV0\r\n")
        assert reader.readline().startswith(b"b NO [PRIVACYREQUIRED]")
        raw.sendall(b"c STARTTLS\r\n")
        assert reader.readline().startswith(b"c OK")
        with client_context(tls_node).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            secure = tls.makefile("rb")
            tls.sendall(b"d CAPABILITY\r\n")
            caps = secure.readline()
            assert b"AUTH=PLAIN" in caps and b"LOGINDISABLED" not in caps
            assert secure.readline().startswith(b"d OK")
            tls.sendall(b"e LOGIN tlsuser secret\r\n")
            assert secure.readline().startswith(b"e OK")


def test_pop3_login_in_the_clear_is_refused_when_tls_is_configured(tls_node: LoneNode) -> None:
    raw, reader = remote(tls_node, "pop3")
    with raw:
        assert reader.readline().startswith(b"+OK")
        raw.sendall(b"CAPA\r\n")
        capa = []
        while (line := reader.readline()) != b".\r\n":
            capa.append(line.strip())
        assert b"STLS" in capa and b"USER" not in capa and b"SASL PLAIN" not in capa
        raw.sendall(b"USER tlsuser\r\n")
        assert reader.readline().startswith(b"-ERR [AUTH] Plaintext authentication disallowed")
        raw.sendall(b"AUTH PLAIN AHRsc3VzZXIAc2VjcmV0\r\n")
        assert reader.readline().startswith(b"-ERR [AUTH]")
        raw.sendall(b"STLS\r\n")
        assert reader.readline().startswith(b"+OK")
        with client_context(tls_node).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            secure = tls.makefile("rb")
            tls.sendall(b"USER tlsuser\r\nPASS secret\r\n")
            assert secure.readline().startswith(b"+OK")
            assert secure.readline().startswith(b"+OK")


def test_plaintext_login_from_this_host_or_when_allowed(
    lone_node: NodeFactory, tmp_path: Path
) -> None:
    """A proxy on the same host (the same local and remote address) logs in in
    the clear; ``allow_plaintext_auth = true`` lets anyone."""
    cert, key = self_signed(tmp_path)
    tls = {"cert": str(cert), "key": str(key)}
    node = lone_node(
        {"tls": tls, "imap": {"allow_plaintext_auth": True}, "pop3": {"allow_plaintext_auth": True}}
    )
    node.add_account("tlsuser")
    raw, reader = remote(node, "imap")
    with raw:
        assert b"LOGINDISABLED" not in reader.readline()
        raw.sendall(b"a LOGIN tlsuser secret\r\n")
        assert reader.readline().startswith(b"a OK")
    raw, reader = remote(node, "pop3")
    with raw:
        reader.readline()
        raw.sendall(b"USER tlsuser\r\nPASS secret\r\n")
        assert reader.readline().startswith(b"+OK") and reader.readline().startswith(b"+OK")
    node.stop()
    node = lone_node({"tls": tls})  # the same data directory: the account is there
    raw, reader = greeted(node, IMAP)  # from 127.0.0.1 to 127.0.0.1: this host
    with raw:
        raw.sendall(b"a LOGIN tlsuser secret\r\n")
        assert reader.readline().startswith(b"a OK")
