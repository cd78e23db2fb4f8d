"""The IMAP core without sockets: commands from bytes, literals, caps, tokens, names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerd.imap.protocol import (
    Command,
    CommandReader,
    NeedContinuation,
    ProtocolError,
    SequenceSet,
    decode_mailbox,
    encode_mailbox,
    nstring,
    tokenize,
)


def drain(reader: CommandReader) -> list[object]:
    out: list[object] = []
    while True:
        try:
            event = reader.next()
        except ProtocolError as exc:
            out.append(exc)
            continue
        if event is None:
            return out
        out.append(event)


def test_nginx_login_with_synchronizing_literals() -> None:
    reader = CommandReader()
    reader.feed(b"a LOGIN {5}\r\n")
    assert drain(reader) == [NeedContinuation(5)]
    reader.feed(b"alice {8}\r\n")
    assert drain(reader) == [NeedContinuation(8)]
    reader.feed(b"password\r\n")
    (command,) = drain(reader)
    assert isinstance(command, Command) and command.name == "LOGIN"
    assert tokenize(command.args, command.literals) == [b"alice", b"password"]


def test_literal_plus_needs_no_continuation_and_uid_prefix() -> None:
    reader = CommandReader()
    reader.feed(b"t1 APPEND INBOX (\\Seen) {3+}\r\nabc\r\nt2 UID FETCH 1:* (FLAGS)\r\n")
    first, second = drain(reader)
    assert isinstance(first, Command) and first.name == "APPEND"
    assert tokenize(first.args, first.literals) == ["INBOX", ["\\Seen"], b"abc"]
    assert isinstance(second, Command) and second.uid and second.name == "FETCH"


def test_limits_refuse_before_reading() -> None:
    reader = CommandReader(max_line=100, max_literal=10)
    reader.feed(b"a APPEND INBOX {11}\r\n")
    (error,) = drain(reader)
    assert isinstance(error, ProtocolError) and error.code == "TOOBIG" and error.tag == "a"
    reader.feed(b"b NOOP " + b"x" * 200 + b"\r\n")
    (error,) = drain(reader)
    assert isinstance(error, ProtocolError) and error.code == "TOOBIG"


def test_bad_input_is_a_protocol_error() -> None:
    for line in (b"\r\n", b"a\r\n", b"* NOOP\r\n"):
        reader = CommandReader()
        reader.feed(line)
        assert all(isinstance(e, ProtocolError) for e in drain(reader))
    with pytest.raises(ProtocolError):
        tokenize(b'(a (b) "unterminated')
    with pytest.raises(ProtocolError):
        tokenize(b"(a))")
    for bad in ("0", "1:0", "a", "", "1,,2"):
        with pytest.raises(ProtocolError):
            SequenceSet.parse(bad)
    assert SequenceSet.parse("2:*,7").resolve(9) == [(2, 9), (7, 7)]


@given(st.binary(max_size=300), st.lists(st.integers(1, 50), max_size=10))
def test_any_bytes_any_chunks_only_ever_protocol_errors(data: bytes, cuts: list[int]) -> None:
    reader = CommandReader(max_line=200, max_literal=100)
    pos = 0
    for cut in [*cuts, len(data)]:
        reader.feed(data[pos : pos + cut])
        pos += cut
        drain(reader)


@given(st.text(max_size=40))
def test_modified_utf7_round_trip(name: str) -> None:
    assert decode_mailbox(encode_mailbox(name)) == name


@given(st.binary(max_size=200))
def test_nstring_round_trips_through_the_tokenizer(value: bytes) -> None:
    encoded = nstring(value)
    if encoded.startswith(b"{"):
        size_end = encoded.index(b"}\r\n")
        assert encoded[size_end + 3 :] == value
    else:
        assert tokenize(encoded)[0] == value.decode()
