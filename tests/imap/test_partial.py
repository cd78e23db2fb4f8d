"""The PARTIAL range (RFC 9394 4) in the sans-I/O core: parsing, and the
positions it picks checked against the rule written plainly: position p
(1-based) is in ``low:high`` when low <= p <= high, and in ``-low:-high``
when low <= n + 1 - p <= high (-1 is the last of n)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerd.protocols.imap.partial import PartialRange, partial_data
from peerd.protocols.imap.responses import CommandError

numbers = st.integers(min_value=1, max_value=40)


@given(
    items=st.lists(st.integers(min_value=1, max_value=10**6), max_size=30),
    a=numbers,
    b=numbers,
    from_end=st.booleans(),
)
def test_pick_takes_the_positions_the_rfc_names(
    items: list[int], a: int, b: int, from_end: bool
) -> None:
    sign = "-" if from_end else ""
    partial = PartialRange.parse(f"{sign}{a}:{sign}{b}")
    low, high = min(a, b), max(a, b)
    n = len(items)
    expected = [
        item for p, item in enumerate(items, 1) if low <= (n + 1 - p if from_end else p) <= high
    ]
    assert partial.pick(items) == expected
    assert str(partial) == f"{sign}{low}:{sign}{high}"


def test_partial_data_is_a_sequence_set_in_order_or_nil() -> None:
    partial = PartialRange.parse("2:4")
    assert partial_data(partial, [9, 3, 4, 5, 1]) == b"PARTIAL (2:4 3:5)"
    assert partial_data(partial, [9, 7, 3, 1]) == b"PARTIAL (2:4 7,3,1)"
    assert partial_data(partial, [9]) == b"PARTIAL (2:4 NIL)"


@pytest.mark.parametrize("text", ["0:5", "1:*", "-1:5", "5", "1:4294967296", "-0:-1", "a:b", "1:"])
def test_a_malformed_range_is_refused(text: str) -> None:
    with pytest.raises(CommandError):
        PartialRange.parse(text)
