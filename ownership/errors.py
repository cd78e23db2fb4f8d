"""The ownership package's error tree; each class has a stable ``code``.

OwnershipError
├── NotOwner            (this node does not own the account: refer/retry)
├── StaleEpoch          (a request carried an epoch lower than known)
├── PartnerReachable    (failover refused: the partner answers; use switchover)
├── PartnerUnreachable  (a switchover or failback needs the partner)
├── NotCaughtUp         (failback refused: the returned node still lags)
└── UnknownNode         (a node name that is neither this node nor its partner)
"""

from __future__ import annotations

__all__ = [
    "NotCaughtUp",
    "NotOwner",
    "OwnershipError",
    "PartnerReachable",
    "PartnerUnreachable",
    "StaleEpoch",
    "UnknownNode",
]


class OwnershipError(Exception):
    code = "ownership_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotOwner(OwnershipError):
    """Writes for this account belong on ``owner``."""

    code = "not_owner"

    def __init__(self, account: str, owner: str, epoch: int) -> None:
        super().__init__(f"account {account} is served by {owner} (epoch {epoch})")
        self.account = account
        self.owner = owner
        self.epoch = epoch


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
    tell what to wait for; the message says the same for people.
    """

    code = "not_caught_up"

    def __init__(self, message: str, pending: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.pending = pending


class UnknownNode(OwnershipError):
    code = "unknown_node"
