"""SEARCH criteria to the AST."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from peerd.protocols.imap.parser import tokenize
from peerd.protocols.imap.responses import CODE_LIMIT, CommandError
from peerd.protocols.imap.searchkey import (
    MAX_KEYS,
    All,
    And,
    Body,
    Date,
    Flag,
    Header,
    ModSeq,
    Not,
    Or,
    SearchKey,
    Seq,
    Size,
    Text,
    Uid,
    check_charset,
    parse_search_key,
)
from peerd.protocols.imap.sequence import STAR, SequenceSet


def key(text: bytes, literals: tuple[bytes, ...] = (), charset: str = "US-ASCII") -> SearchKey:
    return parse_search_key(tokenize(text, literals), charset=charset)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"ALL", All()),
        (b"answered", Flag("\\Answered")),
        (b"DELETED", Flag("\\Deleted")),
        (b"DRAFT", Flag("\\Draft")),
        (b"FLAGGED", Flag("\\Flagged")),
        (b"SEEN", Flag("\\Seen")),
        (b"RECENT", Flag("\\Recent")),
        (b"UNANSWERED", Flag("\\Answered", False)),
        (b"UNDELETED", Flag("\\Deleted", False)),
        (b"UNDRAFT", Flag("\\Draft", False)),
        (b"UNFLAGGED", Flag("\\Flagged", False)),
        (b"UNSEEN", Flag("\\Seen", False)),
        (b"OLD", Flag("\\Recent", False)),
        (b"NEW", And((Flag("\\Recent"), Flag("\\Seen", False)))),
        (b"KEYWORD $Junk", Flag("$Junk")),
        (b"UNKEYWORD $Junk", Flag("$Junk", False)),
        (b"FROM alice", Header("FROM", "alice")),
        (b'TO "bob smith"', Header("TO", "bob smith")),
        (b"CC x", Header("CC", "x")),
        (b"BCC x", Header("BCC", "x")),
        (b"SUBJECT NIL", Header("SUBJECT", "NIL")),
        (b'HEADER X-Spam ""', Header("X-SPAM", "")),
        (b"BODY hello", Body("hello")),
        (b"TEXT hello", Text("hello")),
        (b"SINCE 1-Feb-1994", Date("INTERNAL", "SINCE", dt.date(1994, 2, 1))),
        (b'BEFORE "01-feb-1994"', Date("INTERNAL", "BEFORE", dt.date(1994, 2, 1))),
        (b"ON 29-Feb-2024", Date("INTERNAL", "ON", dt.date(2024, 2, 29))),
        (b"SENTSINCE 1-Jan-2000", Date("SENT", "SINCE", dt.date(2000, 1, 1))),
        (b"SENTBEFORE 1-Jan-2000", Date("SENT", "BEFORE", dt.date(2000, 1, 1))),
        (b"SENTON 1-Jan-2000", Date("SENT", "ON", dt.date(2000, 1, 1))),
        (b"LARGER 1024", Size("LARGER", 1024)),
        (b"SMALLER 10", Size("SMALLER", 10)),
        (b"1:*", Seq(SequenceSet(((1, STAR),)))),
        (b"$", Seq(SequenceSet((), saved=True))),
        (b"UID 5,7:9", Uid(SequenceSet(((5, 5), (7, 9))))),
        (b"NOT SEEN", Not(Flag("\\Seen"))),
        (b"OR SEEN FLAGGED", Or(Flag("\\Seen"), Flag("\\Flagged"))),
        (b"(SEEN FLAGGED)", And((Flag("\\Seen"), Flag("\\Flagged")))),
        (b"SEEN FLAGGED", And((Flag("\\Seen"), Flag("\\Flagged")))),
        (b"MODSEQ 620162338", ModSeq(620162338)),
        (b'MODSEQ "/flags/\\\\draft" all 620162338', ModSeq(620162338, "/flags/\\draft", "all")),
    ],
)
def test_keys(text: bytes, expected: SearchKey) -> None:
    assert key(text) == expected


def test_nesting() -> None:
    assert key(b"OR (FROM a SINCE 1-Feb-1994) NOT (SEEN OR DRAFT DELETED) 2:4") == And(
        (
            Or(
                And((Header("FROM", "a"), Date("INTERNAL", "SINCE", dt.date(1994, 2, 1)))),
                Not(And((Flag("\\Seen"), Or(Flag("\\Draft"), Flag("\\Deleted"))))),
            ),
            Seq(SequenceSet(((2, 4),))),
        )
    )


def test_literal_strings_in_the_charset() -> None:
    assert key(b"SUBJECT \x00", (b"caf\xc3\xa9",), "UTF-8") == Header("SUBJECT", "café")
    with pytest.raises(CommandError, match="charset"):
        key(b"SUBJECT \x00", (b"caf\xe9",), "UTF-8")


def test_charsets() -> None:
    assert check_charset("utf-8") == "UTF-8" and check_charset("US-ASCII") == "US-ASCII"
    with pytest.raises(CommandError) as info:
        check_charset("ISO-8859-1")
    assert info.value.status == "NO" and info.value.code == b"BADCHARSET (UTF-8 US-ASCII)"


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"BOGUS",
        b"FROM",
        b"OR SEEN",
        b"NOT",
        b"SINCE 32-Jan-2000",
        b"SINCE 1-Foo-2000",
        b"SINCE 1-Jan-00",
        b"SINCE 2000-01-01",
        b"ON 29-Feb-2023",
        b"LARGER -1",
        b"LARGER x",
        b"SMALLER 99999999999",
        b"UID 0",
        b"KEYWORD \\Seen",
        b"KEYWORD (x)",
        b'"ALL"',
        b"()",
        b"MODSEQ x",
        b'MODSEQ "/flags/x" mine 5',
        b"MODSEQ 99999999999999999999",
        b"0",
    ],
)
def test_bad_criteria(text: bytes) -> None:
    with pytest.raises(CommandError):
        key(text)


def test_deep_nesting_is_refused_not_a_crash() -> None:
    with pytest.raises(CommandError, match="deep"):
        key(b"NOT " * 5000 + b"SEEN")


def test_a_key_given_again_is_one_test() -> None:
    """A 64 KiB SEARCH of one key repeated (or its case variants) was that
    many tests of every message: 13,000 of them over 2,000 messages, 26
    million calls. Repeats are dropped, nested groups merged."""
    assert key(b"1:* " * 13000) == Seq(SequenceSet(((1, STAR),)))
    variants = b" ".join(
        b"SUBJECT " + bytes(c ^ 32 if i >> n & 1 else c for n, c in enumerate(b"fox"))
        for i in range(8)
    )
    assert key(variants) == Header("SUBJECT", "fox")
    assert key(b"(SEEN (DRAFT SEEN)) (DRAFT) TEXT a TEXT A") == And(
        (Flag("\\Seen"), Flag("\\Draft"), Text("a"))
    )
    # NOT and OR keep their own keys; only a group's repeats go.
    assert key(b"OR SEEN SEEN NOT (DRAFT DRAFT)") == And(
        (Or(Flag("\\Seen"), Flag("\\Seen")), Not(Flag("\\Draft")))
    )


def test_more_than_max_keys_different_keys_is_no_limit() -> None:
    """5,000 different keys in one SEARCH (within the line limit) took the
    node's thread for seconds; past MAX_KEYS the search is refused at once."""
    fits = b" ".join(b"LARGER %d" % n for n in range(MAX_KEYS))
    assert isinstance(key(fits), And)
    started = time.thread_time()
    with pytest.raises(CommandError) as refused:
        key(b" ".join(b"LARGER %d" % n for n in range(5000)))
    assert refused.value.code == CODE_LIMIT and refused.value.status == "NO"
    # NOT and OR count with the keys under them.
    with pytest.raises(CommandError, match="at most 500"):
        key(b" ".join(b"NOT LARGER %d" % n for n in range(MAX_KEYS // 2 + 1)))
    assert time.thread_time() - started < 1.0
