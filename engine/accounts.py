"""Account operations: create, delete, password, quota, lookup.

Every function takes the caller's :class:`~sqlalchemy.orm.Session` and runs
inside its transaction; the store's committer owns transactions. Account
names are compared as given, except that the domain part is lower-cased
(``John.Doe@Example.org`` and ``John.Doe@example.org`` are one account, as
RFC 5321 2.4 allows for domains but not for local parts).
"""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import synclog
from engine.errors import AlreadyExists, InvalidArgument, NoSuchAccount
from engine.limits import MAX_PASSWORD_HASH, check_length
from engine.models import Account, Mailbox, Subscription
from engine.passwords import hash_password

__all__ = [
    "create_account",
    "delete_account",
    "find_account",
    "get_account",
    "list_accounts",
    "normalize_account_name",
    "set_password",
    "set_password_hash",
    "set_quota",
]

_NAME_RE = re.compile(r"\A[A-Za-z0-9._%+\-=]{1,128}(@[A-Za-z0-9.\-]{1,126})?\Z")


def normalize_account_name(name: str) -> str:
    name = name.strip()
    if not _NAME_RE.match(name):
        raise InvalidArgument(f"invalid account name {name!r}")
    local, at, domain = name.partition("@")
    return f"{local}@{domain.lower()}" if at else local


def find_account(session: Session, name: str) -> Account | None:
    return session.scalar(select(Account).where(Account.name == name))


def get_account(session: Session, name: str) -> Account:
    account = find_account(session, name)
    if account is None:
        raise NoSuchAccount(f"no such account: {name}")
    return account


def list_accounts(session: Session) -> list[Account]:
    return list(session.scalars(select(Account).order_by(Account.name)))


def create_account(
    session: Session,
    name: str,
    *,
    password: str | None = None,
    password_hash: str | None = None,
    quota_limit: int | None = None,
    create_inbox: bool = True,
) -> Account:
    """Create an account (and its INBOX, like Cyrus's ``autocreate``)."""
    from engine.mailbox import create_mailbox

    name = normalize_account_name(name)
    if find_account(session, name) is not None:
        raise AlreadyExists(f"account {name} already exists")
    if quota_limit is not None and quota_limit < 0:
        raise InvalidArgument("quota must be >= 0 bytes")
    if password_hash is None:
        if password is None:
            raise InvalidArgument("a password is required")
        password_hash = hash_password(password)
    check_length(password_hash, MAX_PASSWORD_HASH, "a password hash")
    account = Account(name=name, password_hash=password_hash, quota_limit=quota_limit, quota_used=0)
    session.add(account)
    session.flush()
    synclog.record(session, name, "", "account")
    if create_inbox:
        create_mailbox(session, account, "INBOX")
        session.add(Subscription(account_id=account.id, name="INBOX"))
    return account


def delete_account(session: Session, name: str) -> None:
    account = get_account(session, name)
    for mailbox in session.scalars(select(Mailbox).where(Mailbox.account_id == account.id)):
        synclog.note(session, name, mailbox.uniqueid, "mailbox")
    session.delete(account)
    synclog.record(session, name, "", "account")


def set_password(session: Session, name: str, password: str) -> None:
    set_password_hash(session, name, hash_password(password))


def set_password_hash(session: Session, name: str, password_hash: str) -> None:
    check_length(password_hash, MAX_PASSWORD_HASH, "a password hash")
    account = get_account(session, name)
    account.password_hash = password_hash
    synclog.record(session, name, "", "account")


def set_quota(session: Session, name: str, limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise InvalidArgument("quota must be >= 0 bytes")
    account = get_account(session, name)
    account.quota_limit = limit
    synclog.record(session, name, "", "account")
