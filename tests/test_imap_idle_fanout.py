"""Many IDLE sessions of one mailbox, against a real daemon: one delivery wakes
all of them, idle sessions read nothing from the store, and the sessions woken
together share their reads (peerd/services/imap/fanout.py)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from tests.nodes import Node

SESSIONS = 200


def _reads(node: Node) -> int:
    reads: int = node.call("GET", "/v1/status")["store"]["reads"]
    return reads


def _open_idle(node: Node, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", node.ports["imap"]), timeout=60)
        sock.sendall(b"a LOGIN alice secret\r\nb SELECT INBOX\r\nc IDLE\r\n")
        socks.append(sock)
    for sock in socks:
        seen = b""
        while b"\r\n+ " not in seen:
            chunk = sock.recv(4096)
            assert chunk, seen
            seen += chunk
    return socks


def _wait_for(sock: socket.socket, marker: bytes) -> bytes:
    seen = b""
    while marker not in seen:
        chunk = sock.recv(4096)
        assert chunk, seen
        seen += chunk
    return seen


def test_one_delivery_wakes_every_idle_session_of_the_mailbox_with_shared_reads(
    lone_node: Callable[..., Node],
) -> None:
    # 200 logins: cheap ones (the harness's scrypt_cost), the login is not tested.
    node = lone_node({"imap": {"max_sessions_per_account": SESSIONS + 10}})
    node.add_account("alice")
    socks = _open_idle(node, SESSIONS)
    try:
        # Idle: nothing is read for the sessions, whatever their number (a
        # session polling its mailbox would read at least once per session).
        first = _reads(node)
        own = _reads(node) - first  # what one status call reads itself
        before = _reads(node)
        time.sleep(3)
        idle_reads = _reads(node) - before - own
        assert idle_reads < 20, idle_reads

        before = _reads(node)
        with node.lmtp() as lmtp:
            lmtp.sendmail("x@example.test", ["alice@example.test"], b"Subject: hi\r\n\r\nhello\r\n")
        told: list[bytes] = [_wait_for(sock, b"* 1 EXISTS\r\n") for sock in socks]
        woken_reads = _reads(node) - before - own
        # Every session told; exactly one of them got the message as \Recent.
        assert all(b"* 1 EXISTS\r\n" in t for t in told)
        recent = [t for t in told if b"* 1 RECENT\r\n" in t]
        assert len(recent) == 1, len(recent)
        # One read of the mailbox shared by the sessions woken together
        # (the delivery's own reads, a recipient check, count here too);
        # each session reading for itself would be 200.
        assert woken_reads < 20, woken_reads

        # A session still takes commands after DONE and sees the message.
        socks[0].sendall(b"DONE\r\ne FETCH 1 (FLAGS)\r\n")
        tail = _wait_for(socks[0], b"e OK")
        assert b"c OK IDLE terminated" in tail and b"* 1 FETCH (FLAGS" in tail
    finally:
        for sock in socks:
            sock.close()


def test_idle_sessions_are_counted_per_account(lone_node: Callable[..., Node]) -> None:
    """The session cap per account counts only that account's sessions."""
    node = lone_node({"imap": {"max_sessions_per_account": 3}})
    node.add_account("alice")
    node.add_account("bob")
    socks = _open_idle(node, 3)
    extra: Any = None
    try:
        extra = socket.create_connection(("127.0.0.1", node.ports["imap"]), timeout=30)
        extra.sendall(b"a LOGIN alice secret\r\n")
        assert b"a NO [LIMIT]" in _wait_for(extra, b"a NO")
        extra.sendall(b"b LOGIN bob secret\r\n")
        assert b"b OK" in _wait_for(extra, b"b OK")
    finally:
        for sock in socks:
            sock.close()
        if extra is not None:
            extra.close()
