"""Mailbox ACLs (RFC 4314) as the mail services read and change them.

How this works: a mailbox's ACL is a JSON object, identifier to rights
letters, in ``mailboxes.acl`` (a new mailbox gets its owner with every
right, :func:`engine.mailbox.create_mailbox`). It is part of the mailbox's
replicated state, as in Cyrus's sync protocol (``ACL`` in each mailbox's
APPLY MAILBOX), so a change reaches the partner with the next sync and is
there after a failover. :func:`change` runs inside the caller's fenced
write and keeps the ACL within the limits the sync channel enforces
(:func:`engine.limits.check_acl`); what the rights mean is the protocol's
business (:mod:`peerd.protocols.imap.acl`).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from engine import accounts
from engine.mailbox import get_mailbox, set_acl
from engine.models import Account
from engine.syncstate import acl_dict

__all__ = ["change", "mailbox_acl"]


def mailbox_acl(session: Session, account: str, name: str) -> dict[str, str]:
    """The ACL of mailbox ``name``: identifier to rights (NoSuchMailbox if none)."""
    row = accounts.get_account(session, account)
    return acl_dict(get_mailbox(session, row, name).acl)


def change(
    session: Session,
    account: Account,
    name: str,
    identifier: str,
    rights: Callable[[str], str | None],
) -> None:
    """Give ``identifier`` the rights ``rights(current)`` returns (None: remove it)."""
    acl = acl_dict(get_mailbox(session, account, name).acl)
    new = rights(acl.get(identifier, ""))
    if new is None:
        acl.pop(identifier, None)
    else:
        acl[identifier] = new
    set_acl(session, account, name, acl)
