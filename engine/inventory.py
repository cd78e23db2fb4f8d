"""What an administrator sees of the store: accounts, mailboxes, records, as plain values.

How this works: each function runs inside a store transaction (pass it to
``Store.read``) and returns frozen dataclasses, never ORM objects, so a
caller (the control API) needs neither the models nor a query of its own.
Names are looked up as given; a missing account or mailbox raises
:class:`~engine.errors.NoSuchAccount` / :class:`~engine.errors.NoSuchMailbox`.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.accounts import get_account, list_accounts
from engine.flags import parse_flags
from engine.mailbox import get_mailbox, list_mailboxes, subscriptions
from engine.models import Account, Mailbox, Message

__all__ = [
    "AccountInfo",
    "MailboxInfo",
    "Mailboxes",
    "RecordInfo",
    "account_info",
    "account_infos",
    "mailbox_records",
    "mailboxes",
]


@dataclass(frozen=True, slots=True)
class AccountInfo:
    name: str
    quota_limit: int | None
    quota_used: int
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class MailboxInfo:
    name: str
    uniqueid: str
    uidvalidity: int
    last_uid: int
    highestmodseq: int
    exists: int
    checksum: int  # signed 64-bit, as stored
    acl: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Mailboxes:
    account: str
    mailboxes: tuple[MailboxInfo, ...]
    subscriptions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RecordInfo:
    uid: int
    guid: str
    flags: tuple[str, ...]  # sorted
    modseq: int
    size: int
    internaldate: dt.datetime
    expunged: bool


def _account(row: Account) -> AccountInfo:
    return AccountInfo(row.name, row.quota_limit, row.quota_used, row.created_at)


def _mailbox(row: Mailbox) -> MailboxInfo:
    return MailboxInfo(
        name=row.name,
        uniqueid=row.uniqueid,
        uidvalidity=row.uidvalidity,
        last_uid=row.last_uid,
        highestmodseq=row.highestmodseq,
        exists=row.exists,
        checksum=row.checksum,
        acl=json.loads(row.acl),
    )


def account_info(session: Session, name: str) -> AccountInfo:
    return _account(get_account(session, name))


def account_infos(session: Session) -> list[AccountInfo]:
    """Every account, by name."""
    return [_account(row) for row in list_accounts(session)]


def mailboxes(session: Session, account: str) -> Mailboxes:
    row = get_account(session, account)
    return Mailboxes(
        row.name,
        tuple(_mailbox(m) for m in list_mailboxes(session, row)),
        tuple(subscriptions(session, row)),
    )


def mailbox_records(
    session: Session, account: str, mailbox: str, *, expunged: bool = False
) -> tuple[MailboxInfo, list[RecordInfo]]:
    """One mailbox and its records by UID (``expunged``: the tombstones too)."""
    box = get_mailbox(session, get_account(session, account), mailbox)
    query = select(Message).where(Message.mailbox_id == box.id).order_by(Message.uid)
    if not expunged:
        query = query.where(Message.expunged.is_(False))
    records = [
        RecordInfo(
            uid=m.uid,
            guid=m.guid,
            flags=tuple(sorted(parse_flags(m.flags))),
            modseq=m.modseq,
            size=m.size,
            internaldate=m.internaldate,
            expunged=m.expunged,
        )
        for m in session.scalars(query)
    ]
    return _mailbox(box), records
