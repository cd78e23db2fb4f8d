"""An account's quota as IMAP QUOTA (RFC 9208) reports it.

How this works: the store keeps one storage quota per account
(``accounts.quota_limit``, bytes, None for none) and its usage
(``quota_used``, kept exact by every append, copy and expunge in the same
transaction, :mod:`engine.messages`); a write past the limit raises
:class:`~engine.errors.OverQuota`. An account may also limit its number of
live messages (``accounts.message_limit``, RFC 9208 5.2); that count is not
stored but counted when a limit is checked (:func:`engine.messages.live_messages`),
and a write past it raises :class:`~engine.errors.OverMessageQuota`.
:func:`usage` reads both limits and both usages.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from engine import accounts
from engine.messages import live_messages

__all__ = ["QuotaUsage", "usage"]


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    limit: int | None
    """Bytes; None: no limit."""
    used: int
    """Bytes of live messages."""
    messages: int
    """Live messages in all the account's mailboxes."""
    message_limit: int | None = None
    """Live messages; None: no limit."""

    @property
    def limited(self) -> bool:
        """The account has a quota root: some resource has a limit."""
        return self.limit is not None or self.message_limit is not None


def usage(session: Session, account: str) -> QuotaUsage:
    row = accounts.get_account(session, account)
    return QuotaUsage(
        limit=row.quota_limit,
        used=row.quota_used,
        messages=live_messages(session, row.id),
        message_limit=row.message_limit,
    )
