"""One read per mailbox when a change wakes many sessions of it.

How this works: when mail arrives in a mailbox that many sessions watch in
IDLE (RFC 2177), every one of them must read the mailbox again and tell its
client. Done per session, ten thousand idle sessions cost ten thousand reads
of the store and, for ``\\Recent`` (RFC 3501 2.3.2), as many claims through
the group commit, though all of them read the same rows. :class:`Fanout`
shares the work per mailbox (by its uniqueid):

- :meth:`Fanout.snapshot`: a session that needs the mailbox while a read of
  it is already running joins that read instead of starting another. A read
  is shared only while it runs, and a change to the mailbox
  (:meth:`Fanout.changed`, called by the store's listener before any session
  is woken) stops later sessions from joining it: those start a fresh read.
  A session that joined a read which may have missed the change was marked
  stale by that change too and reads again at its next report.
- :meth:`Fanout.claim`: the sessions woken together would each claim the new
  UIDs; only the first one's claim runs (the store gives them to one session
  anyway). A session that finds a claim running waits for it; if that claim
  reached the last UID the session saw, the UIDs went to the other session
  and this one claims nothing, otherwise it claims what is left.

Only IDLE's wake-ups share (:mod:`peerd.services.imap.idle`): a command's
own report reads for itself, so a session always sees its own writes. The
sessions still parked in IDLE when a change comes do not come here: the
server tells them all in one go (:mod:`peerd.services.imap.wakeup`); this
is for the sessions woken instead (busy, or their client slow to read).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from engine.mailview import Snapshot

__all__ = ["Fanout"]

T = TypeVar("T")


def _retrieve(future: asyncio.Future[object]) -> None:
    # A shared read whose waiters all went away: its error is nobody's.
    if not future.cancelled():
        future.exception()


class Fanout:
    __slots__ = ("_claims", "_reads")

    def __init__(self) -> None:
        self._reads: dict[str, asyncio.Future[Snapshot]] = {}
        self._claims: dict[str, asyncio.Future[tuple[int, int]]] = {}

    def changed(self, uniqueids: Iterable[str]) -> None:
        """These mailboxes changed: a read already running may predate it."""
        for uniqueid in uniqueids:
            self._reads.pop(uniqueid, None)

    async def snapshot(self, uniqueid: str, read: Callable[[], Awaitable[Snapshot]]) -> Snapshot:
        """The mailbox as read by the running read of it, or by a new one."""
        return await asyncio.shield(self._shared(self._reads, uniqueid, read))

    async def claim(
        self, uniqueid: str, last_uid: int, claim: Callable[[], Awaitable[tuple[int, int]]]
    ) -> tuple[int, int]:
        """This session's ``\\Recent`` UIDs ``(first, last]`` of the mailbox, whose
        last UID it saw is ``last_uid``; ``(0, 0)`` when another session's claim,
        running now, took them."""
        running = self._claims.get(uniqueid)
        if running is not None:
            _, reached = await asyncio.shield(running)
            if reached >= last_uid:
                return 0, 0
        return await asyncio.shield(self._shared(self._claims, uniqueid, claim))

    @staticmethod
    def _shared(
        table: dict[str, asyncio.Future[T]], key: str, start: Callable[[], Awaitable[T]]
    ) -> asyncio.Future[T]:
        running = table.get(key)
        if running is not None:
            return running
        future = asyncio.ensure_future(start())
        table[key] = future

        def done(f: asyncio.Future[T]) -> None:
            if table.get(key) is f:
                del table[key]
            _retrieve(f)  # type: ignore[arg-type]

        future.add_done_callback(done)
        return future
