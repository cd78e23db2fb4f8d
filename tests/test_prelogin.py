"""What a stranger can make a node hold before login (issue 9 items 4 and 5):
small commands, a deadline to log in, and capped connections, on IMAP and POP3."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from tests.conftest import LoneNode

NodeFactory = Callable[..., LoneNode]


def connect(node: LoneNode, listener: str, source: str = "127.0.0.1") -> tuple[socket.socket, Any]:
    raw = socket.create_connection(
        ("127.0.0.1", node.port(listener)), timeout=30, source_address=(source, 0)
    )
    return raw, raw.makefile("rb")


def test_a_literal_before_login_is_small_and_after_login_is_not(
    lone_node: NodeFactory,
) -> None:
    node = lone_node()
    node.add_account("user")
    raw, reader = connect(node, "imap")
    with raw:
        reader.readline()
        raw.sendall(b"a LOGIN {62914560}\r\n")
        answer = reader.readline()
        assert answer.startswith(b"a NO [TOOBIG]"), answer
        # A non-synchronizing one is read and dropped as it arrives; the
        # connection stays usable.
        raw.sendall(b"b LOGIN {100000+}\r\n" + b"x" * 100000 + b" secret\r\n")
        assert reader.readline().startswith(b"b BAD [TOOBIG]")
        raw.sendall(b"c LOGIN {4}\r\n")
        assert reader.readline().startswith(b"+")
        raw.sendall(b"user {6+}\r\nsecret\r\n")
        assert reader.readline().startswith(b"c OK")
        big = b"Subject: big\r\n\r\n" + b"y" * 200_000 + b"\r\n"
        raw.sendall(b"d APPEND INBOX {%d}\r\n" % len(big))
        assert reader.readline().startswith(b"+")
        raw.sendall(big + b"\r\n")
        assert reader.readline().startswith(b"d OK")


def test_a_long_line_before_login_ends_the_connection(lone_node: NodeFactory) -> None:
    node = lone_node()
    raw, reader = connect(node, "imap")
    with raw:
        reader.readline()
        raw.sendall(b"a LOGIN " + b"u" * 20000)
        assert reader.readline().startswith(b"* BYE")
        assert reader.read() == b""


def test_no_login_in_time_ends_the_connection(lone_node: NodeFactory) -> None:
    # Short deadlines (the default is minutes): what is checked is that they end
    # the connection, and that a login in time lifts them.
    node = lone_node({"imap": {"login_timeout": "500ms"}, "pop3": {"login_timeout": "500ms"}})
    node.add_account("user")
    for listener, bye in (
        ("imap", b"* BYE [UNAVAILABLE] no login in time"),
        ("pop3", b"-ERR no login in time"),
    ):
        raw, reader = connect(node, listener)
        with raw:
            reader.readline()
            started = time.monotonic()
            raw.sendall(
                b"a NOOP\r\n" if listener == "imap" else b"CAPA\r\n"
            )  # activity is not a login
            while (line := reader.readline()) and not line.startswith(bye):
                pass
            assert line.startswith(bye), listener
            assert time.monotonic() - started < 5
    # Logged in in time: the deadline is over, the idle timeout rules.
    raw, reader = connect(node, "imap")
    with raw:
        reader.readline()
        raw.sendall(b"a LOGIN user secret\r\n")
        assert reader.readline().startswith(b"a OK")
        time.sleep(1.0)  # twice the login deadline
        raw.sendall(b"b NOOP\r\n")
        assert reader.readline().startswith(b"b OK")


def test_connections_are_capped_per_address_and_in_all(lone_node: NodeFactory) -> None:
    caps = {"max_connections": 4, "max_connections_per_ip": 2}
    node = lone_node({"imap": caps, "pop3": caps})
    for listener, greeting, refusal in (
        ("imap", b"* OK", b"* BYE [UNAVAILABLE] too many connections"),
        ("pop3", b"+OK", b"-ERR [SYS/TEMP] too many connections"),
    ):
        held = []
        try:
            for _ in range(2):
                held.append(connect(node, listener, "127.0.0.2"))
                assert held[-1][1].readline().startswith(greeting)
            raw, reader = connect(node, listener, "127.0.0.2")
            with raw:
                assert reader.readline().startswith(refusal + b" from 127.0.0.2"), listener
            # Another address still gets in, up to the total.
            for _ in range(2):
                held.append(connect(node, listener, "127.0.0.3"))
                assert held[-1][1].readline().startswith(greeting)
            raw, reader = connect(node, listener, "127.0.0.4")
            with raw:
                assert reader.readline().startswith(refusal + b" (at most 4)"), listener
            # One leaves: one more is let in.
            first, first_reader = held.pop(0)
            first_reader.close()  # the file holds the socket open too
            first.close()
            deadline = time.monotonic() + 10
            while True:
                raw, reader = connect(node, listener, "127.0.0.4")
                line = reader.readline()
                if line.startswith(greeting) or time.monotonic() > deadline:
                    break
                raw.close()
                time.sleep(0.05)
            with raw:
                assert line.startswith(greeting)
        finally:
            for raw, file in held:
                file.close()
                raw.close()
        time.sleep(0.2)  # the daemon sees the closes before the next listener's round


def test_lmtp_connections_are_capped_and_idle_ones_closed(lone_node: NodeFactory) -> None:
    import smtplib

    node = lone_node(
        {"lmtp": {"max_connections": 5, "max_connections_per_ip": 2, "idle_timeout": "2s"}}
    )
    node.add_account("carol")
    held: list[tuple[socket.socket, Any]] = []
    try:
        for _ in range(2):
            held.append(connect(node, "lmtp", "127.0.0.2"))
            assert held[-1][1].readline().startswith(b"220 ")
        # A third from the same address is refused before the greeting.
        raw, reader = connect(node, "lmtp", "127.0.0.2")
        with raw:
            assert reader.readline().startswith(b"421 4.3.2 ")
            assert reader.readline() == b""
        # The MTA on this host counts only in all: three more fill the cap.
        for _ in range(3):
            held.append(connect(node, "lmtp"))
            assert held[-1][1].readline().startswith(b"220 ")
        raw, reader = connect(node, "lmtp", "127.0.0.3")
        with raw:
            assert reader.readline().startswith(b"421 4.3.2 ")
        # Idle sessions are told 421 and closed after idle_timeout.
        started = time.monotonic()
        for _, held_reader in held:
            assert held_reader.readline().startswith(b"421 4.4.2 ")
            assert held_reader.readline() == b""
        assert time.monotonic() - started < 8
    finally:
        for raw, _ in held:
            raw.close()
    time.sleep(0.3)
    # Their slots are free again: a delivery goes through.
    with smtplib.LMTP("127.0.0.1", node.port("lmtp"), timeout=30) as lmtp:
        refused = lmtp.sendmail(
            "x@example.test", ["carol@example.test"], b"Subject: s\r\n\r\nb\r\n"
        )
        assert refused == {}
    log = (node.workdir / f"{node.name}.log").read_text()
    assert "lmtp: refused a connection from 127.0.0.2" in log
    assert "Traceback" not in log
