"""Pure-bytes tests of the Postfix socketmap codec (socketmap_table(5))."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ownership.errors import OwnershipError
from ownership.socketmap import (
    MAX_REPLY,
    Lookup,
    NetstringDecoder,
    NetstringError,
    NetstringReader,
    Reply,
    encode_netstring,
    not_found,
    ok,
    parse_reply,
    perm,
    temp,
    timeout,
)

# What Postfix sends for transport_maps = socketmap:inet:HOST:PORT:transport.
REQUESTS = b"".join(
    encode_netstring(request)
    for request in (
        b"transport alice@example.test",
        b"transport bob+x@example.test",
        b"transport example.test",
        b"transport *",
    )
)
LOOKUPS = [
    Lookup("transport", "alice@example.test"),
    Lookup("transport", "bob+x@example.test"),
    Lookup("transport", "example.test"),
    Lookup("transport", "*"),
]


def test_several_requests_on_one_connection() -> None:
    assert REQUESTS.startswith(b"28:transport alice@example.test,28:transport bob")
    reader = NetstringReader()
    assert reader.feed(REQUESTS) == LOOKUPS
    assert reader.feed(b"") == []
    assert reader.feed(b"22:mailbox a@example.test,") == [Lookup("mailbox", "a@example.test")]


def test_byte_by_byte() -> None:
    reader = NetstringReader()
    got: list[Lookup] = []
    for i in range(len(REQUESTS)):
        got += reader.feed(REQUESTS[i : i + 1])
    assert got == LOOKUPS


@given(st.lists(st.integers(min_value=0, max_value=len(REQUESTS)), max_size=12))
def test_any_split(cuts: list[int]) -> None:
    reader = NetstringReader()
    points = sorted(set(cuts))
    got: list[Lookup] = []
    for start, end in zip([0, *points], [*points, len(REQUESTS)], strict=True):
        got += reader.feed(REQUESTS[start:end])
    assert got == LOOKUPS


@given(st.lists(st.binary(max_size=50), max_size=10))
def test_netstring_round_trip(payloads: list[bytes]) -> None:
    decoder = NetstringDecoder(100)
    assert decoder.feed(b"".join(encode_netstring(p) for p in payloads)) == payloads
    assert decoder.pending == 0


def test_keys_keep_spaces_and_odd_bytes() -> None:
    assert NetstringReader().feed(b"11:virtual a b,") == [Lookup("virtual", "a b")]
    # Invalid UTF-8 cannot name an account: it becomes a key that finds nothing.
    [lookup] = NetstringReader().feed(b"11:virtual \xff@x,")
    assert lookup == Lookup("virtual", "\ufffd@x")
    assert Lookup("transport", "alice@example.test").encode() == REQUESTS[:32]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"abc", "netstring length must be decimal digits"),
        (b"-1:x,", "netstring length must be decimal digits"),
        (b" 5:hello,", "netstring length must be decimal digits"),
        (b":hello,", "netstring length is missing"),
        (b"05:hello,", "leading zero"),
        (b"5:hello;", "does not end with a comma"),
        (b"5:helloX", "does not end with a comma"),
        (b"4:hello,", "does not end with a comma"),
        (b"10001:", "netstring of 10001 octets exceeds the limit of 10000"),
        (b"99999999999999999999", "exceeds the limit of 10000"),
        (b"9:transport,", "a socketmap request is '<map name> <key>'"),
        (b"6: alice,", "a socketmap request is '<map name> <key>'"),
        (b"0:,", "a socketmap request is '<map name> <key>'"),
        (b"5:tr\x01 k,", "bad socketmap name"),
    ],
)
def test_malformed_input_is_a_clear_error(data: bytes, message: str) -> None:
    reader = NetstringReader()
    with pytest.raises(NetstringError, match=message) as caught:
        reader.feed(data)
    # One error tree: the daemon maps it like any ownership error; old callers
    # that catch ValueError still do.
    assert isinstance(caught.value, OwnershipError)
    assert isinstance(caught.value, ValueError)
    assert caught.value.code == "socketmap_protocol"
    with pytest.raises(NetstringError):  # the stream cannot be resynchronised
        reader.feed(b"5:a b c,")


def test_oversized_is_refused_before_its_data_arrives() -> None:
    reader = NetstringReader(max_request=100)
    assert reader.feed(b"1") == []
    with pytest.raises(NetstringError, match="exceeds the limit of 100"):
        reader.feed(b"01")
    # A request exactly at the cap is fine.
    payload = b"m " + b"k" * 98
    assert NetstringReader(max_request=100).feed(encode_netstring(payload)) == [
        Lookup("m", "k" * 98)
    ]


def test_memory_stays_bounded_while_waiting() -> None:
    decoder = NetstringDecoder(10_000)
    assert decoder.feed(b"10000:" + b"x" * 9_999) == []
    assert decoder.pending == 10_005
    assert decoder.feed(b"x,") == [b"x" * 10_000]
    assert decoder.pending == 0


def test_replies() -> None:
    assert ok("lmtp:inet:127.0.0.1:10024").encode() == b"28:OK lmtp:inet:127.0.0.1:10024,"
    assert not_found().encode() == b"9:NOTFOUND ,"  # with the space
    assert temp("database busy").encode() == b"18:TEMP database busy,"
    assert timeout("slow").encode() == b"12:TIMEOUT slow,"
    assert perm("bad").encode() == b"8:PERM bad,"
    assert ok("é").encode() == b"5:OK \xc3\xa9,"  # the length counts octets


def test_replies_are_validated() -> None:
    with pytest.raises(ValueError, match="bad socketmap status"):
        Reply("MAYBE", "x")
    with pytest.raises(ValueError, match="NOTFOUND carries no data"):
        Reply("NOTFOUND", "x")
    with pytest.raises(ValueError, match="NUL"):
        ok("a\0b")
    with pytest.raises(ValueError, match="longer than 100000"):
        ok("x" * MAX_REPLY)
    assert len(ok("x" * (MAX_REPLY - 3)).payload()) == MAX_REPLY
    # Reasons are cut rather than refused: a TEMP must always be answerable.
    assert len(temp("x" * 200_000).data) == 1000
    assert temp("a\0b").data == "a b"


@pytest.mark.parametrize("reply", [ok("lmtp:inet:h:1"), not_found(), temp("t"), perm("p")])
def test_reply_round_trip(reply: Reply) -> None:
    [payload] = NetstringDecoder(MAX_REPLY).feed(reply.encode())
    assert parse_reply(payload) == reply


def test_parse_reply_errors() -> None:
    with pytest.raises(NetstringError):
        parse_reply(b"NOTFOUND")  # no space
    with pytest.raises(NetstringError):
        parse_reply(b"WHAT x")
