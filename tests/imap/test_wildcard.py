"""LIST/LSUB wildcards (RFC 3501 6.3.8): the linear matcher against a plain one,
the limits, and the hostile patterns of issue 9 item 1."""

from __future__ import annotations

import functools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.protocols.imap.responses import CODE_LIMIT
from peerd.protocols.imap.wildcard import (
    MAX_PATTERN,
    MAX_WILDCARDS,
    PatternLimit,
    compile_pattern,
    join,
    matches,
)
from tests.example_counts import examples


def reference_match(pattern: str, name: str) -> bool:
    """RFC 3501 6.3.8 read literally, by plain recursion: ``*`` any run of
    characters, ``%`` any run without ``/``, anything else itself; the five
    characters of a first level ``INBOX`` compared without case (RFC 3501 5.1)."""
    first = name.split("/", 1)[0]
    inbox_chars = 5 if first.upper() == "INBOX" else 0

    def same(ch: str, at: int) -> bool:
        if at < inbox_chars:
            return ch.upper() == name[at].upper()
        return ch == name[at]

    @functools.cache
    def match(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(name)
        ch = pattern[i]
        if ch == "*":
            return any(match(i + 1, k) for k in range(j, len(name) + 1))
        if ch == "%":
            k = j
            while True:
                if match(i + 1, k):
                    return True
                if k == len(name) or name[k] == "/":
                    return False
                k += 1
        return j < len(name) and same(ch, j) and match(i + 1, j + 1)

    return match(0, 0)


levels = st.one_of(
    st.sampled_from(["INBOX", "inbox", "Inbox", "a", "b", "ab"]),
    st.text("aAbB", min_size=1, max_size=4),
)
names = st.lists(levels, min_size=1, max_size=4).map("/".join)
patterns = st.text("aAbBxI*%/", max_size=10) | st.builds(
    lambda head, tail: head + tail,
    st.sampled_from(["INBOX", "inbox", "in", "IN%", "*", "%/"]),
    st.text("aAbB*%/", max_size=6),
)


@settings(max_examples=examples(1500), deadline=None)
@given(reference=st.sampled_from(["", "a/", "INBOX/", "inbox", "%"]), pattern=patterns, name=names)
def test_matches_like_the_reference_matcher(reference: str, pattern: str, name: str) -> None:
    assert matches(reference, pattern, name) == reference_match(reference + pattern, name)


@settings(max_examples=examples(800), deadline=None)
@given(pattern=patterns, name=names)
def test_matches_below_is_exact(pattern: str, name: str) -> None:
    # A name below ``name`` matches iff one of these does: from any state the
    # automaton can be in after "name/", the pattern's remaining literals finish it.
    witnesses = {pattern[k:].replace("*", "").replace("%", "") for k in range(len(pattern) + 1)}
    expected = any(reference_match(pattern, f"{name}/{w}") for w in witnesses)
    assert compile_pattern("", pattern).matches_below(name) == expected


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("*", "a/b/c", True),
        ("%", "a/b", False),
        ("%", "a", True),
        ("a/%", "a/b", True),
        ("a/%", "a/b/c", False),
        ("a/*", "a/b/c", True),
        ("%*", "a/b", True),  # a run holding "*" is "*"
        ("%%", "a/b", False),
        ("inbox", "INBOX", True),
        ("In%", "INBOX", True),
        ("*x", "INBOX", True),
        ("inbox/%", "INBOX/Sent", True),
        ("inbox/sent", "INBOX/Sent", False),  # only the INBOX level ignores case
        ("Inboxes", "INBOXES", False),  # not the INBOX level: case counts
        ("a*", "A", False),
        ("", "", True),
    ],
)
def test_rfc3501_examples(pattern: str, name: str, expected: bool) -> None:
    assert matches("", pattern, name) is expected


def test_reference_is_prepended() -> None:
    assert join("archive/", "%") == "archive/%"
    assert matches("archive/", "%", "archive/2024")
    assert not matches("archive/", "%", "archive/2024/jan")


def test_limits_refuse_with_no_limit() -> None:
    with pytest.raises(PatternLimit) as caught:
        compile_pattern("", "%" * 30_000)
    assert caught.value.status == "NO" and caught.value.code == CODE_LIMIT
    with pytest.raises(PatternLimit):
        compile_pattern("a" * 1000, "b" * (MAX_PATTERN - 999))
    with pytest.raises(PatternLimit):
        compile_pattern("", "a*" * (MAX_WILDCARDS + 1))
    compile_pattern("", "a*" * MAX_WILDCARDS)  # at the limit: accepted


def test_hostile_patterns_take_milliseconds() -> None:
    # Issue 9 item 1: "*a*a*a*b" against a 999-character name froze a node for
    # minutes (a backtracking regex); the worst patterns within the limits
    # against 1000-character names must cost well under a millisecond each.
    names = [
        "a" * 999,
        "a" * 998 + "b",
        "a" * 500 + "/" + "a" * 498 + "b",
        ("ab/" * 333) + "a",
        "INBOX/" + "a" * 994,
    ]
    worst = [
        "*a*a*a*b",
        "%a%a%a%b",
        "*a" * 32 + "%b" * 32,
        ("*a%" * 21) + "b",
        "inbox/" + "*a" * 63 + "c",
        "*" + "a" * (MAX_PATTERN - 2) + "*",
    ]
    compiled = [compile_pattern("", p) for p in worst]
    # This thread's CPU time, not the clock: on a machine busy with other
    # processes (more xdist workers than cores) the clock counts their turns.
    start = time.thread_time()
    for pattern in compiled:
        for name in names * 20:
            pattern.matches(name)
            pattern.matches_below(name)
    elapsed = time.thread_time() - start
    runs = len(compiled) * len(names) * 20 * 2
    assert elapsed / runs < 0.001, f"{elapsed / runs * 1e6:.0f} us per match"
    assert compile_pattern("", "*a*a*a*b").matches("a" * 998 + "b")
    assert not compile_pattern("", "%a%a%a%b").matches("a" * 500 + "/" + "a" * 498 + "b")
