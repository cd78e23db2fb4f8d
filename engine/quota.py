"""An account's quota as IMAP QUOTA (RFC 9208) reports it.

How this works: the store keeps one storage quota per account
(``accounts.quota_limit``, bytes, None for none) and its usage
(``quota_used``, kept exact by every append, copy and expunge in the same
transaction, :mod:`engine.messages`); a write past the limit raises
:class:`~engine.errors.OverQuota`. :func:`usage` reads both, and counts the
account's live messages (no limit is kept on that count).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine import accounts
from engine.models import Mailbox, Message

__all__ = ["QuotaUsage", "usage"]


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    limit: int | None
    """Bytes; None: no limit."""
    used: int
    """Bytes of live messages."""
    messages: int
    """Live messages in all the account's mailboxes."""


def usage(session: Session, account: str) -> QuotaUsage:
    row = accounts.get_account(session, account)
    messages = session.scalar(
        select(func.count())
        .select_from(Message)
        .join(Mailbox, Mailbox.id == Message.mailbox_id)
        .where(Mailbox.account_id == row.id, Message.expunged.is_(False))
    )
    return QuotaUsage(limit=row.quota_limit, used=row.quota_used, messages=int(messages or 0))
