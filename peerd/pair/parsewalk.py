"""The parse walker: IMAP's sort keys and structures stored once per message.

How this works: :mod:`engine.parsed` keeps, per GUID, what SORT, THREAD and
FETCH read of a message (:func:`peerd.protocols.imap.parsed.parse_message`:
the RFC 5256 sort keys, the rendered ENVELOPE, BODYSTRUCTURE and BODY). One
task here stores them as messages are stored. It walks ``messages`` by
``id`` from a mark held in memory (:func:`engine.parsed.pending`), reads the
bytes of the GUIDs without a row off the event loop, parses them and stores
the rows with one write of the store's committer per batch. It runs when the
store reports a commit (a delivery, an APPEND, a sync applied: the commit
that added the record wakes it) and every :data:`POLL` seconds (LMTP worker
processes write records this daemon's store hears nothing about), and once
from the first row at start-up, so a store upgraded from before
``0012_sortcache``, or one whose parser version changed, is filled. A walk
starts :data:`RESCAN` ids below the mark at most once every :data:`POLL`
seconds (the others start at the mark): on PostgreSQL two transactions may
commit out of ``id`` order. Its writes ride (``Store.write``'s ``ride``): they
join the next commit another write starts, so a stream of deliveries gets no
commit (and no WAL flush) of the walker's between each two of its own.

Nothing is parsed inside a delivery's transaction: parsing is CPU work the
group committer must not wait for, and the same walk covers every way a
record comes to exist (LMTP, APPEND, COPY, MOVE, a sync applied on the
replica, a repair): the replica parses the bytes it receives, so a failover
finds the keys there, and nothing new crosses the wire. The rows are the
node's own derived data, not an account's state: they go straight to the
store (the replica, which owns nothing, writes them too) and are not
replicated. IMAP never waits for the walker: a message it has not reached
yet is parsed from its bytes at request time, with the same answer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from engine import parsed
from engine.errors import EngineError
from peerd.node.node import Node
from peerd.pair.walker import Walker
from peerd.protocols.imap.parsed import PARSE_VERSION, parse_message

__all__ = ["GAP", "POLL", "RESCAN", "RIDE", "ParseWalker", "row_of"]

log = logging.getLogger("peerd.pair.parsewalk")

POLL: Final = 1.0  # seconds between two walks when nothing wakes the walker
GAP: Final = 0.25  # seconds at least between the starts of two walks (Walker)
RESCAN: Final = 1000  # ids below the mark a walk looks at again (at most once a POLL)
RIDE: Final = 0.5  # seconds a write of parsed rows waits to share another write's commit
BATCH: Final = 200  # messages parsed and stored per write
PAGE: Final = 1000  # messages rows looked at per read


def row_of(guid: str, raw: bytes) -> parsed.Row:
    """The row the walker stores for a message: also what a bulk writer of a
    store (``bench.curves``' generator) stores, so both are the same."""
    p = parse_message(raw)
    return parsed.Row(guid, PARSE_VERSION, p.sortkeys, p.envelope, p.bodystructure, p.body)


@dataclass(slots=True)
class _Counters:
    parsed: int = 0
    missing: int = 0
    walks: int = 0


class ParseWalker(Walker):
    """The node's parse walker; see the module docstring."""

    task_name = "parse-walker"
    doing = "parsing stored messages"
    poll = POLL
    gap = GAP
    log = log

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self.counters = _Counters()
        self._rescanned = float("-inf")  # when a walk last started RESCAN ids below the mark

    def _parse(self, guids: list[str]) -> tuple[list[parsed.Row], int]:
        """Read and parse, in a worker thread. A GUID whose bytes cannot be
        read (the sweep removed them after its last record went) is skipped."""
        rows: list[parsed.Row] = []
        missing = 0
        for guid in guids:
            if self._stopping:
                break
            if guid in self.skipped:
                continue
            try:
                raw = self.node.store.spool.read(guid)
            except (EngineError, OSError):
                missing += 1
                continue
            try:
                rows.append(row_of(guid, raw))
            except Exception as exc:  # the parser on bytes a sender chose
                self.skip(guid, exc)
        return rows, missing

    async def catch_up(self) -> int:
        """Parse and store what the walk from the mark finds; how many GUIDs."""
        done = 0
        store = self.node.store
        async with self.lock:
            self.counters.walks += 1
            after = self.mark
            now = time.monotonic()
            if now - self._rescanned >= POLL:
                # At most once a POLL: a walk woken by every commit (each
                # delivery, each sync a replica applies) starts at the mark.
                after = max(0, self.mark - RESCAN)
                self._rescanned = now
            while True:
                found = await store.read(
                    partial(parsed.pending, version=PARSE_VERSION, after=after, limit=PAGE)
                )
                guids = list(found.guids)
                for i in range(0, len(guids), BATCH):
                    rows, lost = await store.run_blocking(
                        partial(self._parse, guids[i : i + BATCH])
                    )
                    if rows:
                        # Derived rows: they ride on the next commit (the
                        # delivery that comes next), not one of their own.
                        await store.write(
                            partial(parsed.put, rows=rows), background=True, ride=RIDE
                        )
                    done += len(rows)
                    self.counters.parsed += len(rows)
                    self.counters.missing += lost
                self.mark = max(self.mark, found.mark)
                after = found.mark
                if not found.more:
                    return done

    def status(self) -> dict[str, Any]:
        return {
            "mark": self.mark,
            "walks": self.counters.walks,
            "parsed": self.counters.parsed,
            "unreadable": self.counters.missing,
            "skipped": len(self.skipped),
        }
