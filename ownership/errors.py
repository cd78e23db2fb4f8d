"""The ownership package's error tree; each class has a stable ``code``.

OwnershipError
├── NotOwner            (this node does not own the account: refer/retry)
├── StaleEpoch          (a request carried an epoch lower than known)
├── PartnerReachable    (failover refused: the partner answers; use switchover)
├── PartnerUnreachable  (a switchover or failback needs the partner)
├── NotCaughtUp         (failback refused: the returned node still lags)
├── TargetDamaged       (switchover/failback refused: the target holds damaged bodies)
└── UnknownNode         (a node name that is neither this node nor its partner)

A refusal by the sync fence is a sync error first (the sync client and the
listener handle it with the other sync outcomes), so it extends the engine's
tree rather than this one:

engine.errors.SyncRefused
└── SyncFenced          (the receiver's fence refused; ``current`` is its row, if any)

The daemon maps every code to HTTP, IMAP, POP3 and LMTP replies in
``peerd/node/errormap.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.errors import SyncRefused

if TYPE_CHECKING:  # not at run time: the LMTP worker imports this without the models
    from ownership.rows import OwnershipView

__all__ = [
    "NotCaughtUp",
    "NotOwner",
    "OwnershipError",
    "PartnerReachable",
    "PartnerUnreachable",
    "StaleEpoch",
    "SyncFenced",
    "TargetDamaged",
    "UnknownNode",
]


class OwnershipError(Exception):
    code = "ownership_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotOwner(OwnershipError):
    """Writes for this account belong on ``owner``; or, with ``moving``, the
    owner holds them while a switchover or a move between pairs hands the
    account over (``owner`` is then this node, for now)."""

    code = "not_owner"

    def __init__(self, account: str, owner: str, epoch: int, moving: bool = False) -> None:
        if moving:
            text = f"account {account} is being handed over; writes are held (epoch {epoch})"
        else:
            text = f"account {account} is served by {owner} (epoch {epoch})"
        super().__init__(text)
        self.account = account
        self.owner = owner
        self.epoch = epoch
        self.moving = moving


class StaleEpoch(OwnershipError):
    code = "stale_epoch"


class PartnerReachable(OwnershipError):
    code = "partner_reachable"


class PartnerUnreachable(OwnershipError):
    code = "partner_unreachable"


class NotCaughtUp(OwnershipError):
    """Failback refused: changes for the accounts are still on their way.

    ``pending`` lists them, one entry per account and node: ``{account,
    node, changes, oldest}`` (``oldest`` is an ISO 8601 time), so a script can
    tell what to wait for; the message says the same for people. A
    switchover whose final drain outlasted its hold limit raises it too
    (``{account, node}`` each: writes released, nothing moved).
    """

    code = "not_caught_up"

    def __init__(self, message: str, pending: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.pending = pending


class TargetDamaged(OwnershipError):
    """A switchover or failback refused: the node the accounts would move to
    holds damaged copies of some of their messages that could not be repaired
    (no whole copy on either node). ``guids`` lists them."""

    code = "target_damaged"

    def __init__(self, message: str, guids: list[str]) -> None:
        super().__init__(message)
        self.guids = guids


class UnknownNode(OwnershipError):
    code = "unknown_node"


class SyncFenced(SyncRefused):
    """Refused by the fence; ``current`` is the receiver's row (None when the
    sender claimed the receiver owns it: there is nothing to learn).

    The same class on both sides of the wire: the listener raises it and
    answers 409 with the row; the sync client raises it again from that
    answer, so the rolling worker can adopt the row. Its ``code`` stays
    ``sync_refused``: on the wire it is that refusal.
    """

    def __init__(self, message: str, current: OwnershipView | None) -> None:
        super().__init__(message)
        self.current = current
