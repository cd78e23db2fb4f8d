"""FETCH responses from a record and its bytes, and the structure cache shared by threads."""

from __future__ import annotations

import datetime as dt
import random
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from peerd.protocols.imap.fetchatt import parse_fetch_atts
from peerd.protocols.imap.fetchreply import StructureCache, render_fetch
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
