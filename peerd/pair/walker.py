"""A background walker over the store: the loop the full-text indexer
(:mod:`peerd.pair.indexer`) and the parse walker (:mod:`peerd.pair.parsewalk`)
share.

How this works: a walker catches up with what the store holds (its
``catch_up``) when a commit of this process wakes it (a store listener) and
every ``poll`` seconds besides, because LMTP worker processes and a second
process on the database commit without telling this one. Woken by a commit,
it first lets ``gather`` seconds of further commits come in, so a stream of
lone deliveries (a commit each) is walked in batches: each walk costs a read
of ``messages``, two thread hand-offs and a write whatever it finds, which
per delivery was a millisecond of the daemon's CPU (docs/benchmarks.md).
Nothing waits for a walker (IMAP and search read what it has not reached
from the message's bytes), so the delay changes no answer. A failed walk is
logged and tried again at the next wake-up; ``stop`` cancels the task and
sets ``_stopping``, which a walk's worker thread reads to stop early.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import ClassVar

from engine.errors import EngineError
from engine.synclog import Change
from peerd.node.node import Node

__all__ = ["Walker"]


class Walker:
    """Subclasses name their task and what they do, and write ``catch_up``."""

    task_name: ClassVar[str]
    doing: ClassVar[str]  # for the log: "full-text indexing", ...
    poll: ClassVar[float]
    gather: ClassVar[float]  # seconds a commit's wake-up waits for the next ones
    log: ClassVar[logging.Logger]

    def __init__(self, node: Node) -> None:
        self.node = node
        self.mark = 0
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False  # read by the walk's worker thread: stop early

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
        while True:
            # Cleared before the walk: a commit during it wakes the next one.
            self.wake.clear()
            try:
                await self.catch_up()
            except EngineError as exc:  # the database is busy or down: next time
                self.log.warning("%s failed: %s", self.doing, exc.message)
            except Exception:
                self.log.exception("%s failed; trying again", self.doing)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.poll)
            if self.wake.is_set():
                await asyncio.sleep(self.gather)
