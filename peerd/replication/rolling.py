"""Replication in the daemon: the sync listener, the rolling worker, manual syncs.

How this works: :func:`start` (a daemon starter) opens the sync listener when
``[listen] sync`` is set and, when ``[sync] sync_host`` names a partner,
starts the :class:`RollingWorker` and adds ``/v1/replicate`` and
``/v1/synclog`` to the control API.

The rolling worker (Cyrus's ``sync_client -r``) wakes on every committed
local change (a store listener) and at least every
``sync_repeat_interval``. It reads the sync log coalesced per account, most
urgent first (new mail before flag-only changes), and syncs up to
``sync_concurrency`` accounts at once: one slow or failing account never
stalls the others. Rows are deleted only after the partner acknowledged.
When the partner is down, rows stay and retries back off exponentially up to
``sync_reconnect_maxwait``; the log stays one row per changed mailbox.

When the fence refuses a push (the partner owns the account or knows a
higher epoch), the worker adopts the partner's row, asks the partner to sync
the account back to us (so mail we accepted and never replicated is copied
to the new owner by the no-loss rule), and drops its own rows for it.

With ``sync_mode = "synchronous"`` an LMTP delivery waits, before its 250,
until the partner has the message or ``sync_synchronous_timeout`` passes
(then the rolling worker carries it and the fallback is counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session

from engine import synclog
from engine.accounts import get_account
from engine.errors import EngineError, InvalidArgument, SyncRefused
from engine.mailbox import get_mailbox
from engine.syncwire import encode_json
from ownership import table as ownership_table
from peerd.app.daemon import Service
from peerd.control.api import NODE_KEY, json_body
from peerd.control.openapi import OPERATIONS, Operation
from peerd.node.config import parse_address
from peerd.node.node import Node
from peerd.pair import failover
from peerd.pair.hooks import Hooks
from peerd.replication import reconcile
from peerd.replication.client import PartnerDown, SyncClient, SyncReport, _Refused
from peerd.replication.reconcile import Reconciler
from peerd.replication.server import start_sync_listener

__all__ = ["RollingWorker", "start"]

log = logging.getLogger("peerd.sync.rolling")

CLIENT_KEY: web.AppKey[SyncClient] = web.AppKey("sync_client", SyncClient)


@dataclass(slots=True)
class PartnerStatus:
    reachable: bool | None = None
    last_success: float | None = None
    last_error: str = ""
    last_error_at: float | None = None
    syncs: int = 0
    failures: int = 0
    lag_samples: list[float] = field(default_factory=list)


class RollingWorker:
    def __init__(self, node: Node, client: SyncClient) -> None:
        self.node = node
        self.client = client
        sync = node.config.sync
        self.interval = sync.sync_repeat_interval.total_seconds()
        self.maxwait = sync.sync_reconnect_maxwait.total_seconds()
        self.semaphore = asyncio.Semaphore(max(1, sync.sync_concurrency))
        self.wake = asyncio.Event()
        self.running: set[str] = set()
        self.retry_at: dict[str, tuple[float, float]] = {}
        self.partner_retry: tuple[float, float] = (0.0, 0.0)
        self.status = PartnerStatus()
        # The same, per account: what `peerctl status -u` shows.
        self.accounts: dict[str, PartnerStatus] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._main: asyncio.Task[None] | None = None
        node.store.add_listener(self.on_change)

    def on_change(self, changes: list[synclog.Change]) -> None:
        self.wake.set()

    def start(self) -> None:
        self._main = asyncio.create_task(self.run(), name="rolling-replication")

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

    async def pass_once(self) -> None:
        now = time.monotonic()
        if self.partner_retry[0] > now:
            return
        pending = await self.node.store.read(synclog.pending)
        for item in pending:
            if item.account in self.running:
                continue
            retry = self.retry_at.get(item.account)
            if retry is not None and retry[0] > now:
                continue
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
        except _Refused as exc:
            await self.fenced(account, exc)
            return None
        except SyncRefused as exc:
            await self.not_ours(account, exc.message)
            return None
        except EngineError as exc:
            self._account_failed(account, exc.message)
            return None
        except Exception as exc:
            log.exception("sync of %s failed", account)
            self._account_failed(account, repr(exc))
            return None
        self.status.reachable = True
        self.status.last_success = time.time()
        self.status.syncs += 1
        one = self.accounts.setdefault(account, PartnerStatus())
        one.reachable, one.last_success = True, self.status.last_success
        one.syncs += 1
        self.retry_at.pop(account, None)
        self.partner_retry = (0.0, 0.0)
        if report.copied_back or report.reassigned:
            log.warning("%s: %s", account, "; ".join(report.repairs))
        return report

    def _partner_failed(self, message: str) -> None:
        _, delay = self.partner_retry
        delay = min(self.maxwait, max(0.25, delay * 2))
        self.partner_retry = (time.monotonic() + delay, delay)
        if self.status.reachable is not False:
            log.warning("partner unreachable, retrying with back-off: %s", message)
        self.status.reachable = False
        self._error(message)

    def _account_failed(self, account: str, message: str) -> None:
        _, delay = self.retry_at.get(account, (0.0, 0.0))
        delay = min(self.maxwait, max(0.5, delay * 2))
        self.retry_at[account] = (time.monotonic() + delay, delay)
        log.warning("sync of %s failed (retry in %.1fs): %s", account, delay, message)
        self._error(f"{account}: {message}")
        self._note_error(account, message)

    def _note_error(self, account: str, message: str) -> None:
        one = self.accounts.setdefault(account, PartnerStatus())
        one.failures += 1
        one.last_error = message
        one.last_error_at = time.time()

    def _error(self, message: str) -> None:
        self.status.failures += 1
        self.status.last_error = message
        self.status.last_error_at = time.time()
        self.node.counters.inc("sync_failures")

    async def fenced(self, account: str, exc: _Refused) -> None:
        """The partner refused: learn its row if newer, hand our changes over."""
        self.node.counters.inc("sync_fenced")
        current = exc.current
        if current is not None:
            try:
                epoch = int(current["epoch"])
                owner, home, state = (
                    str(current["owner"]),
                    str(current["home"]),
                    str(current["state"]),
                )
            except (KeyError, TypeError, ValueError):
                current = None
            else:

                def adopt(session: Session) -> bool:
                    return ownership_table.adopt(
                        session,
                        account,
                        owner=owner,
                        home=home,
                        epoch=epoch,
                        state=state,
                        reason=f"fenced by {self.node.partner}",
                    )

                if await self.node.store.write(adopt):
                    log.warning(
                        "%s: %s owns it at epoch %d; we are its replica now", account, owner, epoch
                    )
        await self.not_ours(account, exc.message)

    async def not_ours(self, account: str, message: str) -> None:
        """We hold changes for an account the partner owns: ask it to pull them."""
        try:
            await self.client.call(
                "request_sync", encode_json({"accounts": [account]}), compressed=False
            )
        except (PartnerDown, EngineError) as exc:
            self._account_failed(account, f"{message}; asking the partner to sync failed: {exc}")
            return

        def drop(session: Session) -> int:
            pending = synclog.pending(session, [account])
            return synclog.acknowledge(session, pending[0].rows) if pending else 0

        await self.node.store.write(drop)
        log.info("%s: not ours (%s); the owner will pull what we hold", account, message)

    async def status_json(self, account: str | None = None) -> dict[str, Any]:
        def read(session: Session) -> dict[str, Any]:
            oldest = synclog.oldest(session, account)
            return {"depth": synclog.depth(session, account), "oldest": oldest}

        info = await self.node.store.read(read)
        oldest: dt.datetime | None = info["oldest"]
        lag = (dt.datetime.now(dt.UTC) - oldest).total_seconds() if oldest else 0.0
        body: dict[str, Any] = {
            "partner": self.node.partner,
            "target": str(self.client.target),
            "reachable": self.status.reachable,
            "sync_log_depth": info["depth"],
            "oldest_pending": oldest.isoformat() if oldest else None,
            "lag_seconds": round(lag, 3),
            "last_success": _iso(self.status.last_success),
            "last_error": self.status.last_error,
            "last_error_at": _iso(self.status.last_error_at),
            "syncs": self.status.syncs,
            "failures": self.status.failures,
            "bytes_sent": self.client.bytes_sent,
            "bytes_received": self.client.bytes_received,
            "mode": self.node.config.sync.sync_mode,
        }
        if account is not None:
            body["account"] = account
            one = self.accounts.get(account, PartnerStatus())
            body.update(
                {
                    "last_success": _iso(one.last_success),
                    "last_error": one.last_error,
                    "last_error_at": _iso(one.last_error_at),
                    "syncs": one.syncs,
                    "failures": one.failures,
                }
            )
        return body


def _iso(stamp: float | None) -> str | None:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).isoformat() if stamp else None


# -- control API ----------------------------------------------------------------


async def replicate_route(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    client = request.app[CLIENT_KEY]
    data = await json_body(request)
    target = data.get("target")
    if target is not None:
        if not isinstance(target, str):
            raise InvalidArgument("target must be host:port")
        try:
            client = SyncClient(
                node,
                parse_address(
                    target if ":" in target else f"{target}:{node.config.sync.sync_port}"
                ),
            )
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc
    compressed = data.get("compress")
    if compressed is not None and not isinstance(compressed, bool):
        raise InvalidArgument("compress must be true or false")
    mailboxes = data.get("mailboxes")
    if mailboxes is not None and (
        not isinstance(mailboxes, list) or not all(isinstance(m, str) for m in mailboxes)
    ):
        raise InvalidArgument("mailboxes must be a list of names")
    if not isinstance(data.get("all", False), bool):
        raise InvalidArgument("all must be true or false")
    if data.get("all"):
        accounts = await node.store.read(
            lambda s: [r.account for r in ownership_table.list_rows(s, owner=node.name)]
        )
    else:
        account = data.get("account")
        if not isinstance(account, str) or not account:
            raise InvalidArgument("give account or all")
        accounts = [account]
    started = time.perf_counter()
    reports: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []

    async def one(name: str) -> None:
        try:
            report = await client.sync_account(name, mailboxes=mailboxes, compressed=compressed)
            reports.append(report.to_json())
        except EngineError as exc:
            errors.append({"account": name, "error": exc.code, "detail": exc.message})

    semaphore = asyncio.Semaphore(max(1, node.config.sync.sync_concurrency) * 2)

    async def bounded(name: str) -> None:
        async with semaphore:
            await one(name)

    skipped = 0
    if data.get("all") and not mailboxes:
        # Compare one digest per account first (a few requests for thousands
        # of accounts); sync only those that differ or have logged changes.
        try:
            differ, _refused = await client.differing(accounts)
        except EngineError:
            differ = set(accounts)  # the per-account syncs will say what is wrong
        pending = set(await node.store.read(lambda s: [p.account for p in synclog.pending(s)]))
        todo = [a for a in accounts if a in differ or a in pending]
        skipped = len(accounts) - len(todo)
        accounts_to_sync = todo
    else:
        accounts_to_sync = accounts
    await asyncio.gather(*(bounded(a) for a in accounts_to_sync))
    if client is not request.app[CLIENT_KEY]:
        await client.close()
    body = {
        "accounts": len(accounts),
        "in_sync": skipped,
        "reports": sorted(reports, key=lambda r: r["account"]),
        "errors": errors,
        "seconds": round(time.perf_counter() - started, 4),
    }
    # Per-account failures are part of the answer (peerctl exits non-zero on
    # them); the request itself succeeded.
    return web.json_response(body)


async def synclog_route(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    data = await json_body(request)
    account = data.get("account")
    mailboxes = data.get("mailboxes") or []
    if not isinstance(account, str) or not isinstance(mailboxes, list):
        raise InvalidArgument("account (string) and mailboxes (list) expected")

    def write(session: Session) -> int:
        acct = get_account(session, account)
        if not mailboxes:
            synclog.record(session, acct.name, "", "account")
            return 1
        for name in mailboxes:
            synclog.record(
                session, acct.name, get_mailbox(session, acct, str(name)).uniqueid, "mailbox"
            )
        return len(mailboxes)

    rows = await node.store.write(write)
    return web.json_response({"account": account, "queued": rows})


OPERATIONS.extend(
    [
        Operation(
            "post",
            "/v1/replicate",
            "Sync accounts to the partner now (sync_client -u / -m / -A)",
            body={
                "type": "object",
                "properties": {
                    "account": {"type": "string", "minLength": 1, "maxLength": 255},
                    "all": {"type": "boolean"},
                    "mailboxes": {"type": "array", "items": {"type": "string", "minLength": 1}},
                    "compress": {"type": "boolean"},
                    "target": {"type": "string", "minLength": 1, "maxLength": 255},
                },
                "additionalProperties": False,
            },
            responses=(200, 404, 422),
        ),
        Operation(
            "post",
            "/v1/synclog",
            "Queue an account or mailboxes for rolling replication (cyr_synclog)",
            body={
                "type": "object",
                "required": ["account"],
                "properties": {
                    "account": {"type": "string", "minLength": 1, "maxLength": 255},
                    "mailboxes": {"type": "array", "items": {"type": "string", "minLength": 1}},
                },
                "additionalProperties": False,
            },
            responses=(200, 404, 422),
        ),
    ]
)


async def start(node: Node, app: web.Application) -> list[Service]:
    services: list[Service] = []
    config = node.config
    if config.listen.sync is not None:
        server, runner = await start_sync_listener(
            node, config.listen.sync.host, config.listen.sync.port
        )
        log.info("sync listener on %s", config.listen.sync)
        node.extra_status["sync_server"] = _server_status(server)
        services.append(Service("sync-listener", runner.cleanup))
    if config.sync_partner is None:
        return services
    client = SyncClient(node)
    app[CLIENT_KEY] = client
    app.router.add_post("/v1/replicate", replicate_route)
    app.router.add_post("/v1/synclog", synclog_route)
    hooks = Hooks(node)
    failover.add_routes(app, client, hooks)
    node.extra_status["proxy_hooks"] = hooks.status
    # Return of a node: learn the partner's newer ownership before serving.
    await failover.exchange_at_start(node, client)
    worker = RollingWorker(node, client)
    reconciler = Reconciler(node, client)
    reconcile.add_routes(app, reconciler)
    node.extra_status["reconcile"] = reconciler.status
    reconciler.start_schedule()
    node.extra_status["replication"] = worker.status_json
    node.account_status.append(worker.status_json)
    if config.sync.sync_mode == "synchronous":
        node.after_delivery.append(_synchronous_hook(node, worker))
    if config.sync.sync_log:
        worker.start()

    async def stop() -> None:
        reconciler.stop()
        await worker.stop()
        await hooks.stop()
        await client.close()

    services.append(Service("rolling", stop))
    return services


def _server_status(server: Any) -> Any:
    async def status() -> dict[str, Any]:
        return {
            "bytes_in": server.bytes_in,
            "bytes_out": server.bytes_out,
            "refused": server.refused,
        }

    return status


def _synchronous_hook(node: Node, worker: RollingWorker) -> Any:
    timeout = node.config.sync.sync_synchronous_timeout.total_seconds()

    async def wait_for_partner(accounts: list[str]) -> None:
        async def one(account: str) -> None:
            try:
                report = await asyncio.wait_for(worker.replicate(account), timeout)
            except TimeoutError:
                report = None
            if report is None:
                node.counters.inc("sync_synchronous_fallbacks")

        await asyncio.gather(*(one(a) for a in sorted(set(accounts))))

    return wait_for_partner
