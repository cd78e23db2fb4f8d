"""Failover: the survivor takes every account its (dead) partner owns.

How this works: every account the partner owns becomes ours at epoch + 1,
state ``failed_over``, in one write. Refused while the partner answers on
the sync channel (:class:`~ownership.errors.PartnerReachable`: use a
switchover), unless forced; forced, the partner is sent the new rows at once,
so it stops taking writes for them now rather than at its next refused sync.
Sessions open here for the taken accounts are closed (they were replicas'),
and every proxy hook is told the new routes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from ownership import table as ownership_table
from ownership.errors import PartnerReachable, UnknownNode
from ownership.rows import OwnershipView, row_view
from peerd.pair.hooks import HookAck, routes_for
from peerd.pair.partner import Pair, partner_answers, tell_partner

__all__ = ["Failover", "failover"]

log = logging.getLogger("peerd.pair.failover")


@dataclass(frozen=True, slots=True)
class Failover:
    """What a failover did: the rows it took (new owner, new epoch each), whether
    the partner answered (then it was forced) and took the new rows, and which
    proxy hooks acknowledged."""

    taken: tuple[OwnershipView, ...]
    forced_while_partner_answered: bool
    partner_informed: bool | None
    hooks: tuple[HookAck, ...]
    seconds: float

    @property
    def accounts(self) -> list[str]:
        return [row.account for row in self.taken]

    def to_json(self) -> dict[str, Any]:
        return {
            "taken": [row.to_json() for row in self.taken],
            "forced_while_partner_answered": self.forced_while_partner_answered,
            "partner_informed": self.partner_informed,
            "hooks": [ack.to_json() for ack in self.hooks],
            "seconds": self.seconds,
        }


async def failover(pair: Pair, *, force: bool = False) -> Failover:
    node = pair.node
    if not node.partner:
        raise UnknownNode("this node has no partner to take over from")
    reachable = await partner_answers(pair.client)
    if reachable and not force:
        raise PartnerReachable(
            f"{node.partner} answers on the sync channel: use switchover, or --force"
        )
    started = time.perf_counter()

    def take(session: Session) -> tuple[OwnershipView, ...]:
        rows = ownership_table.take_over(session, node.name, node.partner, "failover")
        session.flush()
        return tuple(row_view(r) for r in rows)

    taken = await node.store.write(take)
    accounts = [row.account for row in taken]
    node.counters.inc("failovers")
    log.warning("failover: took %d account(s) from %s", len(taken), node.partner)
    await node.close_sessions(accounts)
    informed = None
    if reachable and taken:
        # Forced while the partner answers: it would keep taking writes for
        # these accounts until its next sync is refused. Tell it now.
        informed = await tell_partner(pair, "forced failover")
    acked = await pair.hooks.notify(await routes_for(node, accounts))
    return Failover(
        taken=taken,
        forced_while_partner_answered=reachable,
        partner_informed=informed,
        hooks=acked,
        seconds=round(time.perf_counter() - started, 3),
    )
