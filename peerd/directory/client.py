"""The node's handle on the directory: its connection pool and cached lookups.

How this works: one SQLAlchemy engine (psycopg 3, a small pool) per node;
every statement runs in a thread (:func:`asyncio.to_thread`), so the event
loop never waits on the directory. :meth:`Directory.find` is the routing
lookup: through a :class:`~peerd.directory.cache.ReadThrough` cache whose
entries live ``[routing] directory_cache_ttl``. Any database error becomes
:class:`~peerd.directory.errors.DirectoryUnavailable` here, at the one
boundary, so callers answer "try again later" and never "no such account".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.exc import SQLAlchemyError

from engine.db import normalize_url
from peerd.directory import queries, schema
from peerd.directory.cache import ReadThrough
from peerd.directory.errors import DirectoryUnavailable
from peerd.directory.rows import AccountEntry, Found, NodeEntry, PairEntry

__all__ = ["Directory"]

log = logging.getLogger("peerd.directory")

T = TypeVar("T")

# A lookup waits at most this long for the directory (then: try again later).
CONNECT_TIMEOUT = 5


class Directory:
    def __init__(self, url: str, pair: str, cache_ttl: dt.timedelta) -> None:
        self.pair = pair
        self.engine: Engine = create_engine(
            normalize_url(url),
            pool_size=4,
            max_overflow=4,
            pool_pre_ping=True,
            pool_timeout=CONNECT_TIMEOUT,
            connect_args={"connect_timeout": CONNECT_TIMEOUT},
        )
        self.cache: ReadThrough[str, Found | None] = ReadThrough(
            self._lookup, cache_ttl.total_seconds()
        )

    def _run(self, fn: Callable[[Connection], T]) -> T:
        try:
            with self.engine.begin() as conn:
                return fn(conn)
        except SQLAlchemyError as exc:
            raise DirectoryUnavailable(
                "routing directory unavailable: "
                + " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
            ) from exc

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """``fn(connection)`` in one transaction, off the event loop."""
        return await asyncio.to_thread(self._run, fn)

    async def ensure_schema(self) -> int:
        return await self.run(schema.ensure)

    async def _lookup(self, account: str) -> Found | None:
        return await self.run(lambda conn: queries.lookup(conn, account))

    async def find(self, account: str) -> Found | None:
        """Where ``account`` is served, at most ``directory_cache_ttl`` old."""
        return await self.cache.get(account)

    async def find_first(self, names: Sequence[str]) -> Found | None:
        """The first of ``names`` the directory knows (a recipient's candidates)."""
        for name in names:
            found = await self.find(name)
            if found is not None:
                return found
        return None

    async def register(self, node: NodeEntry) -> None:
        await self.run(lambda conn: queries.register_node(conn, node))

    async def heartbeat(self, node: str) -> bool:
        return await self.run(lambda conn: queries.heartbeat(conn, self.pair, node))

    async def write(self, rows: Sequence[AccountEntry]) -> list[str]:
        return await self.run(lambda conn: queries.write_accounts(conn, self.pair, rows))

    async def delete(self, accounts: Sequence[str]) -> list[str]:
        return await self.run(lambda conn: queries.delete_accounts(conn, self.pair, accounts))

    async def pairs(self) -> list[PairEntry]:
        return await self.run(queries.list_pairs)

    def close(self) -> None:
        self.engine.dispose()
