"""A background walker over the store: the loop the full-text indexer
(:mod:`peerd.pair.indexer`) and the parse walker (:mod:`peerd.pair.parsewalk`)
share.

How this works: a walker catches up with what the store holds (its
``catch_up``) when a commit of this process wakes it (a store listener) and
every ``poll`` seconds besides, because LMTP worker processes and a second
process on the database commit without telling this one. A walk woken by
a commit starts no sooner than ``gap`` seconds after the last one started:
the commits of that time (a stream of deliveries, or of a partner's
replicated DELTAs, 50 a second) are taken in one walk, one read, one trip
to a thread and one write, not one of each per commit, each competing with
the next commit for the interpreter lock and the store's committer. Nothing
waits for a walker (IMAP parses, and search decodes, what it has not reached
yet), so the gap delays no answer. A failed walk is logged and tried again
at the next wake-up; ``stop`` cancels the task and sets ``_stopping``, which
a walk's worker thread reads to stop early.

A message the walker's parser raises on is skipped (:meth:`Walker.skip`),
with one log line, and not tried again while the process runs: failing the
walk for it would fail every walk after, and leave every later message,
the partner's replicated ones included, unwalked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import ClassVar, Final

from engine.errors import EngineError
from engine.synclog import Change
from peerd.node.node import Node

__all__ = ["MAX_SKIPPED", "Walker"]

MAX_SKIPPED: Final = 10_000  # GUIDs remembered as skipped; forgotten all at once past this


class Walker:
    """Subclasses name their task and what they do, and write ``catch_up``."""

    task_name: ClassVar[str]
    doing: ClassVar[str]  # for the log: "full-text indexing", ...
    poll: ClassVar[float]
    gap: ClassVar[float]  # the least time between the starts of two walks
    log: ClassVar[logging.Logger]

    def __init__(self, node: Node) -> None:
        self.node = node
        self.mark = 0
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False  # read by the walk's worker thread: stop early
        self.skipped: set[str] = set()  # GUIDs whose parse raised (see skip)

    def skip(self, guid: str, exc: Exception) -> None:
        """``guid``'s bytes made the walker's parser raise ``exc``: one log
        line, and the walks leave it alone from now on (in this process)."""
        if len(self.skipped) >= MAX_SKIPPED:
            self.skipped.clear()
        self.skipped.add(guid)
        self.log.warning(
            "%s: message %s skipped: %s: %s", self.doing, guid, type(exc).__name__, exc
        )

    def start(self) -> None:
        self.node.store.add_listener(self._changed)
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        self._stopping = True
        self.node.store.remove_listener(self._changed)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def catch_up(self) -> object:
        raise NotImplementedError

    def _changed(self, changes: list[Change]) -> None:
        self.wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Cleared before the walk: a commit during it wakes the next one.
            self.wake.clear()
            started = loop.time()
            try:
                await self.catch_up()
            except EngineError as exc:  # the database is busy or down: next time
                self.log.warning("%s failed: %s", self.doing, exc.message)
            except Exception:
                self.log.exception("%s failed; trying again", self.doing)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.poll)
            # Let the commits of the rest of the gap gather for the same walk.
            rest = started + self.gap - loop.time()
            if rest > 0:
                await asyncio.sleep(rest)
