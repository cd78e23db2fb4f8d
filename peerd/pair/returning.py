"""The return of a node: before it serves anything, learn what the partner did meanwhile.

How this works: rows left ``moving`` by a switchover a crash cut short are
released first (the flip never committed, so this node still owns them),
and rows of deleted accounts the partner has forgotten too are dropped.
Then :func:`exchange_at_start` sends our ownership rows to the partner and
adopts every row the partner knows at a higher epoch. Accounts the partner
took over while we were down become replicas here; the partner is asked to
sync them back, and its sync copies any mail we accepted and never
replicated (the no-loss rule).

If the partner cannot be reached, we serve the accounts we owned at our
last known epoch, and ``status`` says so (``startup``); the daemon then runs
:func:`exchange_once_reachable` in the background, which tries again with
back-off until the partner answers (both nodes of a pair often start
together, after a power cut, each before the other listens).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session

from engine.errors import EngineError
from engine.syncwire import encode_json
from ownership import table as ownership_table
from peerd.node.backoff import Backoff
from peerd.node.node import Node
from peerd.pair.partner import exchange_rows
from peerd.replication.client import SyncClient

__all__ = ["Returned", "exchange_at_start", "exchange_once_reachable"]

log = logging.getLogger("peerd.pair.returning")

EXCHANGE_TIMEOUT = 5.0
# Each side reads, sends and adopts every row: a pair of 100,000 accounts
# needs tens of seconds on a busy host, and a timeout below that retried the
# whole exchange forever.
EXCHANGE_ROWS_PER_SECOND = 2_000
RETRY_FIRST = 0.5


async def exchange_timeout(node: Node) -> float:
    """Seconds the exchange at start may take: :data:`EXCHANGE_TIMEOUT`,
    and one more for every :data:`EXCHANGE_ROWS_PER_SECOND` ownership rows."""
    rows = await node.store.read(ownership_table.count_rows)
    return EXCHANGE_TIMEOUT + rows / EXCHANGE_ROWS_PER_SECOND


@dataclass(frozen=True, slots=True)
class Returned:
    """What the exchange at start found: accounts released from an interrupted
    switchover, rows of deleted accounts dropped, whether the partner answered,
    and the accounts it owns now that were ours (``learned``)."""

    released: tuple[str, ...]
    pruned: tuple[str, ...]
    partner_answered: bool
    learned: tuple[str, ...]
    note: str


def _tidy(session: Session, me: str) -> tuple[list[str], list[str]]:
    """The two repairs of our own rows at start, in one transaction (one
    commit at every start, not two): rows left ``moving`` released, rows of
    deleted accounts the partner has forgotten dropped."""
    return ownership_table.release_interrupted(session, me), ownership_table.prune_deleted(session)


async def exchange_at_start(node: Node, client: SyncClient) -> Returned:
    released, pruned = await node.store.write(lambda s: _tidy(s, node.name))
    if pruned:
        log.info("at start: dropped the rows of deleted accounts %s", ", ".join(pruned))
    if released:
        log.warning(
            "at start: %d account(s) were left moving by an interrupted switchover; "
            "taking their writes again: %s",
            len(released),
            ", ".join(released),
        )
    try:
        changed = await asyncio.wait_for(exchange_rows(node, client), await exchange_timeout(node))
    except (EngineError, TimeoutError) as exc:
        node.startup_note = (
            f"partner unreachable at start ({exc}); serving only the accounts this node "
            "owned at its last known epoch"
        )
        log.warning("%s", node.startup_note)
        return Returned(tuple(released), tuple(pruned), False, (), node.startup_note)
    node.startup_note = (
        f"ownership exchanged with the partner at start; {len(changed)} row(s) learned"
    )
    await _hand_over(node, client, changed)
    return Returned(tuple(released), tuple(pruned), True, tuple(changed), node.startup_note)


async def exchange_once_reachable(node: Node, client: SyncClient) -> Returned:
    """The exchange, tried again with back-off until the partner answers."""
    maxwait = max(1.0, node.config.sync.sync_reconnect_maxwait.total_seconds())
    backoff = Backoff(RETRY_FIRST, maxwait)
    while True:
        await asyncio.sleep(backoff.next())
        try:
            changed = await asyncio.wait_for(
                exchange_rows(node, client), await exchange_timeout(node)
            )
        except (EngineError, TimeoutError):
            continue
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        node.startup_note = (
            f"partner unreachable at start; ownership exchanged when it answered at {stamp}, "
            f"{len(changed)} row(s) learned"
        )
        log.warning("%s", node.startup_note)
        await _hand_over(node, client, changed)
        return Returned((), (), True, tuple(changed), node.startup_note)


# Accounts named in the summary line (the ownership table has them all).
SHOWN = 10


async def _hand_over(node: Node, client: SyncClient, changed: list[str]) -> None:
    """Accounts the partner owns now: ask it to pull what we hold of them."""
    if changed:
        # One line for the lot: after a failover this is every account the node owned.
        shown = ", ".join(changed[:SHOWN])
        more = f" and {len(changed) - SHOWN} more" if len(changed) > SHOWN else ""
        log.warning(
            "%d account(s) owned by the partner now; this node is their replica: %s%s",
            len(changed),
            shown,
            more,
        )
        try:
            await client.call("request_sync", encode_json({"accounts": changed}), compressed=False)
        except EngineError as exc:
            log.warning("could not ask the partner to sync %d account(s): %s", len(changed), exc)
