"""Hostile input to the IMAP core where Python's own rules and the protocol's
disagree: int()'s digit limit, datetime's range, Unicode case mapping, bytes
beyond ASCII echoed in a response. Each answer is the protocol's (a command,
or a ProtocolError that knows its reply), never a Python exception, and what
the server writes is 7-bit and parses back."""

from __future__ import annotations

import datetime as dt

import pytest

from engine.mailbox import normalize_mailbox_name
from peerd.protocols.imap import commands as c
from peerd.protocols.imap import metadata
from peerd.protocols.imap import responses as r
from peerd.protocols.imap.fetchatt import parse_fetch_atts
from peerd.protocols.imap.fetchreply import FetchRenderer, Segment, StructureCache
from peerd.protocols.imap.parser import CommandReader, ContinuationNeeded, Event, ProtocolError
from peerd.protocols.imap.searchkey import MAX_STRING, check_charset
from peerd.protocols.imap.sort import Criterion, SortKey, parse_criteria
from peerd.protocols.imap.tokens import tokenize
from peerd.protocols.imap.wildcard import MAX_PATTERNS, matches
from tests.imap.test_fetchreply import Rec


def pull(reader: CommandReader, data: bytes) -> list[Event]:
    reader.feed(data)
    out: list[Event] = []
    while (event := reader.next_event()) is not None:
        out.append(event)
    return out


# -- literal sizes: 1*DIGIT, however many digits -----------------------------------------


@pytest.mark.parametrize("plus", [b"", b"+"])
def test_a_literal_size_of_thousands_of_digits_is_fatal_not_a_value_error(plus: bytes) -> None:
    # int() refuses strings of more than 4300 digits with a ValueError.
    [event] = pull(CommandReader(), b"a LOGIN {" + b"9" * 5000 + plus + b"}\r\n")
    assert isinstance(event, ProtocolError) and event.fatal and event.tag == "a"
    assert event.reply().startswith(b"* BYE [TOOBIG] literal size")


def test_a_literal_size_with_thousands_of_leading_zeros_is_its_number() -> None:
    reader = CommandReader()
    events = pull(reader, b"a LOGIN {" + b"0" * 5000 + b"5}\r\n")
    assert events == [ContinuationNeeded(5)]
    [event] = pull(reader, b"alice {6+}\r\nsecret\r\n")
    assert event == c.Login("a", "alice", "secret")
    [more] = pull(reader, b"b LOGIN {" + b"0" * 5000 + b"}\r\n")
    assert more == ContinuationNeeded(0)


def test_a_literal_size_past_32_bits_in_eleven_digits_is_fatal() -> None:
    [event] = pull(CommandReader(), b"a APPEND INBOX {04294967296+}\r\n")
    assert isinstance(event, ProtocolError) and event.fatal


# -- every number in a command: ASCII digits, bounded before int() -----------------------

_HUGE = b"9" * 5000  # int() refuses more than 4300 digits with a ValueError


@pytest.mark.parametrize(
    "line",
    [
        b"a FETCH " + _HUGE + b" FLAGS",
        b"a UID COPY 1:" + _HUGE + b" INBOX",
        b"a SEARCH UID 1," + _HUGE,
        b"a FETCH 1 BODY[" + _HUGE + b"]",
        b"a FETCH 1 BODY.PEEK[1." + _HUGE + b".HEADER]",
        b"a FETCH 1 BINARY[" + _HUGE + b"]",
        b"a UID FETCH 1:* FLAGS (PARTIAL 1:" + _HUGE + b")",
        b"a SEARCH RETURN (PARTIAL -1:-" + _HUGE + b") ALL",
        b"a FETCH 1:* FLAGS (CHANGEDSINCE " + _HUGE + b")",
        b"a SEARCH LARGER " + _HUGE,
        b'a SETQUOTA "" (STORAGE ' + _HUGE + b")",
        b"a GETMETADATA (MAXSIZE " + _HUGE + b") INBOX /private/comment",
    ],
)
def test_numbers_of_thousands_of_digits_get_the_grammars_own_error(line: bytes) -> None:
    [event] = pull(CommandReader(), line + b"\r\n")
    assert isinstance(event, ProtocolError) and event.tag == "a" and event.status == "BAD"
    # Not the catch-all the reader keeps for exceptions no rule names.
    assert "malformed command" not in event.text, event.text


# -- APPEND date-time: one the store can keep in UTC, or BAD ----------------------------


@pytest.mark.parametrize(
    "when",
    [
        b" 1-Jan-0001 00:00:00 +0100",  # 31 Dec of year 0 in UTC
        b"31-Dec-9999 23:59:59 -0100",  # 1 Jan 10000 in UTC
        b" 1-Jan-0001 00:59:59 +2359",
        b" 1-Jan-2020 00:00:00 +0099",  # no zone has 99 minutes
        b" 1-Jan-2020 00:00:00 +9999",
    ],
)
def test_append_date_times_outside_what_utc_holds_are_bad(when: bytes) -> None:
    line = b'a APPEND INBOX "' + when + b'" {2+}\r\nhi\r\n'
    [event] = pull(CommandReader(), line)
    assert isinstance(event, ProtocolError) and event.status == "BAD" and event.tag == "a"


@pytest.mark.parametrize("when", [b" 1-Jan-0001 00:00:00 -0000", b"31-Dec-9999 23:59:59 +2359"])
def test_append_date_times_at_the_edges_stay_usable(when: bytes) -> None:
    line = b'a APPEND INBOX "' + when + b'" {2+}\r\nhi\r\n'
    [event] = pull(CommandReader(), line)
    assert isinstance(event, c.Append)
    internal = event.messages[0].internaldate
    assert internal is not None
    internal.astimezone(dt.UTC)  # what the APPEND handler does with it


# -- what the server writes is 7-bit ----------------------------------------------------


def test_response_text_is_seven_bit_and_one_line() -> None:
    line = r.tagged("a", "NO", "no such mailbox: \u00e9t\u00e9\r\n* OK \x00 \udc80")
    assert line == b"a NO no such mailbox: \\xe9t\\xe9  * OK   \\udc80\r\n"
    assert r.untagged_status("BYE", "\u0131") == b"* BYE \\u0131\r\n"


@pytest.mark.parametrize(
    "line",
    [
        b'a SEARCH CHARSET "utf-8\xc4\xb1" ALL\r\n',
        b'a SEARCH SINCE "1\xd9\xa3-Jan-2020"\r\n',
        b"a CREATE {2+}\r\n\xc3\xa9\r\n",
        b"a LOGIN {2+}\r\n\xff\xfe x\r\n",
    ],
)
def test_errors_that_echo_the_command_are_seven_bit(line: bytes) -> None:
    [event] = pull(CommandReader(), line)
    assert isinstance(event, ProtocolError)
    reply = event.reply()
    assert reply.isascii() and reply.count(b"\r\n") == 1 and reply.endswith(b"\r\n")


def test_metadata_entry_names_are_written_as_astrings() -> None:
    values = [("/private/a b", b"v"), ('/private/q"x', None), ("/private/p(", b"w")]
    wire = metadata.metadata_response("INBOX", values)
    assert wire == (
        b'* METADATA INBOX ("/private/a b" "v" {12}\r\n/private/q"x NIL "/private/p(" "w")\r\n'
    )
    # Read back as a client does: the list holds three entries and their values.
    head, _, rest = wire[len(b"* METADATA INBOX ") : -2].partition(b"{12}\r\n")
    [items] = tokenize(head + b"\x00" + rest[12:], [rest[:12]])
    assert items == (b"/private/a b", b"v", b'/private/q"x', "NIL", b"/private/p(", b"w")


# -- INBOX in ASCII case only (RFC 3501 5.1) ---------------------------------------------


def test_a_dotless_i_inbox_is_a_mailbox_of_its_own() -> None:
    dotless = "\u0131nbox"  # dotless i: its upper() is "INBOX"
    assert c.mailbox_name(b"&ATE-nbox") == dotless
    assert c.mailbox_name(b"iNbOx") == "INBOX"
    assert normalize_mailbox_name(dotless + "/x") == dotless + "/x"
    assert normalize_mailbox_name("inbox/x") == "INBOX/x"
    assert not matches("", "INBOX", dotless)
    assert not matches("", "inbox/%", dotless + "/x")
    assert matches("", "inbox/%", "INBOX/x")


def test_charset_names_match_in_ascii_case_only() -> None:
    assert check_charset("us-ascii") == "US-ASCII"
    with pytest.raises(r.CommandError) as refused:
        check_charset("us-a\u017fcii")  # long s: upper() gives "US-ASCII"
    assert refused.value.status == "NO"


# -- work one command can ask for ---------------------------------------------------------


def test_a_list_of_more_patterns_than_the_cap_is_no_limit() -> None:
    # Each pattern is matched against every mailbox name: thousands of them in
    # one 64 KiB command kept a core busy for minutes.
    many = b" ".join(b"*x%d*" % i for i in range(MAX_PATTERNS + 1))
    [event] = pull(CommandReader(), b'a LIST "" (' + many + b")\r\n")
    assert isinstance(event, ProtocolError) and event.status == "NO"
    assert event.reply().startswith(b"a NO [LIMIT] ")
    enough = b" ".join(b"*x%d*" % (i % 3) for i in range(MAX_PATTERNS))
    [listed] = pull(CommandReader(), b'a LIST "" (' + enough + b")\r\n")
    assert isinstance(listed, c.List) and listed.patterns == ("*x0*", "*x1*", "*x2*")


@pytest.mark.parametrize("kind", [b"BINARY.PEEK[1]", b"BODY.PEEK[TEXT]", b"BODY.PEEK[]"])
def test_fetch_items_may_not_ask_for_one_message_many_times_over(kind: bytes) -> None:
    # A few octets an item, each naming (nearly) the whole message: 300 of
    # them over a 2 MB message held 2.4 GB. What one message's items hold is
    # bounded by a multiple of the message: NO [LIMIT].
    raw = b"Subject: big\r\n\r\n" + b"x" * 998 * 2000 + b"\r\n"
    record = Rec(flags="", size=len(raw))
    many = b"(" + b" ".join(kind + b"<%d.%d>" % (k, len(raw)) for k in range(300)) + b")"
    renderer = FetchRenderer(parse_fetch_atts(tokenize(many)[0]))
    out: list[Segment] = []
    with pytest.raises(r.CommandError) as refused:
        renderer.message(1, record, lambda guid: raw, StructureCache(), out)
    assert refused.value.status == "NO" and refused.value.code == r.CODE_LIMIT
    # What clients ask for together (the whole, its parts, decoded) is served.
    usual = b"(BODY.PEEK[] RFC822 BODY.PEEK[TEXT] BINARY.PEEK[1] BODY.PEEK[HEADER] BODYSTRUCTURE)"
    fine = FetchRenderer(parse_fetch_atts(tokenize(usual)[0]))
    held = fine.message(1, record, lambda guid: raw, StructureCache(), out)
    assert held >= 3 * len(raw)


def test_a_sort_key_given_again_is_dropped() -> None:
    # A repeated key orders only what its first use found equal: nothing.
    # 8,000 of them in one SORT were 8,000 passes over the mailbox.
    words = ["REVERSE", "DATE", *(["SUBJECT", "REVERSE", "SUBJECT"] * 4000), "DATE", "SIZE"]
    assert parse_criteria(words) == (
        Criterion(SortKey.DATE, reverse=True),
        Criterion(SortKey.SUBJECT),
        Criterion(SortKey.SIZE),
    )


@pytest.mark.parametrize("key", [b"TEXT", b"BODY", b"SUBJECT", b"HEADER X-Spam", b"HEADER"])
def test_a_search_string_longer_than_a_command_line_is_no_limit(key: bytes) -> None:
    # A literal may be as long as [imap] max_literal: a 20 MB TEXT string
    # held the full-text index's query for minutes and gigabytes.
    size = MAX_STRING + 1
    line = b"a UID SEARCH " + key + b" {%d+}\r\n" % size + b"ab " * (size // 3) + b"a" * (size % 3)
    [event] = pull(CommandReader(), line + b" ALL\r\n")
    assert isinstance(event, ProtocolError), event
    assert event.reply().startswith(b"a NO [LIMIT] ")
    fits = b"a SEARCH " + key + b" {%d+}\r\n" % MAX_STRING + b"x" * MAX_STRING + b" ALL\r\n"
    [event] = pull(CommandReader(), fits)
    assert isinstance(event, c.Search)
