"""Scheduled full reconcile (APScheduler): compare every owned account with the partner.

How this works: a cron-style schedule (``[reconcile] schedule``, default
nightly at 03:00) runs :meth:`Reconciler.run`, which syncs every account this
node owns whether or not its sync log says it changed. Each sync compares
per-mailbox checksums (unchanged mailboxes cost no per-message work) and
repairs what differs, including mail only the partner holds (the no-loss
rule). Runs never overlap (one lock; APScheduler's ``max_instances=1`` and
``coalesce``), and they never block delivery: they use the sync client's
per-account locks, not the store's writer. ``peerctl reconcile`` runs one
now. The last result is kept for ``status`` and ``/metrics``
(:meth:`Reconciler.status`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from engine.accounts import get_account
from engine.errors import EngineError
from ownership import table as ownership_table
from peerd.node.cron import start_cron
from peerd.node.node import Node
from peerd.replication.client import SyncClient

__all__ = ["ReconcileResult", "ReconcileStatus", "Reconciler"]

log = logging.getLogger("peerd.replication.reconcile")


@dataclass(slots=True)
class ReconcileResult:
    started_at: str = ""
    seconds: float = 0.0
    accounts_checked: int = 0
    mailboxes_repaired: int = 0
    messages_uploaded: int = 0
    messages_copied_back: int = 0
    messages_resurrected: int = 0
    failures: list[str] = field(default_factory=list)
    trigger: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ReconcileStatus:
    """``reconcile`` in ``status``; ``last`` feeds ``peerd_reconcile_last`` in ``/metrics``."""

    schedule: str
    runs: int
    running: bool
    last: ReconcileResult | None
    next_run: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule,
            "runs": self.runs,
            "running": self.running,
            "last": self.last.to_json() if self.last else None,
            "next_run": self.next_run,
        }


class Reconciler:
    def __init__(self, node: Node, client: SyncClient) -> None:
        self.node = node
        self.client = client
        self.lock = asyncio.Lock()
        self.last: ReconcileResult | None = None
        self.runs = 0
        self.scheduler: AsyncIOScheduler | None = None

    async def run(
        self, accounts: list[str] | None = None, trigger: str = "manual"
    ) -> ReconcileResult:
        if accounts is not None:
            # Named accounts must exist (404 otherwise), before the lock.
            named = accounts
            await self.node.store.read(lambda s: [get_account(s, a) for a in named])
        async with self.lock:
            started = time.perf_counter()
            result = ReconcileResult(
                started_at=dt.datetime.now(dt.UTC).isoformat(), trigger=trigger
            )
            if accounts is None:
                # Rows of deleted accounts whose deletion the partner has
                # by now (it was down when they were deleted).
                pruned = await self.node.store.write(ownership_table.prune_deleted)
                if pruned:
                    log.info("reconcile: dropped the rows of deleted accounts %s", pruned)
                accounts = await self.node.store.read(
                    lambda s: [
                        r.account for r in ownership_table.list_rows(s, owner=self.node.name)
                    ]
                )
            semaphore = asyncio.Semaphore(max(1, self.node.config.sync.sync_concurrency))

            async def one(account: str) -> None:
                async with semaphore:
                    try:
                        report = await self.client.sync_account(account)
                    except EngineError as exc:
                        result.failures.append(f"{account}: {exc.message}")
                        return
                result.accounts_checked += 1
                result.mailboxes_repaired += sum(1 for s in report.steps if s.startswith("SELECT "))
                result.messages_uploaded += report.uploaded
                result.messages_copied_back += report.copied_back
                result.messages_resurrected += report.resurrected

            await asyncio.gather(*(one(a) for a in accounts))
            result.seconds = round(time.perf_counter() - started, 3)
            self.last = result
            self.runs += 1
            self.node.counters.inc("reconciles")
            log.info(
                "reconcile (%s): %d accounts, %d mailboxes repaired, %d copied back, %.2fs, %d failures",
                trigger,
                result.accounts_checked,
                result.mailboxes_repaired,
                result.messages_copied_back,
                result.seconds,
                len(result.failures),
            )
            return result

    def start_schedule(self) -> None:
        config = self.node.config.reconcile
        if not config.enabled:
            return
        self.scheduler = start_cron(config.schedule, self.scheduled, "reconcile")

    async def scheduled(self) -> None:
        if self.lock.locked():
            log.info("reconcile still running; this run is skipped")
            return
        await self.run(trigger="schedule")

    def stop(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    async def status(self) -> ReconcileStatus:
        job = self.scheduler.get_job("reconcile") if self.scheduler else None
        return ReconcileStatus(
            schedule=self.node.config.reconcile.schedule,
            runs=self.runs,
            running=self.lock.locked(),
            last=self.last,
            next_run=job.next_run_time.isoformat() if job and job.next_run_time else None,
        )
