"""The sync fence: may this sender change this account here, at this epoch?

How this works: every sync request names the account and carries the
sender's ownership row (owner, home, epoch, state). The receiver refuses
(:class:`~ownership.errors.SyncFenced`, HTTP 409 on the wire, with its own row so the sender
can learn) when it owns the account itself at an epoch at least as high, or
knows a higher epoch than the sender's. Otherwise it adopts the sender's row
when that is newer (a node never lowers an epoch) and lets the request
through. The check runs inside the transaction that applies the request.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from ownership import table
from ownership.errors import SyncFenced
from ownership.rows import OwnershipView

__all__ = ["check_sync", "needs_adoption"]


def needs_adoption(session: Session, account: str, sender: OwnershipView) -> bool:
    """Would :func:`check_sync` change our row? (Then it must run in a write.)"""
    row = table.view(session, account)
    return row is None or sender.epoch > row.epoch


def check_sync(
    session: Session, me: str, account: str, sender: OwnershipView, *, adopt: bool = True
) -> OwnershipView:
    """Raise :class:`SyncFenced` or adopt the sender's row; returns the row in force.

    With ``adopt`` False nothing is written (a read-only request); call
    :func:`needs_adoption` first and use a write when it says so.
    """
    if sender.owner == me:
        raise SyncFenced(
            f"the sender says {me} owns {account}; a node does not sync to itself", None
        )
    row = table.view(session, account)
    if row is not None:
        if row.epoch > sender.epoch:
            raise SyncFenced(
                f"stale epoch for {account}: sent {sender.epoch}, known {row.epoch} "
                f"(owner {row.owner})",
                row,
            )
        if row.owner == me and row.epoch >= sender.epoch:
            raise SyncFenced(
                f"{me} owns {account} at epoch {row.epoch}; refusing changes from "
                f"{sender.owner} at epoch {sender.epoch}",
                row,
            )
    if not adopt or (row is not None and row.epoch == sender.epoch):
        # Nothing to adopt at the same epoch (table.adopt takes only a
        # higher one): the common case, every rolling delta.
        return sender
    table.adopt(
        session,
        account,
        owner=sender.owner,
        home=sender.home,
        epoch=sender.epoch,
        state=sender.state,
        reason=f"learned from {sender.owner}",
    )
    return sender
