"""Pure-bytes tests of the POP3 core: commands, SASL lines, caps, states, replies, UIDL,
the maildrop and CAPA."""

from __future__ import annotations

import base64
import io
import poplib
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerd.protocols.pop3 import (
    ALLOWED,
    CODE_AUTH,
    CODE_IN_USE,
    CODE_LOGIN_DELAY,
    CODE_SYS_PERM,
    CODE_SYS_TEMP,
    NEED_DATA,
    Auth,
    Capa,
    CommandError,
    CommandReader,
    ConnectionClosed,
    Continuation,
    Dele,
    Entry,
    Err,
    Event,
    List,
    Maildrop,
    Noop,
    Ok,
    Pass,
    Quit,
    Retr,
    Rset,
    SaslCancel,
    SaslResponse,
    Stat,
    State,
    Stls,
    Top,
    Uidl,
    User,
    allowed,
    capa_reply,
    capabilities,
    dot_stuff,
    dot_unstuff,
    message_reply,
    multiline,
    parse_command,
    plain_credentials,
    top_text,
    uidl,
)


def read_all(data: bytes, **caps: int) -> list[Event]:
    reader = CommandReader(**caps)
    reader.receive_data(data)
    return reader.events()


# -- commands -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "command"),
    [
        (b"USER alice", User("alice")),
        (b"user alice@example.test", User("alice@example.test")),
        (b"PASS s3cret", Pass("s3cret")),
        (b"PASS with two  spaces ", Pass("with two  spaces ")),
        (b"PASS caf\xc3\xa9+1", Pass("café+1")),
        (b"QUIT", Quit()),
        (b"STAT", Stat()),
        (b"LIST", List()),
        (b"LIST 3", List(3)),
        (b"list  3 ", List(3)),
        (b"RETR 1", Retr(1)),
        (b"DELE 12", Dele(12)),
        (b"NOOP", Noop()),
        (b"RSET", Rset()),
        (b"TOP 1 0", Top(1, 0)),
        (b"TOP 2 10", Top(2, 10)),
        (b"UIDL", Uidl()),
        (b"UIDL 7", Uidl(7)),
        (b"CAPA", Capa()),
        (b"STLS", Stls()),
        (b"AUTH PLAIN", Auth("PLAIN")),
        (b"auth plain =", Auth("PLAIN", b"")),
        (b"AUTH PLAIN " + base64.b64encode(b"\0bob\0pw"), Auth("PLAIN", b"\0bob\0pw")),
    ],
)
def test_each_command(line: bytes, command: object) -> None:
    assert parse_command(line) == command
    assert read_all(line + b"\r\n") == [command]
    assert read_all(line + b"\n") == [command]  # a bare LF is taken too


@pytest.mark.parametrize(
    ("line", "text"),
    [
        (b"USER", "USER takes one argument: a mailbox name"),
        (b"USER a b", "USER takes one argument: a mailbox name"),
        (b"PASS", "PASS takes one argument: the password"),
        (b"STAT 1", "STAT takes no arguments"),
        (b"QUIT now", "QUIT takes no arguments"),
        (b"LIST 1 2", "LIST takes at most one argument: a message number"),
        (b"LIST 0", "message number must be a positive number"),
        (b"LIST -1", "message number must be a positive number"),
        (b"LIST +1", "message number must be a positive number"),
        (b"LIST x", "message number must be a positive number"),
        (b"RETR", "RETR takes one argument: a message number"),
        (b"DELE \xd9\xa1", "message number must be a positive number"),  # Arabic 1
        (b"TOP 1", "TOP takes two arguments: a message number and a line count"),
        (b"TOP 1 -1", "TOP line count must be a non-negative number"),
        (b"TOP 0 1", "message number must be a positive number"),
        (b"AUTH", "AUTH takes a mechanism and an optional initial response"),
        (b"AUTH PLAIN !!!", "invalid base64 in SASL response"),
        (b"AUTH PLAIN a b", "AUTH takes a mechanism and an optional initial response"),
        (b"AUTH PL@IN", "AUTH mechanism must be a SASL name (1-20 of A-Z 0-9 - _)"),
        (b"USER \xff", "argument is not valid UTF-8"),
    ],
)
def test_bad_arguments_are_errors_with_clear_text(line: bytes, text: str) -> None:
    event = parse_command(line)
    assert isinstance(event, CommandError)
    assert event.text == text
    assert event.keyword == line.split()[0].decode().upper()


@pytest.mark.parametrize("line", [b"XYZZY", b"", b" ", b"APOP alice digest", b"\xff\xfe"])
def test_unknown_commands_are_errors(line: bytes) -> None:
    event = parse_command(line)
    assert isinstance(event, CommandError)
    assert event.text.startswith("unknown command")


def test_unknown_keyword_is_echoed_only_when_short_and_printable() -> None:
    assert parse_command(b"XYZZY") == CommandError("unknown command XYZZY", "XYZZY")
    assert parse_command(b"A" * 30) == CommandError("unknown command", "")


def test_commands_are_validated_when_built() -> None:
    with pytest.raises(ValueError):
        Retr(0)
    with pytest.raises(ValueError):
        Top(1, -1)
    with pytest.raises(ValueError):
        List(True)
    with pytest.raises(ValueError):
        User("a\r\nDELE 1")
    with pytest.raises(ValueError):
        Auth("plain")  # parse_command upper-cases; built by hand it must be upper already
    with pytest.raises(ValueError):
        CommandError("")


def test_secrets_stay_out_of_reprs() -> None:
    assert "s3cret" not in repr(Pass("s3cret"))
    assert "pw" not in repr(Auth("PLAIN", b"\0bob\0pw"))
    assert "pw" not in repr(SaslResponse(b"\0bob\0pw"))


# -- the reader -----------------------------------------------------------------


def test_pipelined_commands_in_one_packet() -> None:
    # RFC 2449 section 6.6 PIPELINING: many commands in one send.
    assert read_all(b"STAT\r\nLIST\r\nRETR 1\r\nQUIT\r\n") == [Stat(), List(), Retr(1), Quit()]


def test_need_data_until_the_line_ends_then_eof() -> None:
    reader = CommandReader()
    reader.receive_data(b"RE")
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"TR 1\r")
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"\nQU")
    assert reader.next_event() == Retr(1)
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"")
    assert reader.next_event() == ConnectionClosed()  # "QU" had no line end
    with pytest.raises(RuntimeError):
        reader.receive_data(b"more")


def test_line_cap_is_configurable_and_counts_crlf() -> None:
    line = b"USER " + b"a" * 248  # 253 octets + CRLF = 255
    assert read_all(line + b"\r\n") == [User("a" * 248)]
    assert read_all(b"USER " + b"a" * 249 + b"\r\n") == [CommandError("line too long")]
    assert read_all(b"USER " + b"a" * 500 + b"\r\n", max_line=1024) == [User("a" * 500)]


def test_an_overlong_line_is_dropped_and_the_session_goes_on() -> None:
    reader = CommandReader(max_line=32)
    reader.receive_data(b"PASS " + b"x" * 40)
    # Refused before its end arrives: memory stays bounded by the cap.
    assert reader.next_event() == CommandError("line too long")
    assert reader.next_event() is NEED_DATA
    for _ in range(1000):
        reader.receive_data(b"y" * 1000)
        assert reader.next_event() is NEED_DATA
    assert len(reader._buffer) <= 1000
    reader.receive_data(b"yyy\r\nNOOP\r\n")
    assert reader.events() == [Noop()]


def test_sasl_response_after_continuation_even_when_pipelined() -> None:
    reader = CommandReader()
    response = base64.b64encode(b"\0alice\0pw")
    reader.receive_data(b"AUTH PLAIN\r\n" + response + b"\r\nSTAT\r\n")
    assert reader.next_event() == Auth("PLAIN")
    assert Continuation().encode() == b"+ \r\n"  # RFC 5034: "+" and a space
    reader.expect_sasl_response()
    assert reader.awaiting_sasl
    assert reader.next_event() == SaslResponse(b"\0alice\0pw")
    assert not reader.awaiting_sasl
    assert reader.next_event() == Stat()  # back to commands at once


def test_sasl_cancel_bad_base64_and_empty_response() -> None:
    for line, event in [
        (b"*", SaslCancel()),
        (b"!!", CommandError("invalid base64 in SASL response", "AUTH")),
        (b"", SaslResponse(b"")),
    ]:
        reader = CommandReader()
        reader.expect_sasl_response()
        reader.receive_data(line + b"\r\n")
        assert reader.next_event() == event


def test_sasl_lines_have_their_own_cap() -> None:
    big = base64.b64encode(b"\0alice\0" + b"p" * 400)
    reader = CommandReader()
    reader.expect_sasl_response()
    reader.receive_data(big + b"\r\n")
    assert isinstance(reader.next_event(), SaslResponse)
    reader = CommandReader(max_sasl_line=64)
    reader.expect_sasl_response()
    reader.receive_data(big + b"\r\nNOOP\r\n")
    assert reader.events() == [CommandError("line too long"), Noop()]


SCRIPT = (
    b"CAPA\r\nUSER alice\r\nPASS a b  c\r\nSTAT\r\nLIST\r\nUIDL 2\r\nTOP 1 5\r\n"
    b"BOGUS\r\nRETR 1\r\nDELE 1\r\nRSET\r\nNOOP\r\nQUIT\r\n"
)


@given(st.lists(st.integers(min_value=0, max_value=len(SCRIPT)), max_size=20))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    expected = read_all(SCRIPT)
    reader = CommandReader()
    events: list[Event] = []
    points = sorted(set(cuts))
    for start, end in zip([0, *points], [*points, len(SCRIPT)], strict=True):
        if end > start:  # b"" would mean end of input
            reader.receive_data(SCRIPT[start:end])
            events += reader.events()
    assert events == expected
    assert len(expected) == 13


@given(st.binary(max_size=600))
def test_garbage_never_raises_and_lines_stay_capped(data: bytes) -> None:
    reader = CommandReader(max_line=64)
    reader.receive_data(data)
    reader.receive_data(b"")
    events = reader.events()
    assert isinstance(events[-1], ConnectionClosed)
    assert len(reader._buffer) == 0


# -- states -----------------------------------------------------------------------


def test_state_table() -> None:
    authz, trans = State.AUTHORIZATION, State.TRANSACTION
    assert allowed(authz, User("a")) and allowed(authz, Pass("p"))
    assert allowed(authz, Auth("PLAIN")) and allowed(authz, Stls())
    assert not allowed(authz, Stat()) and not allowed(authz, Retr(1))
    assert not allowed(authz, Noop())  # RFC 1939: NOOP is a TRANSACTION command
    assert allowed(trans, Retr(1)) and allowed(trans, Top(1, 1)) and allowed(trans, Noop())
    assert not allowed(trans, User("a")) and not allowed(trans, Stls())
    assert not allowed(trans, Auth("PLAIN"))
    for state in (authz, trans):
        assert allowed(state, Capa()) and allowed(state, Quit())
    assert ALLOWED[State.UPDATE] == frozenset()
    assert set(ALLOWED) == set(State)


# -- replies ----------------------------------------------------------------------


def test_status_lines_and_response_codes() -> None:
    assert Ok().encode() == b"+OK\r\n"
    assert Ok("2 320").encode() == b"+OK 2 320\r\n"
    assert Err("authentication failed", CODE_AUTH).encode() == (
        b"-ERR [AUTH] authentication failed\r\n"
    )
    assert Err("try later", CODE_SYS_TEMP).encode() == b"-ERR [SYS/TEMP] try later\r\n"
    assert Err("gone", CODE_SYS_PERM).encode() == b"-ERR [SYS/PERM] gone\r\n"
    assert Err("locked", CODE_IN_USE).encode() == b"-ERR [IN-USE] locked\r\n"
    assert Err("wait", CODE_LOGIN_DELAY).encode() == b"-ERR [LOGIN-DELAY] wait\r\n"
    for bad in ("a]b", "a//b", "", "/x", "sp ace"):
        with pytest.raises(ValueError):
            Err("x", bad)
    with pytest.raises(ValueError):
        Err("line\r\nDELE 1")
    with pytest.raises(ValueError):
        Ok("x" * 600)  # RFC 2449 section 4: 512 octets


def test_multiline_listing_is_stuffed() -> None:
    out = multiline(Ok("capability list follows"), ["USER", "UIDL", ".odd"])
    assert out == b"+OK capability list follows\r\nUSER\r\nUIDL\r\n..odd\r\n.\r\n"
    assert multiline(Ok(), []) == b"+OK\r\n.\r\n"
    with pytest.raises(ValueError):
        multiline(Ok(), ["a\r\n."])


@pytest.mark.parametrize(
    ("message", "stuffed"),
    [
        (b"", b".\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r\n..x\r\n", b"a\r\n...x\r\n.\r\n"),
        (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),  # bare LFs become CRLF first
    ],
)
def test_dot_stuffing(message: bytes, stuffed: bytes) -> None:
    assert dot_stuff(message) == stuffed


def _normal(data: bytes) -> bytes:
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return data if not data or data.endswith(b"\r\n") else data + b"\r\n"


@given(st.lists(st.sampled_from([b".", b"..", b"\r\n", b"\n", b"\r", b"a", b" "]), max_size=40))
def test_dot_stuffing_round_trip(parts: list[bytes]) -> None:
    message = b"".join(parts)
    body = dot_stuff(message)
    assert dot_unstuff(body) == _normal(message)
    # The terminator appears once, at the end, whatever the message holds.
    assert (b"\r\n" + body).find(b"\r\n.\r\n") == len(body) - 3


@given(st.lists(st.sampled_from([b".", b"\r\n", b"\n", b"a", b".\r\n"]), max_size=40))
def test_poplib_reads_back_what_we_send(parts: list[bytes]) -> None:
    message = b"".join(parts)
    client: Any = poplib.POP3.__new__(poplib.POP3)  # no socket: poplib's reader over our bytes
    client._debugging = 0
    client.file = io.BytesIO(message_reply(message) + b"+OK next reply\r\n")
    _, lines, _ = client._getlongresp()
    assert b"".join(line + b"\r\n" for line in lines) == _normal(message)
    assert client._getresp() == b"+OK next reply"  # nothing leaked past the terminator


def test_retr_reply_and_speed_for_a_big_message() -> None:
    assert message_reply(b"a\r\n") == b"+OK 3 octets\r\na\r\n.\r\n"
    assert message_reply(b"a", Ok("follows")) == b"+OK follows\r\na\r\n.\r\n"
    line = b"." + b"x" * 75 + b"\r\n"
    big = line * (8 * 1024 * 1024 // len(line))
    started = time.thread_time()
    body = dot_stuff(big)
    elapsed = time.thread_time() - started
    assert len(body) == len(big) + len(big) // len(line) + 3
    assert elapsed < 1.0  # a Python loop over 100,000 lines would not make it


MESSAGE = b"From: a\r\nSubject: s\r\n\r\nline 1\r\nline 2\r\nline 3\r\n"


@pytest.mark.parametrize(
    ("message", "lines", "expected"),
    [
        (MESSAGE, 0, b"From: a\r\nSubject: s\r\n\r\n"),
        (MESSAGE, 2, b"From: a\r\nSubject: s\r\n\r\nline 1\r\nline 2\r\n"),
        (MESSAGE, 3, MESSAGE),
        (MESSAGE, 99, MESSAGE),
        (b"From: a\r\nSubject: s\r\n", 5, b"From: a\r\nSubject: s\r\n"),  # no body
        (b"\r\nbody 1\r\nbody 2\r\n", 1, b"\r\nbody 1\r\n"),  # no headers
        (b"H: 1\n\nb1\nb2\n", 1, b"H: 1\r\n\r\nb1\r\n"),  # bare LFs
        (b"H: 1\r\n\r\nlast without CRLF", 1, b"H: 1\r\n\r\nlast without CRLF"),
    ],
)
def test_top(message: bytes, lines: int, expected: bytes) -> None:
    assert top_text(message, lines) == expected


def test_top_huge_line_count_is_cheap() -> None:
    assert top_text(MESSAGE, 10**12) == MESSAGE


def _top_a_line_at_a_time(message: bytes, lines: int) -> bytes:
    """RFC 1939 section 7's TOP, written plainly (and slowly)."""
    data = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    end = 2 if data.startswith(b"\r\n") else data.find(b"\r\n\r\n") + 4
    if end < 4 and not data.startswith(b"\r\n"):
        return data
    for _ in range(lines):
        newline = data.find(b"\r\n", end)
        if newline < 0:
            return data
        end = newline + 2
    return data[:end]


@given(
    st.lists(st.sampled_from([b"\r\n", b"a\r\n", b"\r", b"xx", b"\n", b"\r\n\r\n"]), max_size=3000),
    st.sampled_from([b"", b"S: x\r\n\r\n", b"\r\n", b"S: x"]),
    st.integers(0, 4000),
)
def test_top_cuts_where_a_line_at_a_time_would(
    pieces: list[bytes], head: bytes, lines: int
) -> None:
    message = head + b"".join(pieces)
    assert top_text(message, lines) == _top_a_line_at_a_time(message, lines)


def test_top_of_millions_of_lines_does_not_hold_the_event_loop() -> None:
    # TOP runs on the node's event loop. A line at a time in Python, TOP 1
    # 24999999 of a 50 MB message of empty lines held it 3.5 s (every
    # user of the node waited); halving with bytes.count, 0.2 s.
    message = b"Subject: x\r\n\r\n" + b"\r\n" * 25_000_000
    started = time.process_time()
    assert len(top_text(message, 24_999_999)) == len(message) - 2
    assert time.process_time() - started < 1.5


def test_uidl_is_stable_and_rfc1939_shaped() -> None:
    uniqueid = "0123456789abcdef0123456789abcdef"
    # The form peerd has served all along: clients keep their "seen" lists.
    assert uidl(uniqueid, 42) == f"{uniqueid}.42"
    assert uidl(uniqueid, 42) == uidl(uniqueid, 42)
    assert uidl(uniqueid, 42) != uidl(uniqueid, 43)
    odd = uidl("mailbox with spaces and é", 7)
    long = uidl("u" * 200, 2**32 - 1)
    for value in (odd, long, uidl(uniqueid, 2**32 - 1)):
        assert 1 <= len(value) <= 70
        assert all(0x21 <= ord(ch) <= 0x7E for ch in value)
    assert odd == uidl("mailbox with spaces and é", 7)
    assert long != uidl("u" * 201, 2**32 - 1)
    for bad_uid in (0, -1, 2**32, True):
        with pytest.raises(ValueError):
            uidl(uniqueid, bad_uid)
    with pytest.raises(ValueError):
        uidl("", 1)


@given(st.text(min_size=1, max_size=100), st.integers(min_value=1, max_value=2**32 - 1))
def test_uidl_always_fits(uniqueid: str, uid: int) -> None:
    value = uidl(uniqueid, uid)
    assert 1 <= len(value) <= 70
    assert all(0x21 <= ord(ch) <= 0x7E for ch in value)
    assert value == uidl(uniqueid, uid)


# -- SASL PLAIN -------------------------------------------------------------------


def test_plain_credentials() -> None:
    # RFC 4616 section 2: [authzid] NUL authcid NUL passwd.
    assert plain_credentials(b"\0alice\0s3cret") == ("alice", "s3cret")
    assert plain_credentials(b"alice\0alice\0pw with spaces") == ("alice", "pw with spaces")
    assert plain_credentials("\0jos\u00e9\0caf\u00e9".encode()) == ("jos\u00e9", "caf\u00e9")
    for bad in (b"", b"alice", b"\0alice", b"\0\0pw", b"\0alice\0", b"a\0b\0c\0d", b"\0\xff\0pw"):
        with pytest.raises(ValueError, match="bad SASL PLAIN response"):
            plain_credentials(bad)
    with pytest.raises(ValueError):  # acting as another user is not offered
        plain_credentials(b"bob\0alice\0pw")


def test_buffered_says_whether_the_client_sent_more() -> None:
    reader = CommandReader()
    reader.receive_data(b"STLS\r\n")
    assert reader.next_event() == Stls()
    assert not reader.buffered
    reader.receive_data(b"STLS\r\nUSER mallory\r\n")
    assert reader.next_event() == Stls()
    assert reader.buffered  # a command injected before the handshake


# -- CAPA -------------------------------------------------------------------------


def test_capa_by_state() -> None:
    authz = capabilities(State.AUTHORIZATION, stls=True)
    assert authz[:2] == ["USER", "SASL PLAIN"] and "STLS" in authz
    assert {"TOP", "UIDL", "PIPELINING", "RESP-CODES", "AUTH-RESP-CODE"} <= set(authz)
    assert authz[-1] == "IMPLEMENTATION peerd"
    assert "STLS" not in capabilities(State.AUTHORIZATION, stls=False)
    trans = capabilities(State.TRANSACTION, stls=True)
    assert "STLS" not in trans and "USER" not in trans and "SASL PLAIN" not in trans
    assert "UIDL" in trans and "TOP" in trans
    reply = capa_reply(State.AUTHORIZATION, stls=False)
    assert reply.startswith(b"+OK capability list follows\r\nUSER\r\nSASL PLAIN\r\n")
    assert reply.endswith(b"\r\nIMPLEMENTATION peerd\r\n.\r\n")


# -- the maildrop -----------------------------------------------------------------

UNIQUEID = "0123456789abcdef0123456789abcdef"


def maildrop() -> Maildrop:
    return Maildrop(UNIQUEID, [Entry(3, 120, "g3"), Entry(7, 200, "g7"), Entry(9, 5, "g9")])


def test_maildrop_numbers_listings_and_marks() -> None:
    # RFC 1939 section 5: numbered 1..n at login, DELE only marks, RSET unmarks.
    drop = maildrop()
    assert drop.greeting() == b"+OK 3 messages\r\n"
    assert drop.stat() == b"+OK 3 325\r\n"
    assert drop.scan_listing(None) == b"+OK\r\n1 120\r\n2 200\r\n3 5\r\n.\r\n"
    assert drop.scan_listing(2) == b"+OK 2 200\r\n"
    assert drop.unique_id_listing(3) == f"+OK 3 {UNIQUEID}.9\r\n".encode()
    assert drop.get(1) == Entry(3, 120, "g3")
    assert drop.dele(2) == b"+OK message 2 deleted\r\n"
    assert drop.dele(2) == b"-ERR no such message\r\n"  # already marked
    assert drop.get(2) is None
    assert drop.stat() == b"+OK 2 125\r\n"
    assert drop.scan_listing(None) == b"+OK\r\n1 120\r\n3 5\r\n.\r\n"  # numbers kept
    assert drop.scan_listing(2) == b"-ERR no such message\r\n"
    assert drop.unique_id_listing(None) == (
        f"+OK\r\n1 {UNIQUEID}.3\r\n3 {UNIQUEID}.9\r\n.\r\n".encode()
    )
    drop.dele(1)
    assert drop.marked() == [Entry(3, 120, "g3"), Entry(7, 200, "g7")]
    assert drop.rset() == b"+OK 3 messages\r\n"
    assert drop.marked() == [] and drop.stat() == b"+OK 3 325\r\n"
    for missing in (0, 4, 99):
        assert drop.get(missing) is None
        assert drop.dele(missing) == b"-ERR no such message\r\n"


def test_empty_maildrop_and_entry_checks() -> None:
    drop = Maildrop(UNIQUEID, [])
    assert drop.stat() == b"+OK 0 0\r\n"
    assert drop.scan_listing(None) == b"+OK\r\n.\r\n"
    assert drop.unique_id_listing(None) == b"+OK\r\n.\r\n"
    for bad in ((0, 1, "g"), (1, -1, "g"), (True, 1, "g")):
        with pytest.raises(ValueError):
            Entry(*bad)
