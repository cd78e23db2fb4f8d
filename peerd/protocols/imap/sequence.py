"""Sequence sets: ``1:*,5,7:9`` (RFC 3501 9, ``sequence-set``).

How this works: :meth:`SequenceSet.parse` turns the wire text into ranges and
keeps ``*`` as :data:`STAR`, because ``*`` means "the largest number in use"
and that is only known when the command runs (RFC 3501 6.4.8: ``559:*`` always
includes the last UID, even when 559 is larger). Every question that needs
``*`` takes ``largest``: :meth:`~SequenceSet.resolve` gives sorted, merged
ranges (use it once per command, then bisect), :meth:`~SequenceSet.contains`
answers membership, :meth:`~SequenceSet.numbers` iterates ``1..largest``.

``$`` (RFC 5182 SEARCHRES) parses to a set with ``saved=True`` and no ranges:
the session substitutes the saved search result before asking anything.

:meth:`SequenceSet.from_numbers` builds the compact form a server writes in
``COPYUID``, ``APPENDUID``, ``VANISHED`` and ``ESEARCH`` responses.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from peerd.protocols.imap.responses import CommandError

__all__ = ["MAX_NUMBER", "STAR", "SequenceSet", "in_ranges", "resolved"]

STAR: Final = 0
"""``*`` in a range. 0 is never a valid message number or UID, so it cannot clash."""

MAX_NUMBER: Final = 0xFFFFFFFF
"""nz-number is an unsigned 32-bit integer (RFC 3501 9, ``number``)."""


def _number(text: str, whole: str) -> int:
    if text == "*":
        return STAR
    # isdigit() alone accepts other scripts' digits; isascii() keeps it to 0-9.
    if not (text.isascii() and text.isdigit()):
        raise CommandError(f"bad sequence set {whole[:40]!r}: {text[:20]!r} is not a number")
    if text[0] == "0":
        raise CommandError(
            f"bad sequence set {whole[:40]!r}: numbers start at 1 (nz-number, RFC 3501 9)"
        )
    # Past ten digits (no leading zero) it is above 2^32-1, and int() refuses
    # more than 4300 digits with a ValueError: no int() of those.
    if len(text) > 10 or int(text) > MAX_NUMBER:
        raise CommandError(f"bad sequence set {whole[:40]!r}: {text[:20]} is above 2^32-1")
    return int(text)


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """Ranges as written, ``(lo, hi)`` each, :data:`STAR` for ``*``; or ``$`` (``saved``)."""

    ranges: tuple[tuple[int, int], ...]
    saved: bool = False

    def __post_init__(self) -> None:
        if self.saved:
            if self.ranges:
                raise CommandError("'$' stands alone in a sequence set (RFC 5182)")
            return
        if not self.ranges:
            raise CommandError("empty sequence set")
        for lo, hi in self.ranges:
            if not (0 <= lo <= MAX_NUMBER and 0 <= hi <= MAX_NUMBER):
                raise CommandError(f"sequence number out of range: {lo}:{hi}")

    @classmethod
    def parse(cls, text: str | bytes) -> SequenceSet:
        """``1:*,5,7:9`` or ``$``; :class:`~peerd.protocols.imap.responses.CommandError` on 0 or garbage."""
        whole = text.decode("ascii", "replace") if isinstance(text, bytes) else text
        if whole == "$":
            return cls((), saved=True)
        if not whole:
            raise CommandError("empty sequence set")
        ranges: list[tuple[int, int]] = []
        for part in whole.split(","):
            lo_text, colon, hi_text = part.partition(":")
            lo = _number(lo_text, whole)
            hi = _number(hi_text, whole) if colon else lo
            ranges.append((lo, hi))
        return cls(tuple(ranges))

    @classmethod
    def from_numbers(cls, numbers: Iterable[int]) -> SequenceSet:
        """The shortest set holding exactly ``numbers`` (sorted, runs joined: ``1:3,7``)."""
        ranges: list[tuple[int, int]] = []
        for n in sorted(set(numbers)):
            if ranges and ranges[-1][1] == n - 1:
                ranges[-1] = (ranges[-1][0], n)
            else:
                ranges.append((n, n))
        return cls(tuple(ranges))

    @property
    def uses_star(self) -> bool:
        return any(lo == STAR or hi == STAR for lo, hi in self.ranges)

    def resolve(self, largest: int) -> tuple[tuple[int, int], ...]:
        """Sorted, non-overlapping ``(lo, hi)`` ranges with ``*`` = ``largest``.

        A reversed range counts as its sorted form (RFC 3501 9: ``4:2`` is
        ``2:4``). With an empty mailbox (``largest`` 0) ``*`` matches nothing.
        """
        self._check_resolved()
        spans: list[tuple[int, int]] = []
        for lo, hi in self.ranges:
            a = largest if lo == STAR else lo
            b = largest if hi == STAR else hi
            if a > b:
                a, b = b, a
            a = max(a, 1)
            if a <= b:
                spans.append((a, b))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1] + 1:
                if b > merged[-1][1]:
                    merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        return tuple(merged)

    def contains(self, number: int, largest: int) -> bool:
        """Whether ``number`` is in the set when ``*`` is ``largest``."""
        return any(a <= number <= b for a, b in self.resolve(largest))

    def numbers(self, largest: int) -> Iterator[int]:
        """Every number of the set in ``1..largest``, ascending, once each.

        For message sequence numbers this is the whole answer; for UIDs (sparse)
        test the mailbox's UIDs with :meth:`resolve` instead.
        """
        for a, b in self.resolve(largest):
            if a > largest:
                break
            yield from range(a, min(b, largest) + 1)

    def _check_resolved(self) -> None:
        if self.saved:
            raise ValueError("'$' must be replaced by the saved search result first (RFC 5182)")

    def __str__(self) -> str:
        if self.saved:
            return "$"
        parts = []
        for lo, hi in self.ranges:
            a = "*" if lo == STAR else str(lo)
            parts.append(a if lo == hi else f"{a}:{'*' if hi == STAR else hi}")
        return ",".join(parts)

    def __bytes__(self) -> bytes:
        return str(self).encode("ascii")


def resolved(sequence: SequenceSet, largest: int) -> tuple[list[int], list[int]]:
    """A set's merged ranges as two sorted lists (starts, ends), for :func:`in_ranges`.

    ``$`` (RFC 5182 SEARCHRES) stands for a saved result, which the caller
    looks up instead; here it is refused.
    """
    if sequence.saved:
        raise CommandError("'$' is not allowed here (RFC 5182)")
    spans = sequence.resolve(largest)
    return [a for a, _ in spans], [b for _, b in spans]


def in_ranges(value: int, ranges: tuple[list[int], list[int]]) -> bool:
    starts, ends = ranges
    at = bisect.bisect_right(starts, value) - 1
    return at >= 0 and value <= ends[at]
