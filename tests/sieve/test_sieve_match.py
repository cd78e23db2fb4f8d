"""``:matches`` without backtracking agrees with a regular expression, captures included."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.protocols.sieve.errors import WorkLimitExceeded
from peerd.protocols.sieve.match import Budget, compare, fold, glob_match
from tests.example_counts import examples


def reference(pattern: str) -> re.Pattern[str]:
    # RFC 5228 section 2.7.1: "*" any run, "?" one character, "\" quotes.
    # Lazy groups give each "*" as little as possible, left to right
    # (RFC 5229 section 3.2), the last one the rest.
    out = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        index += 1
        if char == "\\" and index < len(pattern):
            out.append(re.escape(pattern[index]))
            index += 1
        elif char == "*":
            out.append("(.*?)")
        elif char == "?":
            out.append("(.)")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


@settings(max_examples=examples(2000), deadline=None)
@given(
    st.text(alphabet="ab*?\\", max_size=10),
    st.text(alphabet="ab*?\\", max_size=12),
)
def test_glob_agrees_with_regex(pattern: str, text: str) -> None:
    expected = reference(pattern).fullmatch(text)
    got = glob_match(text, pattern, Budget(10**9))
    if expected is None:
        assert got is None
    else:
        assert got == [expected.group(0), *expected.groups()]


@pytest.mark.parametrize(
    ("value", "key", "match_type", "comparator", "expected"),
    [
        ("Hello", "hello", "is", "i;ascii-casemap", True),
        ("Hello", "hello", "is", "i;octet", False),
        ("ÉCOLE", "école", "is", "i;ascii-casemap", False),  # A-Z only (RFC 4790 9.2)
        ("abc", "B", "contains", "i;ascii-casemap", True),
        ("", "", "contains", "i;octet", True),
        ("10", "9", "value", "i;ascii-numeric", True),
        ("x", "9", "value", "i;ascii-numeric", True),  # non-digits are "infinity"
        ("007", "7", "is", "i;ascii-numeric", True),
    ],
)
def test_comparators(
    value: str, key: str, match_type: str, comparator: str, expected: bool
) -> None:
    relation = "gt" if match_type == "value" else None
    got = compare(value, key, match_type, comparator, Budget(10**6), relation)
    assert (got is not None) is expected


def test_fold_keeps_length() -> None:
    assert fold("AbÇ-Z") == "abÇ-z"


def test_budget_stops_a_quadratic_search() -> None:
    with pytest.raises(WorkLimitExceeded):
        glob_match("a" * 100_000, "*" + "a?" * 100 + "b*", Budget(1_000_000))
