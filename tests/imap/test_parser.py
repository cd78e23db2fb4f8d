"""The command reader, bytes in and events out: framing, literals, limits, raw
lines, every command's grammar, and the state table."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.protocols.imap import acl, grammar, metadata, quota
from peerd.protocols.imap import commands as c
from peerd.protocols.imap import responses as r
from peerd.protocols.imap.fetchatt import BodySection, Item, SectionKind
from peerd.protocols.imap.parser import (
    CommandReader,
    ContinuationNeeded,
    Event,
    Line,
    ProtocolError,
    RoomNeeded,
    decode_sasl_response,
    plain_credentials,
)
from peerd.protocols.imap.searchkey import Flag, Header, Seq
from peerd.protocols.imap.sequence import STAR, SequenceSet
from peerd.protocols.imap.states import ALLOWED, State, allowed
from tests.example_counts import examples


def pull(reader: CommandReader, data: bytes = b"") -> list[Event]:
    reader.feed(data)
    out: list[Event] = []
    while (event := reader.next_event()) is not None:
        out.append(event)
    return out


def one(line: bytes) -> Event:
    events = pull(CommandReader(), line)
    assert len(events) == 1, events
    return events[0]


def error(line: bytes) -> ProtocolError:
    event = one(line)
    assert isinstance(event, ProtocolError), event
    return event


# -- framing and literals -------------------------------------------------------------


def test_nginx_login_with_synchronizing_literals() -> None:
    # nginx's mail proxy sends LOGIN with two synchronizing literals and waits
    # for "+" before each one.
    reader = CommandReader()
    first = pull(reader, b"a LOGIN {5}\r\n")
    assert first == [ContinuationNeeded(5)]
    assert first[0].reply() == b"+ Ready for literal data\r\n"  # type: ignore[union-attr]
    assert pull(reader, b"alice {8}\r\n") == [ContinuationNeeded(8)]
    assert pull(reader, b"password\r\n") == [c.Login("a", "alice", "password")]
    assert not reader.in_command


def test_literal_plus_needs_no_continuation() -> None:
    events = pull(CommandReader(), b"a LOGIN {5+}\r\nalice {8+}\r\npassword\r\n")
    assert events == [c.Login("a", "alice", "password")]


def test_literal_bytes_arrive_one_at_a_time() -> None:
    reader = CommandReader()
    assert pull(reader, b"a LOGIN {5}\r") == []
    assert pull(reader, b"\n") == [ContinuationNeeded(5)]
    for byte in b"alice":
        assert pull(reader, bytes([byte])) == []
    assert pull(reader, b' "pw"\r') == []
    assert pull(reader, b"\n") == [c.Login("a", "alice", "pw")]


def test_pipelined_commands_come_out_in_order() -> None:
    events = pull(CommandReader(), b"a NOOP\r\nb CAPABILITY\r\nc LOGOUT\r\n")
    assert events == [c.Noop("a"), c.Capability("b"), c.Logout("c")]


def test_bare_lf_and_empty_lines_are_tolerated() -> None:
    assert pull(CommandReader(), b"\r\n\na NOOP\n") == [c.Noop("a")]


def test_literal_may_hold_anything_but_is_counted_exactly() -> None:
    message = b"Subject: x\r\n\r\n{5}\r\na LOGOUT\r\n"
    data = b"A1 APPEND INBOX {%d+}\r\n%b\r\n" % (len(message), message)
    event = one(data)
    assert isinstance(event, c.Append) and event.messages[0].message == message


def test_synchronizing_literal_too_big_is_refused_before_its_data() -> None:
    reader = CommandReader(max_literal=100)
    [event] = pull(reader, b"a APPEND INBOX {101}\r\n")
    assert isinstance(event, ProtocolError) and not event.fatal
    assert (
        event.reply()
        == b"a NO [TOOBIG] literal too big: this server takes 100 octets per command\r\n"
    )
    # The client does not send the octets; the next command reads normally.
    assert pull(reader, b"b NOOP\r\n") == [c.Noop("b")]


def test_non_synchronizing_literal_too_big_is_discarded_then_refused() -> None:
    reader = CommandReader(max_literal=100)
    assert pull(reader, b"a APPEND INBOX {1000+}\r\n") == []
    for _ in range(10):
        assert pull(reader, b"x" * 100) == []
        assert len(reader._buf) == 0  # dropped as it arrives, never buffered
    [event] = pull(reader, b" {3+}\r\nabc\r\nb NOOP\r\n")[:1]
    assert isinstance(event, ProtocolError)
    assert event.reply().startswith(b"a BAD [TOOBIG] ")
    assert pull(reader) == [] and pull(reader, b"c NOOP\r\n") == [c.Noop("c")]


def test_the_literal_cap_counts_all_literals_of_a_command() -> None:
    reader = CommandReader(max_literal=10)
    assert pull(reader, b"a LOGIN {6}\r\n") == [ContinuationNeeded(6)]
    [event] = pull(reader, b"123456 {6}\r\n")
    assert isinstance(event, ProtocolError) and event.code == r.CODE_TOOBIG


def test_a_sync_literal_after_a_discarded_one_ends_the_command() -> None:
    reader = CommandReader(max_literal=4)
    [event] = pull(reader, b"a LOGIN {5+}\r\nalice {8}\r\n")
    assert isinstance(event, ProtocolError) and event.tag == "a"
    assert pull(reader, b"b NOOP\r\n") == [c.Noop("b")]


def test_literal_glued_to_an_atom_is_refused_before_its_data() -> None:
    reader = CommandReader()
    [event] = pull(reader, b"a LOGIN a{5}\r\n")
    assert isinstance(event, ProtocolError) and event.tag == "a" and "space" in event.text
    assert pull(reader, b"b NOOP\r\n") == [c.Noop("b")]


def test_a_literal_shorter_than_announced_is_named_in_the_error() -> None:
    # The client announced {10} but sent 5 octets and the next command: the
    # literal takes 10 octets, and what is left cannot follow a literal.
    reader = CommandReader()
    assert pull(reader, b"b APPEND INBOX {10}\r\n") == [ContinuationNeeded(10)]
    (event,) = pull(reader, b"helloc NOOP\r\n")
    assert isinstance(event, ProtocolError) and event.tag == "b" and not event.fatal
    assert event.reply() == (
        b"b BAD text follows a {10} literal without a space: were fewer than 10 octets sent?\r\n"
    )
    # The reader is in step again: the next command is read as one.
    assert pull(reader, b"d NOOP\r\n") == [c.Noop("d")]


def test_literal8_is_for_append_only() -> None:
    # RFC 3516 4.2 and 4.4: APPEND takes a literal8, which may hold NUL.
    reader = CommandReader()
    [more, event] = pull(reader, b"a APPEND INBOX ~{5}\r\nhe\x00lo\r\n")
    assert isinstance(more, ContinuationNeeded)
    assert isinstance(event, c.Append)
    assert event.messages[0].binary and event.messages[0].message == b"he\x00lo"
    [event] = pull(reader, b"b LOGIN ~{5+}\r\nalice secret\r\n")
    assert isinstance(event, ProtocolError) and "APPEND only" in event.text
    assert pull(reader, b"c NOOP\r\n") == [c.Noop("c")]


# -- room for literals (the server's input budget) ---------------------------------------


def test_with_ask_room_each_literal_is_announced_before_its_octets_are_taken() -> None:
    reader = CommandReader(ask_room=True)
    message = b"Subject: x\r\n\r\nbody\r\n"
    # Octets of the literal already here are not taken before the server said.
    reader.feed(b"a APPEND INBOX (\\Seen) {%d+}\r\n%b" % (len(message), message[:5]))
    assert reader.next_event() == RoomNeeded(len(message))
    assert bytes(reader._buf) == message[:5]
    # The server found room and asks again: the octets are taken.
    events = pull(reader, message[5:] + b" {3}\r\n")
    assert events == [ContinuationNeeded(3)]  # a synchronizing one asks through "+"
    [event] = pull(reader, b"abc\r\n")
    assert isinstance(event, c.Append) and [m.message for m in event.messages] == [message, b"abc"]
    # An empty literal needs no room; without ask_room nothing is asked.
    assert pull(CommandReader(ask_room=True), b"b LOGIN {0+}\r\n pw\r\n") == [
        c.Login("b", "", "pw")
    ]


def test_a_synchronizing_literal_without_room_is_answered_before_its_octets() -> None:
    reader = CommandReader(ask_room=True)
    assert pull(reader, b"a APPEND INBOX {5}\r\n") == [ContinuationNeeded(5)]
    refusal = reader.refuse("server busy", r.CODE_UNAVAILABLE)
    assert refusal is not None and refusal.reply() == b"a NO [UNAVAILABLE] server busy\r\n"
    assert not reader.in_command  # the client sends no octets: the next command follows
    assert pull(reader, b"b NOOP\r\n") == [c.Noop("b")]
    with pytest.raises(RuntimeError):
        reader.refuse("nothing announced")


def test_a_non_synchronizing_literal_without_room_is_dropped_then_refused() -> None:
    reader = CommandReader(ask_room=True)
    reader.feed(b"a APPEND INBOX {3+}\r\nabc {1000+}\r\n")
    assert reader.next_event() == RoomNeeded(3)
    assert reader.next_event() == RoomNeeded(1000)
    assert reader.refuse("server busy", r.CODE_UNAVAILABLE) is None
    assert reader._literals == []  # what the command held goes at once
    for _ in range(10):
        assert pull(reader, b"x" * 100) == []
        assert len(reader._buf) == 0  # dropped as it arrives
    # A later literal of the same command is dropped too, without asking.
    [event, after] = pull(reader, b" {4+}\r\nabcd\r\nb NOOP\r\n")
    assert isinstance(event, ProtocolError) and not event.fatal
    assert event.reply() == b"a NO [UNAVAILABLE] server busy\r\n"
    assert after == c.Noop("b")


def test_a_literal_grows_in_a_buffer_of_its_own_and_close_lets_go() -> None:
    reader = CommandReader(ask_room=True)
    reader.feed(b"a APPEND INBOX {300000+}\r\n")
    assert reader.next_event() == RoomNeeded(300000)
    for _ in range(29):
        assert pull(reader, b"y" * 10000) == []
        assert len(reader._buf) == 0  # the command text's buffer stays empty
    assert reader._literal.tell() == 290000
    reader.close()
    assert reader._literal.tell() == 0 and not reader.in_command
    assert pull(reader, b"b NOOP\r\n") == []  # closed


def test_overlong_line_is_fatal() -> None:
    reader = CommandReader(max_line=100)
    [event] = pull(reader, b"a NOOP " + b"x" * 200)
    assert isinstance(event, ProtocolError) and event.fatal
    assert event.reply().startswith(b"* BYE [TOOBIG] line too long")
    assert pull(reader, b"\r\nb NOOP\r\n") == []  # closed: the server hangs up


def test_overlong_line_across_literals_is_fatal() -> None:
    reader = CommandReader(max_line=40)
    # Each line is short; together they pass the cap.
    events = pull(reader, b"a LOGIN {3+}\r\nabc " + b"y" * 12 + b" {3+}\r\nabc")
    events += pull(reader, b" " + b"z" * 30 + b"\r\n")
    [event] = events
    assert isinstance(event, ProtocolError) and event.fatal and event.tag == "a"


def test_literal_size_beyond_32_bits_is_fatal() -> None:
    [event] = pull(CommandReader(), b"a APPEND INBOX {99999999999+}\r\n")
    assert isinstance(event, ProtocolError) and event.fatal


def test_idle_done_is_read_as_a_raw_line() -> None:
    reader = CommandReader()
    assert pull(reader, b"a IDLE\r\nDONE\r\nb NOOP\r\n")[:1] == [c.Idle("a")]
    # (the server stops pulling events once it sees IDLE; here the rest was
    # pipelined, so a fresh reader shows the intended use)
    reader = CommandReader()
    reader.feed(b"a IDLE\r\nDONE\r\nb NOOP\r\n")
    assert reader.next_event() == c.Idle("a")
    assert reader.next_line() == Line(b"DONE")
    assert reader.next_event() == c.Noop("b")
    assert reader.next_line() is None


def test_authenticate_continuations_are_raw_lines() -> None:
    reader = CommandReader()
    assert pull(reader, b"a AUTHENTICATE PLAIN\r\n") == [c.Authenticate("a", "PLAIN")]
    reader.feed(b"AGFsaWNlAHNlY3JldA==\r\n")
    line = reader.next_line()
    assert isinstance(line, Line)
    assert decode_sasl_response(line.data) == b"\x00alice\x00secret"
    assert decode_sasl_response(b"*") is None
    assert decode_sasl_response(b"") == b""
    with pytest.raises(r.CommandError):
        decode_sasl_response(b"not base64!")


def test_plain_credentials() -> None:
    # RFC 4616 2: [authzid] NUL authcid NUL passwd, UTF-8.
    assert plain_credentials(b"\x00alice\x00secret") == ("alice", "secret")
    assert plain_credentials(b"alice\x00alice\x00p w") == ("alice", "p w")
    assert plain_credentials("\x00jos\u00e9\x00caf\u00e9".encode()) == ("jos\u00e9", "caf\u00e9")
    for bad in (
        b"",
        b"alice",
        b"\x00alice\x00",
        b"\x00\x00pw",
        b"a\x00b\x00c\x00d",
        b"\x00\xff\x00p",
    ):
        with pytest.raises(r.CommandError, match="AUTHENTICATE PLAIN"):
            plain_credentials(bad)
    with pytest.raises(r.CommandError, match="another user"):
        plain_credentials(b"bob\x00alice\x00pw")


def test_buffered_bytes_before_starttls_are_visible() -> None:
    # RFC 3501 6.2.1: the server must not take bytes sent before the TLS
    # handshake as sent over TLS; it asks the reader whether any wait.
    reader = CommandReader()
    assert pull(reader, b"a STARTTLS\r\n") == [c.StartTLS("a")]
    assert not reader.buffered
    reader.feed(b"b STARTTLS\r\nc LOGIN mallory x\r\n")
    assert reader.next_event() == c.StartTLS("b")
    assert reader.buffered


def test_sasl_ir_initial_response() -> None:
    assert one(b"a AUTHENTICATE plain AGFsaWNlAHNlY3JldA==\r\n") == c.Authenticate(
        "a", "PLAIN", b"\x00alice\x00secret"
    )
    assert one(b"a AUTHENTICATE PLAIN =\r\n") == c.Authenticate("a", "PLAIN", b"")


def test_next_line_inside_a_command_is_a_programming_error() -> None:
    reader = CommandReader()
    pull(reader, b"a LOGIN {5}\r\n")
    with pytest.raises(RuntimeError):
        reader.next_line()


def test_raw_line_is_capped() -> None:
    reader = CommandReader(max_line=10)
    reader.feed(b"x" * 20)
    event = reader.next_line()
    assert isinstance(event, ProtocolError) and event.fatal


# -- errors -------------------------------------------------------------------------


def test_unknown_command_is_bad_with_its_tag() -> None:
    assert error(b"a17 FROB x\r\n").reply() == b"a17 BAD unknown command FROB\r\n"
    assert error(b"a17 UID FROB 1\r\n").tag == "a17"


@pytest.mark.parametrize("line", [b"* NOOP\r\n", b"+ NOOP\r\n", b'"a" NOOP\r\n', b"a{ NOOP\r\n"])
def test_bad_tag_is_an_untagged_bad(line: bytes) -> None:
    event = error(line)
    assert event.tag is None and event.reply().startswith(b"* BAD ")


@pytest.mark.parametrize(
    "line",
    [
        b"a LOGIN\r\n",
        b"a LOGIN one two three\r\n",
        b"a NOOP extra\r\n",
        b'a LOGIN "unterminated\r\n',
        b'a LOGIN "bad\\escape" x\r\n',
        b'a LOGIN "a""b"\r\n',
        b"a SELECT (INBOX\r\n",
        b"a SELECT INBOX)\r\n",
        b"a LOGIN us\x00er pw\r\n",
        b"a LOGIN us\xffer pw\r\n",
        b"a FETCH 0 FLAGS\r\n",
        b"a FETCH 1:x FLAGS\r\n",
        b"a STORE 1 FLAGS (\\Recent)\r\n",
        b"a STORE 1 XFLAGS (\\Seen)\r\n",
        b"a FETCH 1 FLAGS (VANISHED)\r\n",
        b"a UID FETCH 1 FLAGS (VANISHED)\r\n",
        b"a STATUS INBOX (BOGUS)\r\n",
        b"a STATUS INBOX ()\r\n",
        b"a SELECT CAF\xc3\xa9\r\n",
        b'a APPEND INBOX "bad date" {1+}\r\nx\r\n',
        b'a APPEND INBOX {1+}\r\nx "not a literal"\r\n',
        b"a APPEND INBOX {1+}\r\nx (\\Seen)\r\n",
        b'a LIST (BOGUS) "" *\r\n',
        b'a LIST (RECURSIVEMATCH) "" *\r\n',
        b"a ENABLE\r\n",
        b'a ID ("odd")\r\n',
        b"a SEARCH\r\n",
        b"a SEARCH RETURN (BOGUS) ALL\r\n",
        b"a " + b"(" * 40 + b"\r\n",
    ],
)
def test_malformed_commands_are_bad(line: bytes) -> None:
    event = error(line)
    assert event.status == "BAD" and event.tag == "a" and not event.fatal


@pytest.mark.parametrize(
    "line", [b"a SELECT &Jjo\r\n", b"a CREATE &AGE-\r\n", b"a STATUS &Jjo!- (MESSAGES)\r\n"]
)
def test_name_not_modified_utf7_is_no(line: bytes) -> None:
    # A valid astring naming no mailbox: well formed, so NO (RFC 3501 7.1.2).
    event = error(line)
    assert event.status == "NO" and event.tag == "a" and not event.fatal


def test_badcharset_is_no_with_the_supported_list() -> None:
    event = error(b"a SEARCH CHARSET KOI8-R TEXT x\r\n")
    assert (
        event.reply() == b"a NO [BADCHARSET (UTF-8 US-ASCII)] charset 'KOI8-R' is not supported\r\n"
    )


def test_password_is_not_in_the_repr() -> None:
    login = one(b"a LOGIN alice s3cret\r\n")
    assert "s3cret" not in repr(login)


# -- grammar: one line per command ------------------------------------------------------

_ALL = SequenceSet(((1, STAR),))
_CASES: list[tuple[bytes, c.Command]] = [
    (b"a CAPABILITY", c.Capability("a")),
    (b"a noop", c.Noop("a")),
    (b"a STARTTLS", c.StartTLS("a")),
    (b"a NAMESPACE", c.Namespace("a")),
    (b'a LOGIN "a\\"b" "c\\\\d"', c.Login("a", 'a"b', "c\\d")),
    (b"a ENABLE condstore QRESYNC", c.Enable("a", ("CONDSTORE", "QRESYNC"))),
    (b"a ID NIL", c.Id("a", None)),
    (b'a ID ("name" "mutt" "os" NIL)', c.Id("a", (("name", "mutt"), ("os", None)))),
    (b"a SELECT inbox", c.Select("a", "INBOX")),
    (b"a EXAMINE Archive (CONDSTORE)", c.Examine("a", "Archive", condstore=True)),
    (
        b"a SELECT INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541))",
        c.Select(
            "a",
            "INBOX",
            qresync=c.QResync(67890007, 90060115194045000, SequenceSet(((41, 211), (214, 541)))),
        ),
    ),
    (b"a CREATE ~peter/mail/&U,BTFw-/&ZeVnLIqe-", c.Create("a", "~peter/mail/台北/日本語")),
    (b"a CREATE Trash (USE (\\Trash))", c.Create("a", "Trash", ("\\Trash",))),
    (b"a DELETE {3+}\r\nfoo", c.Delete("a", "foo")),
    (b"a RENAME old new", c.Rename("a", "old", "new")),
    (b"a SUBSCRIBE Foo&-Bar", c.Subscribe("a", "Foo&Bar")),
    (b"a UNSUBSCRIBE Foo", c.Unsubscribe("a", "Foo")),
    (b'a LIST "" %', c.List("a", "", ("%",))),
    (b'a LIST "" ""', c.List("a", "", ("",))),
    (
        b'a LIST (SPECIAL-USE) "" * RETURN (SUBSCRIBED)',
        c.List("a", "", ("*",), ("SPECIAL-USE",), ("SUBSCRIBED",)),
    ),
    (b'a LSUB "" *', c.Lsub("a", "", "*")),
    (b"a STATUS INBOX (messages UIDNEXT)", c.Status("a", "INBOX", ("MESSAGES", "UIDNEXT"))),
    (b"a CHECK", c.Check("a")),
    (b"a CLOSE", c.Close("a")),
    (b"a UNSELECT", c.Unselect("a")),
    (b"a EXPUNGE", c.Expunge("a")),
    (b"a UID EXPUNGE 3:5", c.UidExpunge("a", SequenceSet(((3, 5),)))),
    (b"a IDLE", c.Idle("a")),
    (b"a SEARCH UNSEEN", c.Search("a", Flag("\\Seen", False))),
    (
        b"a UID SEARCH RETURN (MIN COUNT) CHARSET utf-8 1:* SUBJECT {5+}\r\nCAF\xc3\xa9",
        c.Search(
            "a",
            # the AST is searchkey's business; here only the envelope
            c.Search("x", Seq(_ALL)).key,
            True,
            "UTF-8",
            ("MIN", "COUNT"),
        ),
    ),
    (b"a FETCH 1:* FLAGS", c.Fetch("a", _ALL, (Item.FLAGS,))),
    (
        b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)",
        c.Fetch("a", _ALL, (Item.FLAGS, Item.UID, Item.MODSEQ), True, 12345, True),
    ),
    (
        b"a FETCH 2 (BODY.PEEK[HEADER.FIELDS (DATE FROM)] BODY[]<0.1024>)",
        c.Fetch(
            "a",
            SequenceSet(((2, 2),)),
            (
                BodySection((), SectionKind.HEADER_FIELDS, ("DATE", "FROM"), peek=True),
                BodySection(partial=(0, 1024)),
            ),
        ),
    ),
    (
        b"a STORE 1:3 +FLAGS.SILENT (\\seen $Junk)",
        c.Store("a", SequenceSet(((1, 3),)), "+", ("\\Seen", "$Junk"), silent=True),
    ),
    (b"a STORE 1 FLAGS \\Flagged", c.Store("a", SequenceSet(((1, 1),)), "", ("\\Flagged",))),
    (b"a STORE 1 -FLAGS ()", c.Store("a", SequenceSet(((1, 1),)), "-", ())),
    (
        b"a UID STORE 7 (UNCHANGEDSINCE 320162338) +FLAGS (\\Deleted)",
        c.Store(
            "a", SequenceSet(((7, 7),)), "+", ("\\Deleted",), uid=True, unchangedsince=320162338
        ),
    ),
    (b"a COPY 2:4 Archive", c.Copy("a", SequenceSet(((2, 4),)), "Archive")),
    (b"a UID MOVE $ Trash", c.Move("a", SequenceSet((), saved=True), "Trash", uid=True)),
    (b"a LOGOUT", c.Logout("a")),
]


@pytest.mark.parametrize(
    ("line", "expected"), _CASES, ids=[case[0][:40].decode("ascii", "replace") for case in _CASES]
)
def test_each_command_parses(line: bytes, expected: c.Command) -> None:
    event = one(line + b"\r\n")
    if isinstance(expected, c.Search):
        # the criteria are covered in test_searchkey.py
        assert isinstance(event, c.Search)
        assert (event.tag, event.uid, event.charset, event.return_options) == (
            expected.tag,
            expected.uid,
            expected.charset,
            expected.return_options,
        )
        return
    assert event == expected


def test_search_criteria_reach_the_command() -> None:
    event = one(b"a SEARCH CHARSET UTF-8 SUBJECT {5+}\r\nCAF\xc3\xa9\r\n")
    assert isinstance(event, c.Search) and event.key == Header("SUBJECT", "CAFé")


def test_append_with_flags_and_date() -> None:
    event = one(b'a APPEND Sent (\\Seen) " 7-Feb-1994 21:52:25 -0800" {5+}\r\nhello\r\n')
    assert event == c.Append(
        "a",
        "Sent",
        (
            c.AppendMessage(
                ("\\Seen",),
                dt.datetime(1994, 2, 7, 21, 52, 25, tzinfo=dt.timezone(-dt.timedelta(hours=8))),
                b"hello",
            ),
        ),
    )


def test_literal_inside_a_list() -> None:
    event = one(b"a STATUS {5+}\r\nINBOX (MESSAGES)\r\n")
    assert event == c.Status("a", "INBOX", ("MESSAGES",))


# -- state table ----------------------------------------------------------------------


def test_state_table() -> None:
    login = c.Login("a", "u", "p")
    fetch = c.Fetch("a", _ALL, (Item.FLAGS,))
    assert allowed(State.NOT_AUTHENTICATED, login)
    assert not allowed(State.AUTHENTICATED, login)
    assert not allowed(State.AUTHENTICATED, fetch)
    assert allowed(State.SELECTED, fetch)
    assert allowed(State.AUTHENTICATED, c.Enable("a", ("CONDSTORE",)))
    assert not allowed(State.SELECTED, c.Enable("a", ("CONDSTORE",)))
    assert allowed(State.SELECTED, c.Idle("a")) and allowed(State.AUTHENTICATED, c.Idle("a"))
    assert not allowed(State.NOT_AUTHENTICATED, c.Select("a", "INBOX"))
    assert not any(allowed(State.LOGOUT, cmd) for cmd in (c.Noop("a"), c.Logout("a")))
    for state in (State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED):
        assert {c.Capability, c.Noop, c.Logout, c.Id} <= ALLOWED[state]


def test_every_command_class_is_allowed_somewhere() -> None:
    classes = {
        cls for cls in vars(c).values() if isinstance(cls, type) and issubclass(cls, c.Command)
    }
    classes -= {c.Command}
    classes = {cls for cls in classes if not cls.__name__.startswith("_")}
    # The extensions that keep their commands in their own modules.
    classes |= acl.COMMANDS | quota.COMMANDS | metadata.COMMANDS
    reachable = set().union(*ALLOWED.values())
    assert classes == reachable


# -- properties -----------------------------------------------------------------------

_SAMPLE = (
    b"a LOGIN {5}\r\nalice {8}\r\npassword\r\n"
    b"b SELECT INBOX (CONDSTORE)\r\n"
    b"c UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)]<0.10>) (CHANGEDSINCE 7)\r\n"
    b"d APPEND INBOX (\\Seen) {12+}\r\nhello\r\nworld\r\n"
    b"e SEARCH OR FROM x (NOT SEEN) SUBJECT {3}\r\nfoo\r\n"
    b"f BOGUS\r\n"
    b"g STORE 1 +FLAGS (\\Flagged)\r\n"
    b"h LOGOUT\r\n"
)


@given(st.lists(st.integers(min_value=0, max_value=len(_SAMPLE)), max_size=20))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    expected = pull(CommandReader(), _SAMPLE)
    assert len(expected) == 11
    reader = CommandReader()
    got: list[Event] = []
    bounds = [0, *sorted(cuts), len(_SAMPLE)]
    for lo, hi in itertools.pairwise(bounds):
        got += pull(reader, _SAMPLE[lo:hi])
    assert got == expected


_NOISE = st.lists(
    st.one_of(
        st.binary(max_size=30),
        st.sampled_from(
            [
                b"a ",
                b"UID ",
                b"FETCH ",
                b"SEARCH ",
                b"LOGIN ",
                b"APPEND ",
                b"STORE ",
                b"LIST ",
                b"SELECT ",
                b"(",
                b")",
                b"[",
                b"]",
                b'"',
                b"\\",
                b"{3}\r\n",
                b"{2+}\r\n",
                b"~{1}\r\n",
                b"\r\n",
                b"\n",
                b" ",
                b"BODY[",
                b"*",
                b":",
                b"NIL",
                b"\x00",
                b"&",
                b"<0.1>",
                b"\xff",
                b"\xc3\x28",
                b"BODY[ \xff]",
                b"a NOOP ",
                b"a FETCH 1 ",
                b"99999999999999999999",
            ]
        ),
    ),
    max_size=40,
)


@settings(max_examples=examples(300))
@given(_NOISE, st.booleans())
def test_garbage_only_ever_yields_events(chunks: list[bytes], raw_lines: bool) -> None:
    reader = CommandReader(max_line=200, max_literal=50)
    for chunk in chunks:
        reader.feed(chunk)
        while True:
            if raw_lines and not reader.in_command:
                event: object = reader.next_line()
            else:
                event = reader.next_event()
            if event is None:
                break
            assert isinstance(event, (c.Command, ContinuationNeeded, ProtocolError, Line))
            if isinstance(event, ProtocolError):
                assert event.reply().endswith(b"\r\n")


@given(st.lists(st.integers(min_value=0, max_value=len(_SAMPLE)), max_size=20))
def test_asking_for_room_changes_no_command(cuts: list[int]) -> None:
    expected = pull(CommandReader(), _SAMPLE)
    reader = CommandReader(ask_room=True)
    got: list[Event] = []
    bounds = [0, *sorted(cuts), len(_SAMPLE)]
    for lo, hi in itertools.pairwise(bounds):
        got += pull(reader, _SAMPLE[lo:hi])
    assert [e for e in got if not isinstance(e, RoomNeeded)] == expected


@given(_NOISE, st.lists(st.booleans(), max_size=20))
def test_garbage_with_literals_refused_only_ever_yields_events(
    chunks: list[bytes], refusals: list[bool]
) -> None:
    reader = CommandReader(max_line=200, max_literal=50, ask_room=True)
    answers = iter(refusals)
    for chunk in chunks:
        reader.feed(chunk)
        while (event := reader.next_event()) is not None:
            assert isinstance(event, (c.Command, ContinuationNeeded, RoomNeeded, ProtocolError))
            if isinstance(event, (ContinuationNeeded, RoomNeeded)) and next(answers, False):
                refusal = reader.refuse("no room", r.CODE_UNAVAILABLE)
                # Only a synchronizing literal's command is answered at once.
                assert (refusal is None) == isinstance(event, RoomNeeded)
                if refusal is not None:
                    assert refusal.reply().endswith(b"NO [UNAVAILABLE] no room\r\n")
                    assert not reader.in_command
            if isinstance(event, ProtocolError):
                assert event.reply().endswith(b"\r\n")


_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=60)


@given(_TEXT, _TEXT)
def test_strings_round_trip_through_the_serializer(user: str, password: str) -> None:
    # The serializer picks quoted or literal; the reader must read either back.
    data = b"a LOGIN " + r.string(user) + b" " + r.string(password) + b"\r\n"
    events = pull(CommandReader(), data)
    assert events[-1] == c.Login("a", user, password)
    assert all(isinstance(event, ContinuationNeeded) for event in events[:-1])


_NAMES = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc"]), min_size=1, max_size=30
).filter(lambda name: name.upper() != "INBOX")


@given(_NAMES)
def test_mailbox_names_round_trip(name: str) -> None:
    events = pull(CommandReader(), b"a CREATE " + r.mailbox(name) + b"\r\n")
    # RFC 3501 6.3.3: CREATE drops one trailing separator.
    created = name[:-1] if len(name) > 1 and name.endswith("/") else name
    assert events[-1] == c.Create("a", created)
    events = pull(CommandReader(), b"a SELECT " + r.mailbox(name) + b"\r\n")
    assert events[-1] == c.Select("a", name)


_ARG = st.one_of(
    st.binary(max_size=12),
    st.sampled_from(
        [
            b"BODY[",
            b"BODY.PEEK[",
            b"]",
            b"(",
            b")",
            b"\xff",
            b"\xc3\x28",
            b"1:*",
            b"*",
            b'"',
            b'"\xff"',
            b"NIL",
            b"{2+}\r\nab",
            b"99999999999999999999999",
            b"HEADER.FIELDS (",
            b"<0.>",
        ]
    ),
)


@settings(max_examples=examples(500))
@given(
    st.sampled_from(sorted(set(grammar._PLAIN) | {"UID " + n for n in grammar._UID})),
    st.lists(_ARG, max_size=8),
)
def test_any_arguments_to_any_command_only_ever_yield_events(name: str, args: list[bytes]) -> None:
    """Each command the grammar knows, with arguments made of anything: an
    event, never an exception (issue 9: ``a NOOP BODY[ \\xff]`` raised)."""
    line = b"a " + name.encode() + b" " + b" ".join(args) + b"\r\n"
    reader = CommandReader(max_line=4096, max_literal=1024)
    reader.feed(line)
    while (event := reader.next_event()) is not None:
        assert isinstance(event, (c.Command, ContinuationNeeded, ProtocolError))
