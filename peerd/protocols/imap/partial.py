"""Paged results: the PARTIAL search return option and FETCH modifier (RFC 9394; the
return option first came with RFC 5267 4.4).

How this works: ``PARTIAL 1:100`` asks for the results at positions 1 to 100
of the whole answer, counted from its first (lowest) message; ``PARTIAL
-1:-100`` for the positions counted from its last, -1 being the last
(RFC 9394 3.1, 4: ``partial-range-first`` / ``partial-range-last``; both
ends of one sign, no ``*``, 500:400 the same as 400:500).
:meth:`PartialRange.parse` reads the range (a malformed one is a
:class:`~peerd.protocols.imap.responses.CommandError`, answered BAD),
:meth:`PartialRange.pick` takes those positions out of an ordered answer
(SEARCH's ascending numbers, SORT's sort order, FETCH's messages in mailbox
order) and keeps their order, and :func:`partial_data` writes the ESEARCH
return data ``PARTIAL (range results)``, ``NIL`` for no result in the range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from peerd.protocols.imap.responses import CommandError
from peerd.protocols.imap.sequence import MAX_NUMBER

__all__ = ["PartialRange", "partial_data", "runs"]

T = TypeVar("T")


def _nz_number(text: str, whole: str) -> int:
    # RFC 9394 4: nz-number, a non-zero unsigned 32-bit number; ASCII digits only.
    if not (text.isascii() and text.isdigit()) or text.startswith("0"):
        raise CommandError(f"PARTIAL: bad range {whole[:40]!r} (RFC 9394 4)")
    # No int() of more than ten digits: past 2^32-1, and int() refuses 4300.
    if len(text) > 10 or int(text) > MAX_NUMBER:
        raise CommandError(f"PARTIAL: {whole[:40]!r} is out of range (RFC 9394 4)")
    return int(text)


@dataclass(frozen=True, slots=True)
class PartialRange:
    """Positions ``low`` to ``high`` (1-based, low <= high) of an answer,
    counted from its end when ``from_end`` (``-low:-high``)."""

    low: int
    high: int
    from_end: bool = False

    @classmethod
    def parse(cls, text: str) -> PartialRange:
        first, colon, second = text.partition(":")
        negative = first.startswith("-")
        if not colon or negative != second.startswith("-"):
            raise CommandError(f"PARTIAL: bad range {text[:40]!r} (RFC 9394 4)")
        if negative:
            first, second = first[1:], second[1:]
        a, b = _nz_number(first, text), _nz_number(second, text)
        return cls(min(a, b), max(a, b), negative)

    def pick(self, ordered: Sequence[T]) -> list[T]:
        """The items at these positions of ``ordered``, in ``ordered``'s order."""
        if self.from_end:
            # -1 is the last item: -low..-high is ordered[n-high .. n-low].
            start, stop = max(len(ordered) - self.high, 0), len(ordered) - self.low + 1
        else:
            start, stop = self.low - 1, self.high
        return list(ordered[start:stop]) if stop > start else []

    def __str__(self) -> str:
        sign = "-" if self.from_end else ""
        return f"{sign}{self.low}:{sign}{self.high}"


def runs(ordered: Sequence[int]) -> str:
    """``ordered`` as a sequence set that keeps its order: a range only where
    numbers ascend one by one (``5:7,1``; RFC 5267 3.2 for ESORT's ALL)."""
    spans: list[list[int]] = []
    for n in ordered:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in spans)


def partial_data(partial: PartialRange, ordered: Sequence[int]) -> bytes:
    """``PARTIAL (range results)`` for an answer in its order (RFC 9394 3.1,
    4 ``ret-data-partial``): the numbers at the range's positions, or NIL."""
    picked = partial.pick(ordered)
    return b"PARTIAL (%s %s)" % (str(partial).encode(), runs(picked).encode() if picked else b"NIL")
