"""The input budget beyond IMAP, on the wire (peerd.node.inputbudget): ManageSieve
scripts, control API and sync request bodies take room in the daemon's budget
(filled here by IMAP literals); LMTP messages in the LMTP worker's own.

One node: the daemon's budget 7940 KiB (IMAP literals of 2 MiB fill it), the LMTP
worker's 3 MiB (one message of 1.5 MiB fits, a second waits), a wait of 2 s.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import time
import urllib.request
from contextlib import AbstractContextManager

import pytest

from tests.harness.procs import free_port, wait_until
from tests.nodes import Node
from tests.test_imap_budget import holding, metric, nothing_held

MiB = 1 << 20
pytestmark = pytest.mark.node(
    overrides={
        "limits": {
            # Four IMAP literals of 2 MiB less their free 64 KiB are 7936 KiB:
            # they leave 4 KiB.
            "input_memory": "7940K",
            "input_memory_per_account": "6M",
            "input_wait": "2s",
            "lmtp_input_memory": "3M",
        },
        "imap": {"max_literal": "2M"},
        "lmtp": {"max_message_size": "2M"},
        "sync": {"sync_max_request": "4M"},
        "managesieve": {"listen": f"127.0.0.1:{free_port()}", "login_failure_delay": "10ms"},
    }
)


@pytest.fixture
def budget_node(shared_node: Node) -> Node:
    for name in ("hog", "hog2", "alice", "bob"):
        shared_node.add_account(name)
    wait_until(lambda: nothing_held(shared_node), 10, "no room held")
    return shared_node


def full(node: Node) -> AbstractContextManager[object]:
    """The daemon's budget taken by four IMAP literals of 2 MiB (all but 4 KiB of it)."""
    return holding(node, ["hog", "hog", "hog", "hog2"])


# -- ManageSieve ----------------------------------------------------------------------


class Sieve:
    def __init__(self, node: Node, user: str) -> None:
        found = re.search(
            r'\[managesieve\]\nlisten = "127\.0\.0\.1:(\d+)"', node.config.read_text()
        )
        assert found is not None
        port = int(found.group(1))
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        while not self.file.readline().startswith(b"OK"):
            pass
        plain = base64.b64encode(f"\0{user}\0secret".encode()).decode()
        assert self.command(f'AUTHENTICATE "PLAIN" "{plain}"'.encode()).startswith(b"OK")

    def command(self, data: bytes) -> bytes:
        self.sock.sendall(data + b"\r\n")
        return self.file.readline()

    def putscript(self, name: str, script: bytes) -> bytes:
        return self.command(f'PUTSCRIPT "{name}" {{{len(script)}+}}\r\n'.encode() + script)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_managesieve_scripts_wait_for_room(budget_node: Node) -> None:
    node = budget_node
    big = b"keep;\r\n" + b"# a comment that takes room, line after line\r\n" * 2500  # 115 KiB
    sieve = Sieve(node, "alice")
    try:
        with full(node):
            started = time.monotonic()
            assert sieve.putscript("small", b"keep;\r\n").startswith(b"OK")
            assert time.monotonic() - started < 1.5, "a small script waited"
            answer = sieve.putscript("big", big)
            assert answer.startswith(b'NO (TRYLATER) "server busy'), answer
            assert time.monotonic() - started >= 1.9
            assert sieve.command(b"NOOP").startswith(b"OK")  # in step: the octets were dropped
        wait_until(lambda: nothing_held(node), 5, "no room held")
        assert sieve.putscript("big", big).startswith(b"OK")
        assert b'"big"' in sieve.command(b"LISTSCRIPTS")
    finally:
        sieve.close()
    wait_until(lambda: nothing_held(node), 5, "no room held")


# -- the control API and the sync listener --------------------------------------------


def post(node: Node, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    host, port = url.split("//")[1].split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", "/" + url.split("/", 3)[3], body, headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_http_bodies_wait_for_room(budget_node: Node) -> None:
    node = budget_node
    junk = b"[" + b"0," * 100_000 + b"0]"  # 200 KiB: more than a request has free
    api = {"Authorization": "Bearer test-token", "Content-Type": "application/json"}
    sync_url = f"http://127.0.0.1:{node.port('sync')}/sync/v1/hello"
    sync = {"Authorization": "Basic " + base64.b64encode(b"repl:repl-secret").decode()}
    import_url = f"{node.api}/v1/accounts/alice/import"
    with full(node):
        started = time.monotonic()
        with urllib.request.urlopen(f"{node.api}/v1/health", timeout=5) as health:
            assert health.status == 200
        node.add_account("carol")  # a small body: no wait
        assert time.monotonic() - started < 1.5, "a small request waited"
        status, body = post(node, import_url, junk, api)
        assert status == 503 and json.loads(body)["code"] == "input_memory_full", body
        status, body = post(node, sync_url, junk, sync)
        assert status == 503 and b"server busy" in body, body
    wait_until(lambda: nothing_held(node), 5, "no room held")
    status, body = post(node, import_url, junk, api)
    assert status == 422, body  # read, and refused for what it is
    status, body = post(node, sync_url, junk, sync)
    assert status == 200, body


# -- LMTP: the worker's own budget ------------------------------------------------


class Lmtp:
    """A raw LMTP transaction whose message is sent by the test, piece by piece."""

    def __init__(self, node: Node, *recipients: str, size: int | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", node.port("lmtp")), timeout=10)
        self.file = self.sock.makefile("rb")
        self.recipients = recipients
        assert self.reply().startswith(b"220")
        self.sock.sendall(b"LHLO test\r\n")
        while not (line := self.file.readline()).startswith(b"250 "):
            assert line
        declared = f" SIZE={size}" if size is not None else ""  # RFC 1870, as Postfix says it
        self.sock.sendall(f"MAIL FROM:<s@example.test>{declared}\r\n".encode())
        assert self.reply().startswith(b"250")
        for rcpt in recipients:
            self.sock.sendall(f"RCPT TO:<{rcpt}@example.test>\r\n".encode())
            assert self.reply().startswith(b"250")
        self.sock.sendall(b"DATA\r\n")
        assert self.reply().startswith(b"354")

    def reply(self) -> bytes:
        return self.file.readline()

    def send(self, data: bytes) -> bool:
        """Send, unless the node stops reading for ``timeout`` (False)."""
        try:
            self.sock.sendall(data)
        except TimeoutError:
            return False
        return True

    def end(self) -> list[bytes]:
        self.sock.settimeout(10)
        self.sock.sendall(b"\r\n.\r\n")
        return [self.reply() for _ in self.recipients]

    def cut(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        self.file.close()
        self.sock.close()


BODY = b"Subject: big\r\nContent-Type: application/octet-stream\r\n\r\n" + (
    b"y" * 1022 + b"\r\n"
) * (1536 - 1)


def test_lmtp_messages_take_room_in_the_worker_and_a_refused_one_gets_452(
    budget_node: Node,
) -> None:
    node = budget_node
    waits = metric(node, "lmtp_input_memory_waits_total")
    refusals = metric(node, "lmtp_input_memory_refusals_total")
    # With SIZE the message takes its room at once; without, as it comes.
    first = Lmtp(node, "alice", "bob", size=len(BODY) + 2)
    assert first.send(BODY)  # 1.5 MiB held, and room taken ahead of it: most of the 3 MiB
    second = Lmtp(node, "alice")
    second.sock.settimeout(0.3)
    sent = 0
    while sent < len(BODY) and second.send(BODY[sent : sent + 65536]):
        sent += 65536
    # The worker stopped reading the second message; after the wait it drops it.
    assert second.end() == [b"452 4.3.1 Insufficient system storage\r\n"]
    assert [r[:3] for r in first.end()] == [b"250", b"250"]
    wait_until(
        lambda: metric(node, "lmtp_input_memory_refusals_total") == refusals + 1, 5, "a refusal"
    )
    assert metric(node, "lmtp_input_memory_waits_total") == waits + 1
    # A message cut off mid-DATA gives its room back: the next one fits at once.
    cut = Lmtp(node, "alice")
    assert cut.send(BODY)
    cut.cut()
    started = time.monotonic()
    again = Lmtp(node, "bob")
    again.sock.settimeout(5)
    assert again.send(BODY)
    assert again.end() == [b"250 2.1.5 Delivered\r\n"]
    assert time.monotonic() - started < 1.5
    for lmtp in (first, second, again):
        lmtp.cut()
    assert [m["size"] for m in node.records("alice")] == [len(BODY) + 2]
    assert [m["size"] for m in node.records("bob")] == [len(BODY) + 2] * 2
