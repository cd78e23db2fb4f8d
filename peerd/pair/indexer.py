"""The full-text indexer in the daemon: catching up, rebuilding, in ``status``.

How this works: :mod:`engine.textindex` keeps the text, keyed by GUID. Here
one task keeps it filled. It walks ``messages`` by ``id`` from a mark held in
memory (:func:`engine.textindex.pending`), reads the bytes of the GUIDs not
indexed yet off the event loop, extracts their text
(:func:`engine.fulltext.extract`) and stores it with the store's index
writer (:meth:`engine.store.Store.index_write`): on SQLite the index is a
database file of its own with a writer of its own, so no delivery or DELTA
queues behind its writes (SQLite locks per file); on PostgreSQL the index
is a table of the one database and its writes are the committer's. Either
way they are small, made while the store is idle or, while other writes
keep coming, for at most :data:`SHARE` of the time (:meth:`Indexer._settle`:
the extraction and the inserts take the daemon's CPU, and deliveries come
first; the index catches up between bursts, and a search decodes what it
has not reached, below). It runs when the store reports a commit and
every :data:`POLL` seconds (LMTP worker processes and a second process
write records this daemon's store hears nothing about), and once from the
start at start-up, so a store upgraded to an empty index, or one whose
daemon stopped mid-way, is filled. A walk starts :data:`RESCAN` ids below
the mark (at most once every :data:`POLL` seconds; other walks start at the
mark): on PostgreSQL two processes' transactions may commit out of
``id`` order, and a row committed late below the mark is caught that way.

Every record, however it came (LMTP, APPEND, COPY, MOVE, a sync applied on
the replica, a repair), is a new ``messages`` row, so the replica indexes
what it receives and a failover needs no rebuild. The writes are the node's
own derived data, not an account's state: they go straight to the store
(the replica, which owns nothing, must make them too) and are not replicated.

Search never waits for the indexer: a GUID not indexed yet is decoded at
search time (:class:`engine.textindex.TextSearch`), with the same answer.

:meth:`Indexer.rebuild` (``POST /v1/index/rebuild``, ``peerctl index
rebuild``) extracts again every GUID one account's live records name, or
every account's, and with ``all`` drops the rows no live record names.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from engine import textindex
from engine.errors import EngineError
from engine.fulltext import Searchable, extract
from peerd.node.node import Node
from peerd.pair.walker import Walker

__all__ = ["GAP", "POLL", "RESCAN", "Indexer", "RebuildResult"]

log = logging.getLogger("peerd.pair.indexer")

POLL: Final = 1.0  # seconds between two walks when nothing wakes the indexer
GAP: Final = 0.5  # seconds at least between the starts of two walks (Walker)
IDLE: Final = 0.1  # the store idle this long: the indexer writes IDLE_SLICE texts
IDLE_SLICE: Final = 32
SHARE: Final = 0.1  # else once it waited 9 times as long as its last write took,
SLICE: Final = 8  # ... and writes this many texts (a rebuild: BATCH a write)
QUIET: Final = 0.02  # how often it looks
LATE: Final = 1.0  # its share due this long and the store never seen idle: it writes anyway
RESCAN: Final = 1000  # ids below the mark each walk looks at again
BATCH: Final = 100  # messages extracted and stored per write
PAGE: Final = 500  # messages rows looked at per read


@dataclass(slots=True)
class RebuildResult:
    """One rebuild, for the API."""

    account: str | None
    indexed: int = 0  # GUIDs whose text was extracted and stored
    missing: int = 0  # GUIDs whose bytes could not be read
    forgotten: int = 0  # rows dropped: no live record names their GUID
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "indexed": self.indexed,
            "missing": self.missing,
            "forgotten": self.forgotten,
            "seconds": round(self.seconds, 3),
        }


@dataclass(slots=True)
class _Counters:
    indexed: int = 0
    missing: int = 0
    walks: int = 0


class Indexer(Walker):
    """The node's full-text indexer; see the module docstring."""

    task_name = "fulltext-indexer"
    doing = "full-text indexing"
    poll = POLL
    gap = GAP
    log = log

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self.counters = _Counters()
        self._due = 0.0  # loop time from which its share lets the indexer write again
        self._rescanned = float("-inf")  # when a walk last started RESCAN ids below the mark

    async def _settle(self) -> int:
        """Wait for the indexer's turn at the store's one committer; how many
        texts to store now. Storing text (FTS5 inserts, flushed at the
        write's end) holds the committer for milliseconds a message, and
        deliveries queue behind it: so the indexer writes :data:`IDLE_SLICE`
        texts once the store has had no write queued or committing for
        :data:`IDLE`, else :data:`SLICE` once its :data:`SHARE` of the time
        is due and the store has no write queued or committing (the moment
        after a commit, the longest way from the next one: a replica's
        DELTAs and a stream of deliveries come one by one), or once that
        has not happened for :data:`LATE`."""
        store = self.node.store
        loop = asyncio.get_running_loop()
        idle_since: float | None = None
        while True:
            now = loop.time()
            if store.busy():
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= IDLE:
                return IDLE_SLICE
            if now >= self._due and (idle_since is not None or now >= self._due + LATE):
                return SLICE
            await asyncio.sleep(QUIET)

    # -- the work ----------------------------------------------------------

    def _extract(self, guids: list[str]) -> tuple[list[tuple[str, Searchable]], int]:
        """Read and extract, in a worker thread. A GUID whose bytes cannot be
        read (the sweep removed them after its last record went) is skipped."""
        docs: list[tuple[str, Searchable]] = []
        missing = 0
        for guid in guids:
            if self._stopping:  # the daemon is stopping: the rest waits for the next start
                break
            if guid in self.skipped:
                continue
            try:
                raw = self.node.store.spool.read(guid)
            except (EngineError, OSError):
                missing += 1
                continue
            try:
                docs.append((guid, extract(raw)))
            except Exception as exc:  # the extractor on bytes a sender chose
                self.skip(guid, exc)
        return docs, missing

    async def _index(self, guids: list[str], *, yielding: bool = False) -> tuple[int, int]:
        """Extract and store ``guids``, a batch at a time; (indexed, missing).
        ``yielding``: each write waits for a pause in the store's other
        writes (:meth:`_settle`)."""
        indexed = missing = 0
        store = self.node.store
        loop = asyncio.get_running_loop()
        for i in range(0, len(guids), BATCH):
            docs, lost = await store.run_blocking(partial(self._extract, guids[i : i + BATCH]))
            while docs:
                size = len(docs)
                if yielding:
                    # The index's writes are the committer's on PostgreSQL;
                    # on SQLite they hold only the index's own file, but
                    # extracting and inserting still take the daemon's
                    # CPU (and interpreter) from deliveries and DELTAs.
                    size = await self._settle()
                started = loop.time()
                await store.index_write(partial(textindex.put, docs=docs[:size]))
                took = loop.time() - started
                self._due = loop.time() + took * (1 - SHARE) / SHARE
                indexed += len(docs[:size])
                docs = docs[size:]
            missing += lost
        self.counters.indexed += indexed
        self.counters.missing += missing
        return indexed, missing

    async def catch_up(self) -> int:
        """Index what the walk from the mark finds; how many GUIDs."""
        done = 0
        async with self.lock:
            self.counters.walks += 1
            after = self.mark
            now = time.monotonic()
            if now - self._rescanned >= POLL:
                # At most once a POLL: a walk woken by every commit (50 a
                # second on a replica under rolling sync) starts at the mark.
                after = max(0, self.mark - RESCAN)
                self._rescanned = now
            while True:
                found = await self.node.store.read(
                    partial(textindex.pending, after=after, limit=PAGE)
                )
                if found.guids:
                    indexed, _ = await self._index(list(found.guids), yielding=True)
                    done += indexed
                self.mark = max(self.mark, found.mark)
                after = found.mark
                if not found.more:
                    return done

    async def rebuild(self, account: str | None) -> RebuildResult:
        """Extract again every GUID ``account``'s live records name (None:
        every account's, and drop the rows of GUIDs no live record names)."""
        result = RebuildResult(account)
        started = time.monotonic()
        async with self.lock:
            store = self.node.store
            guids = await store.read(lambda s: textindex.live_guids(s, account))
            if account is None:
                unnamed = await store.read(textindex.unnamed)
                await store.index_write(partial(textindex.forget, guids=unnamed))
                result.forgotten = len(unnamed)
            result.indexed, result.missing = await self._index(guids)
        result.seconds = time.monotonic() - started
        log.info(
            "full-text index rebuilt for %s: %d message text(s), %d unreadable, %d dropped",
            account or "every account",
            result.indexed,
            result.missing,
            result.forgotten,
        )
        return result

    async def counts(self, account: str | None) -> textindex.IndexCounts:
        return await self.node.store.read(lambda s: textindex.counts(s, account))

    def status(self) -> dict[str, Any]:
        return {
            "mark": self.mark,
            "walks": self.counters.walks,
            "indexed": self.counters.indexed,
            "unreadable": self.counters.missing,
            "skipped": len(self.skipped),
        }
