"""Comparators and match types (RFC 5228 section 2.7, RFC 4790, RFC 5231), with a work budget.

How this works: :func:`compare` asks whether one value matches one key
under a match type (``is``, ``contains``, ``matches``; ``value`` with a
relation, RFC 5231) and a comparator (``i;octet``, ``i;ascii-casemap``,
``i;ascii-numeric``). ``:count`` compares a number of values, so it is done
by the interpreter with :func:`compare_numbers`.

``:matches`` never uses a backtracking regular expression. A pattern is cut
at its ``*`` into segments of fixed length (literal characters and ``?``);
the first segment must match at the start, the last at the end, and each one
between is found at its leftmost place after the previous one. Taking the
leftmost place is always right for such patterns (a later place leaves less
text for what follows, never more), so there is no backtracking at all: the
work is one forward scan per segment. Inside a segment, the longest literal
run is searched with ``str.find`` and the rest of the segment checked at
each place it turns up. Each scanned character and each checked place is
charged to a :class:`Budget`; when it runs out, :class:`WorkLimitExceeded`.

The match variables of RFC 5229 section 3.2 come out of the same scan:
``${0}`` is the whole value, then one per wildcard in order, each ``*``
taking as little as possible (the leftmost-segment rule above) and the last
``*`` the rest.

Case folding (``i;ascii-casemap``, RFC 4790 section 9.2) maps A-Z to a-z
only, so it never changes a string's length and match positions found in the
folded text are valid in the original.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, TypeAlias

from .errors import WorkLimitExceeded

__all__ = [
    "ASCII_CASEMAP",
    "ASCII_NUMERIC",
    "COMPARATORS",
    "MATCH_STEP_COST",
    "OCTET",
    "RELATIONS",
    "Budget",
    "Number",
    "compare",
    "compare_numbers",
    "fold",
    "glob_match",
]

OCTET: Final = "i;octet"
ASCII_CASEMAP: Final = "i;ascii-casemap"
ASCII_NUMERIC: Final = "i;ascii-numeric"
COMPARATORS: Final = frozenset({OCTET, ASCII_CASEMAP, ASCII_NUMERIC})
# RFC 5231 section 4.
RELATIONS: Final = frozenset({"gt", "ge", "lt", "le", "eq", "ne"})

# The cost of one step done in Python (one candidate place, one command), in
# the budget's units of about one character scanned by C code.
MATCH_STEP_COST: Final = 300
# One literal run checked at a candidate place (a str.startswith call).
_RUN_COST: Final = 100

_FOLD: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class Budget:
    """What is left of ``Limits.max_work`` for one evaluation."""

    __slots__ = ("left",)

    def __init__(self, units: int) -> None:
        self.left = units

    def charge(self, units: int) -> None:
        self.left -= units
        if self.left < 0:
            raise WorkLimitExceeded("the script did too much work on this message")


def fold(value: str) -> str:
    """i;ascii-casemap: A-Z to a-z, nothing else (RFC 4790 section 9.2)."""
    return value.translate(_FOLD)


# A number under i;ascii-numeric: its digits without leading zeros, after
# their count, so that tuples order as the numbers do. Not int(): it refuses
# more than 4,300 digits (sys.get_int_max_str_digits), and a header field
# can hold more; the ValueError failed the delivery.
Number: TypeAlias = tuple[int, str]
_DIGITS: Final = re.compile("[0-9]*")


def _numeric(value: str) -> Number | None:
    # RFC 4790 section 9.1: the leading digits are the number; a value that
    # does not start with a digit is "positive infinity" (None here).
    match = _DIGITS.match(value)
    digits = match.group() if match else ""
    if not digits:
        return None
    digits = digits.lstrip("0") or "0"
    return len(digits), digits


def _holds(order: int, relation: str) -> bool:
    """RFC 5231 section 4: ``relation`` for an order -1, 0 or 1 of left to right."""
    return {
        "gt": order > 0,
        "ge": order >= 0,
        "lt": order < 0,
        "le": order <= 0,
        "eq": order == 0,
        "ne": order != 0,
    }[relation]


def compare_numbers(left: Number | None, relation: str, right: Number | None) -> bool:
    """RFC 5231 relations under i;ascii-numeric; None is the infinity of RFC 4790."""
    # Order: every number < None; None == None.
    if left is None or right is None:
        order = 0 if left is None and right is None else (1 if left is None else -1)
    else:
        order = (left > right) - (left < right)
    return _holds(order, relation)


@dataclass(frozen=True, slots=True)
class _Segment:
    """Fixed-length piece of a pattern between two ``*``: literals and ``?``."""

    length: int
    # (offset in the segment, literal text) runs; "?" places are the gaps.
    runs: tuple[tuple[int, str], ...]
    # Offsets of the "?" in the segment, for match variables.
    singles: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Pattern:
    segments: tuple[_Segment, ...]  # len(stars) + 1 of them
    # For each wildcard in pattern order: ("*", star index) or ("?", segment, offset).
    order: tuple[tuple[int, int, int], ...]


@lru_cache(maxsize=256)
def _compile(pattern: str) -> _Pattern:
    # RFC 5228 section 2.7.1: "\\" quotes the next character, so "\\*" is
    # a literal star and "\\\\" a literal backslash.
    segments: list[_Segment] = []
    order: list[tuple[int, int, int]] = []
    runs: list[tuple[int, str]] = []
    singles: list[int] = []
    literal: list[str] = []
    length = 0
    run_start = 0

    def close_run() -> None:
        if literal:
            runs.append((run_start, "".join(literal)))
            literal.clear()

    index = 0
    while index < len(pattern):
        char = pattern[index]
        index += 1
        if char == "\\" and index < len(pattern):
            char = pattern[index]
            index += 1
            if not literal:
                run_start = length
            literal.append(char)
            length += 1
        elif char == "*":
            close_run()
            order.append((0, len(segments), 0))
            segments.append(_Segment(length, tuple(runs), tuple(singles)))
            runs, singles, length = [], [], 0
        elif char == "?":
            close_run()
            order.append((1, len(segments), length))
            singles.append(length)
            length += 1
        else:
            if not literal:
                run_start = length
            literal.append(char)
            length += 1
    close_run()
    segments.append(_Segment(length, tuple(runs), tuple(singles)))
    return _Pattern(tuple(segments), tuple(order))


def _fits(text: str, segment: _Segment, at: int, budget: Budget) -> bool:
    if at < 0 or at + segment.length > len(text):
        return False
    for offset, run in segment.runs:
        budget.charge(_RUN_COST + len(run))
        if not text.startswith(run, at + offset):
            return False
    return True


def _find(text: str, segment: _Segment, start: int, budget: Budget) -> int:
    """Leftmost place >= start where the segment fits, or -1."""
    if start + segment.length > len(text):
        return -1
    if not segment.runs:  # only "?": any place with room fits
        return start
    # Search the longest literal run; check the others where it turns up.
    offset, anchor = max(segment.runs, key=lambda run: len(run[1]))
    position = start + offset
    while True:
        found = text.find(anchor, position)
        budget.charge((len(text) if found < 0 else found) - position + len(anchor))
        if found < 0:
            return -1
        place = found - offset
        if place + segment.length > len(text):
            return -1
        budget.charge(MATCH_STEP_COST)
        if _fits(text, segment, place, budget):
            return place
        position = found + 1


def _glob_spans(text: str, pattern: str, budget: Budget) -> list[tuple[int, int]] | None:
    compiled = _compile(pattern)
    segments = compiled.segments
    budget.charge(MATCH_STEP_COST)
    first, last = segments[0], segments[-1]
    if len(segments) == 1:
        if len(text) != first.length or not _fits(text, first, 0, budget):
            return None
        starts = [0]
    else:
        if not _fits(text, first, 0, budget):
            return None
        starts = [0]
        position = first.length
        for segment in segments[1:-1]:
            place = _find(text, segment, position, budget)
            if place < 0:
                return None
            starts.append(place)
            position = place + segment.length
        tail = len(text) - last.length
        if tail < position or not _fits(text, last, tail, budget):
            return None
        starts.append(tail)
    spans = [(0, len(text))]
    for kind, segment_index, offset in compiled.order:
        if kind == 0:  # "*" between segment i and i + 1
            spans.append(
                (starts[segment_index] + segments[segment_index].length, starts[segment_index + 1])
            )
        else:
            at = starts[segment_index] + offset
            spans.append((at, at + 1))
    return spans


def glob_match(text: str, pattern: str, budget: Budget) -> list[str] | None:
    """Match ``text`` against a ``:matches`` pattern (both already folded if needed).

    Returns None, or the match variables as strings of ``text``:
    ``[whole, first wildcard, second, ...]``.
    """
    spans = _glob_spans(text, pattern, budget)
    return None if spans is None else [text[begin:end] for begin, end in spans]


def compare(
    value: str,
    key: str,
    match_type: str,
    comparator: str,
    budget: Budget,
    relation: str | None = None,
) -> list[str] | None:
    """Does ``value`` match ``key``? A list (match variables for ``matches``, else ``[]``) or None.

    The value is the message's string (a header, an address part), the key
    the script's (RFC 5228 section 2.7.1).
    """
    budget.charge(len(value) + len(key))
    if comparator == ASCII_NUMERIC:
        # RFC 4790 section 9.1 defines equality and ordering only; substring
        # and wildcard matching are not offered (RFC 5228 section 2.7.3).
        left, right = _numeric(value), _numeric(key)
        if match_type == "is":
            return [] if compare_numbers(left, "eq", right) else None
        if match_type == "value":
            assert relation is not None
            return [] if compare_numbers(left, relation, right) else None
        return None
    if comparator == ASCII_CASEMAP:
        folded_value, folded_key = fold(value), fold(key)
    else:
        folded_value, folded_key = value, key
    if match_type == "is":
        return [] if folded_value == folded_key else None
    if match_type == "contains":
        return [] if folded_key in folded_value else None
    if match_type == "matches":
        spans = _glob_spans(folded_value, folded_key, budget)
        # Folding keeps lengths: the folded text's spans cut the original.
        return None if spans is None else [value[begin:end] for begin, end in spans]
    if match_type == "value":
        assert relation is not None
        order = (folded_value > folded_key) - (folded_value < folded_key)
        return [] if _holds(order, relation) else None
    raise ValueError(f"unknown match type {match_type}")
