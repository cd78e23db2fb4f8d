"""Pure-bytes tests of the LMTP core (peerd.protocols.lmtp): every command, pipelining,
STARTTLS discarding plaintext, the limits, one reply per recipient, the state
tables, and Hypothesis feeding it arbitrary bytes."""

from __future__ import annotations

import dataclasses
import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.protocols.lmtp import (
    ALLOWED,
    NEED_DATA,
    NEXT,
    REFUSALS,
    REPLY_LINE,
    Closing,
    ConnectionClosed,
    Data,
    Event,
    Help,
    Invalid,
    Lhlo,
    LmtpConnection,
    Mail,
    MessageReceived,
    NeedData,
    Noop,
    Quit,
    Rcpt,
    RcptRequested,
    Rset,
    Settings,
    StartTls,
    StartTlsRequested,
    State,
    Step,
    Vrfy,
    advance,
    parse_command,
)
from tests.example_counts import examples

SETTINGS = Settings("mx.test", max_message_size=1000, max_recipients=3, max_line=512, starttls=True)
OK = "250 2.1.5 Delivered"


def codes(data: bytes) -> list[str]:
    """The reply code of each final reply line in ``data`` (``250-`` lines skipped)."""
    return [line[:3].decode() for line in data.split(b"\r\n") if line[3:4] == b" "]


def well_formed(data: bytes) -> bool:
    lines = data.split(b"\r\n")
    return lines[-1] == b"" and all(REPLY_LINE.fullmatch(line + b"\r\n") for line in lines[:-1])


def connect(**changes: object) -> LmtpConnection:
    conn = LmtpConnection(dataclasses.replace(SETTINGS, **changes))  # type: ignore[arg-type]
    assert conn.data_to_send() == b"220 mx.test peerd LMTP\r\n"
    return conn


def feed(conn: LmtpConnection, data: bytes) -> Event | NeedData:
    conn.receive_data(data)
    return conn.next_event()


def said(conn: LmtpConnection, data: bytes) -> bytes:
    """Feed ``data``, which must need no answer from the server; what came out."""
    assert feed(conn, data) is NEED_DATA
    return conn.data_to_send()


def ready(**changes: object) -> LmtpConnection:
    conn = connect(**changes)
    assert codes(said(conn, b"LHLO client.test\r\n")) == ["250"]
    return conn


def transaction(conn: LmtpConnection, *recipients: str) -> None:
    """MAIL and the RCPTs, each accepted."""
    assert said(conn, b"MAIL FROM:<s@example.test>\r\n") == b"250 2.1.0 Sender OK\r\n"
    for address in recipients:
        event = feed(conn, f"RCPT TO:<{address}>\r\n".encode())
        assert event == RcptRequested(address)
        conn.answer_rcpt("250 2.1.5 Recipient OK")
        assert conn.next_event() is NEED_DATA
        assert codes(conn.data_to_send()) == ["250"]


# -- greeting, LHLO and the simple commands ------------------------------------------


def test_lhlo_lists_the_extensions_with_starttls_only_when_offered() -> None:
    conn = connect()
    assert said(conn, b"LHLO client.test\r\n") == (
        b"250-mx.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n"
        b"250-SMTPUTF8\r\n250-STARTTLS\r\n250 SIZE 1000\r\n"
    )
    assert b"STARTTLS" not in said(connect(starttls=False), b"LHLO x\r\n")
    assert codes(said(conn, b"LHLO\r\n")) == ["501"]


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"HELO client.test", "500 5.5.1"),  # RFC 2033 4.1
        (b"EHLO client.test", "500 5.5.1"),
        (b"NOOP", "250 2.0.0"),
        (b"noop anything at all", "250 2.0.0"),
        (b"RSET", "250 2.0.0"),
        (b"RSET now", "501 5.5.4"),
        (b"VRFY postmaster", "252 2.5.0"),  # RFC 5321 3.5.3: never a 250
        (b"VRFY", "501 5.5.4"),
        (b"EXPN list", "502 5.5.1"),
        (b"HELP", "214 2.0.0"),
        (b"HELP MAIL", "214 2.0.0"),
        (b"DATA", "503 5.5.1"),
        (b"RCPT TO:<a@example.test>", "503 5.5.1"),
        (b"TURN", "500 5.5.1"),
    ],
)
def test_each_simple_command_is_answered(line: bytes, reply: str) -> None:
    out = said(ready(), line + b"\r\n")
    assert out.startswith(reply.encode() + b" "), out
    assert out.count(b"\r\n") == 1 and well_formed(out)


def test_commands_before_lhlo_are_refused_but_the_anytime_ones_run() -> None:
    conn = connect()
    assert codes(said(conn, b"MAIL FROM:<s@example.test>\r\n")) == ["503"]
    assert codes(said(conn, b"STARTTLS\r\n")) == ["503"]
    assert codes(said(conn, b"NOOP\r\nRSET\r\nVRFY x\r\n")) == ["250", "250", "252"]


def test_quit_says_221_and_closes() -> None:
    conn = ready()
    assert feed(conn, b"QUIT\r\nNOOP\r\n") == Closing("quit")
    assert conn.data_to_send() == b"221 2.0.0 Bye\r\n"
    assert conn.next_event() == ConnectionClosed()
    conn.receive_data(b"NOOP\r\n")  # ignored: the session is over
    assert conn.next_event() == ConnectionClosed() and conn.data_to_send() == b""


# -- MAIL and RCPT ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"MAIL FROM:<a@b.example>", Mail("a@b.example")),
        (b"mail from: <a@b.example>", Mail("a@b.example")),
        (b"MAIL FROM:<>", Mail("")),  # bounces (RFC 5321 4.5.5)
        (b"MAIL FROM:<> SIZE=100 BODY=8BITMIME", Mail("", 100, eight_bit=True)),
        (b"MAIL FROM:<a@b> BODY=7bit SMTPUTF8", Mail("a@b", utf8=True)),
        (b"MAIL FROM:<@route.example:a@b>", Mail("a@b")),
        (b'MAIL FROM:<"x y"@b>', Mail('"x y"@b')),
        (b"MAIL FROM:<a@[192.0.2.1]>", Mail("a@[192.0.2.1]")),
        ("MAIL FROM:<jösé@bücher.example>".encode(), Mail("jösé@bücher.example")),
        (b"MAIL FROM:a@b", Mail("a@b")),
        (b"MAIL FROM:<a@b> SIZE=x", Invalid("501 5.5.4 SIZE takes a number")),
        (b"MAIL FROM:<a@b> BODY=BINARYMIME", Invalid("501 5.5.4 BODY must be 7BIT or 8BITMIME")),
        (
            b"MAIL FROM:<a@b> SMTPUTF8=yes",
            Invalid("501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"),
        ),
        (
            b"MAIL FROM:<a@b> AUTH=<>",
            Invalid("555 5.5.4 MAIL FROM parameters not recognized or not implemented"),
        ),
        (
            b"MAIL FROM:<a@b> SIZE=1 SIZE=2",
            Invalid("501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"),
        ),
        (b"MAIL FROM:<a@b>junk", Invalid("501 5.5.4 Syntax: MAIL FROM:<address> [parameters]")),
        (b"MAIL FROM:<a@>", Invalid("501 5.1.7 Bad sender address syntax")),
        (b"MAIL FROM:<a..b@c>", Invalid("501 5.1.7 Bad sender address syntax")),
        (b"MAIL TO:<a@b>", Invalid("501 5.5.4 Syntax: MAIL FROM:<address> [parameters]")),
        (b"RCPT TO:<Postmaster>", Rcpt("Postmaster")),  # RFC 5321 4.5.1
        (b"RCPT TO:<a+x@b.example>", Rcpt("a+x@b.example")),
        (
            b"RCPT TO:<a@b> NOTIFY=NEVER",
            Invalid("555 5.5.4 RCPT TO parameters not recognized or not implemented"),
        ),
        (b"RCPT TO:<>", Invalid("501 5.1.3 Bad recipient address syntax")),
        (b"RCPT TO:", Invalid("501 5.1.3 Bad recipient address syntax")),
        (b"MAIL FROM:<a\xff@b>", Invalid("500 5.5.2 Syntax error", bad=True)),
        (b"MAIL FROM:<a\x00@b>", Invalid("500 5.5.2 Syntax error", bad=True)),
        (b"LHLO x", Lhlo("x")),
        (b"DATA", Data()),
        (b"RSET", Rset()),
        (b"NOOP x", Noop()),
        (b"QUIT", Quit()),
        (b"VRFY x", Vrfy()),
        (b"HELP", Help()),
        (b"STARTTLS", StartTls()),
        (b"", Invalid("500 5.5.2 Syntax error", bad=True)),
        (b"\xc3\xa9", Invalid("500 5.5.2 Syntax error", bad=True)),
    ],
)
def test_command_lines_parse(line: bytes, expected: object) -> None:
    assert parse_command(line) == expected


def test_a_declared_size_over_the_limit_is_refused_at_mail() -> None:
    conn = ready()
    # RFC 1870 6.1: 552 at MAIL, and the transaction did not start.
    assert said(conn, b"MAIL FROM:<a@b> SIZE=1001\r\n").startswith(b"552 5.3.4 ")
    assert codes(said(conn, b"MAIL FROM:<a@b> SIZE=1000\r\n")) == ["250"]


def test_nested_mail_and_rcpt_without_mail_get_503() -> None:
    conn = ready()
    assert codes(said(conn, b"RCPT TO:<r@b>\r\n")) == ["503"]
    transaction(conn)
    assert codes(said(conn, b"MAIL FROM:<again@b>\r\n")) == ["503"]


def test_a_refused_recipient_is_not_kept_and_data_needs_an_accepted_one() -> None:
    conn = ready()
    transaction(conn)
    assert feed(conn, b"RCPT TO:<nobody@b>\r\n") == RcptRequested("nobody@b")
    with pytest.raises(RuntimeError):
        conn.next_event()  # the RCPT is not answered yet
    conn.answer_rcpt("550 5.1.1 No such user")
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"550 5.1.1 No such user\r\n"
    # RFC 2033 4.2: no successful RCPT, so DATA fails with 503.
    assert said(conn, b"DATA\r\n") == b"503 5.5.1 No valid recipients\r\n"
    assert conn.recipients == []


def test_more_recipients_than_the_limit_get_452_without_asking_the_server() -> None:
    conn = ready()
    transaction(conn, "a@b", "c@b", "d@b")
    # RFC 5321 4.5.3.1.10: 452, and no event: the server is not asked.
    assert said(conn, b"RCPT TO:<e@b>\r\n") == b"452 4.5.3 Too many recipients\r\n"
    assert conn.recipients == ["a@b", "c@b", "d@b"]


def test_answers_are_checked() -> None:
    conn = ready()
    transaction(conn)
    feed(conn, b"RCPT TO:<a@b>\r\n")
    for bad in ("354 go on", "250-more", "OK", "25"):
        with pytest.raises(ValueError):
            conn.answer_rcpt(bad)
    conn.answer_rcpt("250 2.1.5 ok\r\n550 injected")  # CR/LF in the text become "?"
    assert conn.next_event() is NEED_DATA
    out = conn.data_to_send()
    assert out == b"250 2.1.5 ok??550 injected\r\n" and well_formed(out)
    with pytest.raises(RuntimeError):
        conn.answer_rcpt("250 2.1.5 again")  # nothing asked


# -- DATA: one reply per recipient, unstuffing, limits --------------------------------


def test_one_reply_per_recipient_in_rcpt_order() -> None:
    conn = ready()
    transaction(conn, "a@b", "c@b", "d@b")
    assert said(conn, b"DATA\r\n") == b"354 End data with <CR><LF>.<CR><LF>\r\n"
    event = feed(conn, b"Subject: hi\r\n\r\nbody\r\n.\r\n")
    assert event == MessageReceived(
        "s@example.test", ("a@b", "c@b", "d@b"), b"Subject: hi\r\n\r\nbody\r\n"
    )
    with pytest.raises(ValueError):
        conn.answer_message([OK, OK])  # RFC 2033 4.2: one per recipient
    conn.answer_message([OK, "552 5.2.2 Mailbox is over quota", "451 4.3.0 Try later"])
    assert conn.next_event() is NEED_DATA
    assert codes(conn.data_to_send()) == ["250", "552", "451"]
    # The transaction is over; the session goes on.
    assert conn.state is State.READY and conn.recipients == []
    assert codes(said(conn, b"MAIL FROM:<s@b>\r\n")) == ["250"]


def message(conn: LmtpConnection, chunks: list[bytes]) -> MessageReceived:
    transaction(conn, "a@b")
    assert codes(said(conn, b"DATA\r\n")) == ["354"]
    for chunk in chunks[:-1]:
        assert feed(conn, chunk) is NEED_DATA
    event = feed(conn, chunks[-1])
    assert isinstance(event, MessageReceived)
    return event


@pytest.mark.parametrize(
    ("wire", "data"),
    [
        (b".\r\n", b""),  # an empty message: the terminator right away
        (b"..\r\n.\r\n", b".\r\n"),  # RFC 5321 4.5.2 at the very start
        (b"a\r\n..b\r\n...\r\n.\r\n", b"a\r\n.b\r\n..\r\n"),
        (b"a\r\n.b\r\n.\r\n", b"a\r\n.b\r\n"),  # a lone dot not doubled stays
        (b"bare\nlf\r\n.\r\n", b"bare\r\nlf\r\n"),  # bare LF becomes CRLF
        (b"8bit \xe9\xff\r\n.\r\n", b"8bit \xe9\xff\r\n"),
        # LF.LF ends nothing (SMTP smuggling); the message goes on to CRLF.CRLF.
        (b"not\n.\nthe end\r\n.\r\n", b"not\r\n.\r\nthe end\r\n"),
    ],
)
def test_the_message_is_unstuffed_and_bare_lfs_become_crlf(wire: bytes, data: bytes) -> None:
    assert message(ready(), [wire]).data == data


def test_the_terminator_is_found_across_reads_byte_by_byte() -> None:
    wire = b"Subject: x\r\n\r\n..dot\r\nend\r\n.\r\n"
    event = message(ready(), [wire[i : i + 1] for i in range(len(wire))])
    assert event.data == b"Subject: x\r\n\r\n.dot\r\nend\r\n"


def test_a_message_with_nul_gets_554_per_recipient() -> None:
    conn = ready()
    transaction(conn, "a@b", "c@b")
    said(conn, b"DATA\r\n")
    assert said(conn, b"a\0b\r\n.\r\n") == (b"554 5.6.0 Message contains NUL characters\r\n" * 2)
    assert conn.state is State.READY


def test_a_message_over_the_limit_gets_552_per_recipient_and_is_not_kept() -> None:
    conn = ready()
    transaction(conn, "a@b", "c@b")
    said(conn, b"DATA\r\n")
    for _ in range(50):
        assert feed(conn, b"x" * 998 + b"\r\n") is NEED_DATA
        assert conn.buffered <= SETTINGS.max_message_size + 64 + 1000
    assert said(conn, b".\r\n") == b"552 5.3.4 Message too big for system\r\n" * 2
    # Exactly the limit fits.
    event = message(conn, [b"y" * 998 + b"\r\n.\r\n"])
    assert len(event.data) == SETTINGS.max_message_size


def test_a_message_the_server_has_no_room_for_is_read_to_its_end_and_refused() -> None:
    conn = ready()
    transaction(conn, "a@b", "c@b")
    said(conn, b"DATA\r\n")
    assert feed(conn, b"Subject: x\r\n\r\nhalf") is NEED_DATA
    with pytest.raises(ValueError):
        conn.refuse_data("not a reply")
    storage = "452 4.3.1 Insufficient system storage"
    conn.refuse_data(storage)
    assert conn.refusing and conn.buffered <= 4  # what came of it is dropped at once
    for _ in range(20):
        assert feed(conn, b"x" * 998 + b"\r\n") is NEED_DATA
        assert conn.buffered <= 4 + 1000
    assert said(conn, b".\r\n") == (storage + "\r\n").encode() * 2
    # The next message is kept again.
    event = message(conn, [b"short\r\n.\r\n"])
    assert event.data == b"short\r\n" and not conn.refusing
    with pytest.raises(RuntimeError):
        conn.refuse_data(storage)  # not in DATA


def test_the_size_mail_declares_is_kept_for_the_transaction() -> None:
    # RFC 1870: the server may use it to find room for the message first.
    conn = ready()
    assert said(conn, b"MAIL FROM:<a@b> SIZE=900\r\n").startswith(b"250")
    assert conn.declared_size == 900
    assert said(conn, b"RSET\r\n").startswith(b"250")
    assert conn.declared_size is None
    transaction(conn, "a@b")
    assert conn.declared_size is None


def test_eof_in_the_middle_of_a_message_delivers_nothing() -> None:
    conn = ready()
    transaction(conn, "a@b")
    said(conn, b"DATA\r\n")
    assert feed(conn, b"half a mess") is NEED_DATA
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    with pytest.raises(RuntimeError):
        conn.receive_data(b"more")


# -- pipelining (RFC 2920) ------------------------------------------------------------


def test_a_pipelined_group_gets_its_replies_in_one_write() -> None:
    conn = ready()
    event = feed(conn, b"MAIL FROM:<s@b>\r\nRCPT TO:<a@b>\r\nRCPT TO:<c@b>\r\nDATA\r\n")
    assert event == RcptRequested("a@b")
    assert conn.data_to_send() == b""  # MAIL's 250 is held: RCPT is being answered
    conn.answer_rcpt("250 2.1.5 Recipient OK")
    assert conn.next_event() == RcptRequested("c@b")
    assert conn.data_to_send() == b""
    conn.answer_rcpt("550 5.1.1 No such user")  # an error: everything queued is due
    assert codes(conn.data_to_send()) == ["250", "250", "550"]
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"354 End data with <CR><LF>.<CR><LF>\r\n"


def test_a_lone_command_is_answered_at_once() -> None:
    conn = ready()
    assert feed(conn, b"MAIL FROM:<s@b>\r\nRCPT TO:<a@b>\r\n") == RcptRequested("a@b")
    assert conn.data_to_send() == b""
    conn.answer_rcpt("250 2.1.5 Recipient OK")
    # Nothing follows RCPT in the input: its 250 is not held.
    assert codes(conn.data_to_send()) == ["250", "250"]


def test_commands_pipelined_after_the_message_are_run_after_its_replies() -> None:
    conn = ready()
    transaction(conn, "a@b")
    said(conn, b"DATA\r\n")
    event = feed(conn, b"one\r\n.\r\nMAIL FROM:<s@b>\r\nRCPT TO:<a@b>\r\nDATA\r\n")
    assert isinstance(event, MessageReceived) and event.data == b"one\r\n"
    conn.answer_message([OK])
    assert conn.next_event() == RcptRequested("a@b")
    conn.answer_rcpt("250 2.1.5 Recipient OK")
    assert conn.next_event() is NEED_DATA
    assert codes(conn.data_to_send()) == ["250", "250", "250", "354"]


def test_close_with_sends_what_is_held_then_its_reply() -> None:
    conn = ready()
    feed(conn, b"MAIL FROM:<s@b>\r\nRCPT TO:<a@b>\r\n")
    out = conn.close_with("421 4.3.2 Service shutting down; try again later")
    assert codes(out) == ["250", "421"]
    conn.answer_rcpt("250 2.1.5 Recipient OK")  # came back after the close: ignored
    assert conn.next_event() == ConnectionClosed() and conn.data_to_send() == b""


# -- STARTTLS (RFC 3207) ----------------------------------------------------------------


def test_starttls_discards_plaintext_pipelined_behind_it() -> None:
    conn = ready()
    injected = b"MAIL FROM:<evil@b>\r\nRCPT TO:<a@b>\r\n"
    event = feed(conn, b"STARTTLS\r\n" + injected)
    assert event == StartTlsRequested(discarded=len(injected))
    assert conn.data_to_send() == b"220 2.0.0 Ready to start TLS\r\n"
    # Bytes fed before the handshake is done are not read either.
    conn.receive_data(b"RSET\r\n")
    with pytest.raises(RuntimeError):
        conn.next_event()  # the server owes the handshake
    conn.tls_started()
    assert conn.tls and conn.state is State.GREETED and conn.buffered == 0
    # RFC 3207 4.2: everything from before is forgotten; LHLO again, and no
    # STARTTLS offered or accepted now.
    assert codes(said(conn, b"MAIL FROM:<s@b>\r\n")) == ["503"]
    assert b"STARTTLS" not in said(conn, b"LHLO client.test\r\n")
    assert said(conn, b"STARTTLS\r\n") == b"503 5.5.1 TLS already active\r\n"
    assert codes(said(conn, b"MAIL FROM:<s@b>\r\n")) == ["250"]


def test_starttls_refused_when_not_offered_or_in_a_transaction() -> None:
    assert said(ready(starttls=False), b"STARTTLS\r\n") == b"502 5.5.1 Command not implemented\r\n"
    conn = ready()
    assert said(conn, b"STARTTLS now\r\n").startswith(b"501 ")
    transaction(conn)
    assert said(conn, b"STARTTLS\r\n") == b"503 5.5.1 Not inside a mail transaction\r\n"


# -- limits on command lines ----------------------------------------------------------


def test_a_line_of_max_line_octets_is_taken_and_one_more_is_refused() -> None:
    conn = ready(max_line=100)
    fits = b"NOOP " + b"x" * 95
    assert codes(said(conn, fits + b"\r\n")) == ["250"]
    assert said(conn, fits + b"y\r\n") == b"500 5.5.2 Command line too long\r\n"


def test_a_huge_line_is_refused_once_with_bounded_memory_and_the_session_goes_on() -> None:
    conn = ready()
    out = b""
    for _ in range(100):  # 100 KB, no line end yet
        conn.receive_data(b"a" * 1000)
        assert conn.next_event() is NEED_DATA
        assert conn.buffered <= SETTINGS.max_line + 2
        out += conn.data_to_send()
    assert out == b"500 5.5.2 Command line too long\r\n"
    assert said(conn, b"aaa\r\nNOOP\r\n") == b"250 2.0.0 OK\r\n"


def test_bare_lf_ends_a_command_line_too() -> None:
    assert codes(said(ready(), b"NOOP\nRSET\n")) == ["250", "250"]


def test_too_many_bad_commands_end_the_session_with_421() -> None:
    conn = ready()
    # Errors in a known command's arguments do not count.
    for _ in range(10):
        assert codes(said(conn, b"MAIL FROM:<@>\r\n")) == ["501"]
    assert codes(said(conn, b"FOO\r\n\r\nBAR\r\n\xff\r\n")) == ["500"] * 4
    event = feed(conn, b"BAZ\r\nNOOP\r\n")
    assert event == Closing("too many errors")
    assert codes(conn.data_to_send()) == ["500", "421"]
    assert conn.next_event() == ConnectionClosed()


# -- the state tables ------------------------------------------------------------------


COMMANDS = (
    Lhlo("x"),
    Mail("a@b"),
    Rcpt("a@b"),
    Data(),
    Rset(),
    Noop(),
    Quit(),
    Vrfy(),
    Help(),
    StartTls(),
)
READING = (State.GREETED, State.READY, State.SENDER, State.RECIPIENTS)


@pytest.mark.parametrize("state", READING)
def test_every_command_in_a_reading_state_is_allowed_or_has_its_503(state: State) -> None:
    for command in COMMANDS:
        kind = type(command)
        allowed = kind in ALLOWED[state]
        refused = REFUSALS.get(state, {}).get(kind)
        assert allowed != (refused is not None), (state, kind)
        assert refused is None or refused.startswith("503 5.5.1 ")


def test_the_transition_table_has_no_dead_ends_and_refuses_moves_it_lacks() -> None:
    reachable = {State.GREETED}
    frontier = [State.GREETED]
    while frontier:
        state = frontier.pop()
        for (source, _step), target in NEXT.items():
            if source is state and target not in reachable:
                reachable.add(target)
                frontier.append(target)
    assert reachable == set(State)
    assert all((state, Step.CLOSE) in NEXT for state in State)
    with pytest.raises(RuntimeError):
        advance(State.GREETED, Step.DATA)
    with pytest.raises(RuntimeError):
        advance(State.READY, Step.TLS_STARTED)


# -- Hypothesis: arbitrary bytes --------------------------------------------------------

_LINES = [
    b"LHLO client.test\r\n",
    b"MAIL FROM:<s@b>\r\n",
    b"MAIL FROM:<> SIZE=10 BODY=8BITMIME\r\n",
    b"RCPT TO:<a@b>\r\n",
    b"RCPT TO:<c@b>\r\n",
    b"DATA\r\n",
    b"body\r\n",
    b"..stuffed\r\n",
    b".\r\n",
    b"end\r\n.\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"STARTTLS\r\n",
    b"LHLO y\r\nSTARTTLS\r\n",
    b"VRFY x\r\n",
    b"\r\n",
    b"\n",
    b"\0",
    b"x" * 600,
]
# Mostly command lines, some noise; cut anywhere into reads.
_PIECES = st.lists(
    st.one_of(*[st.sampled_from(_LINES)] * 3, st.binary(max_size=40)),
    max_size=60,
)


@st.composite
def _reads(draw: st.DrawFn) -> list[bytes]:
    wire = b"".join(draw(_PIECES))
    if draw(st.booleans()):
        wire = b"LHLO x\r\nMAIL FROM:<s@b>\r\nRCPT TO:<a@b>\r\nDATA\r\n" + wire
    cuts = sorted(draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    return [wire[a:b] for a, b in itertools.pairwise([0, *cuts, len(wire)])]


def _drive(conn: LmtpConnection, chunks: list[bytes], accept: list[bool]) -> bytes:
    """Feed the chunks and the end of input, answering every event as a
    server would; every byte the core sent."""
    sent = b""
    answers = itertools.cycle(accept)
    limits = conn.settings
    for chunk in [*chunks, b""]:
        conn.receive_data(chunk)
        while not isinstance(event := conn.next_event(), NeedData):
            if isinstance(event, RcptRequested):
                assert event.address and not set(event.address) & {"\r", "\n", "\0"}
                conn.answer_rcpt("250 2.1.5 OK" if next(answers) else "550 5.1.1 No")
            elif isinstance(event, MessageReceived):
                assert 1 <= len(event.recipients) <= limits.max_recipients
                assert b"\0" not in event.data
                assert len(event.data) <= limits.max_message_size
                assert event.data.count(b"\n") == event.data.count(b"\r\n")
                conn.answer_message([OK] * len(event.recipients))
            elif isinstance(event, StartTlsRequested):
                assert limits.starttls
                sent += conn.data_to_send()
                conn.tls_started()
            else:  # Closing, ConnectionClosed: the last reply is queued
                return sent + conn.data_to_send()
            sent += conn.data_to_send()
        sent += conn.data_to_send()
        assert conn.buffered <= max(limits.max_message_size + 64, limits.max_line + 2)
    raise AssertionError("the end of input did not close the session")


@settings(max_examples=examples(500), deadline=None)
@given(_reads(), st.lists(st.booleans(), min_size=1, max_size=5), st.booleans(), st.booleans())
def test_arbitrary_bytes_never_raise_and_every_reply_is_well_formed(
    chunks: list[bytes], accept: list[bool], starttls: bool, patient: bool
) -> None:
    limits = dataclasses.replace(
        SETTINGS, starttls=starttls, max_line=200, max_bad_commands=50 if patient else 5
    )
    conn = LmtpConnection(limits)
    out = conn.data_to_send() + _drive(conn, chunks, accept)
    assert well_formed(out), out
    assert re.fullmatch(rb"(?:[0-9]{3}[ -][^\r\n]*\r\n)*", out)


@settings(max_examples=examples(200), deadline=None)
@given(st.integers(min_value=1, max_value=3), st.lists(st.booleans(), min_size=3, max_size=3))
def test_exactly_one_reply_per_accepted_recipient_after_data(
    count: int, accepted: list[bool]
) -> None:
    conn = ready()
    conn.receive_data(
        b"MAIL FROM:<s@b>\r\n"
        + b"".join(b"RCPT TO:<r%d@b>\r\n" % n for n in range(count))
        + b"DATA\r\n"
    )
    wanted = 0
    for n in range(count):
        assert conn.next_event() == RcptRequested(f"r{n}@b")
        ok = accepted[n] or n == count - 1
        wanted += ok
        conn.answer_rcpt("250 2.1.5 OK" if ok else "550 5.1.1 No")
    assert conn.next_event() is NEED_DATA
    before = codes(conn.data_to_send())
    assert before == ["250"] + [
        "250" if accepted[n] or n == count - 1 else "550" for n in range(count)
    ] + ["354"]
    event = feed(conn, b"x\r\n.\r\n")
    assert isinstance(event, MessageReceived) and len(event.recipients) == wanted
    conn.answer_message([f"250 2.1.5 to {r}" for r in event.recipients])
    assert conn.next_event() is NEED_DATA
    after = conn.data_to_send().split(b"\r\n")[:-1]
    assert after == [f"250 2.1.5 to {r}".encode() for r in event.recipients]
