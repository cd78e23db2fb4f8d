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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict
from typing import Any

from aiohttp import web

from engine.errors import EngineError, InvalidArgument
from engine.sweep import Sweeper, SweepResult
from peerd.app.daemon import Service
from peerd.control.api import json_body
from peerd.control.openapi import OPERATIONS, Operation
from peerd.node.node import Node

__all__ = ["SpoolSweep", "start"]

log = logging.getLogger("peerd.pair.sweep")


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

    async def status(self) -> dict[str, Any]:
        last = self.sweeper.last
        return {
            "interval_seconds": self.interval,
            "grace_seconds": self.sweeper.grace,
            "runs": self.sweeper.runs,
            "waiting": len(self.sweeper.condemned),
            "held_back": self.sweeper.suspicious,
            "last": asdict(last) if last else None,
        }


SWEEP_KEY: web.AppKey[SpoolSweep] = web.AppKey("spool_sweep", SpoolSweep)


async def sweep_route(request: web.Request) -> web.Response:
    data = await json_body(request)
    force = data.pop("force", False)
    if not isinstance(force, bool):
        raise InvalidArgument("force must be true or false")
    if data:
        raise InvalidArgument(f"unknown option(s): {', '.join(sorted(data))}")
    result = await request.app[SWEEP_KEY].run(force=force)
    return web.json_response(asdict(result))


OPERATIONS.append(
    Operation(
        "post",
        "/v1/spool/sweep",
        "Run a spool sweep now: remove the files condemned a grace ago, condemn the newly unnamed",
        body={
            "type": "object",
            "properties": {"force": {"type": "boolean"}},
            "additionalProperties": False,
        },
        responses=(200, 422),
    )
)


async def start(node: Node, app: web.Application) -> list[Service]:
    sweep = SpoolSweep(node)
    app[SWEEP_KEY] = sweep
    app.router.add_post("/v1/spool/sweep", sweep_route)
    node.extra_status["spool_sweep"] = sweep.status
    sweep.start()
    return [Service("spool_sweep", sweep.stop)]
