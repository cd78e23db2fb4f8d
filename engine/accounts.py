"""Account operations: create, delete, password, quota, lookup.

Every function takes the caller's :class:`~sqlalchemy.orm.Session` and runs
inside its transaction; the store's committer owns transactions. Account
names are compared as given, except that the domain part is lower-cased
(``John.Doe@Example.org`` and ``John.Doe@example.org`` are one account, as
RFC 5321 2.4 allows for domains but not for local parts).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Sequence
from typing import Final

from sqlalchemy import bindparam, insert, select
from sqlalchemy.orm import Session

from engine import synclog
from engine.db import utcnow
from engine.errors import AlreadyExists, InvalidArgument, NoSuchAccount
from engine.limits import MAX_PASSWORD_HASH, check_length
from engine.models import Account, Mailbox, Subscription
from engine.passwords import hash_password

__all__ = [
    "NAME_SPACE",
    "create_account",
    "create_accounts",
    "delete_account",
    "find_account",
    "find_any",
    "get_account",
    "list_accounts",
    "lookup_names",
    "normalize_account_name",
    "rename_account",
    "set_message_limit",
    "set_password",
    "set_password_hash",
    "set_quota",
]

_NAME_RE = re.compile(r"\A[A-Za-z0-9._%+\-=]{1,128}(@[A-Za-z0-9.\-]{1,126})?\Z")


# What a name typed with white space around it loses: space and tab only.
# str.strip() also takes U+001C-U+001F, U+0085 and line ends, which made
# "alice\x1f" log in as alice.
NAME_SPACE: Final = " \t"


def normalize_account_name(name: str, lowercase: bool = False) -> str:
    """The stored form of an account name: the domain lower-cased, and the
    local part too with ``lowercase`` (as Cyrus does by default)."""
    name = name.strip(NAME_SPACE)
    if not _NAME_RE.match(name):
        raise InvalidArgument(f"invalid account name {name!r}")
    local, at, domain = name.partition("@")
    if lowercase:
        local = local.lower()
    return f"{local}@{domain.lower()}" if at else local


def lookup_names(name: str, lowercase: bool = False) -> tuple[str, ...]:
    """The names a login or a lookup of ``name`` tries, in order: the stored
    form, then (with ``lowercase``) the name as typed, for an account made
    with capitals before the node lower-cased names."""
    first = normalize_account_name(name, lowercase)
    exact = normalize_account_name(name)
    return (first,) if exact == first else (first, exact)


def find_any(session: Session, names: tuple[str, ...]) -> Account | None:
    """The first of ``names`` that is an account."""
    for candidate in names:
        account = find_account(session, candidate)
        if account is not None:
            return account
    return None


def find_account(session: Session, name: str) -> Account | None:
    # The statement is built once: building it and its cache key again cost
    # a third of this call, made in each delivery and each delta applied.
    return session.scalar(_BY_NAME, {"name": name})


_BY_NAME = select(Account).where(Account.name == bindparam("name"))


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


def create_accounts(session: Session, specs: Sequence[tuple[str, str, int | None]]) -> None:
    """Create many accounts at once, each as :func:`create_account` makes one
    (an INBOX, subscribed; sync-log rows), in a few statements: bulk
    provisioning. ``specs``: (normalized name, password hash, quota limit);
    the caller has checked that none exists."""
    for _, _, quota in specs:
        if quota is not None and quota < 0:
            raise InvalidArgument("quota must be >= 0 bytes")
    if not specs:
        return
    now = utcnow()
    uidvalidity = int(time.time())
    session.execute(
        insert(Account),
        [
            {
                "name": name,
                "password_hash": password_hash,
                "quota_limit": quota,
                "quota_used": 0,
                "uidvalidity_used": uidvalidity,
                "created_at": now,
                "updated_at": now,
            }
            for name, password_hash, quota in specs
        ],
    )
    ids: dict[str, int] = {}
    names = [name for name, _, _ in specs]
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        query = select(Account.name, Account.id).where(Account.name.in_(chunk))
        ids.update((name, int(ident)) for name, ident in session.execute(query))
    inboxes = {name: uuid.uuid4().hex for name in names}
    session.execute(
        insert(Mailbox),
        [
            {
                "account_id": ids[name],
                "uniqueid": inboxes[name],
                "name": "INBOX",
                "uidvalidity": uidvalidity,
                "last_uid": 0,
                "highestmodseq": 1,
                "acl": json.dumps({name: "lrswipkxtecda"}, sort_keys=True),
                "checksum": 0,
                "exists": 0,
                "sync_base": 0,
                "created_at": now,
            }
            for name in names
        ],
    )
    session.execute(
        insert(Subscription), [{"account_id": ids[name], "name": "INBOX"} for name in names]
    )
    synclog.record_many(
        session,
        [(name, "", "account") for name in names]
        + [(name, inboxes[name], "mailbox") for name in names],
    )


def delete_account(session: Session, name: str) -> None:
    account = get_account(session, name)
    for mailbox in session.scalars(select(Mailbox).where(Mailbox.account_id == account.id)):
        synclog.note(session, name, mailbox.uniqueid, "mailbox")
    session.delete(account)
    synclog.record(session, name, "", "account")


def rename_account(session: Session, old: str, new: str) -> Account:
    """Rename an account in place (Cyrus's RENAME of a user).

    Mailboxes, messages, Sieve scripts, vacation records and subscriptions
    hang off the account's id, so they follow unchanged: every mailbox keeps
    its uniqueid and UIDVALIDITY. The sync-log rows still pending for the old
    name move to the new one (:func:`engine.synclog.rename`).
    """
    new = normalize_account_name(new)
    account = get_account(session, old)
    if new == account.name:
        raise InvalidArgument(f"{old} is already named {new}")
    if find_account(session, new) is not None:
        raise AlreadyExists(f"account {new} already exists")
    account.name = new
    _rename_identifier(session, old, new)
    session.flush()
    synclog.rename(session, old, new)
    synclog.record(session, new, "", "account")
    return account


def _rename_identifier(session: Session, old: str, new: str) -> None:
    """ACL entries (RFC 4314 identifiers) naming ``old`` name ``new``: the
    owner's own, and the shares other accounts gave it, so they survive the
    rename. Both nodes run the rename alike; the other accounts' changes are
    logged for replication too, under the mailbox's account."""
    rows = session.execute(
        select(Mailbox, Account.name)
        .join(Account, Account.id == Mailbox.account_id)
        .where(Mailbox.acl.contains(json.dumps(old) + ":", autoescape=True))
    ).all()
    changes = []
    for mailbox, owner in rows:
        acl = json.loads(mailbox.acl or "{}")
        if not isinstance(acl, dict) or old not in acl:
            continue
        rights = str(acl.pop(old))
        had = str(acl.get(new, ""))
        acl[new] = had + "".join(r for r in rights if r not in had)
        mailbox.acl = json.dumps(acl, sort_keys=True)
        if owner != new:
            changes.append((owner, mailbox.uniqueid, "mailbox"))
    synclog.record_many(session, changes)


def set_password(session: Session, name: str, password: str) -> None:
    set_password_hash(session, name, hash_password(password))


def set_password_hash(session: Session, name: str, password_hash: str) -> None:
    check_length(password_hash, MAX_PASSWORD_HASH, "a password hash")
    account = get_account(session, name)
    account.password_hash = password_hash
    synclog.record(session, name, "", "account")


def set_message_limit(session: Session, name: str, limit: int | None) -> None:
    """At most ``limit`` live messages (QUOTA MESSAGE, RFC 9208 5.2); None: none."""
    if limit is not None and limit < 0:
        raise InvalidArgument("a message limit must be >= 0")
    account = get_account(session, name)
    account.message_limit = limit
    synclog.record(session, name, "", "account")


def set_quota(session: Session, name: str, limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise InvalidArgument("quota must be >= 0 bytes")
    account = get_account(session, name)
    account.quota_limit = limit
    synclog.record(session, name, "", "account")
