"""Switchover: move accounts to the partner while both nodes are up.

How this works, run on the owner: catch the partner up first (a full sync
of each account while writes still go on: under a steady load this is the
long part, and nothing is held), then mark the accounts ``moving`` (the
fence refuses new local writes from then on: LMTP answers 451 4.3.0, IMAP
NO [UNAVAILABLE], POP3 -ERR [SYS/TEMP]; open sessions are closed), drain
the final delta to the partner (a full sync each, repeated while the sync
log still has rows for the account), flip the owner at epoch + 1, send the
partner the new rows, tell the proxies. The hold is bounded: a drain that
takes longer than :data:`HOLD_LIMIT` seconds, or fails, unmarks the
accounts (writes resume) and nothing moved. Writes are refused from the
mark to the flip: :attr:`Switchover.writes_held` says for how long.

Asked on the node that does not own some of the accounts, those are
forwarded to their owner (its control API), with ``to`` set to this node:
the owner moves only accounts not at ``to`` already and never forwards back,
so two nodes whose tables disagree cannot bounce a request between them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy.orm import Session

from engine import synclog
from engine.errors import EngineError, NoSuchAccount, SyncProtocolError
from ownership import table as ownership_table
from ownership.errors import NotCaughtUp, PartnerUnreachable, UnknownNode
from ownership.rows import OwnershipView, parse_row, row_view
from peerd.pair.hooks import HookAck, routes_for
from peerd.pair.partner import Pair, partner_answers, partner_api, tell_partner
from peerd.pair.verify import verify_target

__all__ = ["Switchover", "accounts_owned_by", "switchover"]

log = logging.getLogger("peerd.pair.switchover")

# Full syncs of one account while draining it, before giving up on an empty log.
DRAIN_SYNCS = 3
# The longest writes are held for a switchover's final drain: past it the
# accounts are unmarked and the switchover refused (nothing moved).
HOLD_LIMIT = 10.0


@dataclass(frozen=True, slots=True)
class Switchover:
    """What a switchover did: the rows it moved here (new owner and epoch each),
    the accounts already where they were asked to go, the owner's answer for
    the accounts forwarded to it, whether the partner took the new rows, which
    proxy hooks acknowledged, and how long (seconds) new writes were refused
    for the moved accounts (the mark to the flip; 0 when none moved here)."""

    moved: tuple[OwnershipView, ...]
    already: tuple[str, ...]
    forwarded: Switchover | None
    partner_informed: bool | None
    hooks: tuple[HookAck, ...]
    seconds: float
    writes_held: float = 0.0

    @property
    def accounts(self) -> list[str]:
        """The accounts moved here (not those the forwarded owner moved)."""
        return [row.account for row in self.moved]

    def to_json(self) -> dict[str, Any]:
        return {
            "moved": [row.to_json() for row in self.moved],
            "already": list(self.already),
            "forwarded": self.forwarded.to_json() if self.forwarded else None,
            "partner_informed": self.partner_informed,
            "hooks": [ack.to_json() for ack in self.hooks],
            "seconds": self.seconds,
            "writes_held": self.writes_held,
        }

    @classmethod
    def from_json(cls, value: Any) -> Switchover:
        """The partner's answer to a forwarded switchover."""
        try:
            forwarded = value.get("forwarded")
            informed = value.get("partner_informed")
            return cls(
                moved=tuple(parse_row(row) for row in value.get("moved", [])),
                already=tuple(str(a) for a in value.get("already", [])),
                forwarded=cls.from_json(forwarded) if forwarded is not None else None,
                partner_informed=None if informed is None else bool(informed),
                hooks=tuple(HookAck.from_json(ack) for ack in value.get("hooks", [])),
                seconds=float(value.get("seconds", 0.0)),
                writes_held=float(value.get("writes_held", 0.0)),
            )
        except (AttributeError, KeyError, TypeError, ValueError, SyncProtocolError) as exc:
            raise PartnerUnreachable(
                f"the partner's switchover answer is unreadable: {exc}"
            ) from exc


async def accounts_owned_by(pair: Pair, owner: str) -> list[str]:
    """Every account ``owner`` (this node or the partner) owns: ``all_from``."""
    node = pair.node
    if owner not in (node.name, node.partner):
        raise UnknownNode(f"{owner!r} is neither {node.name} nor {node.partner}")
    return await node.store.read(
        lambda s: [r.account for r in ownership_table.views(s, owner=owner)]
    )


async def switchover(pair: Pair, accounts: Sequence[str], to: str | None = None) -> Switchover:
    """Move ``accounts`` to the node that does not own them (``to``: only those not there)."""
    node = pair.node
    if to is not None and to not in (node.name, node.partner):
        raise UnknownNode(f"{to!r} is neither {node.name} nor {node.partner}")

    def owners(session: Session) -> dict[str, str | None]:
        return {a: (r.owner if (r := ownership_table.view(session, a)) else None) for a in accounts}

    rows = await node.store.read(owners)
    missing = [a for a, owner in rows.items() if owner is None]
    if missing:
        raise NoSuchAccount(f"no such account: {', '.join(missing)}")
    already = [a for a, owner in rows.items() if to is not None and owner == to]
    theirs = [a for a, owner in rows.items() if owner != node.name and a not in already]
    ours = [a for a, owner in rows.items() if owner == node.name and a not in already]
    started = time.perf_counter()
    changed: list[str] = []
    forwarded: Switchover | None = None
    informed: bool | None = None
    moved: tuple[OwnershipView, ...] = ()
    held = 0.0
    if theirs:
        # The owner runs a switchover; ask it. ``to`` keeps it from
        # forwarding back if its table disagrees with ours.
        answer = await partner_api(
            node, "POST", "/v1/switchover", {"accounts": theirs, "to": node.name}
        )
        forwarded = Switchover.from_json(answer)
        changed += forwarded.accounts
        if changed and not forwarded.partner_informed:
            # The owner could not send us the new rows; fetch them ourselves
            # before telling our proxies.
            informed = await tell_partner(pair, "switchover")
    if ours:
        # The target checks (and heals from us) the accounts' bodies first.
        await verify_target(pair, ours)
        moved, held = await _move_ours(pair, ours)
        informed = await tell_partner(pair, "switchover")
        changed += [row.account for row in moved]
    acked = await pair.hooks.notify(await routes_for(node, changed))
    return Switchover(
        moved=moved,
        already=tuple(already),
        forwarded=forwarded,
        partner_informed=informed,
        hooks=acked,
        seconds=round(time.perf_counter() - started, 3),
        writes_held=round(held, 3),
    )


async def _move_ours(pair: Pair, ours: list[str]) -> tuple[tuple[OwnershipView, ...], float]:
    """Mark, drain, flip; the flipped rows and how long writes were refused."""
    node, client = pair.node, pair.client
    if not await partner_answers(client):
        raise PartnerUnreachable(
            f"{node.partner} does not answer: a switchover needs it (use failover)"
        )
    for account in ours:
        # Catch up while writes still go on, so the held drain below has
        # only the last few changes to send.
        await client.sync_account(account)
    previous = await node.store.write(lambda s: ownership_table.mark_moving(s, ours, node.name))
    held_since = time.perf_counter()
    moving = list(previous)
    await node.close_sessions(moving)
    try:
        for account in moving:
            # Drain: a full sync while local writes are refused. Repeat
            # until nothing is left in the log for it. A sync is not cut
            # short (its own timeouts bound it); the limit is looked at
            # between syncs.
            for _ in range(DRAIN_SYNCS):
                if time.perf_counter() - held_since > HOLD_LIMIT:
                    raise _held_too_long(node.name, node.partner, held_since, moving)
                await client.sync_account(account)
                if not await node.store.read(partial(synclog.depth, account=account)):
                    break
    except (EngineError, NotCaughtUp):
        await node.store.write(lambda s: ownership_table.unmark_moving(s, previous))
        raise

    def flip(session: Session) -> tuple[OwnershipView, ...]:
        return tuple(
            row_view(
                ownership_table.set_owner(
                    session,
                    account,
                    node.partner,
                    state="normal",
                    reason=f"switchover from {node.name}",
                )
            )
            for account in moving
        )

    flipped = await node.store.write(flip)
    held = time.perf_counter() - held_since
    node.counters.inc("switchovers")
    log.info("switchover: %d account(s) to %s, writes held %.3fs", len(flipped), node.partner, held)
    return flipped, held


def _held_too_long(name: str, partner: str, since: float, moving: list[str]) -> NotCaughtUp:
    held = time.perf_counter() - since
    return NotCaughtUp(
        f"the final drain to {partner} took more than {HOLD_LIMIT:g} s: writes were held "
        f"{held:.3f} s and are taken again, nothing moved. Retry once `peerctl status -u USER` "
        f"on {name} shows a small sync log depth",
        [{"account": a, "node": name} for a in moving],
    )
