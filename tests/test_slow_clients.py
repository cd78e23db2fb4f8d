"""Clients that hold a connection without using it, on every listener the
node opens: one that sends nothing, one that sends a byte now and then and
never ends a line (slowloris), one that sends requests and never reads the
answers. Each is cut off within its listener's bound (a second here; the
defaults are minutes), and its slot is free again.

Every listener caps connections per client address at one here (HTTP's
listeners excepted: the harness polls them), so "the slot is free" is
"another connection from that address is served"; each case connects from
an address of its own in 127.0.0.0/8."""

from __future__ import annotations

import asyncio
import functools
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from ownership import socketmap
from peerd.control.routing import SocketmapServer
from peerd.node.config import parse_config
from peerd.node.node import Node as Node_
from tests.harness.daemons import ModuleNodes, Node, make_single
from tests.procs import free_port, wait_until

# What each listener is asked for in a flood, and what its greeting, or its
# refusal of one connection too many, starts with.
_CAP = {"max_connections_per_ip": 1}


@pytest.fixture
def slow(module_nodes: ModuleNodes) -> Node:
    """The module's node: short login and idle bounds on every listener."""

    def make(workdir: Path) -> Node:
        return make_single(
            workdir,
            overrides={
                "listen": {"socketmap": f"127.0.0.1:{free_port()}"},
                "imap": {
                    "login_timeout": "1s",
                    "idle_timeout": "1s",
                    "commands_per_second": 0,
                    **_CAP,
                },
                "pop3": {"login_timeout": "1s", **_CAP},
                "managesieve": {
                    "listen": f"127.0.0.1:{free_port()}",
                    "login_timeout": "1s",
                    **_CAP,
                },
                "lmtp": {"idle_timeout": "1s", **_CAP},
                "socketmap": {"idle_timeout": "1s", "max_connections": 3, **_CAP},
                "http": {"header_timeout": "1s", "send_timeout": "1s"},
            },
        )

    (node,) = module_nodes.get("slow", make)
    return node


def sieve_port(node: Node) -> int:
    text = node.config.read_text()
    section = text[text.index("[managesieve]") :]
    return int(section.split('listen = "127.0.0.1:', 1)[1].split('"', 1)[0])


def port_of(node: Node, listener: str) -> int:
    return sieve_port(node) if listener == "managesieve" else node.port(listener)


def connect(port: int, source: str, *, small: bool = False) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if small:
        # A client that reads nothing. Small segments too: the node's kernel
        # sizes the socket's send buffer by the segment (on loopback, 64 KiB
        # ones grow it to megabytes), so a few hundred KiB of answers fill it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


# The line-based listeners: what a served connection's first answer starts
# with. Socketmap says nothing first: a served one answers a request.
GREETING = {
    "imap": b"* OK",
    "pop3": b"+OK",
    "managesieve": b'"IMPLEMENTATION"',
    "lmtp": b"220 ",
}


def netstring(text: str) -> bytes:
    data = text.encode()
    return b"%d:%s," % (len(data), data)


def served(node: Node, listener: str, source: str) -> bool:
    """A new connection from ``source`` is served (not refused over the cap)."""
    with connect(port_of(node, listener), source) as sock:
        sock.settimeout(5)
        try:
            if listener == "socketmap":
                sock.sendall(netstring("transport example.test"))
                return sock.recv(100).startswith(b"9:NOTFOUND ,")
            return sock.recv(100).startswith(GREETING[listener])
        except OSError:
            return False


@dataclass
class Held:
    listener: str
    sock: socket.socket
    dribble: bool
    closed_after: float | None = None
    got: bytearray = field(default_factory=bytearray)


def hold(held: list[Held], seconds: float) -> None:
    """Read what the connections get (and dribble a byte every 0.2 s into
    those that do) until each is closed by the node, or ``seconds`` pass."""
    started = time.monotonic()
    next_byte = started
    while time.monotonic() - started < seconds:
        open_ = [h for h in held if h.closed_after is None]
        if not open_:
            return
        now = time.monotonic()
        if now >= next_byte:
            next_byte = now + 0.2
            for h in open_:
                if h.dribble:
                    try:
                        h.sock.send(b"x")
                    except OSError:
                        h.closed_after = now - started
        readable, _, _ = select.select([h.sock for h in open_], [], [], 0.05)
        for h in open_:
            if h.sock not in readable:
                continue
            try:
                data = h.sock.recv(65536)
            except OSError:
                data = b""
            if data:
                h.got += data
            else:
                h.closed_after = time.monotonic() - started


LISTENERS = ("imap", "pop3", "managesieve", "lmtp", "socketmap", "http", "sync")


@pytest.fixture
def opened(slow: Node) -> Iterator[Callable[[str, str, bool], Held]]:
    made: list[Held] = []

    def open_(listener: str, source: str, dribble: bool) -> Held:
        sock = connect(port_of(slow, listener), source)
        if dribble and listener == "socketmap":
            sock.sendall(b"500:")  # a request begun: the dribble is its payload
        made.append(Held(listener, sock, dribble))
        return made[-1]

    yield open_
    for h in made:
        h.sock.close()


@pytest.mark.parametrize("dribble", [False, True], ids=["silent", "slowloris"])
def test_a_connection_that_never_sends_a_whole_line_is_closed(
    slow: Node, opened: Callable[[str, str, bool], Held], dribble: bool
) -> None:
    """Nothing at all, or a byte every 0.2 s and never a line end: each
    listener closes the connection within its bound (1 s here), and the
    address may connect again. Before: ManageSieve waited its idle timeout
    (ten minutes) and a dribble restarted it at every byte, as it did LMTP's
    (five minutes) and the socketmap's (ten minutes, not configurable)."""
    base = 20 if dribble else 10
    held = [
        opened(listener, f"127.0.0.{base + n}", dribble) for n, listener in enumerate(LISTENERS)
    ]
    hold(held, 8.0)
    late = {h.listener: h.closed_after for h in held if h.closed_after is None}
    assert not late, f"still open after 8 s: {sorted(late)}"
    for h in held:
        assert h.closed_after is not None and h.closed_after < 5, (h.listener, h.closed_after)
    # The slots are free: each address is served again.
    for n, listener in enumerate(LISTENERS):
        if listener in GREETING or listener == "socketmap":
            again = functools.partial(served, slow, listener, f"127.0.0.{base + n}")
            wait_until(again, 10, f"{listener} to serve 127.0.0.{base + n} again")


# A flood of requests for small answers, for each listener, before any
# login: some 2 MB of answers, past what the node's socket takes (with the
# client's small segments, a few hundred KiB) and its transport buffers.
# The socketmap is not here: its answers cost a store read each, and 2 MB of
# them took the node ten seconds; test_socketmap_cuts_off_a_client_that_never_reads
# drives the same bound in-process.
FLOODS = {
    "imap": b"a CAPABILITY\r\n" * 7000,
    "pop3": b"CAPA\r\n" * 16000,
    "managesieve": b"CAPABILITY\r\n" * 6000,
    "lmtp": b"LHLO x\r\n" * 10000,
    "http": b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n" * 3000,
    "sync": b"GET /sync/v1/ping HTTP/1.1\r\nHost: x\r\n\r\n" * 6000,
}
# What the node logs when it cuts a client off for not reading, by listener.
CUT = {
    "imap": "imap: {ip} read nothing we sent",
    "pop3": "pop3: {ip} read nothing we sent",
    "managesieve": "managesieve: {ip} read nothing we sent",
    "lmtp": "LMTP {ip}:",
    "http": "control API: closed a connection from {ip}: it read nothing",
    "sync": "sync listener: closed a connection from {ip}: it read nothing",
}


def test_a_client_that_never_reads_is_cut_off(slow: Node) -> None:
    """Requests sent, answers never read: the node's buffers fill and its
    session waits to write. Each listener ends the wait within its bound (the
    time left to log in; [lmtp] idle_timeout; [http] send_timeout), says so
    in one log line, and frees the slot. Before, every listener waited for
    ever (a drain with no timeout; LMTP's idle timer took a write wait for a
    busy session; aiohttp's keep-alive timer does not run while a handler
    writes)."""
    log_from = slow.log.stat().st_size
    socks = []
    sources = {listener: f"127.0.0.{40 + n}" for n, listener in enumerate(FLOODS)}
    try:
        for listener, data in FLOODS.items():
            sock = connect(port_of(slow, listener), sources[listener], small=True)
            sock.setblocking(False)
            # As much as the node takes: it stops reading once it cannot write.
            sent, until = 0, time.monotonic() + 3
            while sent < len(data) and time.monotonic() < until:
                try:
                    sent += sock.send(data[sent : sent + 65536])
                except BlockingIOError:
                    time.sleep(0.01)
            socks.append(sock)
        # Nothing is read: the slots come free while the clients still hold theirs.
        waiting = dict(sources)

        def freed() -> bool:
            with slow.log.open("rb") as log:
                log.seek(log_from)
                text = log.read().decode(errors="replace")
            for listener, source in list(waiting.items()):
                done = CUT[listener].format(ip=source) in text
                if done and listener in GREETING:
                    done = served(slow, listener, source)
                if done:
                    del waiting[listener]
            return not waiting

        try:
            wait_until(freed, 15, "every listener to cut its client off")
        except TimeoutError:
            pytest.fail(f"still held after 15 s: {sorted(waiting)}")
    finally:
        for sock in socks:
            sock.close()
    assert "Traceback" not in slow.log.read_text(errors="replace")


def test_socketmap_cuts_off_a_client_that_never_reads() -> None:
    """The socketmap listener's handler, in this process, on a socket whose
    send buffer is small: a client that sends lookups and reads none of the
    answers is cut off after [socketmap] idle_timeout, its slot given back.
    Before, the handler waited in drain() for ever."""

    async def run() -> float:
        config = parse_config({"node": {"name": "alpha"}, "socketmap": {"idle_timeout": "1s"}})
        server = SocketmapServer(cast(Node_, SimpleNamespace(config=config)))

        answers: list[str] = []

        async def answer(query: socketmap.Lookup) -> socketmap.Reply:
            answers.append(query.key)
            return socketmap.ok("x" * 50_000)

        server.answer = answer  # type: ignore[method-assign]
        ended = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await server.handle(reader, writer)
            finally:
                ended.set()

        listener = await asyncio.start_server(handle, "127.0.0.1", 0)
        # Accepted sockets take the listening socket's buffer sizes.
        listener.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        port = listener.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        try:
            await loop.sock_connect(client, ("127.0.0.1", port))
            await loop.sock_sendall(client, netstring("transport a@example.test") * 40)
            started = time.monotonic()
            await asyncio.wait_for(ended.wait(), 10)
            assert answers  # it answered, then waited to write
            return time.monotonic() - started
        finally:
            client.close()
            listener.close()
            await listener.wait_closed()

    took = asyncio.run(run())
    assert took < 5, took


def test_socketmap_connections_are_capped(slow: Node) -> None:
    """[socketmap] max_connections and max_connections_per_ip, as the other
    listeners have: one over a cap is closed at once (Postfix defers the
    lookup); this host (Postfix beside the node) counts only in all. Before,
    the listener took any number of connections."""
    port = port_of(slow, "socketmap")
    first = connect(port, "127.0.0.60")
    local: list[socket.socket] = []
    try:
        first.sendall(netstring("transport example.test"))
        assert first.recv(100) == b"9:NOTFOUND ,"
        with connect(port, "127.0.0.60") as second:
            assert second.recv(100) == b""  # over the per-address cap: closed
        for _ in range(2):  # this host: counted in all only
            local.append(connect(port, "127.0.0.1"))
            local[-1].sendall(netstring("transport example.test"))
            assert local[-1].recv(100) == b"9:NOTFOUND ,"
        with connect(port, "127.0.0.1") as fourth:
            assert fourth.recv(100) == b""  # over max_connections (3)
    finally:
        first.close()
        for sock in local:
            sock.close()
    wait_until(lambda: served(slow, "socketmap", "127.0.0.60"), 10, "socketmap to serve again")


def test_a_fetch_the_client_never_reads_is_cut_off(slow: Node) -> None:
    """After login the idle timeout bounds a write as it bounds a read: a
    FETCH of a large message (sent with sendfile) to a client that reads
    nothing ends the session (before: it waited for ever, the slot held)."""
    slow.add_account("reader")
    body = b"Subject: big\r\nContent-Type: application/octet-stream\r\n\r\n"
    body += (b"A" * 998 + b"\r\n") * 4000
    with connect(slow.port("imap"), "127.0.0.1") as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"a LOGIN reader secret\r\n")
        assert reader.readline().startswith(b"a OK")
        sock.sendall(b"b APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n")
        assert reader.readline().startswith(b"b OK")
        reader.close()
    sock = connect(slow.port("imap"), "127.0.0.70", small=True)
    try:
        lines = sock.makefile("rb")
        lines.readline()
        sock.sendall(b"a LOGIN reader secret\r\n")
        assert lines.readline().startswith(b"a OK")
        sock.sendall(b"b SELECT INBOX\r\nc FETCH 1:* BODY.PEEK[]\r\nd FETCH 1:* BODY.PEEK[]\r\n")
        wait_until(lambda: served(slow, "imap", "127.0.0.70"), 15, "the FETCH to be cut off")
    finally:
        lines.close()
        sock.close()


def test_lmtp_idle_time_starts_after_a_slow_delivery(slow: Node) -> None:
    """A delivery that takes longer than [lmtp] idle_timeout (1 s here: the
    database held by another writer for 1.5 s) is the server's time: the
    MTA that waits a little before its next command on the connection is
    answered. Before, the idle clock ran from the message's last byte and
    the session was closed with 421 right after the delivery's reply."""
    slow.add_account("lena")
    holder = sqlite3.connect(slow.db_path, timeout=5, isolation_level=None, check_same_thread=False)
    try:
        with slow.lmtp(timeout=30) as lmtp:
            lmtp.ehlo("x")
            lmtp.mail("s@example.test")
            assert lmtp.rcpt("lena@example.test")[0] == 250
            holder.execute("BEGIN IMMEDIATE")
            release = threading.Timer(1.5, lambda: holder.execute("ROLLBACK"))
            release.start()
            code, _ = lmtp.data(b"Subject: slow\r\n\r\nslow\r\n")
            release.join()
            assert code == 250
            time.sleep(0.5)  # within the idle timeout, counted from the reply
            assert lmtp.noop()[0] == 250
    finally:
        holder.close()
