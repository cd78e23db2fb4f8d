"""Failback: the returned node takes back every account whose home it is.

How this works, run on the returned node: once nothing it accepted for the
accounts to move is still to be handed to the owner (no sync-log row here;
otherwise :class:`~ownership.errors.NotCaughtUp`, naming what is pending),
it asks the partner to switch over every account whose home is this node
(:mod:`peerd.pair.switchover`, forwarded with ``to`` set to this node).
What the owner took and has not replicated yet does not refuse: under a
steady load some row is always pending there. The owner's switchover
catches this node up while writes go on, then holds the accounts' new
writes (4xx) for the final drain only, bounded, and says for how long
(``writes_held``). The proxies are told the routes that changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from ownership import table as ownership_table
from ownership.errors import NotCaughtUp
from peerd.node.node import Node
from peerd.pair.hooks import HookAck, routes_for
from peerd.pair.partner import Pair, partner_api, tell_partner
from peerd.pair.switchover import Switchover
from peerd.replication.manual import pending_changes

__all__ = ["Failback", "check_caught_up", "failback"]

log = logging.getLogger("peerd.pair.failback")

NOTHING_TO_DO = "every account whose home is here is here"


@dataclass(frozen=True, slots=True)
class Failback:
    """What a failback asked (the accounts whose home is here), the partner's
    switchover answer, whether the rows reached us, which hooks acknowledged."""

    requested: tuple[str, ...]
    partner: Switchover | None = None
    partner_informed: bool | None = None
    hooks: tuple[HookAck, ...] = ()
    seconds: float = 0.0

    @property
    def writes_held(self) -> float:
        """How long (seconds) the owner refused new writes for the accounts."""
        return self.partner.writes_held if self.partner else 0.0

    @property
    def accounts(self) -> list[str]:
        """The accounts that came home."""
        return self.partner.accounts if self.partner else []

    def to_json(self) -> dict[str, Any]:
        if not self.requested:
            return {"requested": [], "partner": None, "hooks": [], "detail": NOTHING_TO_DO}
        return {
            "requested": list(self.requested),
            "partner": self.partner.to_json() if self.partner else None,
            "partner_informed": self.partner_informed,
            "hooks": [ack.to_json() for ack in self.hooks],
            "seconds": self.seconds,
            "writes_held": self.writes_held,
        }


def _listing(items: list[str], limit: int = 10) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


async def check_caught_up(node: Node, accounts: list[str], grace: float = 2.0) -> None:
    """Raise :class:`NotCaughtUp` while this node has a sync-log row for ``accounts``.

    Such a row is a change this node accepted and has not handed to the
    owner yet (it returned with unreplicated mail): moving the account now
    would leave it behind. A row can also be a sync in flight, acknowledged
    milliseconds later: ``grace`` seconds of looking again keep that from
    refusing a node that is in fact caught up. The partner's rows (what the
    owner took and has not replicated here yet) are the switchover's to
    drain, while it holds the accounts' writes.
    """
    deadline = time.monotonic() + grace
    while True:
        here = [p.to_json() for p in await pending_changes(node, accounts)]
        if not here or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.1)
    if not here:
        return
    words = [
        f"{p['account']}: {p['changes']} change(s) here not yet handed to {node.partner} "
        f"(oldest {p['oldest']})"
        for p in here
    ]
    raise NotCaughtUp(
        f"{node.name} has not caught up with {node.partner}: {_listing(words)}. "
        "Retry once `peerctl status -u USER` shows sync log depth 0 here "
        f"(rolling replication hands them to {node.partner})",
        [dict(p, node=node.name) for p in here],
    )


async def failback(pair: Pair) -> Failback:
    node = pair.node
    accounts = await node.store.read(
        lambda s: [
            r.account
            for r in ownership_table.views(s)
            if r.home == node.name and r.owner != node.name
        ]
    )
    if not accounts:
        return Failback(requested=())
    started = time.perf_counter()
    await check_caught_up(node, accounts)
    answer = Switchover.from_json(
        await partner_api(node, "POST", "/v1/switchover", {"accounts": accounts, "to": node.name})
    )
    moved = answer.accounts
    informed = None
    if moved and not answer.partner_informed:
        # The partner flipped them but could not tell us: ask for the rows,
        # or our proxies would be told the old owner.
        informed = await tell_partner(pair, "failback")
    acked = await pair.hooks.notify(await routes_for(node, moved))
    return Failback(
        requested=tuple(accounts),
        partner=answer,
        partner_informed=informed,
        hooks=acked,
        seconds=round(time.perf_counter() - started, 3),
    )
