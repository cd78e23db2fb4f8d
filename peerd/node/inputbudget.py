"""The node's budget for client input held in memory (``[limits] input_memory``).

How this works: every per-command bound (``[imap] max_literal``, ``[sync]
sync_max_request``, ...) is per connection, and connections are many: 100
connections of one user each holding a 64 MiB literal are 6.4 GB. So
whatever holds a client's input in memory until a command is complete
first takes room for it here, and gives it back when the command is done
or the connection ends, however it ends. One :class:`InputBudget` per
process: the daemon's serves IMAP, ManageSieve, the control API and the
sync listener; each LMTP process has its own.

- A connection holds its room through a :class:`Hold`. ``await
  hold.take(n)`` returns once ``n`` more octets are reserved, or raises
  :class:`NoRoom` after the budget's ``wait``; :meth:`Hold.take_before`
  also stops waiting when the connection closes; :meth:`Hold.release`
  gives back everything the connection holds (idempotent: call it when a
  command ends and again when the connection ends).
- What one command holds up to :data:`UNCOUNTED` octets is not asked for:
  a login, a flag list, a small APPEND never wait, as a command line (which
  ``max_line`` caps per connection) never does. So while big literals wait,
  other users log in, select, fetch and append small messages.
- Waiters are served in order, so a large request is not starved by a stream
  of smaller ones; but a waiter held back only by its *key*'s share (an
  account's ``input_memory_per_account``) does not hold up the others: one
  account with many connections waits behind itself.
- A wait is bounded (``[limits] input_wait``): two commands that each hold
  part of the budget and want more cannot wait for each other for ever;
  the one whose wait ends first is refused and everything its hold held
  goes back at once, to the other.

The services turn :class:`NoRoom` into their protocol's temporary refusal
in :mod:`peerd.node.errormap` (IMAP ``NO [UNAVAILABLE]``/``[LIMIT]``, LMTP
``452 4.3.1``, HTTP 503, ManageSieve ``TRYLATER``). Waits and refusals are
counted (``<name>_waits``, ``<name>_refusals`` in ``/metrics``), and while
requests wait the budget logs one warning a minute at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from engine.errors import TemporaryFailure

__all__ = ["UNCOUNTED", "AccountNoRoom", "BudgetStatus", "Hold", "InputBudget", "NoRoom"]

log = logging.getLogger("peerd.node.inputbudget")

# What one command may hold without asking: as much as a command line.
UNCOUNTED: Final = 64 << 10
# One warning per budget per this many seconds while requests wait.
_WARN_EVERY: Final = 60.0


class NoRoom(TemporaryFailure):
    """The budget had no room for the request within its wait: try again later."""

    code = "input_memory_full"


class AccountNoRoom(NoRoom):
    """The account's own connections hold its whole share of the budget."""

    code = "account_input_full"


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """What ``/v1/status`` shows of a budget (``/metrics``: gauges)."""

    limit: int
    used: int
    peak: int
    waiting: int

    def to_json(self) -> dict[str, int]:
        return {"limit": self.limit, "used": self.used, "peak": self.peak, "waiting": self.waiting}


@dataclass(slots=True, eq=False)
class _Waiter:
    hold: Hold
    size: int
    granted: asyncio.Future[None]


class InputBudget:
    """``limit`` octets of client input held at once in this process; at most
    ``per_key`` of them by one key (an account; 0: no share), a wait of at
    most ``wait`` seconds for room. ``count(name)`` is called with
    ``<name>_waits`` and ``<name>_refusals``."""

    def __init__(
        self,
        limit: int,
        *,
        per_key: int = 0,
        wait: float = 20.0,
        name: str = "input_memory",
        count: Callable[[str], Any] | None = None,
    ) -> None:
        if limit < 1 or per_key < 0 or wait < 0:
            raise ValueError("limit must be positive, per_key and wait not negative")
        self.limit = limit
        self.per_key = per_key
        self.wait = wait
        self.name = name
        self._count = count
        self.used = 0
        self.peak = 0
        self.waits = 0
        self.refusals = 0
        self._by_key: Counter[str] = Counter()
        self._queue: deque[_Waiter] = deque()
        self._warned = -_WARN_EVERY

    def hold(self, key: str = "") -> Hold:
        """A connection's holder of room, for ``key`` (its account; "" for none)."""
        return Hold(self, key)

    def status(self) -> BudgetStatus:
        return BudgetStatus(self.limit, self.used, self.peak, len(self._queue))

    def held_by(self, key: str) -> int:
        return self._by_key.get(key, 0)

    # -- inside --------------------------------------------------------------

    def _over_share(self, key: str, size: int) -> bool:
        return bool(key) and self.per_key > 0 and self._by_key[key] + size > self.per_key

    def _grant(self, hold: Hold, size: int) -> None:
        self.used += size
        self.peak = max(self.peak, self.used)
        if hold.key:
            self._by_key[hold.key] += size
        hold.reserved += size

    def _give_back(self, key: str, size: int) -> None:
        self.used -= size
        if key:
            self._drop_key(key, size)
        self._serve()

    def _drop_key(self, key: str, size: int) -> None:
        left = self._by_key[key] - size
        if left > 0:
            self._by_key[key] = left
        else:
            del self._by_key[key]

    def _try_grant(self, hold: Hold, size: int) -> bool:
        if self._queue or self._over_share(hold.key, size) or self.used + size > self.limit:
            return False
        self._grant(hold, size)
        return True

    def _serve(self) -> None:
        """Grant the waiters that fit, in order; one that does not fit the
        budget stops the rest (no overtaking), one over its key's share only
        waits for its own key."""
        for waiter in list(self._queue):
            if waiter.granted.done():  # cancelled, or expired
                self._queue.remove(waiter)
                continue
            if self._over_share(waiter.hold.key, waiter.size):
                continue
            if self.used + waiter.size > self.limit:
                break
            self._queue.remove(waiter)
            self._grant(waiter.hold, waiter.size)
            waiter.granted.set_result(None)

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.granted.done():
            return
        with_key = self._over_share(waiter.hold.key, waiter.size)
        self.refusals += 1
        self._counted("refusals")
        if with_key:
            error: NoRoom = AccountNoRoom(
                f"this account's connections hold {self._by_key[waiter.hold.key]} octets of input"
                f" (at most {self.per_key} at once); try again later"
            )
        else:
            error = NoRoom(
                f"server busy: no room for {waiter.size} more octets of input now; try again later"
            )
        waiter.granted.set_exception(error)
        self._queue.remove(waiter)
        # The refused command is over: what it held goes to the others now,
        # not when its connection gets round to it (see Hold.release).
        hold = waiter.hold
        size, hold.reserved = hold.reserved, 0
        self.used -= size
        if hold.key and size:
            self._drop_key(hold.key, size)
        self._serve()  # it may have held up others, and its room is free

    def _counted(self, what: str) -> None:
        if self._count is not None:
            self._count(f"{self.name}_{what}")

    def _note_wait(self, waiter: _Waiter) -> None:
        self.waits += 1
        self._counted("waits")
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY:
            self._warned = now
            own = self._over_share(waiter.hold.key, waiter.size)
            log.warning(
                "%s: %d of %d octets in use; a request for %d more waits (up to %gs)%s",
                self.name,
                self.used,
                self.limit,
                waiter.size,
                self.wait,
                f": {waiter.hold.key} holds its share" if own else "",
            )

    async def _take(self, hold: Hold, size: int) -> None:
        if size > self.limit or (hold.key and self.per_key and size > self.per_key):
            # It could never fit: refuse now rather than after the wait.
            self.refusals += 1
            self._counted("refusals")
            raise NoRoom(f"{size} octets of input are more than this server ever holds at once")
        waiter = _Waiter(hold, size, asyncio.get_running_loop().create_future())
        self._queue.append(waiter)
        self._serve()
        if waiter.granted.done():
            return
        self._note_wait(waiter)
        timer = asyncio.get_running_loop().call_later(self.wait, self._expire, waiter)
        try:
            await waiter.granted
        except asyncio.CancelledError:
            if waiter.granted.done() and not waiter.granted.cancelled():
                # Granted just as the connection went: the hold has it and
                # gives it back with the rest.
                pass
            elif waiter in self._queue:
                self._queue.remove(waiter)
                self._serve()
            raise
        finally:
            timer.cancel()


class Hold:
    """The room one connection holds; the first :data:`UNCOUNTED` octets of
    each command are free (see the module's docstring)."""

    __slots__ = ("_free", "budget", "key", "reserved")

    def __init__(self, budget: InputBudget, key: str) -> None:
        self.budget = budget
        self.key = key
        self.reserved = 0  # octets taken from the budget
        self._free = UNCOUNTED

    def rekey(self, key: str) -> None:
        """The connection logged in as ``key``: what it holds (a login's
        literals, when ``login_input_limit`` lets them past the free octets)
        and its next requests count there."""
        budget = self.budget
        if self.reserved:
            if self.key:
                budget._drop_key(self.key, self.reserved)
            if key:
                budget._by_key[key] += self.reserved
        self.key = key

    async def take(self, size: int) -> None:
        """Reserve ``size`` more octets, waiting up to the budget's ``wait``;
        :class:`NoRoom` when none came (what was held before stays held)."""
        free = min(self._free, size)
        self._free -= free
        size -= free
        if size > 0:
            await self.budget._take(self, size)

    def try_take(self, size: int) -> bool:
        """Reserve ``size`` more octets if that needs no wait (nothing queued
        ahead, room free); False, with nothing taken, otherwise."""
        free = min(self._free, size)
        if size > free and not self.budget._try_grant(self, size - free):
            return False
        self._free -= free
        return True

    async def take_before(self, size: int, ended: Callable[[], Awaitable[object]]) -> bool:
        """:meth:`take`, unless ``ended()`` (the connection closing) comes
        first: then the wait stops and False is returned, so a connection cut
        while it waits lets go at once rather than when its wait ends.
        ``ended`` is called only when there is a wait."""
        if self.try_take(size):
            return True
        taking = asyncio.ensure_future(self.take(size))
        end = asyncio.ensure_future(ended())
        try:
            await asyncio.wait({taking, end}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            end.cancel()
            if not taking.done():
                taking.cancel()
                with contextlib.suppress(asyncio.CancelledError, NoRoom):
                    await taking
        if end.done() and not end.cancelled():
            end.exception()  # how it ended does not matter here
        if taking.cancelled():
            return False
        taking.result()  # NoRoom
        return True

    def give_back(self, size: int) -> None:
        """Give back ``size`` of what is held (an estimate that was too high)."""
        size = min(size, self.reserved)
        if size > 0:
            self.reserved -= size
            self.budget._give_back(self.key, size)

    def release(self) -> None:
        """Give back everything held; the next command has its free octets again."""
        self._free = UNCOUNTED
        if self.reserved:
            size, self.reserved = self.reserved, 0
            self.budget._give_back(self.key, size)
