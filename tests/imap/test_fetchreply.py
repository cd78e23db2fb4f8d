"""FETCH responses from a record and its bytes, and the structure cache shared by threads."""

from __future__ import annotations

import datetime as dt
import random
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest

from peerd.protocols.imap.fetchatt import parse_fetch_atts
from peerd.protocols.imap.fetchreply import (
    FetchRenderer,
    RenderedGroups,
    Segment,
    Span,
    StructureCache,
    render_fetch,
    render_fetch_segments,
)
from peerd.protocols.imap.records import Numbered
from peerd.protocols.imap.tokens import tokenize

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: lunch\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"\r\n"
    b"At noon?\r\n"
)


@dataclass(frozen=True, slots=True)
class Rec:
    uid: int = 7
    guid: str = "a" * 40
    flags: str = "\\Seen $Work"
    modseq: int = 12
    size: int = len(MESSAGE)
    internaldate: dt.datetime = dt.datetime(2024, 5, 1, 12, 0, 5, tzinfo=dt.UTC)


def items(text: bytes) -> list[object]:
    return list(parse_fetch_atts(tokenize(text)[0]))


def test_items_from_the_record_need_no_bytes() -> None:
    def reader(guid: str) -> bytes:
        raise AssertionError("no bytes needed")

    out = render_fetch(
        3,
        Rec(),
        parse_fetch_atts(tokenize(b"(UID FLAGS RFC822.SIZE INTERNALDATE MODSEQ)")[0]),
        reader,
        StructureCache(),
    )
    assert out == (
        b"* 3 FETCH (UID 7 FLAGS (\\Seen $Work) RFC822.SIZE 111 "
        b'INTERNALDATE " 1-May-2024 12:00:05 +0000" MODSEQ (12))\r\n'
    )


def test_body_sections_read_the_message_once() -> None:
    reads: list[str] = []

    def reader(guid: str) -> bytes:
        reads.append(guid)
        return MESSAGE

    atts = parse_fetch_atts(tokenize(b"(BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY[TEXT]<0.2>)")[0])
    out = render_fetch(1, Rec(), atts, reader, StructureCache())
    assert out == (
        b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: lunch\r\n\r\n"
        b" BODY[TEXT]<0> {2}\r\nAt)\r\n"
    )
    assert reads == [Rec().guid]


def test_envelope_and_bodystructure_are_parsed_once_per_guid() -> None:
    reads: list[str] = []

    def reader(guid: str) -> bytes:
        reads.append(guid)
        return MESSAGE

    cache = StructureCache()
    atts = parse_fetch_atts(tokenize(b"(ENVELOPE BODYSTRUCTURE BODY)")[0])
    first = render_fetch(1, Rec(), atts, reader, cache)
    second = render_fetch(2, Rec(uid=8), atts, reader, cache)
    assert reads == [Rec().guid]
    assert first.startswith(
        b'* 1 FETCH (ENVELOPE (NIL "lunch" (("Alice" NIL "alice" "example.org"))'
    )
    assert second[len(b"* 2") :] == first[len(b"* 1") :]


def test_the_cache_keeps_its_size() -> None:
    cache = StructureCache(size=3)
    for n in range(10):
        cache.get(str(n), lambda guid: MESSAGE)
    assert len(cache) == 3


@pytest.fixture
def fast_switching() -> Iterator[None]:
    # Switch threads as often as the interpreter can, so that a check-then-act
    # on the cache without its lock gets interleaved.
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_the_cache_is_safe_to_share_between_threads(fast_switching: None) -> None:
    # FETCH renders in worker threads; a hit on an entry another thread is
    # evicting raised KeyError when the cache had no lock (within a fraction of
    # a second here, every time it was tried).
    cache = StructureCache(size=4)
    errors: list[BaseException] = []

    deadline = time.monotonic() + 2.0

    def work(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            while time.monotonic() < deadline and not errors:
                for _ in range(100):
                    cache.get(str(rnd.randrange(5)), lambda guid: MESSAGE)
        except BaseException as exc:  # any failure is the finding
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(cache) <= 4


# Items in every combination a FETCH may mix: from the record, from the
# structure, whole-message literals (partial or not, past the end) and
# sections that need the octets parsed.
_MIXES = (
    b"(UID FLAGS RFC822.SIZE ENVELOPE)",
    b"(BODYSTRUCTURE)",
    b"(UID INTERNALDATE MODSEQ BODY FLAGS BODYSTRUCTURE ENVELOPE)",
    b"(UID BODY.PEEK[])",
    # One whole message among record fields (two formats around the literal).
    b"(BODY.PEEK[])",
    b"(FLAGS BODY[] UID INTERNALDATE MODSEQ)",
    b"(RFC822 RFC822.SIZE)",
    b"(BODY.PEEK[]<0.10> UID BODY.PEEK[]<50.100000> RFC822.SIZE BODY.PEEK[]<999999.5>)",
    b"(RFC822 FLAGS BODY[HEADER.FIELDS (SUBJECT)] BODY.PEEK[TEXT]<1.3> ENVELOPE)",
    b"(UID RFC822.HEADER RFC822.TEXT BINARY.PEEK[1] BINARY.SIZE[1] BODY.PEEK[1.MIME])",
)


def _bodies() -> list[bytes]:
    rng = random.Random(5)
    out = [MESSAGE]
    for n, size in enumerate((0, 40, 700, 5_000, 70_000)):
        text = "".join(rng.choice("abcdef \r\n") for _ in range(size)).encode()
        out.append(b"Subject: m%d\r\nFrom: x@example.org\r\n\r\n%b" % (n, text))
    return out


@pytest.mark.parametrize("mix", _MIXES)
def test_the_renderer_gives_what_render_fetch_gives(mix: bytes) -> None:
    # FetchRenderer (many messages of one FETCH) answers byte for byte as
    # render_fetch, and with span_from as render_fetch_segments: the same
    # octets, the spans in the same places.
    bodies = _bodies()
    by_guid = {f"{n:040x}": data for n, data in enumerate(bodies)}
    records = [
        Rec(uid=n + 3, guid=guid, size=len(data), flags=("\\Seen", "", "$A \\Flagged")[n % 3])
        for n, (guid, data) in enumerate(by_guid.items())
    ]
    atts = parse_fetch_atts(tokenize(mix)[0])
    for span_from in (None, 0, 600, 1 << 20):
        renderer = FetchRenderer(atts, span_from=span_from)
        cache = StructureCache()
        renderer.prefetch([r.guid for r in records[:2]], cache)  # nothing held yet
        for seq, record in enumerate(records, 1):
            out: list[Segment] = []
            spans = renderer.spans
            held = renderer.message(seq, record, by_guid.__getitem__, cache, out)
            # The count the caller reads to know that files are to be opened.
            assert renderer.spans - spans == sum(isinstance(s, Span) for s in out)
            if span_from is None:
                expected: list[Segment] = [
                    render_fetch(seq, record, atts, by_guid.__getitem__, cache)
                ]
            else:
                expected = render_fetch_segments(
                    seq, record, atts, by_guid.__getitem__, cache, span_from=span_from
                )
            assert _flat(out, by_guid) == _flat(expected, by_guid)
            assert [s for s in out if isinstance(s, Span)] == [
                s for s in expected if isinstance(s, Span)
            ]
            assert held <= sum(len(s) for s in out if isinstance(s, bytes))


def _flat(segments: list[Segment], by_guid: dict[str, bytes]) -> bytes:
    out = b""
    for s in segments:
        if isinstance(s, Span):
            out += by_guid[s.guid][s.offset : s.offset + s.count]
        else:
            out += s
    return out


def test_rendered_groups_serve_only_the_same_messages_under_the_same_numbers() -> None:
    atts = tuple(parse_fetch_atts(tokenize(b"(UID FLAGS RFC822.SIZE)")[0]))
    records = tuple(Rec(uid=u) for u in range(1, 7))
    groups = RenderedGroups()
    assert groups.get(atts, Numbered(3, records), 0) is None
    groups.put(atts, Numbered(3, records[:4]), b"four")
    # The same records (a new run of the same objects), numbered the same:
    # served, and the next group begins after them.
    assert groups.get(atts, Numbered(3, tuple(records)), 0) == (b"four", 4)
    assert groups.get(atts, Numbered(1, (Rec(uid=9), Rec(uid=9), *records)), 2) == (b"four", 6)
    # Another number, another record in the run, fewer records, other items,
    # pairs that are no Numbered run: not served.
    assert groups.get(atts, Numbered(4, records), 0) is None
    changed = (*records[:2], replace(records[2], flags="\\Deleted"), *records[3:])
    assert groups.get(atts, Numbered(3, changed), 0) is None
    assert groups.get(atts, Numbered(3, records[:3]), 0) is None
    assert groups.get(atts[:2], Numbered(3, records), 0) is None
    assert groups.get(atts, list(Numbered(3, records)), 0) is None
    assert groups.get(atts, Numbered(3, records), 6) is None
    # Equal records (not the same objects) give the same responses: served.
    copies = tuple(replace(r) for r in records)
    assert groups.get(atts, Numbered(3, copies), 0) == (b"four", 4)


def test_rendered_groups_keep_their_budget() -> None:
    atts = tuple(parse_fetch_atts(tokenize(b"(FLAGS)")[0]))
    records = tuple(Rec(uid=u) for u in range(1, 101))
    groups = RenderedGroups(budget=10_000)
    for first in range(1, 101, 10):
        groups.put(atts, Numbered(first, records[first - 1 : first + 9]), b"x" * 1000)
        assert groups.held <= 10_000
    assert 0 < len(groups) < 10
    # The oldest went first; the newest is served.
    assert groups.get(atts, Numbered(1, records), 0) is None
    assert groups.get(atts, Numbered(91, records[90:]), 0) == (b"x" * 1000, 10)
    groups.put(atts, Numbered(1, records), b"y" * 20_000)  # larger than the budget: not kept
    assert groups.get(atts, Numbered(1, records), 0) is None
