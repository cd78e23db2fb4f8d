"""SORT (RFC 5256, RFC 5957): base subjects, sort records, the key list, and the
sort against a plain comparison sort."""

from __future__ import annotations

import functools
import gc
import unicodedata
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.protocols.imap.responses import CommandError
from peerd.protocols.imap.sort import (
    MAX_REFERENCES,
    Criterion,
    SortItem,
    SortKey,
    SortRecord,
    base_subject,
    build_record,
    collate,
    decode_words,
    loads_many,
    parse_criteria,
    sort,
)
from tests.example_counts import examples

# -- base subject (RFC 5256 2.1) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "base", "reply"),
    [
        ("foo", "foo", False),
        ("Re: foo", "foo", True),
        ("RE: re: Fwd: foo", "foo", True),
        ("Re[2]: foo", "foo", True),  # subj-refwd with a subj-blob
        ("Re [2] : foo", "foo", True),
        ("FW: foo", "foo", True),
        ("fwd:foo", "foo", True),
        ("fw foo", "fw foo", False),  # no colon: not a subj-refwd
        ("Result: foo", "Result: foo", False),
        ("[list] Re: foo", "foo", True),  # *subj-blob subj-refwd is one subj-leader
        ("[list] foo", "foo", False),  # step 4: a blob goes when a base is left
        ("[list]", "[list]", False),  # ... and stays when it is the base
        ("[a][b]", "[b]", False),
        ("[a] [b] c", "c", False),
        ("[a[b]] c", "[a[b]] c", False),  # BLOBCHAR excludes "["
        ("foo (fwd)", "foo", True),  # step 2: subj-trailer
        ("foo (FWD) (fwd)  ", "foo", True),
        ("[Fwd: foo]", "foo", True),  # step 6
        ("[fwd: Re: [list] foo (fwd)]", "foo", True),
        ("[fwd: [fwd: foo]]", "foo", True),
        ("  foo   bar\t baz ", "foo bar baz", False),  # step 1: white space
        ("foo\r\n bar", "foo bar", False),  # a continuation is a space
        ("Re: ", "", True),
        ("", "", False),
        ("Re: [fwd: foo]", "foo", True),
    ],
)
def test_base_subject(subject: str, base: str, reply: bool) -> None:
    assert base_subject(subject) == (base, reply)


def test_base_subject_of_hostile_input_is_quick() -> None:
    import time

    start = time.thread_time()
    for subject in ("[" * 8000, "[fwd:" * 1600 + "]" * 1600, "Re: " * 2000, "[a]" * 2700):
        base_subject(subject)
    assert time.thread_time() - start < 2.0


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        ("=?utf-8?q?caf=C3=A9?=", "café"),
        ("=?UTF-8?B?Y2Fmw6k=?=", "café"),
        ("=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),  # RFC 2047 6.2: space between words goes
        ("a =?utf-8?q?b?= c", "a b c"),  # ... and next to text stays
        ("=?utf-8?q?=C3?= =?utf-8?q?=A9?=", "é"),  # a character split across words
        ("=?iso-8859-1?q?=E9t=E9?=", "été"),
        ("=?utf-8*fr?q?x_y?=", "x y"),  # RFC 2231 language tag
        ("=?utf-8?b?###?= x", "=?utf-8?b?###?= x"),  # not base64: left alone
        ("=?x-unknown?q?abc?=", "abc"),
        ("no words", "no words"),
    ],
)
def test_decode_words(text: str, decoded: str) -> None:
    assert decode_words(text) == decoded


# -- the record -----------------------------------------------------------------------------

MESSAGE = (
    b"Subject: =?utf-8?q?Re=3A?= [list]\r\n  Hello\r\n"
    b'From: "=?utf-8?q?J=C3=B6rg?=" <Joerg@Example.org>, other@example.org\r\n'
    b"To: undisclosed-recipients:;\r\n"
    b"Cc: (comment) carol@example.org\r\n"
    b"Date: Mon, 1 Jan 2024 10:00:00 +0200\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"References: <a@x> junk <b@x>\r\n"
    b"In-Reply-To: <b@x>\r\n"
    b"Subject: a second subject is ignored\r\n"
    b"\r\n"
    b"Subject: not a header\r\n"
)


def test_build_record_reads_the_header() -> None:
    record = build_record(MESSAGE)
    assert record == SortRecord(
        sent=1704096000,  # 2024-01-01 08:00:00 UTC
        subject="Hello",
        reply=True,
        from_mailbox="Joerg",
        to_mailbox="",
        cc_mailbox="carol",
        from_display="Jörg",
        to_display="",
        message_id="m1@example.org",
        in_reply_to="b@x",
        references=("a@x", "b@x"),
    )
    assert record.parent_ids() == ("a@x", "b@x")


def test_build_record_defaults_and_fallbacks() -> None:
    record = build_record(
        b"From: bob@example.org\r\nDate: not a date\r\nIn-Reply-To: <p@x>\r\n\r\n"
    )
    assert record.sent is None
    assert record.from_display == "bob@example.org"  # RFC 5957: no display name
    assert record.parent_ids() == ("p@x",)  # In-Reply-To when References has none
    assert build_record(b"") == SortRecord()
    # A date without a usable zone is UTC; an 8-bit Subject reads as UTF-8.
    assert build_record(b"Date: 1 Jan 2024 00:00:00 -0000\r\n\r\n").sent == 1704067200
    assert build_record("Subject: Ré: été\r\n\r\n".encode()).subject == "Ré: été"
    assert build_record(b"Subject: caf\xe9\r\n\r\n").subject == "café"  # Latin-1


def test_build_record_caps_references() -> None:
    ids = [f"<r{i}@x>" for i in range(500)]
    record = build_record(b"References: " + " ".join(ids).encode() + b"\r\n\r\n")
    assert len(record.references) == MAX_REFERENCES
    assert record.references[0] == "r0@x" and record.references[-1] == "r499@x"


def test_build_record_with_sort_item_date_falls_back_to_arrival() -> None:
    undated = SortItem(1, arrival=500, size=1, record=SortRecord())
    dated = SortItem(2, arrival=500, size=1, record=SortRecord(sent=100))
    assert undated.date == 500 and dated.date == 100


texts = st.text(st.characters(codec="utf-8"), max_size=20)
records = st.builds(
    SortRecord,
    sent=st.none() | st.integers(-(2**40), 2**40),
    subject=texts,
    reply=st.booleans(),
    from_mailbox=texts,
    to_mailbox=texts,
    cc_mailbox=texts,
    from_display=texts,
    to_display=texts,
    message_id=st.none() | texts,
    in_reply_to=st.none() | texts,
    references=st.lists(texts, max_size=4).map(tuple),
)


@given(st.lists(records, max_size=5))
def test_records_round_trip(rows: list[SortRecord]) -> None:
    assert [SortRecord.loads(r.dumps()) for r in rows] == rows
    assert loads_many([r.dumps() for r in rows]) == rows


@pytest.mark.parametrize("blob", [b"[]", b"{}", b"[2" + b",null" * 11 + b"]", b'[1,"x"]'])
def test_loads_refuses_what_is_not_a_record(blob: bytes) -> None:
    with pytest.raises(ValueError):
        SortRecord.loads(blob)


def test_loads_many_leaves_the_collector_as_it_found_it() -> None:
    """It holds the cyclic collector off while it loads, then puts it back
    as it was: on after a load (a bad record included), still off when the
    caller had turned it off."""
    good = SortRecord(subject="x").dumps()
    assert gc.isenabled()
    try:
        assert loads_many([good, good]) == [SortRecord(subject="x")] * 2
        assert gc.isenabled()
        with pytest.raises(ValueError):
            loads_many([good, b"[1]"])
        assert gc.isenabled()
        gc.disable()
        loads_many([good])
        assert not gc.isenabled()
    finally:
        gc.enable()


# -- the key list ---------------------------------------------------------------------------


def test_parse_criteria() -> None:
    assert parse_criteria(["reverse", "DATE", "subject"]) == (
        Criterion(SortKey.DATE, True),
        Criterion(SortKey.SUBJECT, False),
    )
    assert parse_criteria(["DISPLAYFROM"]) == (Criterion(SortKey.DISPLAYFROM),)
    for bad in ([], ["REVERSE"], ["REVERSE", "REVERSE", "DATE"], ["COLOR"]):
        with pytest.raises(CommandError):
            parse_criteria(bad)


# -- collation and the sort -------------------------------------------------------------------


def reference_casemap(text: str) -> str:
    """RFC 5051 2, char by char: the titlecase when it is one character, then
    the canonical decomposition; compared as UTF-8 octets."""
    out = []
    for ch in text:
        title = ch.title() if len(ch.title()) == 1 else ch
        out.append(unicodedata.normalize("NFD", title))
    return "".join(out)


def test_collation() -> None:
    assert collate("abc") == "ABC"
    assert collate("é") == "E\u0301"  # titlecase, then decomposed
    assert collate("ǆ") == "ǅ"  # titlecase, not uppercase (U+01C4)
    assert collate("ß") == "ß"  # no single-character titlecase
    assert collate("Straße") == reference_casemap("Straße")
    # UTF-8 octet order is code point order.
    assert sorted(["é", "z", "Z", "a"], key=collate) == ["a", "é", "z", "Z"]


def reference_sort(items: list[SortItem], criteria: tuple[Criterion, ...]) -> list[int]:
    """RFC 5256 3 by comparison: each criterion in turn (REVERSE flips only
    that one), then mailbox order."""

    def value(item: SortItem, key: SortKey) -> Any:
        record = item.record
        return {
            SortKey.ARRIVAL: item.arrival,
            SortKey.DATE: item.arrival if record.sent is None else record.sent,
            SortKey.SIZE: item.size,
            SortKey.SUBJECT: reference_casemap(record.subject).encode(),
            SortKey.FROM: reference_casemap(record.from_mailbox).encode(),
            SortKey.TO: reference_casemap(record.to_mailbox).encode(),
            SortKey.CC: reference_casemap(record.cc_mailbox).encode(),
            SortKey.DISPLAYFROM: reference_casemap(record.from_display).encode(),
            SortKey.DISPLAYTO: reference_casemap(record.to_display).encode(),
        }[key]

    def compare(a: tuple[int, SortItem], b: tuple[int, SortItem]) -> int:
        for criterion in criteria:
            x, y = value(a[1], criterion.key), value(b[1], criterion.key)
            if x != y:
                result = -1 if x < y else 1
                return -result if criterion.reverse else result
        return a[0] - b[0]

    ranked = sorted(enumerate(items), key=functools.cmp_to_key(compare))
    return [item.id for _, item in ranked]


small_text = st.text("aAbBéÉzZßǆǅ ", max_size=3)
sort_items = st.lists(
    st.builds(
        lambda arrival, size, sent, subject, frm, to, cc, fd, td: SortItem(
            0, arrival, size, SortRecord(sent, subject, False, frm, to, cc, fd, td)
        ),
        st.integers(0, 3),
        st.integers(0, 3),
        st.none() | st.integers(0, 3),
        small_text,
        small_text,
        small_text,
        small_text,
        small_text,
        small_text,
    ),
    max_size=12,
).map(lambda items: [SortItem(i + 1, x.arrival, x.size, x.record) for i, x in enumerate(items)])
criteria_lists = st.lists(
    st.builds(Criterion, st.sampled_from(list(SortKey)), st.booleans()), min_size=1, max_size=4
).map(tuple)


@settings(max_examples=examples(500), deadline=None)
@given(sort_items, criteria_lists)
def test_sort_matches_a_plain_comparison_sort(
    items: list[SortItem], criteria: tuple[Criterion, ...]
) -> None:
    assert sort(items, criteria) == reference_sort(items, criteria)


def test_rfc5256_reverse_leaves_ties_in_mailbox_order() -> None:
    items = [SortItem(i, 7, 10, SortRecord()) for i in (1, 2, 3)]
    assert sort(items, (Criterion(SortKey.ARRIVAL, reverse=True),)) == [1, 2, 3]
    items.append(SortItem(4, 9, 10, SortRecord()))
    assert sort(items, (Criterion(SortKey.ARRIVAL, reverse=True),)) == [4, 1, 2, 3]


def test_sort_by_subject_then_reverse_date() -> None:
    # RFC 5256 3's example command SORT (SUBJECT REVERSE DATE), on built records.
    def item(n: int, subject: str, date: str) -> SortItem:
        header = f"Subject: {subject}\r\nDate: {date}\r\n\r\n".encode()
        return SortItem(n, 0, 0, build_record(header))

    items = [
        item(1, "Re: b", "1 Jan 2024 00:00:00 +0000"),
        item(2, "b", "2 Jan 2024 00:00:00 +0000"),
        item(3, "[list] a", "1 Jan 2024 00:00:00 +0000"),
        item(4, "A (fwd)", "3 Jan 2024 00:00:00 +0000"),
        item(5, "b", "2 Jan 2024 00:00:00 +0000"),
    ]
    criteria = parse_criteria(["SUBJECT", "REVERSE", "DATE"])
    assert sort(items, criteria) == [4, 3, 2, 5, 1]
