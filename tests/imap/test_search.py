"""SEARCH evaluated without sockets: the parser's AST over a mailbox snapshot."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest

from peerd.protocols.imap.parser import tokenize
from peerd.protocols.imap.responses import CODE_LIMIT, CommandError
from peerd.protocols.imap.search import MAX_TEXT_KEYS, compile_search, text_questions
from peerd.protocols.imap.searchkey import And, Body, Or, Text, parse_search_key


@dataclass
class Rec:
    uid: int
    guid: str
    flags: str
    modseq: int
    size: int
    internaldate: dt.datetime


MESSAGES = {
    "g1": (
        b"From: Bob Example <bob@example.test>\r\nTo: alice@example.test\r\n"
        b"Subject: =?UTF-8?B?SGVsbG8gd29ybGQ=?=\r\nDate: Tue, 24 Nov 2026 23:30:00 -0500\r\n"
        b"X-Spam: yes\r\n\r\nThe needle is here.\r\n"
    ),
    "g2": (
        b"From: carol@example.test\r\nSubject: plain\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9 au lait\r\n"
    ),
    "g3": b"Subject: no date\r\n\r\nnothing\r\n",
}
RECORDS = [
    Rec(3, "g1", "\\Seen $Work", 5, 300, dt.datetime(2026, 11, 24, 12, tzinfo=dt.UTC)),
    Rec(7, "g2", "", 9, 1200, dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)),
    Rec(9, "g3", "\\Deleted \\Flagged", 2, 40, dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)),
]


def search(criteria: bytes, literals: tuple[bytes, ...] = ()) -> list[int]:
    key = parse_search_key(tokenize(criteria, literals), charset="UTF-8")
    matcher = compile_search(key, len(RECORDS), RECORDS[-1].uid)
    loads: list[str] = []

    def load(guid: str) -> bytes:
        loads.append(guid)
        return MESSAGES[guid]

    found = [rec.uid for seq, rec in enumerate(RECORDS, 1) if matcher(seq, rec, load)]
    assert len(loads) == len(set(loads))  # each message loaded at most once
    return found


@pytest.mark.parametrize(
    ("criteria", "uids"),
    [
        (b"ALL", [3, 7, 9]),
        (b"SEEN", [3]),
        (b"UNSEEN", [7, 9]),
        (b"DELETED FLAGGED", [9]),
        (b"KEYWORD $Work", [3]),
        (b"UNKEYWORD $Work", [7, 9]),
        (b"RECENT", []),  # peerd never sets \Recent
        (b"NEW", []),  # NEW is RECENT UNSEEN (RFC 3501 6.4.4)
        (b"OLD", [3, 7, 9]),
        (b"SUBJECT hello", [3]),  # RFC 2047 decoded, case-insensitive
        (b"FROM BOB", [3]),
        (b"TO alice", [3]),
        (b'HEADER X-Spam ""', [3]),  # "" matches any message with the field
        (b"HEADER x-spam YES", [3]),
        (b"BODY needle", [3]),
        (b'BODY "caf\xc3\xa9"', [7]),  # quoted-printable decoded
        (b"TEXT carol", [7]),  # TEXT looks at the header too
        (b"TEXT nothing", [9]),
        (b"LARGER 300", [7]),
        (b"SMALLER 300", [9]),
        (b"SINCE 25-Nov-2026", [7, 9]),
        (b"BEFORE 25-Nov-2026", [3]),
        (b"ON 26-Nov-2026", [9]),
        # The Date: header's own day, its zone disregarded (RFC 3501 6.4.4).
        (b"SENTON 24-Nov-2026", [3]),
        (b"SENTSINCE 25-Nov-2026", [7]),  # no Date: header, no match
        (b"SENTBEFORE 25-Nov-2026", [3]),
        (b"2:*", [7, 9]),
        (b"1,3", [3, 9]),
        (b"UID 4:8", [7]),
        (b"UID 9:*", [9]),
        (b"UID 100:*", [9]),  # "*" is the last UID even past it (RFC 3501 6.4.8)
        (b"MODSEQ 5", [3, 7]),
        (b"NOT SEEN", [7, 9]),
        (b"OR SEEN DELETED", [3, 9]),
        (b"OR LARGER 1000 (SEEN SUBJECT hello)", [3, 7]),
        (b"NOT (UNSEEN OR FLAGGED LARGER 1000)", [3]),
    ],
)
def test_search_keys(criteria: bytes, uids: list[int]) -> None:
    assert search(criteria) == uids


def test_literal_strings_and_flag_only_searches_load_nothing() -> None:
    assert search(b"SUBJECT \x00", (b"world",)) == [3]
    key = parse_search_key(tokenize(b"SEEN UID 1:*"))
    matcher = compile_search(key, len(RECORDS), RECORDS[-1].uid)

    def refuse(guid: str) -> bytes:
        raise AssertionError("a flag search read a message")

    assert [r.uid for s, r in enumerate(RECORDS, 1) if matcher(s, r, refuse)] == [3]


def test_saved_result_names_the_saved_uids() -> None:
    # RFC 5182 2.1: "$" (as a sequence set or a UID set) is the saved UIDs.
    for text in (b"$", b"UID $"):
        matcher = compile_search(parse_search_key(tokenize(text)), 3, 9, saved=frozenset({3}))
        assert [r.uid for s, r in enumerate(RECORDS, 1) if matcher(s, r, MESSAGES.__getitem__)] == [
            3
        ]
    nothing = compile_search(parse_search_key(tokenize(b"$")), 3, 9)
    assert not any(nothing(s, r, MESSAGES.__getitem__) for s, r in enumerate(RECORDS, 1))


# --- the TEXT/BODY shortcut: a message is skipped only if it cannot match -----

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.example_counts import examples  # noqa: E402

_WORDS = ["needle", "Needle", "NEEDLE", "stra\u00dfe", "strasse", "hay", "caf\u00e9", "x"]


def _message(words: list[str], encoding: str, in_subject: bool) -> bytes:
    import base64
    import quopri

    text = " ".join(words).encode("utf-8")
    subject = b"=?UTF-8?B?" + base64.b64encode(text) + b"?=" if in_subject else b"plain"
    if encoding == "base64":
        body = base64.encodebytes(text).replace(b"\n", b"\r\n")
    elif encoding == "quoted-printable":
        body = quopri.encodestring(text).replace(b"\n", b"\r\n")
    else:
        body = text
    return (
        b"Subject: " + subject + b"\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: "
        + (encoding or "8bit").encode()
        + b"\r\n\r\n"
        + body
        + b"\r\n"
    )


@settings(max_examples=examples(300), deadline=None)
@given(
    words=st.lists(st.sampled_from(_WORDS), max_size=6),
    encoding=st.sampled_from(["", "base64", "quoted-printable"]),
    in_subject=st.booleans(),
    term=st.sampled_from(["needle", "strasse", "STRASSE", "caf\u00e9", "hay", "ss", "needle hay"]),
)
def test_the_text_shortcut_never_hides_a_match(
    words: list[str], encoding: str, in_subject: bool, term: str
) -> None:
    """With the shortcut on, TEXT and BODY give what a full MIME parse gives."""
    from engine.spool import guid_of
    from peerd.protocols.imap import structure

    data = _message(words, encoding, in_subject)
    # The real GUID: what the search remembers per GUID is a property of these bytes.
    record = Rec(1, guid_of(data), "", 1, len(data), dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    for key in (f"TEXT {term}", f"BODY {term}"):
        # The term as a literal (NUL marks its place): it may be UTF-8.
        verb = key.split(" ", 1)[0].encode()
        parsed = parse_search_key(tokenize(verb + b" \0", [term.encode("utf-8")]), charset="UTF-8")
        matched = compile_search(parsed, 1, 1)(1, record, lambda guid: data)
        part = structure.parse(data)
        needle = term.casefold()
        full = needle in structure.search_text(part).casefold()
        if key.startswith("TEXT"):
            headers = (
                part.header.decode("utf-8", "replace") + "\n" + structure.decoded_headers(part)
            )
            full = full or needle in headers.casefold()
        assert matched == full, (key, data)


def test_text_keys_past_the_cap_are_no_limit() -> None:
    """Each distinct BODY/TEXT string is a query of the full-text index over
    the node's messages: at most MAX_TEXT_KEYS of them (case folded) in one
    search; case variants of one string count once (the index is asked once)."""
    phrase = "thequickbrownfox"
    variants = [
        "".join(c.upper() if i >> n & 1 else c for n, c in enumerate(phrase)) for i in range(2500)
    ]
    assert len(list(text_questions(And(tuple(Text(v) for v in variants))))) == 2500
    fits = [Text(f"a{n}") if n % 2 else Body(f"a{n}") for n in range(MAX_TEXT_KEYS)]
    assert len(list(text_questions(And(tuple(fits))))) == MAX_TEXT_KEYS
    with pytest.raises(CommandError) as refused:
        list(text_questions(Or(And(tuple(fits)), Text("one more"))))
    assert refused.value.code == CODE_LIMIT and refused.value.status == "NO"
