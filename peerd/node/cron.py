"""Scheduled jobs (the full reconcile, the scrub): one APScheduler per job,
on the daemon's event loop, in UTC.

A run that is still going when the next is due is not doubled
(``max_instances=1``); runs missed while the node was busy or down are
folded into one, made up to an hour late (``coalesce``, ``misfire_grace_time``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

__all__ = ["start_cron"]


def start_cron(schedule: str, job: Callable[[], Awaitable[None]], name: str) -> AsyncIOScheduler:
    """Run ``job`` at the crontab ``schedule``; the started scheduler (shut it down to stop)."""
    scheduler = AsyncIOScheduler(timezone=dt.UTC)
    scheduler.add_job(
        job,
        CronTrigger.from_crontab(schedule, timezone=dt.UTC),
        id=name,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=3600,
    )
    scheduler.start()
    return scheduler
