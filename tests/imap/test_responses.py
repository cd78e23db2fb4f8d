"""The serializer: strings, lists, responses, codes, FETCH lines, modified UTF-7."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerd.protocols.imap import responses as r
from peerd.protocols.imap.sequence import SequenceSet


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("hello world", b'"hello world"'),
        ("", b'""'),
        ('say "hi"', b'{8}\r\nsay "hi"'),
        ("back\\slash", b"{10}\r\nback\\slash"),
        ("café", b"{5}\r\ncaf\xc3\xa9"),
        (b"a\r\nb", b"{4}\r\na\r\nb"),
        ("x" * 1025, b"{1025}\r\n" + b"x" * 1025),
    ],
)
def test_string_is_quoted_or_literal(value: str | bytes, wire: bytes) -> None:
    assert r.string(value) == wire


def test_astring_nstring_atoms() -> None:
    assert r.astring("INBOX") == b"INBOX"
    assert r.astring("a]b") == b"a]b"
    assert r.astring("a b") == b'"a b"'
    assert r.astring("NIL") == b'"NIL"'
    assert r.astring("") == b'""'
    assert r.astring("50%") == b'"50%"'
    assert r.nstring(None) == b"NIL"
    assert r.nstring("x") == b'"x"'
    assert r.literal(b"abc") == b"{3}\r\nabc"


def test_render_values() -> None:
    value: r.Value = [r.Atom("MESSAGES"), 3, r.Atom("UIDNEXT"), 9, None, "x y", [r.Raw(b"1:3")]]
    assert r.render(value) == b'(MESSAGES 3 UIDNEXT 9 NIL "x y" (1:3))'
    assert r.render(()) == b"()"
    with pytest.raises(ValueError):
        r.render(-1)
    with pytest.raises(TypeError):
        r.render(True)


def test_responses() -> None:
    assert r.tagged("a1", "OK", "LOGIN completed") == b"a1 OK LOGIN completed\r\n"
    assert (
        r.tagged("a1", "NO", "over quota", r.CODE_OVERQUOTA) == b"a1 NO [OVERQUOTA] over quota\r\n"
    )
    assert r.untagged_status("OK", "Predicted next UID", r.response_code(r.CODE_UIDNEXT, 4392)) == (
        b"* OK [UIDNEXT 4392] Predicted next UID\r\n"
    )
    assert r.untagged_status("BYE", "bye") == b"* BYE bye\r\n"
    assert r.untagged(3, r.Atom("EXISTS")) == b"* 3 EXISTS\r\n"
    assert r.untagged(r.Atom("FLAGS"), [r.Atom("\\Seen")]) == b"* FLAGS (\\Seen)\r\n"
    assert r.continuation() == b"+ Ready for literal data\r\n"
    assert r.continuation(b"") == b"+ \r\n"
    assert r.continuation(b"dGVzdA==") == b"+ dGVzdA==\r\n"


def test_text_cannot_inject_a_line() -> None:
    assert (
        r.tagged("a", "NO", "no such mailbox x\r\n* OK evil")
        == b"a NO no such mailbox x  * OK evil\r\n"
    )


def test_response_codes_with_arguments() -> None:
    copied = r.Raw(bytes(SequenceSet.from_numbers([304, 319, 320, 321])))
    assert r.response_code(r.CODE_COPYUID, 38505, copied, r.Raw(b"3956:3959")) == (
        b"COPYUID 38505 304,319:321 3956:3959"
    )
    assert r.response_code(r.CODE_APPENDUID, 38505, 3955) == b"APPENDUID 38505 3955"
    assert r.response_code(r.CODE_REFERRAL, r.Atom("imap://alice@beta/")) == (
        b"REFERRAL imap://alice@beta/"
    )
    assert r.response_code(r.CODE_PERMANENTFLAGS, [r.Atom("\\Seen"), r.Atom("\\*")]) == (
        b"PERMANENTFLAGS (\\Seen \\*)"
    )
    for code in (
        r.CODE_TRYCREATE,
        r.CODE_UNAVAILABLE,
        r.CODE_TOOBIG,
        r.CODE_HIGHESTMODSEQ,
        r.CODE_UIDVALIDITY,
        r.CODE_ALREADYEXISTS,
        r.CODE_NONEXISTENT,
        r.CODE_AUTHENTICATIONFAILED,
        r.CODE_LIMIT,
        r.CODE_CLIENTBUG,
        r.CODE_CANNOT,
        r.CODE_BADCHARSET,
        r.CODE_MODIFIED,
    ):
        assert code.isupper() and b" " not in code


def test_fetch_response_and_pieces() -> None:
    line = r.fetch_response(
        12,
        [b"UID 4827", b"FLAGS " + r.flag_list(["\\Seen", "$Junk"]), b"BODY[] " + r.literal(b"hi")],
    )
    assert line == b"* 12 FETCH (UID 4827 FLAGS (\\Seen $Junk) BODY[] {2}\r\nhi)\r\n"
    assert r.flag_list([]) == b"()"


def test_internaldate() -> None:
    zone = dt.timezone(-dt.timedelta(hours=7))
    assert (
        r.internaldate(dt.datetime(1996, 7, 17, 2, 44, 25, tzinfo=zone))
        == b'"17-Jul-1996 02:44:25 -0700"'
    )
    assert r.internaldate(dt.datetime(2024, 2, 1, 0, 0, 0)) == b'" 1-Feb-2024 00:00:00 +0000"'


def test_fetch_serialising_is_fast_enough_for_big_mailboxes() -> None:
    # Not a benchmark (bench/ has those): a guard against a slow hot path.
    flags = ["\\Seen", "$Forwarded"]
    start = time.thread_time()
    out = [
        r.fetch_response(
            seq, (b"UID %d" % (seq + 1000), b"FLAGS " + r.flag_list(flags), b"MODSEQ (%d)" % seq)
        )
        for seq in range(1, 10_001)
    ]
    elapsed = time.thread_time() - start
    assert len(b"".join(out)) > 400_000
    assert elapsed < 1.0


# -- modified UTF-7 (RFC 3501 5.1.3) --------------------------------------------------


def test_rfc3501_example() -> None:
    assert r.encode_mailbox("~peter/mail/台北/日本語") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert r.decode_mailbox("~peter/mail/&U,BTFw-/&ZeVnLIqe-") == "~peter/mail/台北/日本語"
    assert r.encode_mailbox("Tom & Jerry") == "Tom &- Jerry"
    assert r.mailbox("Entwürfe") == b"Entw&APw-rfe"
    assert r.mailbox("My Mail") == b'"My Mail"'
    assert r.decode_mailbox("&2D3eAA-") == "\U0001f600"  # a surrogate pair


@pytest.mark.parametrize(
    "bad", ["&AGE-", "&Jjo", "&Jjo!-", "caf\u00e9", "&ZeVnLIqe", "&AAA-", "&2D0-", "&AJ8-"]
)
def test_non_canonical_or_broken_names_are_refused(bad: str) -> None:
    with pytest.raises(r.CommandError):
        r.decode_mailbox(bad)


@given(st.text(st.characters(codec="utf-8"), max_size=40))
def test_modified_utf7_round_trips(name: str) -> None:
    encoded = r.encode_mailbox(name)
    assert encoded.isascii()
    if name.isprintable():
        assert r.decode_mailbox(encoded) == name
