"""A client that asks for a lot and never reads holds about one FETCH group in
the daemon, not the mailbox (issue 9 item 4: write, then drain)."""

from __future__ import annotations

import imaplib
import socket
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import LoneNode

NodeFactory = Callable[..., LoneNode]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_fetch_to_a_client_that_does_not_read_is_bounded(lone_node: NodeFactory) -> None:
    node = lone_node()
    node.add_account("user")
    body = b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 1000  # ~1 MB
    client = imaplib.IMAP4("127.0.0.1", node.port("imap"))
    client.login("user", "secret")
    for _ in range(64):
        assert client.append("INBOX", None, None, body)[0] == "OK"
    client.select("INBOX")
    client.fetch("1:*", "(BODY.PEEK[])")  # once: the caches are warm
    client.logout()
    pid = node.pid
    assert pid is not None
    before = rss_kib(pid)
    stalled = []
    try:
        for _ in range(3):
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.connect(("127.0.0.1", node.port("imap")))
            raw.recv(4096)
            raw.sendall(b"a LOGIN user secret\r\nb SELECT INBOX\r\nc FETCH 1:* BODY.PEEK[]\r\n")
            stalled.append(raw)
        time.sleep(3)
        grown_mib = (rss_kib(pid) - before) / 1024
        # The three answers are 3 x 64 MB; each connection may hold about one
        # group (1 MiB) and the socket's buffers.
        assert grown_mib < 24, f"RSS grew {grown_mib:.0f} MiB"
        # The node still answers others meanwhile.
        other = imaplib.IMAP4("127.0.0.1", node.port("imap"))
        other.login("user", "secret")
        assert other.select("INBOX", readonly=True)[0] == "OK"
        other.logout()
    finally:
        for raw in stalled:
            raw.close()
