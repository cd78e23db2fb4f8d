"""The rolling worker: changes reach the partner as they happen (Cyrus's ``sync_client -r``).

How this works: the worker wakes on every committed local change (a store
listener) and at least every ``sync_repeat_interval``. It reads the sync log
coalesced per account, most urgent first (new mail before flag-only
changes), and syncs up to ``sync_concurrency`` accounts at once: one slow or
failing account never stalls the others. Rows are deleted only after the
partner acknowledged. When the partner is down, rows stay and retries back
off exponentially (:class:`~peerd.node.backoff.Backoff`) up to
``sync_reconnect_maxwait``; the log stays one row per changed mailbox.

When the fence refuses a push (the partner owns the account or knows a
higher epoch), the worker adopts the partner's row, asks the partner to sync
the account back to us (so mail we accepted and never replicated is copied
to the new owner by the no-loss rule), and drops its own rows for it.

A pass starts syncs only while the sync-log records in flight stay within
``sync_batchsize`` (an account's records always go together, so one account
larger than the batch goes alone). While ``sync_shutdown_file`` exists the
worker starts nothing new: the syncs in hand finish and their records are
acknowledged, the rest of the log is kept, ``status`` says ``rolling: stopped``.
The worker looks for the file before every pass; it looks for it again
only at SIGHUP (:meth:`RollingWorker.resume`) or a restart once stopped, so
removing the file alone resumes nothing (Cyrus's ``sync_client`` exits and
is started again; here the daemon stays up and is told).

With ``sync_mode = "synchronous"`` an LMTP delivery waits, before its 250,
until the partner has the message or ``sync_synchronous_timeout`` passes
(then the rolling worker carries it and the fallback is counted):
:meth:`RollingWorker.wait_for_partner` is the node's ``after_delivery`` hook.

A backup channel (``[sync.channels.NAME]``) has a worker of its own, with
its own client and sync-log rows (``channel``): the same passes, back-off,
batch and shutdown file, so a backup that is down never holds the partner
back. Its fence answers differ: the backup never owns an account, so a
refusal means it knows a newer owner (after a failover the partner feeds
it); we drop our rows for that account and never ask the backup to sync
anything back.

The daemon (:mod:`peerd.app.daemon`) creates the workers and starts them;
:meth:`RollingWorker.status` is ``replication`` in ``status`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from engine import synclog
from engine.errors import EngineError, PartnerDown, PartnerRejected, SyncRefused
from engine.syncwire import encode_json
from ownership import table as ownership_table
from ownership.errors import SyncFenced
from peerd.node.backoff import Backoff
from peerd.node.node import Node
from peerd.replication.client import SyncClient, SyncReport

__all__ = ["ReplicationStatus", "RollingWorker"]

log = logging.getLogger("peerd.sync.rolling")

# The first pauses after a failure (then doubling to sync_reconnect_maxwait).
PARTNER_RETRY_FIRST = 0.25
ACCOUNT_RETRY_FIRST = 0.5


@dataclass(slots=True)
class PartnerStatus:
    """What the worker has seen of the partner (or of one account's syncs)."""

    reachable: bool | None = None
    last_success: float | None = None
    last_error: str = ""
    last_error_at: float | None = None
    syncs: int = 0
    failures: int = 0


@dataclass(frozen=True, slots=True)
class ReplicationStatus:
    """``replication`` in ``status`` (or, with ``account``, one account's part of
    ``status -u``): the partner, what is still to send, how the syncs went."""

    partner: str
    target: str
    reachable: bool | None
    sync_log_depth: int
    oldest_pending: str | None
    lag_seconds: float
    last_success: str | None
    last_error: str
    last_error_at: str | None
    syncs: int
    failures: int
    bytes_sent: int
    bytes_received: int
    mode: str
    account: str | None = None
    # "running", "stopping" (sync_shutdown_file seen, syncs in hand
    # finishing) or "stopped"; and the file that stopped it.
    rolling: str = "running"
    shutdown_file: str | None = None
    batchsize: int = 0
    largest_batch: int = 0  # the most sync-log records in flight at once so far
    # Accounts whose data the partner refuses as it is (a 4xx), with why.
    refused_accounts: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "partner": self.partner,
            "target": self.target,
            "reachable": self.reachable,
            "sync_log_depth": self.sync_log_depth,
            "oldest_pending": self.oldest_pending,
            "lag_seconds": self.lag_seconds,
            "last_success": self.last_success,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "syncs": self.syncs,
            "failures": self.failures,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "mode": self.mode,
            "refused_accounts": dict(sorted(self.refused_accounts.items())),
            "rolling": self.rolling,
            "shutdown_file": self.shutdown_file,
            "batchsize": self.batchsize,
            "largest_batch": self.largest_batch,
        }
        if self.account is not None:
            body["account"] = self.account
        return body


class RollingWorker:
    def __init__(self, node: Node, client: SyncClient) -> None:
        self.node = node
        self.client = client
        self.channel = client.channel  # "": the partner
        self.peer = f"backup channel {self.channel}" if self.channel else "partner"
        sync = node.config.sync
        self.interval = sync.sync_repeat_interval.total_seconds()
        self.maxwait = sync.sync_reconnect_maxwait.total_seconds()
        self.semaphore = asyncio.Semaphore(max(1, sync.sync_concurrency))
        self.wake = asyncio.Event()
        self.running: set[str] = set()
        # account -> its sync-log records in flight (sync_batchsize counts these).
        self.in_flight: dict[str, int] = {}
        self.largest_batch = 0
        # The sync_shutdown_file that stopped us; None: running.
        self.stopped_by: str | None = None
        self.retry_at: dict[str, Backoff] = {}
        self.refused: dict[str, str] = {}  # accounts the partner rejects, and why
        self.partner_retry = Backoff(PARTNER_RETRY_FIRST, self.maxwait)
        # What the client saw before we existed (the ownership exchange at start).
        self.partner = PartnerStatus(reachable=client.reachable)
        # The same, per account: what `peerctl status -u` shows.
        self.accounts: dict[str, PartnerStatus] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._main: asyncio.Task[None] | None = None
        node.store.add_listener(self.on_change)
        client.add_reach_listener(self.on_reach)

    def on_reach(self, answered: bool, why: str) -> None:
        """Any request on the shared client (ours, a reconcile's, a manual
        replicate's, the scrub's) tells whether the partner answers: `status`
        and ``/metrics`` show that, not only what our own last sync saw."""
        if answered:
            if self.partner.reachable is False:
                log.info("%s reachable again", self.peer)
                # Rows held back by the back-off can go now.
                self.partner_retry.reset()
                self.wake.set()
            self.partner.reachable = True
            return
        if self.partner.reachable is not False:
            log.warning("%s unreachable, retrying with back-off: %s", self.peer, why)
        self.partner.reachable = False

    def on_change(self, changes: list[synclog.Change]) -> None:
        self.wake.set()

    def start(self) -> None:
        name = f"rolling-{self.channel}" if self.channel else "rolling-replication"
        self._main = asyncio.create_task(self.run(), name=name)

    async def stop(self) -> None:
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.node.store.remove_listener(self.on_change)
        self.client.remove_reach_listener(self.on_reach)

    async def run(self) -> None:
        self.wake.set()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.interval)
            self.wake.clear()
            try:
                await self.pass_once()
            except EngineError as exc:
                log.warning("rolling replication: %s", exc.message)
            except Exception:
                log.exception("rolling replication pass failed")

    def shut_down(self) -> bool:
        """Whether ``sync_shutdown_file`` stops us (checked before every pass
        while running; once stopped, only :meth:`resume` looks again)."""
        if self.stopped_by is not None:
            return True
        path = self.node.config.sync.sync_shutdown_file
        if path is None or not path.exists():
            return False
        self.stopped_by = str(path)
        log.warning(
            "sync_shutdown_file %s exists: rolling replication to the %s stops after the"
            " %d sync(s) in hand; the sync log is kept (remove the file, then SIGHUP or restart)",
            path,
            self.peer,
            len(self.running),
        )
        return True

    def resume(self) -> None:
        """SIGHUP: go on if the shutdown file is gone (else stay stopped, say so)."""
        if self.stopped_by is None:
            return
        path = self.node.config.sync.sync_shutdown_file
        if path is not None and path.exists():
            log.warning(
                "sync_shutdown_file %s still exists: rolling replication to the %s stays stopped",
                path,
                self.peer,
            )
            self.stopped_by = str(path)
            return
        log.info(
            "sync_shutdown_file %s gone: rolling replication to the %s resumes",
            self.stopped_by,
            self.peer,
        )
        self.stopped_by = None
        self.wake.set()

    async def pass_once(self) -> None:
        if self.shut_down():
            return
        now = time.monotonic()
        if self.partner_retry.waiting(now):
            return
        pending = await self.node.store.read(lambda s: synclog.pending(s, channel=self.channel))
        batchsize = self.node.config.sync.sync_batchsize
        for item in pending:
            if item.account in self.running:
                continue
            retry = self.retry_at.get(item.account)
            if retry is not None and retry.waiting(now):
                continue
            in_flight = sum(self.in_flight.values())
            if in_flight and in_flight + len(item.rows) > batchsize:
                # The batch is full: what is left waits for the next pass
                # (a finished sync wakes us).
                break
            self.in_flight[item.account] = len(item.rows)
            self.largest_batch = max(self.largest_batch, in_flight + len(item.rows))
            self.running.add(item.account)
            task = asyncio.create_task(self.sync_one(item.account))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def sync_one(self, account: str) -> None:
        try:
            async with self.semaphore:
                await self.replicate(account)
        finally:
            self.running.discard(account)
            self.in_flight.pop(account, None)
            # Changes that arrived during this sync are still logged: look again now.
            self.wake.set()

    async def replicate(self, account: str) -> SyncReport | None:
        """One rolling sync of ``account`` with all the failure handling."""
        try:
            report = await self.client.sync_account(account, fast=True)
        except PartnerDown as exc:
            self._partner_failed(str(exc))
            self._note_error(account, str(exc))
            return None
        except SyncFenced as exc:
            await self.fenced(account, exc)
            return None
        except SyncRefused as exc:
            await self.not_ours(account, exc.message)
            return None
        except PartnerRejected as exc:
            self._rejected(account, exc.message)
            return None
        except EngineError as exc:
            self._account_failed(account, exc.message)
            return None
        except Exception as exc:
            log.exception("sync of %s failed", account)
            self._account_failed(account, repr(exc))
            return None
        self.partner.reachable = True
        self.partner.last_success = time.time()
        self.partner.syncs += 1
        one = self.accounts.setdefault(account, PartnerStatus())
        one.reachable, one.last_success = True, self.partner.last_success
        one.syncs += 1
        self.retry_at.pop(account, None)
        if self.refused.pop(account, None) is not None:
            log.info("partner accepts %s again", account)
        self.partner_retry.reset()
        if report.copied_back or report.reassigned:
            log.warning("%s: %s", account, "; ".join(report.repairs))
        return report

    def _partner_failed(self, message: str) -> None:
        # on_reach has said so (once) and marked the partner unreachable.
        self.partner_retry.next()
        self.partner.reachable = False
        self._error(message)

    def _rejected(self, account: str, message: str) -> None:
        """The partner refuses this account's data: say so once (status,
        /metrics, one log line) and retry only at the longest back-off; other
        accounts go on replicating."""
        self.partner.reachable = True
        if account not in self.refused:
            log.error(
                "partner refuses every sync of %s (other accounts go on): %s;"
                " fix the account, then `peerctl replicate %s`",
                account,
                message,
                account,
            )
        self.refused[account] = message
        retry = self.retry_at.setdefault(account, Backoff(self.maxwait, self.maxwait))
        retry.next()
        self._error(f"{account}: {message}")
        self._note_error(account, message)

    def _account_failed(self, account: str, message: str) -> None:
        retry = self.retry_at.setdefault(account, Backoff(ACCOUNT_RETRY_FIRST, self.maxwait))
        delay = retry.next()
        log.warning(
            "sync of %s to the %s failed (retry in %.1fs): %s", account, self.peer, delay, message
        )
        self._error(f"{account}: {message}")
        self._note_error(account, message)

    def _note_error(self, account: str, message: str) -> None:
        one = self.accounts.setdefault(account, PartnerStatus())
        one.failures += 1
        one.last_error = message
        one.last_error_at = time.time()

    def _error(self, message: str) -> None:
        self.partner.failures += 1
        self.partner.last_error = message
        self.partner.last_error_at = time.time()
        self.node.counters.inc("sync_failures")

    async def fenced(self, account: str, exc: SyncFenced) -> None:
        """The partner refused: learn its row if newer, hand our changes over."""
        self.node.counters.inc("sync_fenced")
        current = exc.current
        if self.channel:
            # The backup knows a newer owner than we do (the partner took
            # the account over and feeds it): learning ownership is the
            # partner's business, not the backup's.
            log.warning("%s: channel %s refused: %s", account, self.channel, exc.message)
            await self.not_ours(account, exc.message)
            return
        if current is not None and current.account == account:
            reason = f"fenced by {self.node.partner}"
            if await self.node.store.write(
                lambda s: ownership_table.adopt_view(s, current, reason)
            ):
                log.warning(
                    "%s: %s owns it at epoch %d; we are its replica now",
                    account,
                    current.owner,
                    current.epoch,
                )
        await self.not_ours(account, exc.message)

    async def not_ours(self, account: str, message: str) -> None:
        """We hold changes for an account the partner owns: ask it to pull them."""
        if self.channel:
            # A backup never owns anything and never syncs back: the owner
            # (or its chain) feeds it; our rows for it go.
            await self._drop(account)
            log.info(
                "%s: not pushed to channel %s (%s); rows dropped", account, self.channel, message
            )
            return
        try:
            await self.client.call(
                "request_sync", encode_json({"accounts": [account]}), compressed=False
            )
        except (PartnerDown, EngineError) as exc:
            self._account_failed(account, f"{message}; asking the partner to sync failed: {exc}")
            return

        await self._drop(account)
        log.info("%s: not ours (%s); the owner will pull what we hold", account, message)

    async def _drop(self, account: str) -> None:
        def drop(session: Session) -> int:
            pending = synclog.pending(session, [account], self.channel)
            return synclog.acknowledge(session, pending[0].rows) if pending else 0

        await self.node.store.write(drop)

    async def status(self, account: str | None = None) -> ReplicationStatus:
        def read(session: Session) -> tuple[int, dt.datetime | None]:
            return (
                synclog.depth(session, account, self.channel),
                synclog.oldest(session, account, self.channel),
            )

        depth, oldest = await self.node.store.read(read)
        lag = (dt.datetime.now(dt.UTC) - oldest).total_seconds() if oldest else 0.0
        seen = self.partner if account is None else self.accounts.get(account, PartnerStatus())
        return ReplicationStatus(
            partner=self.channel or self.node.partner,
            target=str(self.client.target),
            reachable=self.partner.reachable,
            sync_log_depth=depth,
            oldest_pending=oldest.isoformat() if oldest else None,
            lag_seconds=round(lag, 3),
            last_success=_iso(seen.last_success),
            last_error=seen.last_error,
            last_error_at=_iso(seen.last_error_at),
            syncs=seen.syncs,
            failures=seen.failures,
            bytes_sent=self.client.bytes_sent,
            bytes_received=self.client.bytes_received,
            mode=self.node.config.sync.sync_mode,
            account=account,
            rolling=(
                "running" if self.stopped_by is None else "stopping" if self.running else "stopped"
            ),
            shutdown_file=self.stopped_by,
            batchsize=self.node.config.sync.sync_batchsize,
            largest_batch=self.largest_batch,
            refused_accounts=(
                dict(self.refused)
                if account is None
                else {account: self.refused[account]}
                if account in self.refused
                else {}
            ),
        )

    async def wait_for_partner(self, accounts: list[str]) -> None:
        """``sync_mode = "synchronous"``: sync each account now, waiting at most
        ``sync_synchronous_timeout``; a sync that does not make it is counted
        and left to the rolling passes."""
        timeout = self.node.config.sync.sync_synchronous_timeout.total_seconds()

        async def one(account: str) -> None:
            if self.stopped_by is not None:
                # Stopped by sync_shutdown_file: the log keeps it.
                self.node.counters.inc("sync_synchronous_fallbacks")
                return
            try:
                report = await asyncio.wait_for(self.replicate(account), timeout)
            except TimeoutError:
                report = None
            if report is None:
                self.node.counters.inc("sync_synchronous_fallbacks")

        await asyncio.gather(*(one(a) for a in sorted(set(accounts))))


def _iso(stamp: float | None) -> str | None:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).isoformat() if stamp else None
