"""Writing this node's pair into the directory: its addresses, a heartbeat, its accounts.

How this works: the local ownership table stays the truth (the fence reads
only it); the directory is the routing view other pairs read, written
through after each local commit. Every commit that changes ownership rows
(account added or deleted, switchover, failover, failback, a row adopted
from the partner) tells :meth:`DirectoryWriter.changed` its accounts; the
writer's task reads those rows as committed and writes them in one
statement: a present row is raised to its epoch (a stale epoch loses, see
:func:`peerd.directory.queries.write_accounts`), a row gone (the account
deleted and pruned) is removed. Both nodes of a pair write the same rows:
whichever comes second changes nothing.

At start, and again whenever the directory comes back after being away,
the writer registers the node (pair, addresses) and writes every local row
(in chunks; only higher epochs change anything). A change made while the
directory is away stays pending in memory and is written when it answers.
Every ``[routing] directory_heartbeat`` the node's ``last_heartbeat`` is
set to now: ``pair list`` calls a node up when it is recent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from engine.errors import EngineError
from ownership import table as ownership_table
from ownership.rows import OwnershipView
from peerd.directory.client import Directory
from peerd.directory.rows import AccountEntry, NodeEntry
from peerd.node.config import Config
from peerd.node.node import Node
from peerd.node.version import release

__all__ = ["DirectoryWriter", "node_entry"]

log = logging.getLogger("peerd.directory.writer")

CHUNK = 5000


def node_entry(config: Config) -> NodeEntry:
    """This node as the directory lists it: the addresses proxies and other
    pairs use ([routing] *_address, else [listen]; [routing] api_url, else
    http:// [listen] http)."""
    routing, listen = config.routing, config.listen

    def at(service: str) -> str | None:
        where = getattr(routing, f"{service}_address") or getattr(listen, service)
        return str(where) if where is not None else None

    api = routing.api_url or (f"http://{listen.http}" if listen.http is not None else None)
    return NodeEntry(
        routing.pair,
        config.node.name,
        at("imap"),
        at("pop3"),
        at("lmtp"),
        api,
        release(),
        dt.datetime.now(dt.UTC),
        str(listen.sync) if listen.sync is not None else None,
    )


@dataclass(slots=True)
class WriterStatus:
    connected: bool = False
    last_error: str = ""
    written: int = 0
    deleted: int = 0


class DirectoryWriter:
    def __init__(self, node: Node, directory: Directory) -> None:
        self.node = node
        self.directory = directory
        self.pending: set[str] = set()
        self.status = WriterStatus()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unwatch = node.watch_ownership(self.changed)

    def changed(self, accounts: list[str]) -> None:
        """Ownership rows of ``accounts`` were committed: write them through."""
        self.pending.update(accounts)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="directory-writer")

    async def stop(self) -> None:
        self._unwatch()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Whatever is still pending: one last try, briefly.
        if self.pending and self.status.connected:
            with contextlib.suppress(EngineError, TimeoutError):
                await asyncio.wait_for(self.flush(), 2)

    def to_json(self) -> dict[str, Any]:
        return {
            "pair": self.directory.pair,
            "connected": self.status.connected,
            "last_error": self.status.last_error,
            "pending": len(self.pending),
            "written": self.status.written,
            "deleted": self.status.deleted,
        }

    async def _run(self) -> None:
        interval = self.node.config.routing.directory_heartbeat.total_seconds()
        while True:
            self._wake.clear()
            try:
                if not self.status.connected:
                    await self._connect()
                else:
                    if not await self.directory.heartbeat(self.node.name):
                        await self.directory.register(node_entry(self.node.config))
                if self.pending:
                    await self.flush()
            except EngineError as exc:
                if self.status.connected or exc.message != self.status.last_error:
                    log.warning("directory: %s (retrying)", exc.message)
                self.status.connected = False
                self.status.last_error = exc.message
                self.node.counters.inc("directory_failures")
                # Away: try again after one interval, however many changes
                # come meanwhile (they wait in ``pending``).
                await asyncio.sleep(interval)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)

    async def _connect(self) -> None:
        """Schema, this node's entry, then every local row."""
        await self.directory.ensure_schema()
        await self.directory.register(node_entry(self.node.config))
        pair = self.directory.pair
        rows = await self.node.store.read(
            lambda s: [_entry(pair, v) for v in ownership_table.views(s)]
        )
        for start in range(0, len(rows), CHUNK):
            written = await self.directory.write(rows[start : start + CHUNK])
            self.status.written += len(written)
            self.node.counters.inc("directory_rows_written", len(written))
        self.status.connected = True
        self.status.last_error = ""
        log.info("directory: pair %s, node %s registered", self.directory.pair, self.node.name)

    async def flush(self) -> None:
        """Write the pending accounts' rows as they are committed now."""
        while self.pending:
            batch = sorted(self.pending)[:CHUNK]
            self.pending.difference_update(batch)
            try:
                rows, gone = await self.node.store.read(
                    functools.partial(_read, pair=self.directory.pair, accounts=batch)
                )
                written = await self.directory.write(rows)
                deleted = await self.directory.delete(gone)
            except BaseException:
                self.pending.update(batch)
                raise
            self.status.written += len(written)
            self.status.deleted += len(deleted)
            self.node.counters.inc("directory_rows_written", len(written) + len(deleted))
            # A lookup here must not wait out the cache for our own change.
            for account in batch:
                self.directory.cache.forget(account)


def _entry(pair: str, view: OwnershipView) -> AccountEntry:
    return AccountEntry(view.account, pair, view.owner, view.epoch, view.state)


def _read(session: Session, pair: str, accounts: list[str]) -> tuple[list[AccountEntry], list[str]]:
    rows, gone = [], []
    for account in accounts:
        view = ownership_table.view(session, account)
        if view is None:
            gone.append(account)
        else:
            rows.append(_entry(pair, view))
    return rows, gone
