"""What replication compares: account, mailbox and record state, as plain values.

How this works: both sides describe an account the same way. A
:class:`MailboxSummary` is the cheap part (one row per mailbox: name,
uidvalidity, last_uid, highestmodseq, ACL, checksum); two equal summaries
mean equal mailboxes, so no record is looked at. For a mailbox whose summary
differs, the replica sends its records: all live ones (``full``), or, when it
holds a ``sync_base`` (the owner's highestmodseq at the last sync that left
the two equal), only records and expunge tombstones with a higher modseq
(``delta``): every change either side made since then, and nothing else.

These dataclasses are the engine's vocabulary for the sync protocol; the wire
encoding lives in :mod:`engine.syncwire`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any

from sqlalchemy import bindparam, or_, select
from sqlalchemy.orm import Session

from engine import annotations as annotation_store
from engine import fastsql, importcursors
from engine import sieve as sieve_store
from engine.models import (
    Account,
    Annotation,
    GuidHistory,
    ImportCursor,
    Mailbox,
    MailboxTombstone,
    Message,
    SieveScript,
    Subscription,
    VacationSent,
)

__all__ = [
    "MAILBOX_STATE",
    "AccountState",
    "MailboxState",
    "MailboxSummary",
    "RecordState",
    "account_digests",
    "account_head",
    "compare_mode",
    "known_guids",
    "local_records",
    "mailbox_uniqueids",
    "owner_view",
    "read_account_state",
    "record_of",
    "records_of",
    "records_page",
    "summaries_by_id",
    "summary_of",
]


@dataclass(frozen=True, slots=True)
class RecordState:
    uid: int
    guid: str
    flags: str
    internaldate: int  # seconds since the epoch, UTC
    size: int
    modseq: int
    expunged: bool = False

    @classmethod
    def of(cls, m: Message) -> RecordState:
        return cls(
            m.uid, m.guid, m.flags, int(m.internaldate.timestamp()), m.size, m.modseq, m.expunged
        )

    def when(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.internaldate, dt.UTC)


@dataclass(frozen=True, slots=True)
class MailboxSummary:
    uniqueid: str
    name: str
    uidvalidity: int
    last_uid: int
    highestmodseq: int
    acl: str
    checksum: int
    exists: int
    sync_base: int = 0

    def same_content(self, other: MailboxSummary) -> bool:
        """Equal as replication sees it: the same records (the checksum covers
        each one's modseq too) and the same HIGHESTMODSEQ. ``sync_base`` is
        the replica's bookkeeping, not content."""
        return (
            self.uniqueid == other.uniqueid
            and self.name == other.name
            and self.uidvalidity == other.uidvalidity
            and self.last_uid == other.last_uid
            and self.highestmodseq == other.highestmodseq
            and self.acl == other.acl
            and self.checksum == other.checksum
            and self.exists == other.exists
        )


@dataclass(frozen=True, slots=True)
class MailboxState:
    """A mailbox and, when it differs, its records (``mode``: none, full or delta)."""

    summary: MailboxSummary
    mode: str = "none"
    records: tuple[RecordState, ...] = ()


@dataclass(frozen=True, slots=True)
class AccountState:
    name: str
    exists: bool
    password_hash: str = ""
    quota_limit: int | None = None
    message_limit: int | None = None
    subscriptions: tuple[str, ...] = ()
    mailboxes: tuple[MailboxState, ...] = ()
    tombstones: frozenset[str] = frozenset()
    # Sieve (engine.sieve): (name, content, active) per script, and the
    # vacation reply-once records (key, until).
    sieve: tuple[tuple[str, str, bool], ...] = ()
    vacations: tuple[tuple[str, str], ...] = ()
    # METADATA (engine.annotations, Cyrus's ANNOTATION): (mailbox uniqueid or
    # "" for the server's, entry, value), sorted.
    annotations: tuple[tuple[str, str, bytes], ...] = ()
    # import-imap's cursors (engine.importcursors): (mailbox uniqueid, old
    # UIDVALIDITY, last old UID), sorted.
    import_cursors: tuple[tuple[str, int, int], ...] = ()

    def by_uniqueid(self) -> dict[str, MailboxState]:
        return {m.summary.uniqueid: m for m in self.mailboxes}


def summary_of(mailbox: Mailbox) -> MailboxSummary:
    return MailboxSummary(
        uniqueid=mailbox.uniqueid,
        name=mailbox.name,
        uidvalidity=mailbox.uidvalidity,
        last_uid=mailbox.last_uid,
        highestmodseq=mailbox.highestmodseq,
        acl=mailbox.acl,
        checksum=mailbox.checksum,
        exists=mailbox.exists,
        sync_base=mailbox.sync_base,
    )


def local_records(
    session: Session,
    mailbox: Mailbox,
    *,
    since: int | None = None,
    uids: Iterable[int] = (),
) -> tuple[RecordState, ...]:
    """Live records (``since`` None), or records and tombstones changed after ``since``
    plus whatever state the given ``uids`` have."""
    return records_of(session, mailbox.id, since=since, uids=uids)


RECORD_COLUMNS = (
    Message.uid,
    Message.guid,
    Message.flags,
    Message.internaldate,
    Message.size,
    Message.modseq,
    Message.expunged,
)


def record_of(row: Any) -> RecordState:
    """A :class:`RecordState` from a row of :data:`RECORD_COLUMNS`."""
    uid, guid, flags, when, size, modseq, expunged = row
    return RecordState(uid, guid, flags, int(when.timestamp()), size, modseq, bool(expunged))


# records_of's two common forms, run on the DB-API cursor (engine.fastsql):
# every full compare reads each mailbox's live records, every delta those
# changed since a modseq.
_LIVE_RECORDS = (
    select(*RECORD_COLUMNS)
    .where(Message.mailbox_id == bindparam("mailbox_id"), Message.expunged.is_(False))
    .order_by(Message.uid)
)
_RECORDS_SINCE = (
    select(*RECORD_COLUMNS)
    .where(Message.mailbox_id == bindparam("mailbox_id"), Message.modseq > bindparam("since"))
    .order_by(Message.uid)
)


def records_of(
    session: Session, mailbox_id: int, *, since: int | None = None, uids: Iterable[int] = ()
) -> tuple[RecordState, ...]:
    """:func:`local_records` of the mailbox whose row id is ``mailbox_id``."""
    if since is None:
        found = fastsql.rows(session, _LIVE_RECORDS, {"mailbox_id": mailbox_id})
        return tuple(record_of(row) for row in found)
    extra = sorted(set(uids))
    if not extra:
        found = fastsql.rows(session, _RECORDS_SINCE, {"mailbox_id": mailbox_id, "since": since})
        return tuple(record_of(row) for row in found)
    condition = Message.modseq > since
    if len(extra) <= 500:
        condition = or_(condition, Message.uid.in_(extra))
    else:
        condition = or_(condition, Message.uid >= extra[0])
    query = select(*RECORD_COLUMNS).where(Message.mailbox_id == mailbox_id, condition)
    return tuple(record_of(row) for row in session.execute(query.order_by(Message.uid)))


def read_account_state(
    session: Session,
    name: str,
    *,
    records_for: dict[str, MailboxSummary] | None = None,
    include: Iterable[str] | None = None,
) -> AccountState:
    """This node's state of an account.

    With ``records_for`` (the other side's summaries by uniqueid), records are
    added for each mailbox whose summary differs from it: a delta since our
    ``sync_base`` when we hold one not beyond the other side's highestmodseq,
    else all live records. Mailboxes the other side did not mention get full
    records. ``include`` limits the mailboxes to these uniqueids.
    """
    account_id, head = account_head(session, name)
    if account_id is None:
        return head
    wanted = set(include) if include is not None else None
    mailboxes: list[MailboxState] = []
    for mailbox_id, *columns in fastsql.rows(session, _MAILBOXES, {"account_id": account_id}):
        summary = MailboxSummary(*columns)
        if wanted is not None and summary.uniqueid not in wanted:
            continue
        if records_for is None:
            mailboxes.append(MailboxState(summary))
            continue
        mode, since = compare_mode(summary, records_for.get(summary.uniqueid))
        if mode == "none":
            mailboxes.append(MailboxState(summary))
        else:
            mailboxes.append(
                MailboxState(summary, mode, records_of(session, mailbox_id, since=since))
            )
    return replace(head, mailboxes=tuple(mailboxes))


def compare_mode(ours: MailboxSummary, theirs: MailboxSummary | None) -> tuple[str, int | None]:
    """What a replica sends of a mailbox whose summary the owner sent as
    ``theirs`` (None: the owner did not name it), and the modseq its records
    start after: ``none`` (equal: no records), ``delta`` (the records and
    tombstones changed since our ``sync_base``, when we hold one not beyond
    the owner's highestmodseq), else ``full`` (every live record, None)."""
    if theirs is not None and theirs.same_content(ours):
        return "none", None
    if theirs is not None and 0 < ours.sync_base <= theirs.highestmodseq:
        return "delta", ours.sync_base
    return "full", None


def account_head(session: Session, name: str) -> tuple[int | None, AccountState]:
    """The account's row id (None: no such account) and its state without
    its mailboxes: fields, subscriptions, tombstones, Sieve, vacation
    records, METADATA and import cursors."""
    found = fastsql.rows(session, _ACCOUNT, {"name": name})
    if not found:
        return None, AccountState(name=name, exists=False)
    account_id, account_name, password_hash, quota_limit, message_limit = found[0]
    by_account = {"account_id": account_id}
    subscriptions = tuple(n for (n,) in fastsql.rows(session, _SUBSCRIPTIONS, by_account))
    tombstones = frozenset(u for (u,) in fastsql.rows(session, _TOMBSTONES, by_account))
    return account_id, AccountState(
        name=account_name,
        exists=True,
        password_hash=password_hash,
        quota_limit=quota_limit,
        message_limit=message_limit,
        subscriptions=subscriptions,
        tombstones=tombstones,
        sieve=sieve_store.script_rows(session, account_id),
        vacations=sieve_store.vacation_rows(session, account_id),
        annotations=annotation_store.rows(session, account_id),
        import_cursors=importcursors.rows(session, account_id),
    )


def mailbox_uniqueids(session: Session, account_id: int) -> list[tuple[int, str]]:
    """(row id, uniqueid) of each of the account's mailboxes: which of them a
    part of USER_SOME covers, without reading every summary (ACLs of up to
    64 KB each)."""
    return [(i, u) for i, u in fastsql.rows(session, _UNIQUEIDS, {"account_id": account_id})]


def summaries_by_id(session: Session, ids: Sequence[int]) -> dict[int, MailboxSummary]:
    """The summaries of these mailboxes (at most 512 row ids), by row id."""
    found = fastsql.select_in(
        session,
        lambda values: select(Mailbox.id, *MAILBOX_STATE).where(Mailbox.id.in_(values)),
        ids,
    )
    return {row[0]: MailboxSummary(*row[1:]) for row in found}


def records_page(
    session: Session, mailbox_id: int, *, since: int | None, after_uid: int, limit: int
) -> tuple[RecordState, ...]:
    """:func:`records_of` (no ``uids``) from the UID after ``after_uid`` on,
    at most ``limit`` of them: a mailbox's records read a page at a time."""
    query = select(*RECORD_COLUMNS).where(Message.mailbox_id == mailbox_id, Message.uid > after_uid)
    if since is None:
        query = query.where(Message.expunged.is_(False))
    else:
        query = query.where(Message.modseq > since)
    found = session.execute(query.order_by(Message.uid).limit(limit))
    return tuple(record_of(row) for row in found)


# read_account_state's statements, run on the DB-API cursor (engine.fastsql:
# it runs on both nodes for every rolling DELTA, on the replica inside the
# write that applies it). The mailbox columns are MailboxSummary's, in order.
_ACCOUNT = select(
    Account.id, Account.name, Account.password_hash, Account.quota_limit, Account.message_limit
).where(Account.name == bindparam("name"))
# A mailbox's state as the sync compares it, in this order (here and in
# engine.bulkstate, which reads many accounts' at once).
MAILBOX_STATE = (
    Mailbox.uniqueid,
    Mailbox.name,
    Mailbox.uidvalidity,
    Mailbox.last_uid,
    Mailbox.highestmodseq,
    Mailbox.acl,
    Mailbox.checksum,
    Mailbox.exists,
    Mailbox.sync_base,
)
# What account_digests hashes of a mailbox: its state but the sync base (a
# modseq each node keeps of its own last sync, not part of what must agree).
MAILBOX_DIGEST = tuple(column for column in MAILBOX_STATE if column is not Mailbox.sync_base)
_MAILBOXES = (
    select(Mailbox.id, *MAILBOX_STATE)
    .where(Mailbox.account_id == bindparam("account_id"))
    .order_by(Mailbox.name)
)
_UNIQUEIDS = select(Mailbox.id, Mailbox.uniqueid).where(
    Mailbox.account_id == bindparam("account_id")
)
_SUBSCRIPTIONS = (
    select(Subscription.name)
    .where(Subscription.account_id == bindparam("account_id"))
    .order_by(Subscription.name)
)
_TOMBSTONES = select(MailboxTombstone.uniqueid).where(
    MailboxTombstone.account_id == bindparam("account_id")
)


def known_guids(session: Session, account: str, guids: Iterable[str]) -> frozenset[str]:
    """Which of ``guids`` this account has ever held (live, expunged, or deleted)."""
    wanted = sorted(set(guids))
    if not wanted:
        return frozenset()
    account_id = session.scalar(select(Account.id).where(Account.name == account))
    if account_id is None:
        return frozenset()
    found: set[str] = set()
    for i in range(0, len(wanted), 500):
        found.update(
            session.scalars(
                select(GuidHistory.guid).where(
                    GuidHistory.account_id == account_id, GuidHistory.guid.in_(wanted[i : i + 500])
                )
            )
        )
    return frozenset(found)


def owner_view(
    session: Session, *, account: str, replica: AccountState, include: set[str] | None = None
) -> tuple[AccountState, dict[str, tuple[RecordState, ...]], frozenset[str]]:
    """The owner's side of a compare, given what the replica sent.

    Records are loaded only for mailboxes the replica flagged or lacks: all
    live records where it sent all of its own (or nothing), the delta since its
    ``sync_base`` plus the UIDs it sent otherwise. ``known`` tells which of the
    replica's GUIDs this account ever held.
    """
    from engine.mailbox import get_mailbox_by_uniqueid

    own = read_account_state(session, account, include=include)
    theirs = replica.by_uniqueid()
    records: dict[str, tuple[RecordState, ...]] = {}
    for m in own.mailboxes:
        r = theirs.get(m.summary.uniqueid)
        if r is not None and r.mode == "none" and m.summary.same_content(r.summary):
            continue
        mailbox = get_mailbox_by_uniqueid(session, m.summary.uniqueid)
        if mailbox is None:
            continue
        if r is not None and r.mode == "none":
            # Changed since the summary we sent (compare takes it as a delta).
            records[m.summary.uniqueid] = local_records(
                session, mailbox, since=r.summary.highestmodseq
            )
        elif r is not None and r.mode == "delta":
            records[m.summary.uniqueid] = local_records(
                session, mailbox, since=r.summary.sync_base, uids=[x.uid for x in r.records]
            )
        else:
            records[m.summary.uniqueid] = local_records(session, mailbox)
    candidates = [r.guid for m in replica.mailboxes for r in m.records if not r.expunged]
    return own, records, known_guids(session, account, candidates)


def acl_dict(acl: str) -> dict[str, str]:
    value = json.loads(acl)
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def account_digests(session: Session, names: Iterable[str] | None = None) -> dict[str, str]:
    """A digest per account of everything replication makes equal.

    Two nodes with equal digests for an account hold the same account: the
    same password hash, quota, subscriptions and mailboxes (by uniqueid, name,
    UIDVALIDITY, last UID, HIGHESTMODSEQ, ACL, checksum, count). ``replicate --all`` and the
    full reconcile compare these first, in a few requests for thousands of
    accounts, and sync only the accounts that differ.
    """
    import hashlib

    query = select(
        Account.id, Account.name, Account.password_hash, Account.quota_limit, Account.message_limit
    )
    wanted = None if names is None else set(names)
    # A few thousand accounts (a digests request of 500) are read with IN
    # lists; more, or all, with one pass over each table.
    few = wanted is not None and len(wanted) <= 5000
    found: Iterable[Any]
    if few and wanted is not None:
        listed = sorted(wanted)
        found = chain.from_iterable(
            session.execute(query.where(Account.name.in_(listed[i : i + 500])))
            for i in range(0, len(listed), 500)
        )
    else:
        found = session.execute(query)
    accounts = {
        account_id: (name, password_hash, quota, messages)
        for account_id, name, password_hash, quota, messages in found
        if wanted is None or name in wanted
    }
    ids = sorted(accounts)

    def scan(query: Any, column: Any) -> Iterable[Any]:
        if not few:
            return session.execute(query)
        return chain.from_iterable(
            session.execute(query.where(column.in_(ids[i : i + 500])))
            for i in range(0, len(ids), 500)
        )

    boxes: dict[int, list[str]] = {i: [] for i in accounts}
    for row in scan(
        select(Mailbox.account_id, *MAILBOX_DIGEST),
        Mailbox.account_id,
    ):
        if row[0] in boxes:
            boxes[row[0]].append("\0".join(str(v) for v in row[1:]))
    subs: dict[int, list[str]] = {i: [] for i in accounts}
    sieve: dict[int, list[str]] = {i: [] for i in accounts}
    for account_id, name, content, active in scan(
        select(SieveScript.account_id, SieveScript.name, SieveScript.content, SieveScript.active),
        SieveScript.account_id,
    ):
        if account_id in sieve:
            sieve[account_id].append(f"{name}\0{int(bool(active))}\0{content}")
    for account_id, key, until in scan(
        select(VacationSent.account_id, VacationSent.key, VacationSent.until),
        VacationSent.account_id,
    ):
        if account_id in sieve:
            sieve[account_id].append(f"v\0{key}\0{sieve_store.utc(until).strftime('%Y%m%d%H%M%S')}")
    notes: dict[int, list[str]] = {i: [] for i in accounts}
    for account_id, box, entry, value in scan(
        select(Annotation.account_id, Annotation.mailbox, Annotation.entry, Annotation.value),
        Annotation.account_id,
    ):
        if account_id in notes:
            notes[account_id].append(f"{box}\0{entry}\0{bytes(value).hex()}")
    cursors: dict[int, list[str]] = {i: [] for i in accounts}
    for account_id, box, validity, last in scan(
        select(
            ImportCursor.account_id,
            ImportCursor.mailbox,
            ImportCursor.uidvalidity,
            ImportCursor.last_uid,
        ),
        ImportCursor.account_id,
    ):
        if account_id in cursors:
            cursors[account_id].append(f"{box}\0{validity}\0{last}")
    for account_id, name in scan(
        select(Subscription.account_id, Subscription.name), Subscription.account_id
    ):
        if account_id in subs:
            subs[account_id].append(name)
    out = {}
    for account_id, (name, password_hash, quota, messages) in accounts.items():
        text = "\1".join(
            [
                password_hash,
                str(quota),
                "\2".join(sorted(subs[account_id])),
                "\2".join(sorted(boxes[account_id])),
            ]
            # Only accounts with Sieve state: the digests of the others stay as they were.
            + (["\2".join(sorted(sieve[account_id]))] if sieve[account_id] else [])
            # Likewise METADATA entries.
            + (["a\2" + "\2".join(sorted(notes[account_id]))] if notes[account_id] else [])
            # Likewise a message limit (QUOTA MESSAGE).
            + ([f"m\2{messages}"] if messages is not None else [])
            # Likewise import-imap's cursors.
            + (["i\2" + "\2".join(sorted(cursors[account_id]))] if cursors[account_id] else [])
        )
        out[name] = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
    return out
