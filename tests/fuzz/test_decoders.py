"""Fuzz the sync protocol's decoders and the control API's body checks (issue 9).

Hypothesis feeds :mod:`engine.syncwire` and :mod:`peerd.control.schema`
hostile input: bytes that are not JSON, not UTF-8, nested far too deep,
integers of thousands of digits, frames cut short or lying about their
length, and valid documents with one member swapped for a wrong type, a
huge number or a huge string. The only exception either may raise is its
own refusal (``SyncProtocolError`` for the sync channel, ``InvalidArgument``
for the API): anything else would be a 500 and a traceback on the wire.
Each test is bounded (``max_examples``) so the suite stays within a minute.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine import syncwire
from engine.compare import MailboxPush, Push
from engine.errors import InvalidArgument, SyncProtocolError, shown
from engine.syncstate import AccountState, MailboxState, MailboxSummary, RecordState
from ownership.rows import parse_row
from peerd.control.routes import ROUTES
from peerd.control.schema import decode_body, parse
from tests.example_counts import examples

FUZZ = settings(
    max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

BODY = b"Subject: fuzz\r\n\r\nhello\r\n"
GUID = hashlib.sha1(BODY).hexdigest()
RECORD = RecordState(1, GUID, "\\Seen", 1_700_000_000, len(BODY), 3)
SUMMARY = MailboxSummary("0a1b", "INBOX", 7, 1, 3, "{}", 12345, 1)
STATE = syncwire.encode_account_state(
    AccountState(
        name="alice",
        exists=True,
        password_hash="$scrypt$ln=4,r=8,p=1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
        quota_limit=1000,
        subscriptions=("INBOX",),
        mailboxes=(MailboxState(SUMMARY, "full", (RECORD,)),),
        tombstones=frozenset({"ff"}),
        sieve=(("main", "keep;", True),),
        vacations=(("k", "2026-01-01T00:00:00+00:00"),),
        annotations=(("", "/private/a", b"v"), ("0a1b", "/shared/b", b"\x00")),
    )
)
PUSH = syncwire.encode_push(
    Push(
        account="alice",
        account_fields=("", 5, 7),
        deletes=("ab",),
        mailboxes=(MailboxPush(SUMMARY, (RECORD,), (2,), True),),
        subscriptions=("INBOX",),
        sieve=(("main", "keep;", False),),
        vacations=(("k", "2026-01-01T00:00:00+00:00"),),
        annotations=(("0a1b", "/private/comment", b"c"),),
    )
)

# Values of the wrong type, the wrong size or the wrong range.
hostile_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63, -(2**63) - 1, 2**70, -(2**70), 10**400, -1, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(exclude_categories=()), max_size=40),
    st.sampled_from(["a" * 70_000, "\x00", "\ud800", "2026-13-45T99:99", "9" * 5000]),
)
hostile_values = st.recursive(
    hostile_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.text(max_size=12), inner, max_size=6),
    ),
    max_leaves=20,
)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


deep_values = st.integers(min_value=50, max_value=3000).map(_nested)


@st.composite
def mutated(draw: st.DrawFn, document: Any) -> Any:
    """``document`` with a few members (at any depth) replaced, removed or added."""
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        document = _mutate_once(draw, document)
    return document


def _mutate_once(draw: st.DrawFn, value: Any) -> Any:
    if isinstance(value, dict) and value and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value)))
        out = dict(value)
        action = draw(st.sampled_from(["descend", "replace", "drop", "add"]))
        if action == "descend":
            out[key] = _mutate_once(draw, value[key])
        elif action == "replace":
            out[key] = draw(st.one_of(hostile_values, deep_values))
        elif action == "drop":
            del out[key]
        else:
            out[draw(st.text(max_size=8))] = draw(hostile_values)
        return out
    if isinstance(value, list) and value and draw(st.booleans()):
        index = draw(st.integers(min_value=0, max_value=len(value) - 1))
        out_list = list(value)
        action = draw(st.sampled_from(["descend", "replace", "drop", "repeat"]))
        if action == "descend":
            out_list[index] = _mutate_once(draw, value[index])
        elif action == "replace":
            out_list[index] = draw(st.one_of(hostile_values, deep_values))
        elif action == "drop":
            del out_list[index]
        else:
            out_list += [value[index]] * draw(st.integers(min_value=1, max_value=3))
        return out_list
    return draw(st.one_of(hostile_values, deep_values))


def _json_bytes(value: Any) -> bytes:
    """``value`` as JSON text (NaN and lone surrogates included, as a hostile peer may send)."""
    try:
        return json.dumps(value).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return b"{}"


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` cut short, with bytes flipped, or with bytes inserted."""
    action = draw(st.sampled_from(["truncate", "flip", "insert", "whole"]))
    if action == "whole" or not data:
        return data
    at = draw(st.integers(min_value=0, max_value=len(data) - 1))
    if action == "truncate":
        return data[:at]
    if action == "flip":
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.integers(min_value=1, max_value=200_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=1, max_value=200_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(min_value=4000, max_value=100_000).map(lambda n: b'{"epoch":' + b"7" * n + b"}"),
    st.sampled_from([b"\xff\xfe{}", b'{"a":"\xc3"}', b"\x1f\x8b\x08\x00", b'{"a":1e999999}', b""]),
)


def _only(allowed: type[Exception], call: Callable[[], object]) -> None:
    """Run ``call``: it may succeed or raise ``allowed``, nothing else."""
    try:
        call()
    except allowed:
        pass


# --- the sync channel --------------------------------------------------------


@FUZZ
@given(raw_bodies)
@example(b"[" * 100_000)
@example(b'{"epoch":' + b"1" * 100_000 + b"}")
def test_decode_json_refuses_hostile_bytes_with_its_own_error(data: bytes) -> None:
    _only(SyncProtocolError, lambda: syncwire.decode_json(data))


@FUZZ
@given(st.one_of(mutated(STATE), hostile_values, deep_values))
def test_decode_account_state_refuses_hostile_documents_with_its_own_error(value: Any) -> None:
    _only(SyncProtocolError, lambda: syncwire.decode_account_state(value))
    # The same document as it arrives: bytes, through decode_json first.
    _only(
        SyncProtocolError,
        lambda: syncwire.decode_account_state(syncwire.decode_json(_json_bytes(value))),
    )


@FUZZ
@given(st.one_of(mutated(PUSH), hostile_values, deep_values))
def test_decode_push_refuses_hostile_documents_with_its_own_error(value: Any) -> None:
    _only(SyncProtocolError, lambda: syncwire.decode_push(value))
    _only(SyncProtocolError, lambda: syncwire.decode_push(syncwire.decode_json(_json_bytes(value))))


@FUZZ
@given(st.one_of(mutated(syncwire.encode_summary(SUMMARY)), hostile_values))
def test_decode_summary_refuses_hostile_documents_with_its_own_error(value: Any) -> None:
    _only(SyncProtocolError, lambda: syncwire.decode_summary(value))


def _frame_header(guid: str, length: str) -> bytes:
    return f"{guid} {length}\n".encode()


frame_streams = st.one_of(
    st.binary(max_size=300),
    damaged(b"".join(syncwire.encode_frames([(GUID, BODY), (GUID, BODY)]))),
    st.builds(
        lambda length, tail: _frame_header(GUID, length) + tail,
        st.one_of(
            st.sampled_from(["-1", "+26", " 26", "2_6", "0x1a", "9" * 70, "26 ", "", "1e3"]),
            st.text(max_size=12),
        ),
        st.binary(max_size=40),
    ),
)


@FUZZ
@given(frame_streams)
@example(_frame_header(GUID, "2_6") + BODY)
def test_decode_frames_refuses_hostile_streams_with_its_own_error(data: bytes) -> None:
    _only(SyncProtocolError, lambda: syncwire.decode_frames(data))


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=300),
        damaged(syncwire.encode_delta(PUSH, [(GUID, BODY)])),
        st.builds(
            lambda head, rest: head + b"\n" + rest,
            st.sampled_from([b"0", b"9999999999", b"00000000000000012", b"-5", b"12"]),
            raw_bodies,
        ),
    )
)
def test_decode_delta_refuses_hostile_bodies_with_its_own_error(data: bytes) -> None:
    def both() -> None:
        control, _ = syncwire.decode_delta(data)
        syncwire.decode_push(control)

    _only(SyncProtocolError, both)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=200),
        damaged(syncwire.compress(b"x" * 5000)),
        damaged(syncwire.compress(BODY * 50, messages=True)),
    )
)
def test_decompress_refuses_hostile_bodies_with_its_own_error(data: bytes) -> None:
    _only(SyncProtocolError, lambda: syncwire.decompress(data, 4096))


@FUZZ
@given(st.one_of(st.none(), st.text(st.characters(exclude_categories=()), max_size=30)))
@example("1" * 5000)
@example("٣")
@example("1\x1f")  # str.strip() takes U+001F, int() does not
@example("\x851")
def test_the_protocol_header_refuses_hostile_values_with_its_own_error(value: str | None) -> None:
    _only(SyncProtocolError, lambda: syncwire.peer_protocol(value))


# --- the control API ---------------------------------------------------------

BODY_ROUTES = [route for route in ROUTES if route.body is not None]
QUERY_ROUTES = [route for route in ROUTES if route.query is not None]


@st.composite
def route_bodies(draw: st.DrawFn) -> tuple[type, Any]:
    """A route's body class and a JSON value: mostly an object naming its
    members (so the checks run past "unknown option"), with hostile values."""
    import dataclasses

    route = draw(st.sampled_from(BODY_ROUTES))
    assert route.body is not None
    names = [f.name for f in dataclasses.fields(route.body)]
    value = draw(
        st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    name: st.one_of(
                        hostile_values,
                        deep_values,
                        st.sampled_from(
                            [
                                "alice",
                                "$scrypt$ln=4,r=8,p=1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
                                "$scrypt$ln=99999,r=8,p=1$c2FsdA$aGFzaA",
                                "$scrypt$ln=²,r=8,p=1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
                                "$scrypt$ln=4,r=8,p=1$\u00e9$\u00e9",
                                "$scrypt$ln,r=8$$",
                            ]
                        ),
                    )
                    for name in names
                },
            ),
            hostile_values,
        )
    )
    return route.body, value


@FUZZ
@given(route_bodies())
def test_api_bodies_are_refused_with_invalid_argument_only(case: tuple[type, Any]) -> None:
    cls, value = case

    def check() -> None:
        data = decode_body(_json_bytes(value))
        parse(cls, data)

    _only(InvalidArgument, check)


@FUZZ
@given(raw_bodies)
def test_api_body_bytes_are_refused_with_invalid_argument_only(data: bytes) -> None:
    _only(InvalidArgument, lambda: decode_body(data))


@FUZZ
@given(
    st.sampled_from(QUERY_ROUTES) if QUERY_ROUTES else st.nothing(),
    st.dictionaries(
        st.text(max_size=12), st.text(st.characters(exclude_categories=()), max_size=40)
    ),
)
def test_api_queries_are_refused_with_invalid_argument_only(
    route: Any, query: dict[str, str]
) -> None:
    _only(InvalidArgument, lambda: parse(route.query, query, others_ok=True))


def test_a_value_nested_near_the_recursion_limit_is_refused_with_the_decoders_error() -> None:
    """An error's text shows a string's start or a value's type, never its
    repr: the repr of a document nested as deep as ``json.loads`` allows
    raised RecursionError in place of the decoder's own error (hypothesis
    found it, a GUID that was such a list)."""
    deep: Any = []
    for _ in range(sys.getrecursionlimit()):
        deep = [deep]
    with pytest.raises(RecursionError):
        repr(deep)
    state = json.loads(json.dumps(STATE))
    state["mailboxes"][0]["records"][0][1] = deep  # the GUID
    with pytest.raises(SyncProtocolError):
        syncwire.decode_account_state(state)
    state = json.loads(json.dumps(STATE))
    state["mailboxes"][0]["summary"]["uniqueid"] = deep
    with pytest.raises(SyncProtocolError):
        syncwire.decode_account_state(state)
    state = json.loads(json.dumps(STATE))
    state["mailboxes"][0]["mode"] = {"x": deep}
    with pytest.raises(SyncProtocolError):
        syncwire.decode_account_state(state)
    row = {"account": "a", "owner": "alpha", "home": "alpha", "epoch": 1, "state": deep}
    with pytest.raises(SyncProtocolError):
        parse_row(row)
    assert shown(deep) == "a JSON array" and shown("x" * 100) == repr("x" * 60)


@pytest.mark.parametrize(
    "data",
    [
        b'{"password": "\\ud800"}',
        b'{"a": ["x", {"b": "y\\uDFFFz"}]}',
        b'{"\\udc80": 1}',
        b'{"password": "\xed\xa0\x80"}',  # CESU-8: json.loads decodes with surrogatepass
        b'{"pair": "\\ude00\\ud83d"}',  # a pair the wrong way round is two lone ones
    ],
)
def test_lone_surrogates_are_refused_by_both_decoders(data: bytes) -> None:
    """No UTF-8 encoder takes a lone surrogate: one in a body failed wherever
    it was first encoded (a 500 on the control API)."""
    with pytest.raises(InvalidArgument, match="lone surrogate"):
        decode_body(data)
    with pytest.raises(SyncProtocolError, match="lone surrogate"):
        syncwire.decode_json(data)


def test_a_surrogate_pair_is_one_character_and_taken() -> None:
    assert decode_body(b'{"name": "\\ud83d\\ude00"}') == {"name": "\U0001f600"}
    assert syncwire.decode_json(b'{"name": "\\ud83d\\ude00"}') == {"name": "\U0001f600"}


@pytest.mark.parametrize("length", [b"+5", b"\t5", b"0_5", b" 5", b"5\x1f"])
def test_a_frame_length_is_decimal_digits_only(length: bytes) -> None:
    """int() takes a sign, white space and underscores the encoder never
    writes; a frame header holding them is refused like any other bad one."""
    with pytest.raises(SyncProtocolError, match="bad frame header"):
        syncwire.decode_frames(GUID.encode() + b" " + length + b"\n" + BODY[:5])
