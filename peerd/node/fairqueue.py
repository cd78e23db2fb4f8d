"""A bounded number of slots, shared fairly between sources: the password-hashing queue.

How this works: :class:`FairSlots` lets at most ``slots`` holders run at
once (scrypt takes 32 MiB and ~100 ms of a core per check). A caller that
finds every slot taken waits in the queue of its *source* (the client's
address, or the account name when the address is unknown). When a slot
frees, the queues are served round-robin: the source at the head of the
rotation gets the slot for its oldest waiter and goes to the back of the
rotation. So a flood of guesses from one address (or a few) waits behind
itself, and a real user from another address waits for at most one slot per
busy source, instead of behind every guess queued before theirs (the FIFO
of a plain semaphore). Among the waiting sources, one that holds fewer slots
right now goes first (a newcomer holding none gets the very next slot, ahead
of a flood holding the others); the rotation breaks ties. A waiter cancelled in the queue leaves it; one
cancelled just as it was given a slot passes the slot on.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["FairSlots"]


class FairSlots:
    """At most ``slots`` holders at once; waiters queued per source, served round-robin."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be >= 1")
        self._free = slots
        # Insertion order is the rotation: the first key is served next.
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}
        self._held: Counter[str] = Counter()

    @asynccontextmanager
    async def slot(self, source: str) -> AsyncIterator[None]:
        """Hold one slot for the ``async with`` body, queued fairly by ``source``."""
        await self._acquire(source)
        self._held[source] += 1
        try:
            yield
        finally:
            self._held[source] -= 1
            if not self._held[source]:
                del self._held[source]
            self._release()

    async def _acquire(self, source: str) -> None:
        if self._free > 0 and not self._queues:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(source, deque()).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # given a slot as it was cancelled: pass it on
            else:
                self._forget(source, waiter)
            raise

    def _forget(self, source: str, waiter: asyncio.Future[None]) -> None:
        queue = self._queues.get(source)
        if queue is None:
            return
        try:
            queue.remove(waiter)
        except ValueError:
            return
        if not queue:
            del self._queues[source]

    def _release(self) -> None:
        while self._queues:
            source = min(self._queues, key=self._held.__getitem__)  # first of the least served
            queue = self._queues.pop(source)
            waiter = queue.popleft()
            if queue:
                self._queues[source] = queue  # to the back of the rotation
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
