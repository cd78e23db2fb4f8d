"""Whole-message FETCH literals sent from the spool file (issue 16).

``BODY[]``, ``BODY.PEEK[]`` and ``RFC822`` of a large message leave the
daemon through ``loop.sendfile`` (``sendfile(2)`` on plain TCP, chunked
reads under TLS), not copied through Python. What a client sees must not
change: the same octets, the same literal framing (RFC 3501 4.3), partial
ranges (RFC 3501 6.4.5) cut the same way, other items around the literal
in place, and bytes that no longer match their GUID never served, even
after the same file was served (and remembered as verified) before.
"""

from __future__ import annotations

import imaplib
import random
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import LoneNode
from tests.harness.certs import self_signed

NodeFactory = Callable[..., LoneNode]


def big_message(n: int, size: int) -> bytes:
    """A message of about ``size`` octets whose body differs at every offset."""
    rng = random.Random(n)
    lines: list[str] = []
    total = 0
    while total < size:
        lines.append("".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=76)))
        total += 76 + 2
    head = (
        f"From: b@example.test\r\nTo: bodies@example.test\r\nSubject: big {n}\r\n"
        f"Message-ID: <big{n}@t>\r\n\r\n"
    )
    return (head + "\r\n".join(lines) + "\r\n").encode()


SIZES = (2_000, 40_000, 200_000, 700_000)


def deliver_all(node: LoneNode) -> list[bytes]:
    node.add_account("bodies")
    payloads = [big_message(n, size) for n, size in enumerate(SIZES)]
    with smtplib.LMTP("127.0.0.1", node.port("lmtp"), timeout=30) as lmtp:
        for data in payloads:
            lmtp.sendmail("s@example.test", ["bodies@example.test"], data)
    return [bytes(m) for m in _stored(node, payloads)]


def _stored(node: LoneNode, payloads: list[bytes]) -> list[bytes]:
    # What the store holds (LMTP adds a Return-Path and Received header).
    messages = node.mailbox("bodies")["messages"]
    assert len(messages) == len(payloads)
    spool = node.workdir / "var" / node.name / "spool"
    return [(spool / m["guid"][:2] / m["guid"]).read_bytes() for m in messages]


def literals(answer: list[Any]) -> list[tuple[bytes, bytes]]:
    """imaplib's FETCH answer: (the text before the literal, its octets) pairs."""
    return [(item[0], item[1]) for item in answer if isinstance(item, tuple)]


def check_client(client: imaplib.IMAP4, stored: list[bytes]) -> None:
    client.login("bodies", "secret")
    client.select("INBOX")
    for _ in range(2):  # the second time, every file is known to be verified
        typ, answer = client.uid("FETCH", "1:*", "(UID BODY.PEEK[] RFC822.SIZE)")
        assert typ == "OK"
        got = literals(answer)
        assert [octets for _, octets in got] == stored
        for uid, ((head, _), data) in enumerate(zip(got, stored, strict=True), start=1):
            assert re.match(rb"\d+ \(UID %d BODY\[\] \{%d\}$" % (uid, len(data)), head), head
        # The items after each literal ended in place: each ")" line names the size.
        tails = [item for item in answer if isinstance(item, bytes)]
        assert tails == [b" RFC822.SIZE %d)" % len(d) for d in stored]
    # RFC822 (read-only mailbox: no \Seen write) and partial ranges.
    client.select("INBOX", readonly=True)
    typ, answer = client.uid("FETCH", "4", "(RFC822 BODY.PEEK[]<1000.100000> BODY.PEEK[1])")
    assert typ == "OK"
    got = literals(answer)
    assert got[0][1] == stored[3]
    assert got[1][1] == stored[3][1000:101000]
    assert b"BODY[]<1000> {100000}" in got[1][0]
    # Past the end of the message: an empty literal; across the end: cut there.
    typ, answer = client.uid("FETCH", "3", "(BODY.PEEK[]<190000.50000> BODY.PEEK[]<999999.10>)")
    assert typ == "OK"
    # (imaplib drops the CRLF after each literal's {n}.)
    flat = b"".join(x if isinstance(x, bytes) else x[0] + x[1] for x in answer)
    cut = stored[2][190000:240000]
    assert len(cut) < 50000
    assert b"BODY[]<190000> {%d}" % len(cut) + cut + b" BODY[]<999999> {0})" in flat


def test_large_bodies_over_plain_tcp(lone_node: NodeFactory) -> None:
    node = lone_node()
    stored = deliver_all(node)
    client = imaplib.IMAP4("127.0.0.1", node.port("imap"), timeout=30)
    try:
        check_client(client, stored)
    finally:
        client.logout()


def test_large_bodies_over_starttls(lone_node: NodeFactory, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    node = lone_node({"tls": {"cert": str(cert), "key": str(key)}})
    stored = deliver_all(node)
    client = imaplib.IMAP4("127.0.0.1", node.port("imap"), timeout=30)
    try:
        client.starttls(ssl.create_default_context(cafile=str(cert)))
        check_client(client, stored)
    finally:
        client.logout()


def test_a_file_changed_after_it_was_served_is_not_served_again(lone_node: NodeFactory) -> None:
    node = lone_node()
    stored = deliver_all(node)
    guids = [m["guid"] for m in node.mailbox("bodies")["messages"]]
    spool = node.workdir / "var" / node.name / "spool"
    client = imaplib.IMAP4("127.0.0.1", node.port("imap"), timeout=30)
    try:
        client.login("bodies", "secret")
        client.select("INBOX", readonly=True)
        # UID 1 is copied into the response, UID 4 sent from its file.
        for uid in (1, 4):
            typ, answer = client.uid("FETCH", str(uid), "BODY.PEEK[]")
            assert typ == "OK" and literals(answer)[0][1] == stored[uid - 1]
            damaged = bytearray(stored[uid - 1])
            damaged[len(damaged) // 2] ^= 0x01  # same size: only the hash can tell
            path = spool / guids[uid - 1][:2] / guids[uid - 1]
            with path.open("r+b") as f:
                f.write(damaged)
            typ, answer = client.uid("FETCH", str(uid), "BODY.PEEK[]")
            assert typ == "NO"
            assert b"[SERVERBUG]" in answer[0]
        # The others are still served.
        typ, answer = client.uid("FETCH", "2:3", "BODY.PEEK[]")
        assert typ == "OK" and [o for _, o in literals(answer)] == stored[1:3]
    finally:
        client.logout()


MIXED = (300, 3_000, 50_000, 90_000, 250_000, 60_000)


def test_a_fetch_of_mixed_sizes_over_many_groups_gives_each_message_exactly(
    lone_node: NodeFactory,
) -> None:
    # Small messages copied in line, large ones sent from their files, in
    # groups of about 1 MB rendered while the last is written: every literal
    # (whole and partial) is the message's own octets, in UID order; a
    # damaged small file in a later group is left out and told, and the
    # messages around it are still exact.
    node = lone_node()
    node.add_account("bodies")
    payloads = [big_message(100 + n, MIXED[n % len(MIXED)]) for n in range(72)]
    with smtplib.LMTP("127.0.0.1", node.port("lmtp"), timeout=30) as lmtp:
        for data in payloads:
            lmtp.sendmail("s@example.test", ["bodies@example.test"], data)
    stored = _stored(node, payloads)
    # More octets in line than one group holds (1 MiB), besides the partials.
    assert sum(len(d) for d in stored if len(d) < 64 << 10) > 1 << 20
    client = imaplib.IMAP4("127.0.0.1", node.port("imap"), timeout=30)
    try:
        client.login("bodies", "secret")
        client.select("INBOX", readonly=True)
        for _ in range(2):  # hashed, then known to be verified
            typ, answer = client.uid(
                "FETCH", "1:*", "(UID BODY.PEEK[] RFC822.SIZE BODY.PEEK[]<100.70000>)"
            )
            assert typ == "OK"
            got = literals(answer)
            assert len(got) == 2 * len(stored)
            for uid, data in enumerate(stored, start=1):
                (head, whole), (_, part) = got[2 * uid - 2], got[2 * uid - 1]
                assert head.endswith(b"(UID %d BODY[] {%d}" % (uid, len(data)))
                assert whole == data
                assert part == data[100:70100]
        guids = [m["guid"] for m in node.mailbox("bodies")["messages"]]
        spool = node.workdir / "var" / node.name / "spool"
        damaged_uid = 62  # a 3,000-octet message past the first groups
        path = spool / guids[damaged_uid - 1][:2] / guids[damaged_uid - 1]
        flipped = bytearray(stored[damaged_uid - 1])
        flipped[-10] ^= 0x01
        path.write_bytes(bytes(flipped))
        typ, answer = client.uid("FETCH", "1:*", "BODY.PEEK[]")
        assert typ == "NO" and b"[SERVERBUG]" in answer[0]
        assert b"UID %d " % damaged_uid in answer[0]
        # imaplib keeps the FETCH data of a NO among the untagged responses.
        served = literals(client.untagged_responses.pop("FETCH"))
        kept = [(uid, d) for uid, d in enumerate(stored, start=1) if uid != damaged_uid]
        assert [octets for _, octets in served] == [d for _, d in kept]
        for (head, _), (uid, data) in zip(served, kept, strict=True):
            assert head.endswith(b"(UID %d BODY[] {%d}" % (uid, len(data)))
    finally:
        client.logout()


def test_a_client_that_reads_slowly_gets_every_octet_in_order(lone_node: NodeFactory) -> None:
    # On plain TCP the handler writes a group itself (writev, sendfile(2))
    # while the socket takes it, and hands the rest to the transport when
    # the socket is full: with a client that stops reading (a small receive
    # buffer, a pause, then small reads) every switch between the two ways
    # happens, and the answer must still be every octet once, in order.
    node = lone_node()
    node.add_account("bodies")
    # About 8 MB: more than the kernel's largest send buffer (4 MiB here).
    sizes = (3_000, 60_000, 250_000, 700_000, 300, 20_000)
    payloads = [big_message(200 + n, sizes[n % len(sizes)]) for n in range(48)]
    with smtplib.LMTP("127.0.0.1", node.port("lmtp"), timeout=30) as lmtp:
        for data in payloads:
            lmtp.sendmail("s@example.test", ["bodies@example.test"], data)
    stored = _stored(node, payloads)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", node.port("imap")))
    try:
        assert sock.recv(4096).startswith(b"* OK")
        sock.sendall(b"a LOGIN bodies secret\r\n")
        assert b"a OK" in _read_until_tagged(sock, b"a")
        sock.sendall(b"b EXAMINE INBOX\r\n")
        assert b"b OK" in _read_until_tagged(sock, b"b")
        sock.sendall(b"c UID FETCH 1:* BODY.PEEK[]\r\n")
        time.sleep(1.0)  # the server's side of the socket fills up
        # Then read as fast as the window allows (a window of 4 KiB would
        # take a delayed ACK per window: 20 s for these 8 MB).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        answer = _read_until_tagged(sock, b"c", 1 << 16)
        expected = b"".join(
            b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (uid, uid, len(data)) + data + b")\r\n"
            for uid, data in enumerate(stored, start=1)
        )
        assert answer.startswith(expected)
        assert answer[len(expected) :].startswith(b"c OK ")
    finally:
        sock.close()


def _read_until_tagged(sock: socket.socket, tag: bytes, size: int = 4096) -> bytes:
    """Everything up to and including the tagged line of ``tag`` (whose
    octets no literal of these messages holds)."""
    data = bytearray()
    end = b"\r\n" + tag + b" "
    while True:
        more = sock.recv(size)
        assert more, bytes(data[-200:])
        data += more
        tail = bytes(data[-4096:])
        if not tail.endswith(b"\r\n"):
            continue
        if data.startswith(tag + b" ") and data.count(b"\r\n") == 1:
            return bytes(data)
        cut = tail.rfind(end)
        if cut >= 0 and b"\r\n" not in tail[cut + 2 : -2]:
            return bytes(data)
