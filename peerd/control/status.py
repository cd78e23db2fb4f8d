"""The node's status as typed values: what ``/v1/status`` and ``/metrics`` both render.

How this works: :func:`node_status` reads the store once (accounts, owned
per node, the sync log) and asks every running part for its own status
object (:class:`~peerd.replication.rolling.ReplicationStatus`,
:class:`~peerd.pair.hooks.HookStatus`, ...). ``/v1/status`` renders the
result as JSON (:meth:`NodeStatus.to_json`), ``/metrics`` as Prometheus text
(:mod:`peerd.control.metrics`); neither reads the other's keys.
:func:`account_status` is the same for one account (``?account=``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.orm import Session

from engine import accounts as engine_accounts
from engine import synclog
from engine.dbcheck import DbCheck
from ownership import table as ownership_table
from peerd.control.call import Parts
from peerd.node.inputbudget import BudgetStatus
from peerd.pair.hooks import HookStatus
from peerd.pair.sweep import SweepStatus
from peerd.replication.reconcile import ReconcileStatus
from peerd.replication.rolling import ReplicationStatus
from peerd.replication.scrub import ScrubStatus
from peerd.replication.server import SyncServerStatus

__all__ = ["AccountStatus", "NodeStatus", "StoreStatus", "account_status", "node_status"]


def _iso(stamp: dt.datetime | None) -> str | None:
    return stamp.isoformat() if stamp else None


def _lag(oldest: dt.datetime | None) -> float:
    """Seconds since the oldest change not yet on the partner (0: it has all)."""
    return round((dt.datetime.now(dt.UTC) - oldest).total_seconds(), 3) if oldest else 0.0


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """The store's group commits: batches, writes in them, the largest batch;
    and the reads the daemon's services asked for."""

    batches: int
    writes: int
    largest_batch: int
    reads: int


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node: str
    partner: str
    accounts: int
    owned: dict[str, int]  # accounts per owner
    sync_log_depth: int
    sync_log_oldest: str | None
    inflight_deliveries: int
    startup: str  # what the ownership exchange at start found ("" before it ran)
    counters: dict[str, int]
    store: StoreStatus
    sync_server: SyncServerStatus | None = None
    proxy_hooks: dict[str, HookStatus] | None = None
    reconcile: ReconcileStatus | None = None
    replication: ReplicationStatus | None = None
    # The backup channels' replication, by channel name.
    channels: dict[str, ReplicationStatus] = field(default_factory=dict)
    spool_sweep: SweepStatus | None = None
    lmtp: dict[str, Any] | None = None  # the LMTP worker pool's own report
    integrity: ScrubStatus | None = None  # damaged bodies and the scrub
    database: DbCheck | None = None  # the last database integrity check
    input_memory: BudgetStatus | None = None  # the daemon's input budget (peerd.node.inputbudget)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "node": self.node,
            "partner": self.partner,
            "accounts": self.accounts,
            "owned": self.owned,
            "sync_log_depth": self.sync_log_depth,
            "sync_log_oldest": self.sync_log_oldest,
            "inflight_deliveries": self.inflight_deliveries,
        }
        if self.startup:
            body["startup"] = self.startup
        body["counters"] = self.counters
        body["store"] = {
            "batches": self.store.batches,
            "writes": self.store.writes,
            "largest_batch": self.store.largest_batch,
            "reads": self.store.reads,
        }
        if self.sync_server is not None:
            body["sync_server"] = self.sync_server.to_json()
        if self.proxy_hooks is not None:
            body["proxy_hooks"] = {k: v.to_json() for k, v in self.proxy_hooks.items()}
        if self.reconcile is not None:
            body["reconcile"] = self.reconcile.to_json()
        if self.replication is not None:
            body["replication"] = self.replication.to_json()
        if self.channels:
            body["channels"] = {k: v.to_json() for k, v in sorted(self.channels.items())}
        if self.spool_sweep is not None:
            body["spool_sweep"] = self.spool_sweep.to_json()
        if self.lmtp is not None:
            body["lmtp"] = self.lmtp
        if self.integrity is not None:
            body["integrity"] = self.integrity.to_json()
        if self.database is not None:
            body["database"] = self.database.to_json()
        if self.input_memory is not None:
            body["input_memory"] = self.input_memory.to_json()
        return body


async def node_status(parts: Parts) -> NodeStatus:
    node = parts.node

    def read(session: Session) -> tuple[int, dict[str, int], int, dt.datetime | None]:
        return (
            len(engine_accounts.list_accounts(session)),
            ownership_table.count_by_owner(session),
            synclog.depth(session),
            synclog.oldest(session),
        )

    accounts, owned, depth, oldest = await node.store.read(read)
    stats = node.store.stats
    pair = parts.pair
    return NodeStatus(
        node=node.name,
        partner=node.partner,
        accounts=accounts,
        owned=owned,
        sync_log_depth=depth,
        sync_log_oldest=_iso(oldest),
        inflight_deliveries=node.inflight,
        startup=node.startup_note,
        counters=dict(node.counters.values),
        store=StoreStatus(stats.batches, stats.writes, stats.largest_batch, stats.reads),
        sync_server=parts.sync_server.status() if parts.sync_server else None,
        proxy_hooks=pair.hooks.status() if pair else None,
        reconcile=await parts.reconciler.status() if parts.reconciler else None,
        replication=await parts.worker.status() if parts.worker else None,
        channels={name: await w.status() for name, w in parts.channels.items()},
        spool_sweep=parts.sweep.status() if parts.sweep else None,
        lmtp=await parts.lmtp.status() if parts.lmtp else None,
        integrity=parts.scrubber.status() if parts.scrubber else None,
        database=node.db_check,
        input_memory=node.input_budget.status(),
    )


@dataclass(frozen=True, slots=True)
class AccountStatus:
    """One account: who serves it, what of it the partner does not have yet,
    and (with replication) how its syncs went."""

    node: str
    partner: str
    account: str
    owner: str
    home: str
    epoch: int
    state: str
    sync_log_depth: int
    oldest_pending: str | None
    lag_seconds: float
    replication: ReplicationStatus | None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "node": self.node,
            "partner": self.partner,
            "account": self.account,
            "owner": self.owner,
            "home": self.home,
            "epoch": self.epoch,
            "state": self.state,
            "sync_log_depth": self.sync_log_depth,
            "oldest_pending": self.oldest_pending,
            "lag_seconds": self.lag_seconds,
        }
        if self.replication is not None:
            body.update(self.replication.to_json())
        return body


async def account_status(parts: Parts, account: str) -> AccountStatus:
    node = parts.node

    def read(session: Session) -> AccountStatus:
        name = engine_accounts.get_account(session, account).name
        row = ownership_table.view(session, name)
        oldest = synclog.oldest(session, name)
        return AccountStatus(
            node=node.name,
            partner=node.partner,
            account=name,
            owner=row.owner if row else node.name,
            home=row.home if row else node.name,
            epoch=row.epoch if row else 0,
            state=row.state if row else "normal",
            sync_log_depth=synclog.depth(session, name),
            oldest_pending=_iso(oldest),
            lag_seconds=_lag(oldest),
            replication=None,
        )

    found = await node.store.read(read)
    if parts.worker is None:
        return found
    # The partner's side: reachable, last success, last error, for this account.
    return replace(found, replication=await parts.worker.status(found.account))
