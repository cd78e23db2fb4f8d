"""The input budget beyond IMAP, on the wire (peerd.node.inputbudget): ManageSieve
scripts, control API and sync request bodies take room in the daemon's budget
(filled here by IMAP literals).

One node: the daemon's budget 7940 KiB (IMAP literals of 2 MiB fill it), a
wait of 1 s.
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
from tests.test_imap_budget import holding, nothing_held

MiB = 1 << 20
pytestmark = pytest.mark.node(
    overrides={
        "limits": {
            # Four IMAP literals of 2 MiB less their free 64 KiB are 7936 KiB:
            # they leave 4 KiB.
            "input_memory": "7940K",
            "input_memory_per_account": "6M",
            "input_wait": "1s",
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
            assert time.monotonic() - started < 0.5, "a small script waited"
            answer = sieve.putscript("big", big)
            assert answer.startswith(b'NO (TRYLATER) "server busy'), answer
            assert time.monotonic() - started >= 0.9
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
        assert time.monotonic() - started < 0.5, "a small request waited"
        status, body = post(node, import_url, junk, api)
        assert status == 503 and json.loads(body)["code"] == "input_memory_full", body
        status, body = post(node, sync_url, junk, sync)
        assert status == 503 and b"server busy" in body, body
    wait_until(lambda: nothing_held(node), 5, "no room held")
    status, body = post(node, import_url, junk, api)
    assert status == 422, body  # read, and refused for what it is
    status, body = post(node, sync_url, junk, sync)
    assert status == 200, body
