"""Messages shaped by a hostile sender, against what parses them.

Any sender on the Internet chooses a message's structure, and the node
parses every message it stores (the parse walker: ENVELOPE, BODYSTRUCTURE,
sort keys; the indexer: the search text) and again at request time (SEARCH,
BODY[section], BINARY). Before, at 10 MB (a fifth of the default
``max_message_size``): a message of a million empty parts took 22 s of CPU
and 974 MB to parse, fifty nested multiparts around a 10 MB body 1 GB
(every level copied the bytes below it), and a header field folded over
2.5 million lines never finished in the indexer (quadratic unfolding). Each
now costs a bounded amount, whatever its shape; what a client gets of the
bytes is never cut.
"""

from __future__ import annotations

import base64
import imaplib
import re
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine import fulltext
from peerd.protocols.imap import structure
from peerd.protocols.imap.fetchatt import SectionKind
from peerd.protocols.imap.parsed import structures
from peerd.protocols.sieve import message as sieve_message
from tests.harness.daemons import Node
from tests.procs import wait_until


def empty_parts(count: int) -> bytes:
    body = b"--b\r\n\r\nx\r\n" * count + b"--b--\r\n"
    return b"From: a@example.test\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + body


def nested(levels: int, size: int, rfc822: bool = False) -> bytes:
    inner = b"Content-Type: text/plain\r\n\r\n" + b"x" * size + b"\r\n"
    for level in range(levels):
        if rfc822:
            inner = b"Content-Type: message/rfc822\r\n\r\n" + inner
            continue
        b = b"b%d" % level
        inner = (
            b"Content-Type: multipart/mixed; boundary="
            + b
            + b"\r\n\r\n--"
            + b
            + b"\r\n"
            + inner
            + b"\r\n--"
            + b
            + b"--\r\n"
        )
    return b"From: a@example.test\r\n" + inner


def peak_bytes(work: Callable[[], object]) -> int:
    """What ``work`` allocated at its peak, beyond what it returned."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- the parser: bounded whatever the shape -------------------------------------------


def test_parts_past_the_cap_are_the_last_parts_body() -> None:
    raw = empty_parts(structure.MAX_PARTS + 5_000)
    root = structure.parse(raw)
    assert len(root.children) == structure.MAX_PARTS
    # The rest of the multipart is its last part: nothing of it is lost
    # from BODY[n], and no part past the cap is made.
    last = root.children[-1]
    assert last.body.count(b"--b\r\n") == 5_000
    assert structure.section(raw, (structure.MAX_PARTS + 1,)) is None
    assert structure.section(raw, (1,)) == b"x"
    assert structures(raw)[1].count(b'("TEXT" "PLAIN"') == structure.MAX_PARTS


def test_a_multipart_of_exactly_the_cap_ends_at_its_closing_delimiter() -> None:
    # MAX_PARTS parts are allowed: the last one is its own bytes, not the
    # closing delimiter too (the cut is for parts past the cap only).
    raw = empty_parts(structure.MAX_PARTS)
    root = structure.parse(raw)
    assert len(root.children) == structure.MAX_PARTS
    assert root.children[-1].body == b"x"
    assert structure.section(raw, (structure.MAX_PARTS,)) == b"x"


def test_the_part_cap_counts_every_level() -> None:
    # 200 multiparts of 100 parts each: the cap is the message's, not a level's.
    inner = b"".join(
        b"--o\r\nContent-Type: multipart/mixed; boundary=i\r\n\r\n"
        + b"--i\r\n\r\ny\r\n" * 100
        + b"--i--\r\n"
        for _ in range(200)
    )
    raw = b"Content-Type: multipart/mixed; boundary=o\r\n\r\n" + inner + b"--o--\r\n"
    root = structure.parse(raw)
    count = 0
    stack = [root]
    while stack:
        part = stack.pop()
        count += len(part.children)
        stack.extend(part.children)
    assert count <= structure.MAX_PARTS
    assert len(root.children[0].children) == 100


def test_deep_nesting_copies_nothing_of_the_body() -> None:
    raw = nested(structure.MAX_DEPTH - 1, 4_000_000)
    # Before: every level held a copy of the bytes below it (about 50 times
    # the message). Now the parts are ranges of the message.
    assert peak_bytes(lambda: structure.parse(raw)) < len(raw) // 4
    root = structure.parse(raw)
    part = root
    path = []
    while part.children:
        path.append(1)
        part = part.children[0]
    assert len(path) == structure.MAX_DEPTH - 1
    assert structure.section(raw, tuple(path)) == b"x" * 4_000_000 + b"\r\n"
    assert structure.section(raw, tuple(path), SectionKind.MIME) == (
        b"Content-Type: text/plain\r\n\r\n"
    )
    message_in_message = nested(structure.MAX_DEPTH - 1, 4_000_000, rfc822=True)
    assert peak_bytes(lambda: structures(message_in_message)) < len(message_in_message) // 4


def test_nesting_past_the_cap_is_a_text_leaf() -> None:
    raw = nested(structure.MAX_DEPTH + 5, 10)
    part = structure.parse(raw)
    depth = 0
    while part.children:
        part = part.children[0]
        depth += 1
    assert depth == structure.MAX_DEPTH
    # A multipart that is not split is read as text/plain, as one without a
    # boundary is: never a MULTIPART leaf, which no client can read.
    assert (part.maintype, part.subtype) == ("text", "plain")
    assert b'"MULTIPART" "MIXED" (' not in structures(raw)[1]


def test_header_fields_are_read_up_to_the_cap() -> None:
    filler = b"X-Filler: a\r\n" * (8 * structure.MAX_HEADER_READ // 13)
    late_type = b"Content-Type: multipart/mixed; boundary=b\r\n"
    body = b"--b\r\n\r\none\r\n--b--\r\n"
    raw = b"From: a@example.test\r\n" + filler + late_type + b"\r\n" + body
    # 8 MiB of fields: the stdlib's parser held 170 MB for them before; now
    # it reads the first MiB (about 22 MB of objects for 80,000 fields).
    assert peak_bytes(lambda: structure.parse(raw)) < 48 * structure.MAX_HEADER_READ
    root = structure.parse(raw)
    # The Content-Type past the first MiB of header is not read: a text leaf.
    assert not root.children
    assert (root.maintype, root.subtype) == ("text", "plain")
    # The bytes are all there for a client that asks for them.
    assert structure.section(raw, (), SectionKind.HEADER) == raw[: raw.index(b"\r\n\r\n") + 4]
    # The budget is the message's: a part's header counts against it too.
    small = b"From: a@example.test\r\n" + late_type + b"\r\n" + body
    assert [c.body for c in structure.parse(small).children] == [b"one"]


def test_a_part_that_starts_with_an_empty_line_has_an_empty_header() -> None:
    # RFC 2046 5.1.1: a body part with no header fields starts with the
    # blank line. Its body runs on past later blank lines: before, the
    # header ran to the first of them, and BODY[1] lost "one".
    for eol in (b"\r\n", b"\n"):
        lines = [b"Content-Type: multipart/mixed; boundary=b", b"", b"--b", b""]
        raw = eol.join([*lines, b"one", b"", b"two", b"--b--", b""])
        assert structure.section(raw, (1,)) == eol.join([b"one", b"", b"two"])
        assert structure.section(raw, (1,), SectionKind.MIME) == eol
        assert fulltext.extract(raw).body.split() == ["one", "two"]


def test_binary_of_a_large_base64_part_is_its_octets() -> None:
    payload = bytes(range(256)) * 40_000  # 10 MB
    encoded = base64.encodebytes(payload)
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + encoded
        + b"\r\n--b--\r\n"
    )
    assert structure.binary_section(raw, (1,)) == payload


# -- Sieve's body test ----------------------------------------------------------------


def test_sieve_body_parts_of_a_message_of_empty_parts_cost_little() -> None:
    raw = empty_parts(400_000)  # 4 MB
    # The stdlib's parser read all 400,000 parts first: 3.4 s and 150 MB
    # here, per recipient whose script has a body test.
    peak = peak_bytes(lambda: sieve_message.body_parts(raw))
    assert peak < 12 * len(raw) // 10 + 16_000_000
    parts = sieve_message.body_parts(raw)
    assert len(parts) == sieve_message.MAX_BODY_PARTS
    assert {(p.content_type, p.text) for p in parts} == {("text/plain", "x")}


def test_sieve_reads_parts_as_imap_does() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\none\r\n\r\ntwo\r\n"
        b"--b\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes("<p>caf\u00e9</p>".encode())
        + b"--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\ninner\r\n--b--\r\n"
    )
    parts = [(p.content_type, p.text) for p in sieve_message.body_parts(raw)]
    assert parts == [
        ("text/plain", "one\r\n\r\ntwo"),
        ("text/html", "<p>caf\u00e9</p>"),
        ("text/plain", "inner"),
    ]
    assert sieve_message.raw_body(b"\r\nno header\r\n\r\nat all") == b"no header\r\n\r\nat all"


# -- the indexer's extraction --------------------------------------------------------


def test_a_field_folded_over_many_lines_is_unfolded_in_linear_time() -> None:
    raw = b"From: a@example.test\r\nSubject: x" + b"\r\n x" * 500_000 + b"\r\n\r\nbody\r\n"
    started = time.process_time()
    doc = fulltext.extract(raw)
    # Quadratic before: more than a minute at 2.5 million lines, several
    # seconds at this size; linear, a fraction of a second.
    assert time.process_time() - started < 3.0
    assert "body" in doc.body


def test_the_html_rendered_is_capped_for_the_message_not_each_part() -> None:
    part = b"<b></b>" * (fulltext.MAX_HTML // 7) + b"<p>last words</p>"
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        + b"".join(b"--b\r\nContent-Type: text/html\r\n\r\n" + part + b"\r\n" for _ in range(6))
        + b"--b--\r\n"
    )
    started = time.process_time()
    doc = fulltext.extract(raw)
    # Per part, sixteen such parts were 8.7 s of the indexer's CPU here;
    # now the message's HTML is rendered up to MAX_HTML in all.
    assert time.process_time() - started < 3.0
    assert not doc.complete
    assert "last words" not in doc.body
    one = b"Content-Type: text/html\r\n\r\n<p>first</p>" + b"<br>" * 1000 + b"<p>last words</p>"
    assert "last words" in fulltext.extract(one).body


def test_megabytes_of_encoded_words_are_not_decoded_past_the_header_cap() -> None:
    raw = b"From: a@example.test\r\nSubject: " + b"=?utf-8?q?a?= " * 700_000 + b"\r\n\r\nbody\r\n"
    started = time.process_time()
    doc = fulltext.extract(raw)
    assert time.process_time() - started < 3.0  # 7 s of decoding before, at 10 MB
    assert len(doc.header) <= fulltext.MAX_HEADER


# -- on a node: delivered, walked, served ------------------------------------------


@pytest.fixture
def hostile(shared_node: Node) -> Iterator[Node]:
    shared_node.add_account("mime")
    yield shared_node


def vm_hwm_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1))


def test_a_node_parses_hostile_messages_in_bounded_memory_and_serves_them(
    hostile: Node,
) -> None:
    node = hostile
    pid = node.pid
    assert pid is not None
    messages = [
        empty_parts(400_000),  # 4 MB of empty parts
        nested(structure.MAX_DEPTH - 1, 4_000_000),
        b"From: a@example.test\r\nSubject: folded" + b"\r\n x" * 400_000 + b"\r\n\r\nbody\r\n",
    ]
    before = vm_hwm_kib(pid)
    with node.lmtp() as lmtp:
        for data in messages:
            lmtp.sendmail("s@example.test", ["mime@example.test"], data)

    wait_until(lambda: node.call("GET", "/v1/index")["pending"] == 0, 60, "the indexer")
    with imaplib.IMAP4("127.0.0.1", node.port("imap"), timeout=60) as client:
        client.login("mime", "secret")
        client.select("INBOX")
        typ, answer = client.fetch("1:3", "(BODYSTRUCTURE)")
        assert typ == "OK"
        flat = b"".join(a if isinstance(a, bytes) else b"".join(a or ()) for a in answer)
        assert flat.count(b'("TEXT" "PLAIN"') >= structure.MAX_PARTS
        typ, found = client.search(None, "BODY", "body")
        assert typ == "OK" and found[0].split() == [b"3"]
        typ, part = client.fetch("2", "(BODY.PEEK[" + ".".join(["1"] * 49) + "])")
        assert typ == "OK" and isinstance(part[0], tuple)
        assert part[0][1] == b"x" * 4_000_000 + b"\r\n"
    # Before: the nested message alone took the daemon's peak past 400 MB
    # more (each of fifty levels held a copy); the parts, 300 MB and 9 s.
    grew = vm_hwm_kib(pid) - before
    assert grew < 150 * 1024, f"the daemon's peak RSS grew by {grew} KiB"
