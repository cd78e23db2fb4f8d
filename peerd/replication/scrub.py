"""The spool scrub: find damaged message bodies and heal them from the partner.

How this works:

- **Scrub** (:meth:`Scrubber.run`): on a cron schedule (``[scrub] schedule``,
  APScheduler, like the reconcile), or now (``peerctl scrub [-u USER]``,
  ``POST /v1/scrub``). It pages through the GUIDs live records name
  (:func:`engine.scrub.live_bodies`: every account on this node, owned or
  replica, or one), reads and hashes each file in a thread, and paces itself
  to ``[scrub] rate`` bytes per second (sleeping between slices, so a scrub
  never takes the disk from deliveries). Each body found missing, cut short or
  not matching its GUID is entered in the node's
  :class:`~peerd.node.damage.DamageBook`, then repaired.
- **Repair** (:meth:`Scrubber.repair`): ask the partner for the bodies by GUID
  (``POST /sync/v1/bodies``: it answers with the frames of those it holds
  whole; each frame is checked against its GUID on arrival), and put each in
  place of the damaged file (:meth:`engine.spool.Spool.restore`). A body the
  partner does not send is **unrepairable**: it stays damaged here, listed in
  ``status``, and is never replaced by bytes that do not match. A partner
  that does not answer leaves the body damaged (``last_error``); the repair
  worker tries again every :data:`RETRY_SECONDS`.
- **Reads** (IMAP FETCH, POP3 RETR, a sync's UPLOAD) that find damage enter
  it in the book, which wakes the repair worker at once.
- **Verify** (:meth:`Scrubber.verify`): what the sync listener runs when the
  partner is about to move accounts here (a switchover or a failback,
  ``POST /sync/v1/verify``): the accounts' bodies are read at full speed and
  repaired from the asking partner before it moves them (see
  :mod:`peerd.pair.verify`).

The partner asks the same of us: ``bodies`` is served from any whole file we
hold, so each node heals the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.accounts import get_account
from engine.errors import EngineError
from engine.models import Message
from engine.scrub import Body, Checked, check_bodies, live_bodies
from engine.syncwire import decode_frames, encode_json
from peerd.node.cron import start_cron
from peerd.node.node import Node
from peerd.replication.client import SyncClient

__all__ = [
    "RETRY_SECONDS",
    "ScrubResult",
    "ScrubStatus",
    "Scrubber",
    "fetch_bodies",
]

log = logging.getLogger("peerd.replication.scrub")

# A slice read in one go between two pauses: at most this many files ...
SLICE_FILES = 64
# ... and about this many bytes (or one tenth of a second at the rate).
SLICE_BYTES = 4 << 20
PAGE = 5000  # GUIDs listed per database read
ACCOUNTS_PER_QUERY = 500  # names in one IN (...) list
FETCH_BYTES = 8 << 20  # bodies asked for in one ``bodies`` request (by size)
FETCH_COUNT = 500
RETRY_SECONDS = 60.0  # the repair worker tries again while the partner is away


async def fetch_bodies(client: SyncClient, guids: Sequence[str]) -> dict[str, bytes]:
    """The partner's whole copies of ``guids`` (``POST /sync/v1/bodies``):
    each frame checked against its GUID (:func:`engine.syncwire.decode_frames`);
    a GUID the partner has no whole copy of is not in the answer."""
    raw = await client.call(
        "bodies", encode_json({"guids": list(guids)}), compressed=client.compress_default
    )
    wanted = set(guids)
    return {guid: data for guid, data in decode_frames(raw) if guid in wanted}


@dataclass(slots=True)
class ScrubResult:
    """One scrub (or verify): what was read, what was found and what became of it."""

    trigger: str
    account: str | None = None
    started_at: str = ""
    seconds: float = 0.0
    files: int = 0
    bytes: int = 0
    damaged: list[dict[str, str]] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    unrepairable: list[str] = field(default_factory=list)
    not_repaired: list[str] = field(default_factory=list)  # the partner could not be asked
    rate: int = 0  # the pace it kept, bytes per second (0: none)

    @property
    def files_per_second(self) -> float:
        return round(self.files / self.seconds, 1) if self.seconds else 0.0

    @property
    def mb_per_second(self) -> float:
        return round(self.bytes / self.seconds / 1e6, 2) if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "account": self.account,
            "started_at": self.started_at,
            "seconds": self.seconds,
            "files": self.files,
            "bytes": self.bytes,
            "files_per_second": self.files_per_second,
            "mb_per_second": self.mb_per_second,
            "rate": self.rate,
            "damaged": self.damaged,
            "repaired": self.repaired,
            "unrepairable": self.unrepairable,
            "not_repaired": self.not_repaired,
        }


@dataclass(frozen=True, slots=True)
class ScrubStatus:
    """``integrity`` in ``status``: the damage book, the schedule, the last scrub."""

    schedule: str
    enabled: bool
    rate: int
    runs: int
    running: bool
    next_run: str | None
    damaged: int  # known damaged now (the unrepairable ones included)
    unrepairable: int
    bodies: tuple[dict[str, Any], ...]  # the first entries of the book
    last: ScrubResult | None

    def to_json(self) -> dict[str, Any]:
        return {
            "damaged": self.damaged,
            "unrepairable": self.unrepairable,
            "bodies": list(self.bodies),
            "scrub": {
                "schedule": self.schedule if self.enabled else None,
                "rate": self.rate,
                "runs": self.runs,
                "running": self.running,
                "next_run": self.next_run,
                "last": self.last.to_json() if self.last else None,
            },
        }


class Scrubber:
    """The node's scrub, its repair worker and its schedule."""

    def __init__(self, node: Node, client: SyncClient | None) -> None:
        self.node = node
        self.client = client
        self.book = node.damage
        self.lock = asyncio.Lock()  # scrubs never overlap
        self._repairing = asyncio.Lock()  # one repair at a time
        self.last: ScrubResult | None = None
        self.runs = 0
        self.scheduler: AsyncIOScheduler | None = None
        self._worker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- reading ---------------------------------------------------------------

    async def _bodies(self, accounts: Sequence[str] | None) -> AsyncIterator[list[Body]]:
        """Pages of the bodies live records name (of ``accounts``, 500
        accounts to a query, so the list fits any database's parameter limit)."""
        groups = (
            [None]
            if accounts is None
            else [
                list(accounts[i : i + ACCOUNTS_PER_QUERY])
                for i in range(0, len(accounts), ACCOUNTS_PER_QUERY)
            ]
        )
        for group in groups:
            after = ""
            while True:
                page = await self.node.store.read(
                    partial(live_bodies, after=after, limit=PAGE, accounts=group)
                )
                if not page:
                    break
                yield page
                after = page[-1].guid

    async def _read(
        self, accounts: Sequence[str] | None, rate: int, result: ScrubResult
    ) -> list[tuple[str, str]]:
        """Read and hash every body of ``accounts`` (all: None) at ``rate``
        bytes per second (0: as fast as it goes); the damaged ones."""
        store = self.node.store
        damaged: list[tuple[str, str]] = []
        started = time.monotonic()
        slice_bytes = min(SLICE_BYTES, max(rate // 10, 64 << 10)) if rate else SLICE_BYTES
        async for page in self._bodies(accounts):
            start = 0
            while start < len(page):
                end, size = start, 0
                while end < len(page) and end - start < SLICE_FILES and size < slice_bytes:
                    size += page[end].size
                    end += 1
                part = page[start:end]
                checked: Checked = await store.run_blocking(
                    lambda part=part: check_bodies(store.spool, part)  # type: ignore[misc]
                )
                start = end
                result.files += checked.files
                result.bytes += checked.bytes
                damaged += checked.damaged
                if rate:
                    ahead = result.bytes / rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        return damaged

    # -- scrub -----------------------------------------------------------------

    async def run(
        self, account: str | None = None, trigger: str = "manual", rate: int | None = None
    ) -> ScrubResult:
        """Scrub every body here (or one account's) at ``rate`` bytes per
        second (default ``[scrub] rate``; 0: full speed), and repair."""
        if account is not None:
            named = account
            account = await self.node.store.read(lambda s: get_account(s, named).name)
        async with self.lock:
            rate = self.node.config.scrub.rate if rate is None else rate
            result = ScrubResult(trigger, account, _now(), rate=rate)
            started = time.perf_counter()
            damaged = await self._read([account] if account else None, rate, result)
            await self._settle(damaged, "scrub", result)
            result.seconds = round(time.perf_counter() - started, 3)
            self.last = result
            self.runs += 1
            self.node.counters.inc("scrubs")
            log.info(
                "scrub (%s%s): %d files, %d bytes in %.1fs; %d damaged, %d repaired, "
                "%d unrepairable, %d not repaired",
                trigger,
                f", {account}" if account else "",
                result.files,
                result.bytes,
                result.seconds,
                len(result.damaged),
                len(result.repaired),
                len(result.unrepairable),
                len(result.not_repaired),
            )
            return result

    async def verify(self, accounts: Sequence[str], *, full: bool = True) -> ScrubResult:
        """Check ``accounts``' bodies now, at full speed, and repair them from
        the partner (the partner is about to move them here). ``full`` False:
        only whether each file is there and whether it is known damaged."""
        result = ScrubResult("verify", ",".join(accounts)[:200] or None, _now())
        started = time.perf_counter()
        if full:
            damaged = await self._read(list(accounts), 0, result)
        else:
            damaged = await self._known(list(accounts), result)
        await self._settle(damaged, "verify", result)
        result.seconds = round(time.perf_counter() - started, 3)
        return result

    async def _known(self, accounts: list[str], result: ScrubResult) -> list[tuple[str, str]]:
        """Missing files and bodies already in the book, without reading any."""
        store = self.node.store
        damaged: list[tuple[str, str]] = []
        async for page in self._bodies(accounts):
            result.files += len(page)
            for body in page:
                entry = self.book.entries.get(body.guid)
                if entry is not None:
                    damaged.append((body.guid, entry.what))
            missing = await store.run_blocking(
                lambda page=page: [b.guid for b in page if not store.spool.has(b.guid)]  # type: ignore[misc]
            )
            damaged += [(g, "missing") for g in missing if g not in self.book.entries]
        return damaged

    async def _settle(self, damaged: list[tuple[str, str]], by: str, result: ScrubResult) -> None:
        """Enter what a read found, repair it, and say in ``result`` what became of it."""
        for guid, what in damaged:
            self.book.found(guid, what, by)
            result.damaged.append({"guid": guid, "what": what})
        if by == "scrub":
            # Entries found whole by this read (repaired another way) go;
            # damaged ones no record names any more go too.
            seen = {g for g, _ in damaged}
            await self._forget_unnamed()
            if result.account is None:
                self.book.whole(g for g in list(self.book.entries) if g not in seen)
        guids = [g for g, _ in damaged]
        if not guids:
            return
        repaired, unrepairable, failed = await self.repair(guids)
        result.repaired += repaired
        result.unrepairable += unrepairable
        result.not_repaired += failed

    async def _forget_unnamed(self) -> None:
        known = list(self.book.entries)
        if not known:
            return

        def named(session: Session) -> set[str]:
            out: set[str] = set()
            for i in range(0, len(known), ACCOUNTS_PER_QUERY):
                rows = session.execute(
                    select(Message.guid)
                    .where(
                        Message.guid.in_(known[i : i + ACCOUNTS_PER_QUERY]),
                        Message.expunged.is_(False),
                    )
                    .distinct()
                )
                out.update(str(g) for (g,) in rows)
            return out

        self.book.keep_only(await self.node.store.read(named))

    # -- repair ----------------------------------------------------------------

    async def repair(self, guids: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
        """Fetch whole copies of ``guids`` from the partner and put them in
        place: (repaired, unrepairable: the partner has no whole copy either,
        not repaired: the partner could not be asked)."""
        repaired: list[str] = []
        unrepairable: list[str] = []
        failed: list[str] = []
        partner = self.node.partner or "the partner"
        async with self._repairing:
            if self.client is None or self.client.target is None:
                for guid in guids:
                    self.book.unrepairable(guid, "no partner is configured to ask")
                return [], list(guids), []
            spool = self.node.store.spool
            for start in range(0, len(guids), FETCH_COUNT):
                batch = list(guids[start : start + FETCH_COUNT])
                try:
                    got = await fetch_bodies(self.client, batch)
                    if len(batch) > 1:
                        # The answer stops short of the partner's request
                        # limit: ask again, one by one, for what it left out.
                        for guid in [g for g in batch if g not in got]:
                            got.update(await fetch_bodies(self.client, [guid]))
                except EngineError as exc:
                    for guid in batch:
                        self.book.attempt_failed(guid, f"{partner}: {exc.message}")
                    failed += batch
                    continue
                for guid in batch:
                    data = got.get(guid)
                    if data is None:
                        self.book.unrepairable(guid, f"{partner} has no whole copy either")
                        unrepairable.append(guid)
                        continue
                    try:
                        await self.node.store.run_blocking(
                            lambda guid=guid, data=data: spool.restore(guid, data)  # type: ignore[misc]
                        )
                    except EngineError as exc:
                        self.book.attempt_failed(guid, exc.message)
                        failed.append(guid)
                        continue
                    self.book.repaired(guid)
                    repaired.append(guid)
        return repaired, unrepairable, failed

    async def _repair_worker(self) -> None:
        """Repair what reads find, at once; retry while the partner is away."""
        wake = self.book.wake
        while True:
            waiting = any(self.book.entries[g].last_error for g in self.book.pending())
            try:
                await asyncio.wait_for(wake.wait(), RETRY_SECONDS if waiting else None)
            except TimeoutError:
                pass
            wake.clear()
            try:
                await self._forget_unnamed()
                pending = self.book.pending()
                if pending:
                    await self.repair(pending)
            except EngineError as exc:
                log.warning("repairing damaged bodies failed: %s", exc.message)
            except Exception:
                log.exception("repairing damaged bodies failed")

    def start_background(self, account: str | None = None, rate: int | None = None) -> bool:
        """Start a scrub that runs on after the caller goes; False if one runs."""
        if self.lock.locked():
            return False
        task = asyncio.create_task(self._background(account, rate), name="scrub")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _background(self, account: str | None, rate: int | None) -> None:
        try:
            await self.run(account, rate=rate)
        except EngineError as exc:
            log.warning("scrub failed: %s", exc.message)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._worker = asyncio.create_task(self._repair_worker(), name="body-repair")
        if self.book.pending():
            self.book.wake.set()  # damage known from before the restart
        config = self.node.config.scrub
        if not config.enabled:
            return
        self.scheduler = start_cron(config.schedule, self.scheduled, "scrub")

    async def scheduled(self) -> None:
        if self.lock.locked():
            log.info("scrub still running; this run is skipped")
            return
        try:
            await self.run(trigger="schedule")
        except EngineError as exc:
            log.warning("scheduled scrub failed: %s", exc.message)

    async def stop(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        for task in [*self._tasks, *([self._worker] if self._worker else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def status(self) -> ScrubStatus:
        config = self.node.config.scrub
        job = self.scheduler.get_job("scrub") if self.scheduler else None
        return ScrubStatus(
            schedule=config.schedule,
            enabled=config.enabled,
            rate=config.rate,
            runs=self.runs,
            running=self.lock.locked(),
            next_run=job.next_run_time.isoformat() if job and job.next_run_time else None,
            damaged=self.book.damaged,
            unrepairable=self.book.unrepairable_count,
            bodies=tuple(e.to_json() for e in self.book.shown()),
            last=self.last,
        )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
