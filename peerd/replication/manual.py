"""Syncs an administrator asks for: ``peerctl replicate`` and ``peerctl synclog``.

How this works: :func:`replicate_now` is Cyrus's ``sync_client -u`` (one
account), ``-m`` (some of its mailboxes) and ``-A`` (every account this node
owns). For ``-A`` it first compares one digest per account with the partner
(a few requests for thousands of accounts) and syncs only those that differ
or have logged changes, many accounts per request
(:mod:`peerd.replication.batch`, two batches in flight); an account a batch
hands back, and every account of ``-u``, syncs alone, twice
``sync_concurrency`` at a time. One account's failure is reported and does
not stop the others. :func:`queue` is ``cyr_synclog``: it logs an account or
some of its mailboxes as changed, for the rolling worker to sync;
:func:`pending_changes` is what the log holds, per account.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from engine import synclog
from engine.accounts import get_account
from engine.errors import EngineError, InvalidArgument
from engine.mailbox import get_mailbox
from ownership import table as ownership_table
from peerd.node.config import Address, parse_address
from peerd.node.errormap import client_text
from peerd.node.node import Node
from peerd.replication.batch import BATCH_ACCOUNTS, sync_batch
from peerd.replication.client import SyncClient, SyncReport

__all__ = [
    "Pending",
    "Replicated",
    "SyncFailure",
    "pending_changes",
    "queue",
    "replicate_now",
    "sync_target",
]

# Batches of accounts a ``replicate --all`` has in flight: one is read and
# compared here while the partner applies the other.
BATCHES_IN_FLIGHT = 2


@dataclass(frozen=True, slots=True)
class SyncFailure:
    account: str
    error: str  # the error's code
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"account": self.account, "error": self.error, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Replicated:
    """What a manual sync did: every account asked for, those found equal by
    their digests (not synced), one report per sync, one failure per account
    that failed."""

    accounts: int
    in_sync: int
    reports: tuple[SyncReport, ...]
    errors: tuple[SyncFailure, ...]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "accounts": self.accounts,
            "in_sync": self.in_sync,
            "reports": [r.to_json() for r in self.reports],
            "errors": [e.to_json() for e in self.errors],
            "seconds": self.seconds,
        }


def sync_target(node: Node, target: str) -> Address:
    """``host[:port]`` of another sync listener on the partner's host (the port
    defaults to ``sync_port``).

    The request carries the pair's sync credentials, so the host must be the
    configured ``sync_host``, written the same way: anything else is refused
    before a connection is made.
    """
    sync = node.config.sync
    try:
        where = parse_address(target if ":" in target else f"{target}:{sync.sync_port}")
    except ValueError as exc:
        raise InvalidArgument(f"target: {exc}") from exc
    if not sync.sync_host or where.host.lower() != sync.sync_host.strip("[]").lower():
        raise InvalidArgument(
            "target must be on the configured partner's host ([sync] sync_host):"
            " the sync credentials go nowhere else"
        )
    return where


async def replicate_now(
    node: Node,
    client: SyncClient,
    *,
    account: str | None = None,
    everything: bool = False,
    mailboxes: list[str] | None = None,
    compressed: bool | None = None,
) -> Replicated:
    """Sync ``account`` (some of its ``mailboxes``), or every owned account."""
    chained = bool(client.channel and node.config.sync.sync_log_chain)
    if everything:
        # Ours; to a backup channel with sync_log_chain, the partner's too.
        accounts = await node.store.read(
            lambda s: [
                r.account
                for r in ownership_table.views(s, owner=None if chained else node.name)
                if r.owner != client.channel
            ]
        )
    elif account:
        accounts = [account]
    else:
        raise InvalidArgument("give account or all")
    started = time.perf_counter()
    reports: list[SyncReport] = []
    errors: list[SyncFailure] = []
    semaphore = asyncio.Semaphore(max(1, node.config.sync.sync_concurrency) * 2)

    async def one(name: str) -> None:
        async with semaphore:
            try:
                report = await client.sync_account(name, mailboxes=mailboxes, compressed=compressed)
            except EngineError as exc:
                errors.append(
                    SyncFailure(name, exc.code, client_text(exc, "replicate", admin=True))
                )
                return
            reports.append(report)

    todo = accounts
    if everything and not mailboxes:
        try:
            differ, _refused = await client.differing(accounts)
        except EngineError:
            differ = set(accounts)  # the per-account syncs will say what is wrong
        pending = set(
            await node.store.read(
                lambda s: [p.account for p in synclog.pending(s, channel=client.channel)]
            )
        )
        todo = [a for a in accounts if a in differ or a in pending]
        # Many accounts per round trip (peerd.replication.batch); those a
        # batch hands back (repairs, renames, an older partner) go alone.
        alone: list[str] = []
        in_flight = asyncio.Semaphore(BATCHES_IN_FLIGHT)

        async def batch(names: list[str]) -> None:
            async with in_flight:
                outcome = await sync_batch(client, names, compressed=compressed)
            reports.extend(outcome.reports)
            errors.extend(SyncFailure(a, code, detail) for a, code, detail in outcome.errors)
            alone.extend(outcome.alone)

        await asyncio.gather(
            *(batch(todo[i : i + BATCH_ACCOUNTS]) for i in range(0, len(todo), BATCH_ACCOUNTS))
        )
        await asyncio.gather(*(one(a) for a in alone))
    else:
        await asyncio.gather(*(one(a) for a in todo))
    return Replicated(
        accounts=len(accounts),
        in_sync=len(accounts) - len(todo),
        reports=tuple(sorted(reports, key=lambda r: r.account)),
        errors=tuple(errors),
        seconds=round(time.perf_counter() - started, 4),
    )


async def queue(node: Node, account: str, mailboxes: Sequence[str]) -> int:
    """Log ``account`` (or these of its mailboxes) as changed; how many rows."""

    def write(session: Session) -> int:
        acct = get_account(session, account)
        if not mailboxes:
            synclog.record(session, acct.name, "", "account")
            return 1
        for name in mailboxes:
            synclog.record(session, acct.name, get_mailbox(session, acct, name).uniqueid, "mailbox")
        return len(mailboxes)

    return await node.store.write(write)


@dataclass(frozen=True, slots=True)
class Pending:
    """One account's changes the partner does not have yet."""

    account: str
    changes: int
    kinds: tuple[str, ...]
    oldest: str  # ISO 8601

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "changes": self.changes,
            "kinds": list(self.kinds),
            "oldest": self.oldest,
        }


async def pending_changes(node: Node, accounts: list[str] | None = None) -> list[Pending]:
    """The sync log coalesced per account, most urgent first (all, or ``accounts``)."""

    def read(session: Session) -> list[Pending]:
        return [
            Pending(p.account, len(p.rows), tuple(sorted(p.kinds)), p.oldest.isoformat())
            for p in synclog.pending(session, accounts)
        ]

    return await node.store.read(read)
