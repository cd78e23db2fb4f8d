"""The spool sweep in the daemon: on a timer, on demand, in ``status``.

How this works: :class:`engine.sweep.Sweeper` does the work (see there why
it never removes bytes a record names). Here it runs every ``[node]
spool_sweep_interval`` (0: only when asked), ``POST /v1/spool/sweep``
(``peerctl spool sweep``) runs one now, and ``status`` shows the last
result under ``spool_sweep``. Runs never overlap. A removing pass held
back by the sweep's safety stop is logged as a warning and shown in
``status`` (``held_back``); ``peerctl spool sweep --force`` goes past it. A run removes what an
earlier run condemned at least ``spool_sweep_grace`` ago, so a file goes
between one grace and one grace plus one interval after its last record.
The daemon starts the timer; :meth:`SpoolSweep.status` is ``spool_sweep`` in
``status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass
from typing import Any

from engine.errors import EngineError
from engine.sweep import Sweeper, SweepResult
from peerd.node.node import Node

__all__ = ["SpoolSweep", "SweepStatus"]

log = logging.getLogger("peerd.pair.sweep")


@dataclass(frozen=True, slots=True)
class SweepStatus:
    interval_seconds: float
    grace_seconds: float
    runs: int
    waiting: int  # files condemned, not yet removed
    held_back: str  # why the last removing pass removed nothing, if the safety stop held it
    last: SweepResult | None

    def to_json(self) -> dict[str, Any]:
        return {
            "interval_seconds": self.interval_seconds,
            "grace_seconds": self.grace_seconds,
            "runs": self.runs,
            "waiting": self.waiting,
            "held_back": self.held_back,
            "last": asdict(self.last) if self.last else None,
        }


class SpoolSweep:
    """The node's sweeper, its timer and its lock."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.sweeper = Sweeper(node.store, node.config.node.spool_sweep_grace)
        self.interval = node.config.node.spool_sweep_interval.total_seconds()
        self.lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None

    async def run(self, trigger: str = "manual", force: bool = False) -> SweepResult:
        async with self.lock:
            result = await self.sweeper.run(trigger, force=force)
        if result.held_back:
            log.warning("spool sweep (%s) removed nothing: %s", trigger, result.held_back)
        if result.removed or result.errors:
            log.info(
                "spool sweep (%s): %d file(s) removed, %d bytes freed, %d waiting, %d error(s)",
                trigger,
                result.removed,
                result.bytes_freed,
                result.condemned,
                len(result.errors),
            )
        for error in result.errors:
            log.warning("spool sweep: could not remove %s", error)
        return result

    def start(self) -> None:
        if self.interval > 0:
            self._timer = asyncio.create_task(self._every_interval(), name="spool-sweep")

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.run(trigger="schedule")
            except EngineError as exc:  # the database is busy or down: next time
                log.warning("spool sweep failed: %s", exc.message)
            except OSError as exc:
                log.warning("spool sweep could not list the spool: %s", exc)
            except Exception:
                log.exception("spool sweep failed; trying again at the next interval")

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer

    def status(self) -> SweepStatus:
        return SweepStatus(
            interval_seconds=self.interval,
            grace_seconds=self.sweeper.grace,
            runs=self.sweeper.runs,
            waiting=len(self.sweeper.condemned),
            held_back=self.sweeper.suspicious,
            last=self.sweeper.last,
        )
