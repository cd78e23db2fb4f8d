"""The maildrop of one POP3 session: messages numbered at login, DELE marks (RFC 1939 5).

How this works: after a login the server loads the mailbox's live messages
in UID order and hands them to :class:`Maildrop`, which numbers them
1..n for the whole session (RFC 1939 section 5: numbers never change while the
session lasts). DELE only marks a message; a marked message is gone from
STAT, LIST, UIDL, RETR and TOP until RSET clears the marks. At QUIT the
server removes :meth:`Maildrop.marked` from the store in the UPDATE state
(RFC 1939 section 6). This module does no I/O: it answers with reply bytes,
and for RETR/TOP it hands out the :class:`Entry` whose bytes the server reads.

UIDL names a message ``<mailbox uniqueid>.<uid>`` (:func:`.replies.uidl`):
both are replicated unchanged, so they are the same on the partner after a
failover.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, TypeAlias

from .replies import Err, Ok, multiline, uidl

__all__ = ["TEXT_NO_SUCH_MESSAGE", "Entry", "Maildrop"]

TEXT_NO_SUCH_MESSAGE: Final = "no such message"


@dataclass(frozen=True, slots=True)
class Entry:
    """One message: its UID, its size in octets, and ``key`` for the server to read it by."""

    uid: int
    size: int
    key: str

    def __post_init__(self) -> None:
        if isinstance(self.uid, bool) or self.uid < 1 or self.size < 0:
            raise ValueError("an entry needs a positive UID and a size >= 0")


_Value: TypeAlias = Callable[[Entry], str]


class Maildrop:
    """Numbered messages and their deletion marks."""

    __slots__ = ("_deleted", "entries", "uniqueid")

    def __init__(self, uniqueid: str, entries: Iterable[Entry]) -> None:
        self.uniqueid = uniqueid
        self.entries: tuple[Entry, ...] = tuple(entries)
        self._deleted: set[int] = set()  # message numbers

    def _live(self) -> list[tuple[int, Entry]]:
        return [(n, e) for n, e in enumerate(self.entries, 1) if n not in self._deleted]

    def get(self, msg: int) -> Entry | None:
        """Message ``msg`` unless it does not exist or is marked deleted."""
        if not 1 <= msg <= len(self.entries) or msg in self._deleted:
            return None
        return self.entries[msg - 1]

    def _uidl(self, entry: Entry) -> str:
        return uidl(self.uniqueid, entry.uid)

    def greeting(self) -> bytes:
        """The ``+OK`` that ends a successful login."""
        return Ok(f"{len(self.entries)} messages").encode()

    def stat(self) -> bytes:
        """RFC 1939 section 5, STAT: ``+OK count octets``, marked messages left out."""
        live = self._live()
        return Ok(f"{len(live)} {sum(e.size for _, e in live)}").encode()

    def scan_listing(self, msg: int | None) -> bytes:
        """LIST [msg]: the scan listing ``n size`` (RFC 1939 section 5)."""
        return self._listing(msg, lambda e: str(e.size))

    def unique_id_listing(self, msg: int | None) -> bytes:
        """UIDL [msg]: the unique-id listing ``n id`` (RFC 1939 section 7)."""
        return self._listing(msg, self._uidl)

    def _listing(self, msg: int | None, value: _Value) -> bytes:
        if msg is not None:
            entry = self.get(msg)
            if entry is None:
                return Err(TEXT_NO_SUCH_MESSAGE).encode()
            return Ok(f"{msg} {value(entry)}").encode()
        return multiline(Ok(), [f"{n} {value(e)}" for n, e in self._live()])

    def dele(self, msg: int) -> bytes:
        """DELE msg: mark it; deleting it twice is an error (RFC 1939 section 5)."""
        if self.get(msg) is None:
            return Err(TEXT_NO_SUCH_MESSAGE).encode()
        self._deleted.add(msg)
        return Ok(f"message {msg} deleted").encode()

    def rset(self) -> bytes:
        """RSET: every mark cleared (RFC 1939 section 5)."""
        self._deleted.clear()
        return Ok(f"{len(self.entries)} messages").encode()

    def marked(self) -> list[Entry]:
        """The messages to remove at QUIT, in number order."""
        return [self.entries[n - 1] for n in sorted(self._deleted)]
