"""Addresses out of header fields (RFC 5322 section 3.4) and RFC 2047 decoding, hostile input included."""

from __future__ import annotations

import time

import pytest

from peerd.protocols.sieve.address import addresses, part
from peerd.protocols.sieve.message import Message, decode_words


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ann@example.com", ["ann@example.com"]),
        ("Ann <ann@example.com>, bob@example.org", ["ann@example.com", "bob@example.org"]),
        ('"Doe, John" <john@example.org>', ["john@example.org"]),
        ("john@example.org (John, the (nested) one)", ["john@example.org"]),
        ("friends: a@x, b@y;, c@z", ["a@x", "b@y", "c@z"]),
        ("undisclosed-recipients:;", []),
        ("<@relay.example:user@example.com>", ["user@example.com"]),
        ('"quoted\\"local"@example.com', ['"quoted\\"local"@example.com']),
        ("", []),
    ],
)
def test_addresses(raw: str, expected: list[str]) -> None:
    assert addresses(raw) == expected


def test_parts() -> None:
    assert part("bob+lists@example.org", "localpart") == "bob+lists"
    assert part("bob+lists@example.org", "domain") == "example.org"
    assert part("bob+lists@example.org", "user") == "bob"
    assert part("bob+lists@example.org", "detail") == "lists"
    assert part("bob@example.org", "detail") is None
    assert part("bob+@example.org", "detail") == ""
    assert part("local", "domain") == ""


def test_deep_comments_do_not_recurse() -> None:
    # The standard library's address parser recurses per "(" and overflows.
    started = time.thread_time()
    assert addresses("(" * 100_000 + "a@b") == []
    assert addresses("a@b " + "(" * 50_000 + ")" * 50_000) == ["a@b"]
    assert time.thread_time() - started < 1.0


def test_encoded_words() -> None:
    assert decode_words("=?utf-8?q?caf=C3=A9?= =?utf-8?b?IGF1?=") == "café au"
    assert decode_words("a =?iso-8859-1?q?=E9?= b") == "a é b"
    assert decode_words("=?unknown-charset?q?x?=") == "x"
    assert decode_words("=?utf-8?b?!!!?=") == "=?utf-8?b?!!!?="
    started = time.thread_time()
    decode_words("=?a?q?" * 50_000)
    assert time.thread_time() - started < 1.0


def test_headers_unfold_and_keep_raw() -> None:
    data = b"To: =?utf-8?q?Doe=2C_J?= <j@x>,\r\n k@y\r\nnot a header\r\n\r\nbody"
    message = Message.from_bytes(data, "", "j@x")
    (header,) = message.headers
    assert header.value == "Doe, J <j@x>, k@y"
    assert addresses(header.raw) == ["j@x", "k@y"]
    assert message.size == len(data)
