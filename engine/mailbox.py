"""Mailbox operations: create, rename (uniqueid kept), delete, ACL, subscriptions.

How this works: names are IMAP names with ``/`` as the hierarchy separator;
``INBOX`` is case-insensitive and always spelled ``INBOX`` (RFC 3501 5.1).
A mailbox's ``uniqueid`` is a random 128-bit hex string given at creation
(or by the partner, when replication creates it) and never changes, so a
rename on one node is a rename on the other, not a delete plus a create.
UIDVALIDITY comes from the clock and is bumped past any value this account
used before (``accounts.uidvalidity_used``, which a DELETE does not lower),
so a deleted and recreated mailbox never reuses one, even within the same
second (RFC 3501 2.3.1.1).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any, Protocol

from sqlalchemy import Table, and_, bindparam, delete, func, insert, literal, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from engine import fastsql, synclog
from engine.db import utcnow
from engine.errors import AlreadyExists, InvalidArgument, NoSuchMailbox
from engine.limits import (
    MAX_MAILBOX_NAME,
    MAX_MAILBOXES,
    MAX_SUBSCRIPTIONS,
    MAX_TOMBSTONES,
    check_acl,
    check_count,
    check_length,
)
from engine.models import Account, Annotation, Mailbox, MailboxTombstone, Message, Subscription

__all__ = [
    "SEPARATOR",
    "bump_modseq",
    "create_mailbox",
    "create_mailboxes",
    "delete_mailbox",
    "find_mailbox",
    "get_mailbox",
    "get_mailbox_by_uniqueid",
    "list_mailboxes",
    "mailbox_names",
    "normalize_mailbox_name",
    "note_uidvalidity",
    "remember_deleted",
    "rename_mailbox",
    "set_acl",
    "subscribe",
    "subscriptions",
    "unsubscribe",
]

SEPARATOR = "/"


def _table(mapped: type[Mailbox] | type[Subscription]) -> Table:
    table = mapped.__table__
    assert isinstance(table, Table)
    return table


_MAILBOXES = _table(Mailbox)
_SUBSCRIPTIONS = _table(Subscription)


def normalize_mailbox_name(name: str) -> str:
    if not name:
        raise InvalidArgument("mailbox name is empty")
    check_length(name, MAX_MAILBOX_NAME, "a mailbox name")
    if _CONTROL.search(name):
        raise InvalidArgument("mailbox name contains control characters")
    parts = name.split(SEPARATOR)
    if "" in parts:
        raise InvalidArgument(f"mailbox name {name!r} has an empty level")
    # ASCII case only (RFC 3501 5.1): "\u0131nbox".upper() is "INBOX" too.
    if parts[0].isascii() and parts[0].upper() == "INBOX":
        parts[0] = "INBOX"
        return SEPARATOR.join(parts)
    return name


# C0 controls and DEL (a LIST-STATUS of 100,000 mailboxes checks each name).
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def find_mailbox(session: Session, account: Account, name: str) -> Mailbox | None:
    return session.scalar(
        select(Mailbox).where(Mailbox.account_id == account.id, Mailbox.name == name)
    )


def get_mailbox(session: Session, account: Account, name: str) -> Mailbox:
    mailbox = find_mailbox(session, account, normalize_mailbox_name(name))
    if mailbox is None:
        raise NoSuchMailbox(f"no such mailbox: {name}")
    return mailbox


def get_mailbox_by_uniqueid(session: Session, uniqueid: str) -> Mailbox | None:
    return session.scalar(select(Mailbox).where(Mailbox.uniqueid == uniqueid))


def list_mailboxes(session: Session, account: Account) -> list[Mailbox]:
    return list(
        session.scalars(
            select(Mailbox).where(Mailbox.account_id == account.id).order_by(Mailbox.name)
        )
    )


def mailbox_names(session: Session, account: Account) -> list[str]:
    """The names of ``account``'s mailboxes, sorted: what LIST and Sieve's
    ``mailboxexists`` read, without a row object per mailbox (an account
    may hold 100,000)."""
    return list(
        session.scalars(
            select(Mailbox.name).where(Mailbox.account_id == account.id).order_by(Mailbox.name)
        )
    )


def _next_uidvalidity(session: Session, account: Account) -> int:
    highest = session.scalar(
        select(func.max(Mailbox.uidvalidity)).where(Mailbox.account_id == account.id)
    )
    return max(int(time.time()), int(highest or 0) + 1, account.uidvalidity_used + 1)


def note_uidvalidity(account: Account, uidvalidity: int) -> None:
    """Remember that ``uidvalidity`` was given out in this account (also one
    the partner chose, applied by replication): never again for a new mailbox."""
    account.uidvalidity_used = max(account.uidvalidity_used or 0, uidvalidity)


class HasModseq(Protocol):
    highestmodseq: int


def bump_modseq(mailbox: HasModseq) -> int:
    """Allocate the next modseq of a mailbox (RFC 7162 3.1.1: strictly increasing)."""
    mailbox.highestmodseq = mailbox.highestmodseq + 1
    return mailbox.highestmodseq


def create_mailbox(
    session: Session,
    account: Account,
    name: str,
    *,
    uniqueid: str | None = None,
    uidvalidity: int | None = None,
    acl: dict[str, str] | None = None,
) -> Mailbox:
    name = normalize_mailbox_name(name)
    if find_mailbox(session, account, name) is not None:
        raise AlreadyExists(f"mailbox {name} already exists")
    count = session.scalar(select(func.count()).where(Mailbox.account_id == account.id))
    check_count(int(count or 0), MAX_MAILBOXES, "mailboxes")
    mailbox = Mailbox(
        account_id=account.id,
        uniqueid=uniqueid or uuid.uuid4().hex,
        name=name,
        uidvalidity=uidvalidity or _next_uidvalidity(session, account),
        last_uid=0,
        highestmodseq=1,
        acl=check_acl(acl if acl is not None else {account.name: "lrswipkxtecda"}),
        checksum=0,
        exists=0,
    )
    note_uidvalidity(account, mailbox.uidvalidity)
    session.add(mailbox)
    session.flush()
    synclog.record(session, account.name, mailbox.uniqueid, "mailbox")
    return mailbox


def create_mailboxes(
    session: Session, account: Account, specs: list[tuple[str, str, int, str]]
) -> dict[str, Mailbox]:
    """Create many mailboxes of one account as :func:`create_mailbox` makes
    each (same checks, same sync-log rows), with one INSERT and one SELECT:
    replication creating a new account's mailboxes. ``specs``: (name,
    uniqueid, UIDVALIDITY, ACL as stored); returns the mailboxes by uniqueid."""
    if not specs:
        return {}
    names = [normalize_mailbox_name(name) for name, _, _, _ in specs]
    taken: set[str] = set()
    for i in range(0, len(names), 500):
        query = select(Mailbox.name).where(
            Mailbox.account_id == account.id, Mailbox.name.in_(names[i : i + 500])
        )
        taken.update(session.scalars(query))
    for name in names:
        if name in taken:
            raise AlreadyExists(f"mailbox {name} already exists")
        taken.add(name)
    count = session.scalar(select(func.count()).where(Mailbox.account_id == account.id))
    check_count(int(count or 0) + len(specs) - 1, MAX_MAILBOXES, "mailboxes")
    now = utcnow()
    session.execute(
        insert(Mailbox),
        [
            {
                "account_id": account.id,
                "uniqueid": uniqueid,
                "name": name,
                "uidvalidity": uidvalidity,
                "last_uid": 0,
                "highestmodseq": 1,
                "acl": acl,
                "checksum": 0,
                "exists": 0,
                "sync_base": 0,
                "recentuid": 0,
                "created_at": now,
            }
            for name, (_, uniqueid, uidvalidity, acl) in zip(names, specs, strict=True)
        ],
    )
    for _, _, uidvalidity, _ in specs:
        note_uidvalidity(account, uidvalidity)
    wanted = [uniqueid for _, uniqueid, _, _ in specs]
    created: dict[str, Mailbox] = {}
    for i in range(0, len(wanted), 500):
        rows = session.scalars(select(Mailbox).where(Mailbox.uniqueid.in_(wanted[i : i + 500])))
        created.update((m.uniqueid, m) for m in rows)
    synclog.record_many(session, [(account.name, u, "mailbox") for u in wanted])
    return created


def _acl_of(stored: str) -> dict[str, str]:
    value = json.loads(stored)
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def create_with_superiors(
    session: Session, account: Account, name: str, *, inherit_acl: bool = False
) -> None:
    """Create ``name`` and each of its superiors that is missing (RFC 3501
    6.3.3), as :func:`create_mailbox` makes each (same checks, UIDVALIDITY
    and sync-log rows), in a few statements however deep the name: one
    SELECT finds the superiors that exist, one INSERT makes the rest
    (:func:`create_mailboxes`). A CREATE of a 500-level name made them one at
    a time, eight statements each, and held the store's writer, every other
    account's writes waiting, for 1 s on SQLite and 2.5 s on PostgreSQL.
    With ``inherit_acl`` each new one takes its superior's ACL (a top-level
    one the owner's, as always)."""
    name = normalize_mailbox_name(name)
    parts = name.split(SEPARATOR)
    levels = [SEPARATOR.join(parts[:i]) for i in range(1, len(parts) + 1)]
    existing: dict[str, str] = {}
    for i in range(0, len(levels), 500):
        query = select(Mailbox.name, Mailbox.acl).where(
            Mailbox.account_id == account.id, Mailbox.name.in_(levels[i : i + 500])
        )
        existing.update((n, a) for n, a in session.execute(query))
    if name in existing:
        raise AlreadyExists(f"mailbox {name} already exists")
    own = check_acl({account.name: "lrswipkxtecda"})
    uidvalidity = _next_uidvalidity(session, account)
    specs: list[tuple[str, str, int, str]] = []
    acl = own
    for level in levels:
        if level in existing:
            acl = existing[level]
            continue
        # The superior's (existing, or made just before) when inherited.
        inherit = inherit_acl and level != levels[0]
        acl = check_acl(_acl_of(acl)) if inherit else own
        specs.append((level, uuid.uuid4().hex, uidvalidity, acl))
        uidvalidity += 1
    create_mailboxes(session, account, specs)


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern (escape ``/``) for names that start with ``prefix``."""
    return prefix.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"


def _under(column: Any, exact: str | None = None) -> Any:
    """Names that start with the bound ``prefix`` (or are ``exact``): ``LIKE``
    narrows (SQLite's ignores ASCII case), the ``substr`` test decides."""
    child = and_(
        column.like(bindparam("pattern"), escape="/"),
        func.substr(column, 1, bindparam("length")) == bindparam("prefix"),
    )
    return child if exact is None else or_(column == bindparam(exact), child)


_BOXES = _MAILBOXES.c
_SUBSCRIBED = _SUBSCRIPTIONS.c
# A rename's statements, built once: each reads or writes a whole hierarchy
# in one statement (an account may hold 100,000 mailboxes and as many
# subscriptions), on the DB-API cursor where it reads.
_CHILDREN = select(_BOXES.uniqueid, _BOXES.name).where(
    _BOXES.account_id == bindparam("account"), _under(_BOXES.name)
)
_CHILD_NAMES = _CHILDREN.with_only_columns(_BOXES.name)
_SUBSCRIBE = insert(_SUBSCRIPTIONS)
_SUBSCRIBED_UNDER = select(_SUBSCRIBED.name).where(
    _SUBSCRIBED.account_id == bindparam("account"), _under(_SUBSCRIBED.name, "exact")
)


def _prefix_values(prefix: str) -> dict[str, Any]:
    return {"pattern": _like_prefix(prefix), "length": len(prefix), "prefix": prefix}


def rename_mailbox(session: Session, account: Account, old: str, new: str) -> list[str]:
    """Rename a mailbox and its children; uniqueids stay (RFC 3501 6.3.5).
    Returns the new names.

    Renaming INBOX is special in RFC 3501: its messages move to a new mailbox
    and INBOX stays, empty. That case is handled by the IMAP layer with
    create + move, since it changes records, not names.
    """
    old = normalize_mailbox_name(old)
    new = normalize_mailbox_name(new)
    if old == "INBOX":
        raise InvalidArgument("renaming INBOX moves its messages; use create and move")
    source = get_mailbox(session, account, old)
    if find_mailbox(session, account, new) is not None:
        raise AlreadyExists(f"mailbox {new} already exists")
    if new.startswith(old + SEPARATOR):
        raise InvalidArgument("cannot rename a mailbox into itself")
    # Only the children are read, as plain rows: a mailbox may have 100,000
    # of them, and one query a few hundred names each, with an ORM object
    # per child, held the store's single writer (every delivery of the
    # node) for seconds.
    prefix, new_prefix = old + SEPARATOR, new + SEPARATOR
    under_old = _prefix_values(prefix)
    children = fastsql.rows(session, _CHILDREN, {"account": account.id, **under_old})
    targets = [new, *(new + name[len(old) :] for _, name in children)]
    for target in targets:
        check_length(target, MAX_MAILBOX_NAME, "a mailbox name")
    if len(targets) > 1:
        taken = {
            name
            for (name,) in fastsql.rows(
                session,
                _CHILD_NAMES,
                {"account": account.id, **_prefix_values(new_prefix)},
            )
        }.intersection(targets)
        if taken:
            raise AlreadyExists(f"mailbox {min(taken)} already exists")
    # One UPDATE for the whole hierarchy; the rows this session holds are
    # given their new names as the database's (not flushed again).
    session.execute(
        update(_MAILBOXES)
        .where(
            _BOXES.account_id == account.id,
            or_(_BOXES.id == source.id, _under(_BOXES.name)),
        )
        .values(name=literal(new) + func.substr(_BOXES.name, len(old) + 1)),
        under_old,
    )
    # (An expired row is read again when next used: it has the new name then.)
    for held in list(session.identity_map.values()):
        loaded = held.__dict__ if isinstance(held, Mailbox) else {}
        name = loaded.get("name")
        if (
            loaded.get("account_id") == account.id
            and isinstance(name, str)
            and (name == old or name.startswith(prefix))
        ):
            set_committed_value(held, "name", new + name[len(old) :])
    synclog.record_many(
        session,
        [(account.name, source.uniqueid, "mailbox")]
        + [(account.name, uniqueid, "mailbox") for uniqueid, _ in children],
    )
    _rename_subscriptions(session, account, old, new)
    session.flush()
    return targets


def _rename_subscriptions(session: Session, account: Account, old: str, new: str) -> None:
    """A rename's subscriptions: a subscription may name what does not exist,
    and one whose new name would be too long keeps its old one."""
    longest = MAX_MAILBOX_NAME - len(new) + len(old)
    values = {"account": account.id, "exact": old, **_prefix_values(old + SEPARATOR)}
    leaving = [
        name for (name,) in fastsql.rows(session, _SUBSCRIBED_UNDER, values) if len(name) <= longest
    ]
    if not leaving:
        return
    session.execute(
        delete(_SUBSCRIPTIONS).where(
            _SUBSCRIBED.account_id == account.id,
            _under(_SUBSCRIBED.name, "exact"),
            func.length(_SUBSCRIBED.name) <= longest,
        ),
        values,
    )
    arriving = dict.fromkeys(new + name[len(old) :] for name in leaving)
    there = {
        name
        for (name,) in fastsql.rows(
            session,
            _SUBSCRIBED_UNDER,
            {"account": account.id, "exact": new, **_prefix_values(new + SEPARATOR)},
        )
    }
    rows = [(account.id, name) for name in arriving if name not in there]
    if rows and not fastsql.executemany(session, _SUBSCRIBE, ("account_id", "name"), rows):
        session.execute(insert(_SUBSCRIPTIONS), [{"account_id": a, "name": n} for a, n in rows])


def remember_deleted(session: Session, account: Account, uniqueid: str, name: str) -> None:
    """The tombstone of a deleted mailbox: its uniqueid, so that replication
    tells a mailbox this node deleted from one it never knew. At most
    :data:`~engine.limits.MAX_TOMBSTONES` per account: past it the oldest is
    forgotten (a replica that still held that mailbox would then give it
    back, mail and all, rather than have it deleted: nothing is lost)."""
    if session.get(MailboxTombstone, (account.id, uniqueid)) is not None:
        return
    session.add(MailboxTombstone(account_id=account.id, uniqueid=uniqueid, name=name))
    session.flush()
    held = session.scalar(select(func.count()).where(MailboxTombstone.account_id == account.id))
    excess = int(held or 0) - MAX_TOMBSTONES
    if excess > 0:
        oldest = (
            select(MailboxTombstone.uniqueid)
            .where(MailboxTombstone.account_id == account.id)
            .order_by(MailboxTombstone.deleted_at, MailboxTombstone.uniqueid)
            .limit(excess)
        )
        session.execute(
            delete(MailboxTombstone).where(
                MailboxTombstone.account_id == account.id,
                MailboxTombstone.uniqueid.in_(list(session.scalars(oldest))),
            ),
            execution_options={"synchronize_session": False},
        )


def delete_mailbox(session: Session, account: Account, name: str) -> Mailbox:
    """Delete one mailbox and its records; children stay (RFC 3501 6.3.4).

    A tombstone keeps the uniqueid, so replication can tell a mailbox this
    node deleted from one it never knew.
    """
    name = normalize_mailbox_name(name)
    if name == "INBOX":
        raise InvalidArgument("INBOX cannot be deleted")
    mailbox = get_mailbox(session, account, name)
    used = session.scalar(
        select(func.coalesce(func.sum(Message.size), 0)).where(
            Message.mailbox_id == mailbox.id, Message.expunged.is_(False)
        )
    )
    account.quota_used = max(0, account.quota_used - int(used or 0))
    remember_deleted(session, account, mailbox.uniqueid, name)
    # Its METADATA entries (engine.annotations) go with it.
    session.execute(
        delete(Annotation).where(
            Annotation.account_id == account.id, Annotation.mailbox == mailbox.uniqueid
        )
    )
    session.delete(mailbox)
    synclog.record(session, account.name, mailbox.uniqueid, "mailbox")
    session.flush()
    return mailbox


def set_acl(session: Session, account: Account, name: str, acl: dict[str, str]) -> None:
    mailbox = get_mailbox(session, account, name)
    mailbox.acl = check_acl(acl)
    synclog.record(session, account.name, mailbox.uniqueid, "mailbox")


def subscriptions(session: Session, account: Account) -> list[str]:
    return list(
        session.scalars(
            select(Subscription.name)
            .where(Subscription.account_id == account.id)
            .order_by(Subscription.name)
        )
    )


def subscribe(session: Session, account: Account, name: str) -> None:
    name = normalize_mailbox_name(name)
    if session.get(Subscription, (account.id, name)) is None:
        count = session.scalar(select(func.count()).where(Subscription.account_id == account.id))
        check_count(int(count or 0), MAX_SUBSCRIPTIONS, "subscriptions")
        session.add(Subscription(account_id=account.id, name=name))
        synclog.record(session, account.name, "", "sub")


def unsubscribe(session: Session, account: Account, name: str) -> None:
    name = normalize_mailbox_name(name)
    sub = session.get(Subscription, (account.id, name))
    if sub is None:
        raise NoSuchMailbox(f"not subscribed to {name}")
    session.delete(sub)
    synclog.record(session, account.name, "", "sub")


def touch_exists(session: Session, mailbox: Mailbox) -> None:
    """Recount a mailbox's live records (used after bulk repairs)."""
    count = session.scalar(
        select(func.count()).where(Message.mailbox_id == mailbox.id, Message.expunged.is_(False))
    )
    session.execute(update(Mailbox).where(Mailbox.id == mailbox.id).values(exists=int(count or 0)))
