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

Other accounts reach a mailbox through its ACL: :func:`shared_with` finds the
mailboxes whose ACL names a user (or ``anyone``), for the IMAP "Other Users"
namespace; which rights let them see one is again the protocol's business.
When an account is renamed, every ACL entry naming it is rewritten
(:func:`engine.accounts.rename_account`), so shares survive the rename.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from engine import accounts
from engine.errors import NoSuchMailbox
from engine.mailbox import get_mailbox, set_acl
from engine.models import Account, Mailbox
from engine.syncstate import acl_dict

__all__ = [
    "ANYONE",
    "SharedMailbox",
    "acl_of",
    "change",
    "mailbox_acl",
    "naming",
    "shared_with",
]

ANYONE = "anyone"
"""RFC 4314 2: the identifier that names every user."""


@dataclass(frozen=True, slots=True)
class SharedMailbox:
    """A mailbox of another account whose ACL names the user or ``anyone``."""

    owner: str
    name: str
    acl: dict[str, str]


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


def acl_of(session: Session, mailbox_id: int) -> dict[str, str]:
    """The ACL of an open mailbox, by id (NoSuchMailbox once it was deleted)."""
    acl = session.scalar(select(Mailbox.acl).where(Mailbox.id == mailbox_id))
    if acl is None:
        raise NoSuchMailbox("the selected mailbox was deleted")
    return acl_dict(acl)


def naming(identifier: str) -> ColumnElement[bool]:
    """A first cut of the mailboxes whose ACL names ``identifier`` (the ACL
    is JSON: the identifier appears as a quoted key); check the parsed ACL."""
    return Mailbox.acl.contains(json.dumps(identifier) + ":", autoescape=True)


def shared_with(session: Session, user: str) -> list[SharedMailbox]:
    """Mailboxes of accounts other than ``user`` whose ACL names ``user`` or
    ``anyone``, by owner and name."""
    rows = session.execute(
        select(Account.name, Mailbox.name, Mailbox.acl)
        .join(Account, Account.id == Mailbox.account_id)
        .where(Account.name != user, or_(naming(user), naming(ANYONE)))
        .order_by(Account.name, Mailbox.name)
    )
    out = []
    for owner, name, acl in rows:
        entries = acl_dict(acl)
        if user in entries or ANYONE in entries:
            out.append(SharedMailbox(owner, name, entries))
    return out
