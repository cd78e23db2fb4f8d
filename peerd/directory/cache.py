"""A read-through cache with a bounded staleness: what lookups read first.

How this works: :meth:`ReadThrough.get` answers a key from memory if its
entry was read from the source less than ``ttl`` ago, else it asks the
source (one question per key at a time: concurrent misses of one key wait
for the same answer) and keeps the answer, a "not there" included, so a
name that exists nowhere costs the directory one query per ``ttl`` too. An
answer is therefore never older than ``ttl`` plus the time the source took.
A failed question is not kept: the next lookup asks again. At most
``size`` entries are kept; the oldest read goes first.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["ReadThrough"]

K = TypeVar("K")
V = TypeVar("V")


class ReadThrough(Generic[K, V]):
    def __init__(
        self,
        source: Callable[[K], Awaitable[V]],
        ttl: float,
        size: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._asking: dict[K, asyncio.Future[V]] = {}
        self.hits = 0
        self.misses = 0

    async def get(self, key: K) -> V:
        found = self._entries.get(key)
        if found is not None and self.clock() - found[0] < self.ttl:
            self.hits += 1
            return found[1]
        waiting = self._asking.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting)
        self.misses += 1
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._asking[key] = future
        read_at = self.clock()
        try:
            value = await self.source(key)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody may be waiting
            raise
        else:
            future.set_result(value)
            self._keep(key, read_at, value)
            return value
        finally:
            del self._asking[key]

    def _keep(self, key: K, read_at: float, value: V) -> None:
        if self.ttl <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (read_at, value)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
