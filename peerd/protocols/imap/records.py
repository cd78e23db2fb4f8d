"""What the protocol core reads of a message record and of a mailbox, as protocols.

How this works: the store hands the server frozen values (UID, GUID, flags,
modseq, size, internal date per message; UIDVALIDITY, highest modseq, next UID
and the records of a mailbox). The core never imports the store: it reads
those values through these structural types, so any object with the fields
will do (tests pass small dataclasses of their own).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Protocol

__all__ = ["MailboxView", "Record"]


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
