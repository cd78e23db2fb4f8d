"""Sequence sets: parsing, ``*``, membership, iteration, the compact form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerd.protocols.imap.responses import CommandError
from peerd.protocols.imap.sequence import STAR, SequenceSet


def test_parse_forms() -> None:
    assert SequenceSet.parse("1:*,5,7:9").ranges == ((1, STAR), (5, 5), (7, 9))
    assert SequenceSet.parse(b"*").ranges == ((STAR, STAR),)
    assert SequenceSet.parse("4294967295").ranges == ((4294967295, 4294967295),)
    assert SequenceSet.parse("$").saved


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0",
        "1:0",
        "0:*",
        "01",
        "1,",
        ",1",
        "1::2",
        "a",
        "1:b",
        "-1",
        "1 2",
        "²",
        "4294967296",
        "$,1",
    ],
)
def test_garbage_and_zero_are_refused_clearly(text: str) -> None:
    with pytest.raises(CommandError) as info:
        SequenceSet.parse(text)
    assert "sequence set" in str(info.value) or "'$'" in str(info.value)


def test_star_is_the_largest_and_ranges_may_be_reversed() -> None:
    seq = SequenceSet.parse("5:*")
    assert seq.resolve(10) == ((5, 10),)
    # RFC 3501 6.4.8: 559:* includes the last UID even when 559 is larger.
    assert seq.resolve(3) == ((3, 5),)
    assert seq.contains(3, 3)
    assert SequenceSet.parse("4:2").resolve(9) == ((2, 4),)


def test_resolve_merges_and_sorts() -> None:
    assert SequenceSet.parse("7:9,1:3,4,8,20").resolve(100) == ((1, 4), (7, 9), (20, 20))


def test_empty_mailbox_star_matches_nothing() -> None:
    assert SequenceSet.parse("*").resolve(0) == ()
    assert list(SequenceSet.parse("1:*").numbers(0)) == []


def test_membership_and_iteration() -> None:
    seq = SequenceSet.parse("2,4:6,9:*")
    assert [n for n in range(1, 12) if seq.contains(n, 10)] == [2, 4, 5, 6, 9, 10]
    assert list(seq.numbers(10)) == [2, 4, 5, 6, 9, 10]
    assert list(SequenceSet.parse("1:4294967295").numbers(3)) == [1, 2, 3]


def test_saved_result_must_be_substituted() -> None:
    with pytest.raises(ValueError, match="saved search"):
        SequenceSet.parse("$").resolve(5)


def test_compact_form() -> None:
    seq = SequenceSet.from_numbers([7, 1, 2, 3, 3, 9, 8, 12])
    assert str(seq) == "1:3,7:9,12"
    assert bytes(seq) == b"1:3,7:9,12"
    assert str(SequenceSet.parse("1:*,*")) == "1:*,*"
    assert not SequenceSet.parse("1:5").uses_star and SequenceSet.parse("3:*").uses_star


@given(st.sets(st.integers(min_value=1, max_value=500), min_size=1))
def test_from_numbers_holds_exactly_those(numbers: set[int]) -> None:
    seq = SequenceSet.from_numbers(numbers)
    assert list(seq.numbers(500)) == sorted(numbers)
    assert SequenceSet.parse(str(seq)) == seq


@given(
    st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=8),
    st.integers(0, 60),
)
def test_membership_agrees_with_the_definition(ranges: list[tuple[int, int]], largest: int) -> None:
    seq = SequenceSet(tuple(ranges))
    reparsed = SequenceSet.parse(str(seq))
    for n in range(1, 70):
        expected = any(
            min(lo or largest, hi or largest) <= n <= max(lo or largest, hi or largest)
            for lo, hi in ranges
        )
        assert seq.contains(n, largest) == expected == reparsed.contains(n, largest)
