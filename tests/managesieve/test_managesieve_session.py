"""The ManageSieve core, bytes in and bytes out: RFC 5804 dialogues, framing, limits, states."""

from __future__ import annotations

import base64
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.protocols.managesieve import (
    NEED_DATA,
    Close,
    Config,
    DeleteScript,
    Done,
    GetScript,
    HaveSpace,
    ListScripts,
    Login,
    PutScript,
    Refused,
    RenameScript,
    RoomNeeded,
    ScriptContent,
    Scripts,
    Send,
    Session,
    SetActive,
    StartTlsNow,
    State,
)
from peerd.protocols.managesieve.wire import Atom, Bad, Line, Reader, Str
from peerd.protocols.sieve import Limits
from tests.example_counts import examples

PLAIN = base64.b64encode(b"\0bob\0secret").decode()


class Store:
    """The service side, in memory: answers the session's requests."""

    def __init__(self) -> None:
        self.scripts: dict[str, str] = {}
        self.active: str | None = None
        self.logins: list[Login] = []

    def answer(self, session: Session, request: object) -> bytes:
        if isinstance(request, Login):
            self.logins.append(request)
            ok = request.password == "secret"
            return session.answer(Done() if ok else Refused("Authentication failed"))
        if isinstance(request, PutScript):
            self.scripts[request.name] = request.content
            return session.answer(Done())
        if isinstance(request, ListScripts):
            entries = tuple((name, name == self.active) for name in sorted(self.scripts))
            return session.answer(Scripts(entries))
        if isinstance(request, GetScript):
            if request.name not in self.scripts:
                return session.answer(Refused("no such script", "NONEXISTENT"))
            return session.answer(ScriptContent(self.scripts[request.name]))
        if isinstance(request, SetActive):
            if request.name and request.name not in self.scripts:
                return session.answer(Refused("no such script", "NONEXISTENT"))
            self.active = request.name or None
            return session.answer(Done())
        if isinstance(request, DeleteScript):
            if request.name == self.active:
                return session.answer(Refused("script is active", "ACTIVE"))
            if self.scripts.pop(request.name, None) is None:
                return session.answer(Refused("no such script", "NONEXISTENT"))
            return session.answer(Done())
        if isinstance(request, RenameScript):
            if request.new in self.scripts:
                return session.answer(Refused("exists", "ALREADYEXISTS"))
            self.scripts[request.new] = self.scripts.pop(request.old)
            return session.answer(Done())
        if isinstance(request, HaveSpace):
            if len(self.scripts) >= 2:
                return session.answer(Refused("too many scripts", "QUOTA/MAXSCRIPTS"))
            return session.answer(Done())
        raise AssertionError(request)


def drive(session: Session, store: Store, data: bytes) -> tuple[bytes, list[object]]:
    """Feed bytes, answer every request; the bytes written and the non-Send events."""
    session.receive_data(data)
    out = bytearray()
    others: list[object] = []
    while (event := session.next_event()) is not NEED_DATA:
        if isinstance(event, RoomNeeded):
            continue  # room found at once
        if isinstance(event, Send):
            out += event.data
        elif isinstance(event, (StartTlsNow, Close)):
            others.append(event)
        else:
            out += store.answer(session, event)
    return bytes(out), others


def logged_in(config: Config | None = None) -> tuple[Session, Store]:
    session = Session(config or Config(tls_active=True))
    store = Store()
    session.greeting()
    out, _ = drive(session, store, f'AUTHENTICATE "PLAIN" "{PLAIN}"\r\n'.encode())
    assert out == b'OK "Logged in"\r\n'
    return session, store


def literal(text: bytes) -> bytes:
    return b"{%d+}\r\n" % len(text) + text


def test_greeting_lists_capabilities() -> None:
    # RFC 5804 section 1.7; before STARTTLS no SASL mechanism is offered.
    greeting = Session().greeting()
    assert greeting.startswith(b'"IMPLEMENTATION" "peerd"\r\n"SASL" ""\r\n"SIEVE" "fileinto ')
    assert b'\r\n"STARTTLS"\r\n' in greeting
    assert b'"VERSION" "1.0"\r\n' in greeting and b'"MAXREDIRECTS" "5"\r\n' in greeting
    assert greeting.endswith(b'OK "peerd ManageSieve ready"\r\n')
    for extension in (b"vacation", b"imap4flags", b"reject", b"ereject", b"body", b"variables"):
        assert extension in greeting.split(b'"SIEVE" "')[1].split(b'"')[0].split()


def test_rfc5804_session() -> None:
    session, store = logged_in()
    script = b'require "fileinto";\r\nif header :contains "subject" "x" { fileinto "x"; }\r\n'
    out, _ = drive(session, store, b'PUTSCRIPT "mysieve" ' + literal(script) + b"\r\n")
    assert out == b'OK "Completed"\r\n' and store.scripts["mysieve"] == script.decode()
    out, _ = drive(session, store, b'SETACTIVE "mysieve"\r\nLISTSCRIPTS\r\n')
    assert out == b'OK "Completed"\r\n"mysieve" ACTIVE\r\nOK "Listscripts completed"\r\n'
    out, _ = drive(session, store, b'getscript "mysieve"\r\n')
    assert out == b"{%d}\r\n" % len(script) + script + b'\r\nOK "Getscript completed"\r\n'
    out, _ = drive(session, store, b'DELETESCRIPT "mysieve"\r\n')
    assert out == b'NO (ACTIVE) "script is active"\r\n'
    out, _ = drive(session, store, b'SETACTIVE ""\r\nRENAMESCRIPT "mysieve" "other"\r\n')
    assert out == b'OK "Completed"\r\nOK "Completed"\r\n'
    out, _ = drive(session, store, b'GETSCRIPT "mysieve"\r\nDELETESCRIPT "other"\r\n')
    assert out == b'NO (NONEXISTENT) "no such script"\r\nOK "Completed"\r\n'
    out, others = drive(session, store, b"LOGOUT\r\nNOOP\r\n")
    assert out == b'OK "Logout completed"\r\n' and others == [Close()]
    assert session.state is State.CLOSED


def test_putscript_refuses_invalid_scripts_with_the_line() -> None:
    session, store = logged_in()
    script = b"keep;\r\nfrobnicate;\r\n"
    out, _ = drive(session, store, b'PUTSCRIPT "bad" ' + literal(script) + b"\r\n")
    assert out == b"NO \"line 2: unknown command 'frobnicate'\"\r\n"
    assert store.scripts == {}
    out, _ = drive(session, store, b'PUTSCRIPT "bad" "fileinto \\"x\\";"\r\n')
    assert out == b'NO "line 1: fileinto needs require \\"fileinto\\""\r\n'
    out, _ = drive(session, store, b'CHECKSCRIPT "keep;"\r\nCHECKSCRIPT "keep"\r\n')
    assert out.startswith(b'OK "Script is valid"\r\nNO "line 1: expected')


def test_size_caps_and_quota() -> None:
    config = Config(tls_active=True, limits=Limits(max_script_size=100))
    session, store = logged_in(config)
    out, _ = drive(session, store, b'HAVESPACE "a" 101\r\nHAVESPACE "a" 100\r\n')
    assert out == (b'NO (QUOTA/MAXSIZE) "scripts are limited to 100 octets"\r\nOK "Completed"\r\n')
    # A literal over the cap is skipped (not buffered); the session goes on.
    big = b"#" * 150 + b"\r\n"
    out, _ = drive(session, store, b'PUTSCRIPT "a" ' + literal(big) + b"\r\nNOOP\r\n")
    assert out.startswith(b"NO (QUOTA/MAXSIZE) ") and out.endswith(b'OK "Done"\r\n')
    # The service's own quota: number of scripts.
    drive(session, store, b'PUTSCRIPT "a" "keep;"\r\nPUTSCRIPT "b" "keep;"\r\n')
    out, _ = drive(session, store, b'HAVESPACE "c" 10\r\n')
    assert out == b'NO (QUOTA/MAXSCRIPTS) "too many scripts"\r\n'


def test_authenticate_with_continuation_and_cancel() -> None:
    session, store = Session(Config(tls_active=True)), Store()
    out, _ = drive(session, store, b'AUTHENTICATE "PLAIN"\r\n')
    assert out == b'""\r\n'
    out, _ = drive(session, store, b'"*"\r\n')
    assert out == b'NO "Authentication cancelled"\r\n' and session.state is State.NON_AUTHENTICATED
    out, _ = drive(session, store, b'AUTHENTICATE "plain"\r\n' + literal(PLAIN.encode()) + b"\r\n")
    assert out == b'""\r\nOK "Logged in"\r\n' and session.user == "bob"
    assert session.greeting().count(b'"OWNER" "bob"') == 1
    out, _ = drive(session, store, b"UNAUTHENTICATE\r\nLISTSCRIPTS\r\n")
    assert out == b'OK "Unauthenticate completed"\r\nNO "authenticate first"\r\n'
    assert session.user is None


def test_authenticate_failures() -> None:
    session, store = Session(Config(tls_active=True)), Store()
    wrong = base64.b64encode(b"\0bob\0wrong").decode()
    proxy = base64.b64encode(b"admin\0bob\0secret").decode()
    out, _ = drive(
        session,
        store,
        f'AUTHENTICATE "PLAIN" "{wrong}"\r\n'
        f'AUTHENTICATE "PLAIN" "{proxy}"\r\n'
        'AUTHENTICATE "PLAIN" "not base64!"\r\n'
        'AUTHENTICATE "DIGEST-MD5"\r\n'.encode(),
    )
    assert out == (
        b'NO "Authentication failed"\r\n' * 3 + b'NO "mechanism DIGEST-MD5 is not supported"\r\n'
    )
    assert [login.password for login in store.logins] == ["wrong"]


def test_plain_needs_tls_and_starttls_discards_pipelined_bytes() -> None:
    session, store = Session(), Store()
    out, _ = drive(session, store, f'AUTHENTICATE "PLAIN" "{PLAIN}"\r\n'.encode())
    assert out == b'NO (ENCRYPT-NEEDED) "use STARTTLS first"\r\n'
    # RFC 5804 section 2.2: what follows STARTTLS in the same packet came in
    # the clear; it is dropped, never run after the handshake.
    out, others = drive(session, store, f'STARTTLS\r\nAUTHENTICATE "PLAIN" "{PLAIN}"\r\n'.encode())
    assert out == b'OK "Begin TLS negotiation now"\r\n' and others == [StartTlsNow()]
    assert store.logins == []
    after = session.tls_started()
    assert b'"SASL" "PLAIN"' in after and b"STARTTLS" not in after
    assert after.endswith(b'OK "TLS negotiation successful"\r\n')
    out, _ = drive(session, store, f'STARTTLS\r\nAUTHENTICATE "PLAIN" "{PLAIN}"\r\n'.encode())
    assert out == b'NO "TLS is active"\r\nOK "Logged in"\r\n'


def test_states_table() -> None:
    session, store = Session(Config(tls_active=True)), Store()
    for command in (b'PUTSCRIPT "a" "keep;"', b"LISTSCRIPTS", b'CHECKSCRIPT "keep;"'):
        out, _ = drive(session, store, command + b"\r\n")
        assert out == b'NO "authenticate first"\r\n'
    out, _ = drive(session, store, b'NOOP "tag1"\r\nCAPABILITY\r\n')
    assert out.startswith(b'OK (TAG "tag1") "Done"\r\n"IMPLEMENTATION"')
    assert out.endswith(b'OK "Capability completed"\r\n')
    session, store = logged_in()
    out, _ = drive(session, store, f'AUTHENTICATE "PLAIN" "{PLAIN}"\r\nSTARTTLS\r\n'.encode())
    assert out == b'NO "command not allowed now"\r\n' * 2


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"FROB", b'NO "unknown command"'),
        (b"LISTSCRIPTS extra", b'NO "LISTSCRIPTS takes no arguments"'),
        (b'GETSCRIPT "a\\x"', b'NO "bad escape in quoted string"'),
        (b'GETSCRIPT "open', b'NO "unterminated quoted string"'),
        (b'GETSCRIPT ""', b'NO "script name is empty"'),
        (b'GETSCRIPT "a\\\\b\x01"', b'NO "script name holds a control character"'),
        (b'GETSCRIPT "e\xcc\x81"', b'NO "script name is not in Unicode NFC"'),
        (b'GETSCRIPT "\xff"', b'NO "string is not valid UTF-8"'),
        (b'HAVESPACE "a" -1', b'NO "HAVESPACE takes a script name and a number"'),
        (b"GETSCRIPT {3x}", b'NO "bad literal"'),
        (b"GETSCRIPT a", b'NO "GETSCRIPT: arguments must be strings"'),
    ],
)
def test_malformed_commands_are_answered_no(line: bytes, reply: bytes) -> None:
    session, store = logged_in()
    out, _ = drive(session, store, line + b"\r\nNOOP\r\n")
    assert out == reply + b'\r\nOK "Done"\r\n'


def test_line_and_literal_caps_before_login() -> None:
    session, store = Session(Config(tls_active=True, max_line=100)), Store()
    out, _ = drive(session, store, b"NOOP " + b"x" * 200 + b"\r\nNOOP\r\n")
    assert out == b'NO "line too long"\r\nOK "Done"\r\n'
    # Before login a literal is a few KiB at most; more is hostile: BYE.
    out, others = drive(session, store, b'AUTHENTICATE "PLAIN" {5000+}\r\n')
    assert out.startswith(b'BYE "literal of 5000 octets') and others == [Close()]


def test_huge_literal_after_login_is_fatal() -> None:
    session, store = logged_in(Config(tls_active=True, limits=Limits(max_script_size=1000)))
    out, others = drive(session, store, b'PUTSCRIPT "a" {999999999+}\r\n')
    assert out.startswith(b"BYE ") and others == [Close()]


def test_byte_at_a_time_gives_the_same_replies() -> None:
    script = b'require "vacation";\r\nvacation "away";\r\n'
    data = (
        f'AUTHENTICATE "PLAIN" "{PLAIN}"\r\n'.encode()
        + b'PUTSCRIPT "v" '
        + literal(script)
        + b'\r\nSETACTIVE "v"\r\nLISTSCRIPTS\r\nLOGOUT\r\n'
    )
    whole, _ = drive(Session(Config(tls_active=True)), Store(), data)
    session, store = Session(Config(tls_active=True)), Store()
    pieces = b"".join(drive(session, store, data[i : i + 1])[0] for i in range(len(data)))
    assert pieces == whole
    assert whole.endswith(b'"v" ACTIVE\r\nOK "Listscripts completed"\r\nOK "Logout completed"\r\n')


def test_with_ask_room_a_literal_is_announced_and_may_be_refused() -> None:
    session, store = logged_in(Config(tls_active=True, ask_room=True))
    script = b"keep;\r\n"
    session.receive_data(b'PUTSCRIPT "a" ' + literal(script)[:7])
    # The literal is announced before a byte of it is kept.
    assert session.next_event() == RoomNeeded(len(script))
    out, _ = drive(session, store, literal(script)[7:] + b"\r\n")
    assert out == b'OK "Completed"\r\n' and store.scripts == {"a": "keep;\r\n"}
    # No room: the octets are dropped as they come, then NO (TRYLATER).
    session.receive_data(b'PUTSCRIPT "b" {1000+}\r\n')
    assert session.next_event() == RoomNeeded(1000)
    session.refuse_literal("server busy")
    for _ in range(10):
        assert drive(session, store, b"x" * 100) == (b"", [])
    out, _ = drive(session, store, b"\r\nNOOP\r\n")
    assert out == b'NO (TRYLATER) "server busy"\r\nOK "Done"\r\n'
    assert "b" not in store.scripts
    with pytest.raises(RuntimeError):
        session.refuse_literal("nothing announced")


def test_a_request_must_be_answered_first() -> None:
    session, _ = logged_in()
    session.receive_data(b"LISTSCRIPTS\r\nNOOP\r\n")
    assert session.next_event() == ListScripts()
    with pytest.raises(RuntimeError):
        session.next_event()
    with pytest.raises(TypeError):
        session.answer(Done())


def test_reader_literals_and_synchronising_form() -> None:
    reader = Reader(max_literal=100)
    reader.skip_oversized = True
    reader.receive_data(b'PUTSCRIPT "a" {5}\r\nab')
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b'cde {2+}\r\nxy "q"\r\n')
    assert reader.next_event() == Line(
        (Atom("PUTSCRIPT"), Str("a"), Str("abcde", True), Str("xy", True), Str("q"))
    )
    reader.receive_data(b"{101+}\r\n" + b"z" * 101 + b" tail\r\nNOOP\r\n")
    bad = reader.next_event()
    assert isinstance(bad, Bad) and bad.too_big and not bad.fatal
    assert reader.next_event() == Line((Atom("NOOP"),))


_PIECES = st.sampled_from(
    [
        b"AUTHENTICATE ",
        b'"PLAIN" ',
        f'"{PLAIN}"'.encode(),
        b"PUTSCRIPT ",
        b"CHECKSCRIPT ",
        b"GETSCRIPT ",
        b"SETACTIVE ",
        b"RENAMESCRIPT ",
        b"DELETESCRIPT ",
        b"HAVESPACE ",
        b"LISTSCRIPTS",
        b"STARTTLS",
        b"UNAUTHENTICATE",
        b"NOOP ",
        b"LOGOUT",
        b'"a" ',
        b'"keep;" ',
        b"{5+}\r\nkeep;",
        b"{3}\r\nabc",
        b"{99999+}\r\n",
        b"12 ",
        b'"*"',
        b"\r\n",
        b"\n",
        b'"\\',
        b"\xff",
        b"\x00",
    ]
)


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(_PIECES | st.binary(max_size=20), max_size=30), st.integers(1, 50))
def test_arbitrary_input_never_breaks_the_session(pieces: list[bytes], chunk: int) -> None:
    data = b"".join(pieces)
    session, store = Session(Config(tls_active=True, limits=Limits(max_script_size=2000))), Store()
    session.greeting()
    started = time.thread_time()
    for start in range(0, len(data), chunk):
        drive(session, store, data[start : start + chunk])
        if session.state is State.CLOSED:
            break
    if session.state is not State.CLOSED:
        drive(session, store, b"")
    assert session.state is State.CLOSED
    assert time.thread_time() - started < 2.0


@pytest.mark.parametrize(
    ("script", "line"),
    [
        (b"keep; # a\x00b\r\n", 1),
        (b"keep;\r\n/* \x00 */\r\n", 2),
        (b'require "vacation";\r\n\r\nvacation "away\x00";\r\n', 3),
    ],
)
def test_a_script_holding_nul_is_refused_with_the_line(script: bytes, line: int) -> None:
    """RFC 5228 section 8.1: no production of the grammar takes NUL. Such a
    script was taken and handed to the store, where PostgreSQL refuses NUL in
    text: the write failed with a traceback, and the client got TRYLATER
    with the SQL statement as its text."""
    session, store = logged_in()
    out, _ = drive(session, store, b'PUTSCRIPT "nul" ' + literal(script) + b"\r\n")
    assert out == b'NO "line %d: a script cannot hold NUL"\r\n' % line
    out, _ = drive(session, store, b"CHECKSCRIPT " + literal(script) + b"\r\n")
    assert out == b'NO "line %d: a script cannot hold NUL"\r\n' % line
    assert store.scripts == {}
