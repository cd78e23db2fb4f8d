"""What the protocol core reads of a message record and of a mailbox, as protocols.

How this works: the store hands the server frozen values (UID, GUID, flags,
modseq, size, internal date per message; UIDVALIDITY, highest modseq, next UID
and the records of a mailbox). The core never imports the store: it reads
those values through these structural types, so any object with the fields
will do (tests pass small dataclasses of their own).

:class:`Numbered` is a run of consecutive messages as (sequence number,
record) pairs, made as they are read: what a FETCH of ``1:*`` or of a page
of a mailbox names, without a pair object held per message.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator, Sequence
from typing import Protocol, overload

__all__ = ["MailboxView", "Numbered", "Record"]


class Record(Protocol):
    """One live message: what searches, FETCH and the selected state read of it."""

    @property
    def uid(self) -> int: ...
    @property
    def guid(self) -> str: ...
    @property
    def flags(self) -> str: ...  # space-separated, canonical
    @property
    def modseq(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def internaldate(self) -> dt.datetime: ...


class MailboxView(Protocol):
    """A mailbox as the store sees it at one moment: live records in UID order."""

    @property
    def uidvalidity(self) -> int: ...
    @property
    def highestmodseq(self) -> int: ...
    @property
    def uidnext(self) -> int: ...
    @property
    def records(self) -> Sequence[Record]: ...


class Numbered(Sequence[tuple[int, "Record"]]):
    """``records`` numbered from ``first``: the pair at index ``i`` is
    ``(first + i, records[i])``. A slice is a :class:`Numbered` too (step 1);
    equal to any sequence of the same pairs."""

    __slots__ = ("first", "records")

    def __init__(self, first: int, records: tuple[Record, ...]) -> None:
        self.first = first
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> tuple[int, Record]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[int, Record]]: ...
    def __getitem__(self, index: int | slice) -> tuple[int, Record] | Sequence[tuple[int, Record]]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self.records))
            if step != 1:
                return list(self)[index]
            return Numbered(self.first + start, self.records[start:stop])
        record = self.records[index]  # IndexError as a tuple's
        return (self.first + (index if index >= 0 else len(self.records) + index), record)

    def __iter__(self) -> Iterator[tuple[int, Record]]:
        return zip(itertools.count(self.first), self.records)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Numbered):
            return (not self.records or self.first == other.first) and (
                self.records == other.records
            )
        if isinstance(other, Sequence):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Numbered({self.first}, <{len(self.records)} records>)"
