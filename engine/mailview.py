"""Mailboxes and messages as the mail services see them: typed values, no ORM rows.

How this works: IMAP and POP3 never build a query nor hold an ORM object.
Each function here runs inside one store transaction and returns frozen
dataclasses. Reads take the account's name and go through
``store.read(lambda s: mailview.fn(s, ...))``; writes take the account's row
and go through the caller's fenced write (``Node.write_owned(account, fn)``
in peerd), which looks the row up and checks ownership in the same
transaction. The operations themselves are the engine's
(:mod:`engine.mailbox`, :mod:`engine.messages`); this module only picks what a
mail service needs and turns rows into values.

A mailbox is named by its id once it is open (:class:`Snapshot`), so a rename
by another session does not make the open one lose its mailbox; a deleted one
raises :class:`~engine.errors.NoSuchMailbox`.

Snapshots are shared: the records of an unchanged mailbox are read once and
kept (see :func:`snapshot_of`), so a SELECT, NOOP or IDLE wake-up of an
unchanged mailbox reads no records however many sessions have it open. The
cache is process-wide and is used from the store's reader threads, so one
lock guards it.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import accounts, fastsql, mailbox, messages, walk
from engine.errors import InvalidArgument, NoSuchMailbox
from engine.mailbox import normalize_mailbox_name
from engine.messages import CopyResult
from engine.models import Account, Mailbox, Message

__all__ = [
    "Appended",
    "CopyResult",
    "FlagMode",
    "FlagsStored",
    "Listing",
    "MailboxStatus",
    "Record",
    "Snapshot",
    "Version",
    "append",
    "append_many",
    "claim_recent",
    "claim_recent_many",
    "copy_messages",
    "create_mailbox",
    "delete_mailbox",
    "expunge",
    "listing",
    "live_uids",
    "normalize_mailbox_name",
    "rename_mailbox",
    "snapshot",
    "snapshot_and_vanished",
    "snapshot_of",
    "snapshots_of",
    "status",
    "store_flags",
    "subscribe",
    "unsubscribe",
    "vanished",
    "version",
]

FlagMode = Literal["add", "remove", "replace"]


@dataclass(frozen=True, slots=True)
class Record:
    """One live message of a mailbox. Frozen: snapshots share them."""

    uid: int
    guid: str
    flags: str  # space-separated, canonical (engine.flags)
    modseq: int
    size: int
    internaldate: dt.datetime


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A mailbox at one moment: its live records in UID order."""

    mailbox_id: int
    uniqueid: str
    name: str
    uidvalidity: int
    highestmodseq: int
    uidnext: int
    records: tuple[Record, ...]
    # The highest UID some session already claimed as \Recent (RFC 3501 2.3.2).
    recentuid: int = 0
    # The keywords (flags without a backslash) the records hold: found once
    # when the records are read, not by every session that opens the mailbox.
    keywords: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Version:
    """What changes whenever a mailbox's records do (a cheap staleness test)."""

    highestmodseq: int
    uidnext: int


@dataclass(frozen=True, slots=True)
class MailboxStatus:
    """Counts of a mailbox (IMAP STATUS)."""

    messages: int
    uidnext: int
    uidvalidity: int
    unseen: int
    highestmodseq: int
    size: int
    deleted: int
    recent: int = 0  # not yet claimed by any session (RFC 3501 6.3.10)


@dataclass(frozen=True, slots=True)
class Listing:
    """An account's mailbox names and subscriptions, each sorted."""

    names: tuple[str, ...]
    subscriptions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Appended:
    uidvalidity: int
    uid: int


@dataclass(frozen=True, slots=True)
class FlagsStored:
    """What a flag change did: the records changed (as they are now), and the
    UIDs an UNCHANGEDSINCE condition refused (RFC 7162 3.1.3)."""

    changed: tuple[Record, ...]
    modified: tuple[int, ...]


# -- reads --------------------------------------------------------------------------


def snapshot(session: Session, account: str, name: str) -> Snapshot:
    """The mailbox ``name`` of ``account`` (NoSuchMailbox if there is none)."""
    # One statement on the cursor (every SELECT and EXAMINE reads this row);
    # the ORM's look-ups only when there is no such row, for their errors.
    try:
        normal = normalize_mailbox_name(name)
    except InvalidArgument:
        normal = None
    rows = (
        fastsql.select_in(session, _named_mailbox_rows, [account], [normal])
        if normal is not None
        else []
    )
    if not rows:
        row = mailbox.get_mailbox(session, accounts.get_account(session, account), name)
        return _snapshot(session, row)
    mid, uniqueid, real_name, uidvalidity, modseq, last_uid, exists, checksum, recentuid = rows[0]
    return _snapshot_of_row(
        session,
        mid,
        uniqueid,
        real_name,
        uidvalidity,
        modseq,
        last_uid,
        exists,
        checksum,
        recentuid,
    )


def _named_mailbox_rows(account_names: list[Any], names: list[Any]) -> Any:
    """:func:`_mailbox_rows` by account name and mailbox name."""
    return (
        select(*_MAILBOX_COLUMNS)
        .join(Account, Account.id == Mailbox.account_id)
        .where(Account.name.in_(account_names), Mailbox.name.in_(names))
    )


def snapshot_and_vanished(
    session: Session, account: str, name: str, uidvalidity: int, modseq: int
) -> tuple[Snapshot, tuple[int, ...]]:
    """:func:`snapshot`, and if its UIDVALIDITY is ``uidvalidity`` the UIDs
    expunged after ``modseq`` (:func:`vanished`), in the same transaction."""
    box = snapshot(session, account, name)
    if box.uidvalidity != uidvalidity:
        return box, ()
    return box, vanished(session, box.mailbox_id, modseq)


def snapshot_of(session: Session, mailbox_id: int) -> Snapshot:
    """An open mailbox again, by id (NoSuchMailbox once it was deleted)."""
    return _snapshot(session, _row(session, mailbox_id))


def snapshots_of(session: Session, mailbox_ids: Iterable[int]) -> dict[int, Snapshot]:
    """Many open mailboxes again, by id, in one read (the sessions a change
    wakes, :mod:`peerd.services.imap.wakeup`): one query for the mailboxes and
    one for the records of those not in the shared cache, per 500 of them. A
    deleted mailbox is left out."""
    ids = sorted(set(mailbox_ids))
    found: dict[int, Snapshot] = {}
    for i in range(0, len(ids), 500):
        rows = fastsql.select_in(session, _mailbox_rows, ids[i : i + 500])
        keys = {row[0]: (row[3], row[4], row[5], row[6], row[7]) for row in rows}
        cached = {mid: _SNAPSHOTS.get(mid, key) for mid, key in keys.items()}
        missing = [mid for mid, records in cached.items() if records is None]
        read: dict[int, list[Record]] = {mid: [] for mid in missing}
        if missing:
            for mid, *fields in fastsql.select_in(session, _record_rows, missing):
                read[mid].append(Record(*fields))
        for mid, records in read.items():
            kept = tuple(records)
            cached[mid] = entry = (kept, keywords_of(kept))
            _SNAPSHOTS.put(mid, keys[mid], *entry)
        for mid, uniqueid, name, uidvalidity, modseq, last_uid, _, _, recentuid in rows:
            have = cached[mid]
            assert have is not None
            kept_records, keywords = have
            found[mid] = Snapshot(
                mid,
                uniqueid,
                name,
                uidvalidity,
                modseq,
                last_uid + 1,
                kept_records,
                recentuid,
                keywords,
            )
    return found


# A mailbox's fields a Snapshot is made of, and its cache key's.
_MAILBOX_COLUMNS: Final = (
    Mailbox.id,
    Mailbox.uniqueid,
    Mailbox.name,
    Mailbox.uidvalidity,
    Mailbox.highestmodseq,
    Mailbox.last_uid,
    Mailbox.exists,
    Mailbox.checksum,
    Mailbox.recentuid,
)


def _mailbox_rows(ids: list[Any]) -> Any:
    return select(*_MAILBOX_COLUMNS).where(Mailbox.id.in_(ids))


# A Record's fields, in its order (the one-mailbox and the many-mailbox reads).
_RECORD_COLUMNS: Final = (
    Message.uid,
    Message.guid,
    Message.flags,
    Message.modseq,
    Message.size,
    Message.internaldate,
)


def _record_rows(ids: list[Any]) -> Any:
    return (
        select(Message.mailbox_id, *_RECORD_COLUMNS)
        .where(Message.mailbox_id.in_(ids), Message.expunged.is_(False))
        .order_by(Message.mailbox_id, Message.uid)
    )


def version(session: Session, mailbox_id: int) -> Version | None:
    """The mailbox's :class:`Version`; None once it was deleted."""
    row = session.execute(
        select(Mailbox.highestmodseq, Mailbox.last_uid).where(Mailbox.id == mailbox_id)
    ).first()
    return None if row is None else Version(row[0], row[1] + 1)


def vanished(session: Session, mailbox_id: int, modseq: int) -> tuple[int, ...]:
    """UIDs of the mailbox's records expunged after ``modseq``, in order.

    Every expunge leaves a tombstone with its modseq, so the list is exact
    (RFC 7162 3.2.5.1, 3.2.6).
    """
    rows = session.scalars(
        select(Message.uid)
        .where(
            Message.mailbox_id == mailbox_id,
            Message.expunged.is_(True),
            Message.modseq > modseq,
        )
        .order_by(Message.uid)
    )
    return tuple(rows)


def live_uids(session: Session, mailbox_id: int, uids: Sequence[int]) -> tuple[int, ...]:
    """Which of ``uids`` are still live (not expunged) in the mailbox, in order
    (none once the mailbox was deleted)."""
    wanted = sorted(set(uids))
    found: list[int] = []
    for i in range(0, len(wanted), 500):  # SQLite limits bound parameters per statement
        found.extend(
            session.scalars(
                select(Message.uid).where(
                    Message.mailbox_id == mailbox_id,
                    Message.uid.in_(wanted[i : i + 500]),
                    Message.expunged.is_(False),
                )
            )
        )
    return tuple(sorted(found))


def listing(session: Session, account: str) -> Listing:
    row = accounts.get_account(session, account)
    names = tuple(mailbox.mailbox_names(session, row))
    return Listing(names, tuple(mailbox.subscriptions(session, row)))


def status(session: Session, account: str, name: str) -> MailboxStatus:
    found = statuses(session, account, [name])
    if name not in found:
        raise NoSuchMailbox(f"no such mailbox: {name}")
    return found[name]


def statuses(session: Session, account: str, names: Sequence[str]) -> dict[str, MailboxStatus]:
    """:func:`status` of many mailboxes of ``account`` (LIST-STATUS), a few
    hundred a query: one read per mailbox made a LIST of an account's
    100,000 mailboxes take minutes. A name no mailbox has (deleted
    meanwhile) is left out."""
    row = accounts.get_account(session, account)
    out: dict[str, MailboxStatus] = {}
    asked = {normalize_mailbox_name(n): n for n in names}
    for chunk in walk.chunks(list(asked)):
        boxes = session.execute(
            select(
                Mailbox.id,
                Mailbox.name,
                Mailbox.exists,
                Mailbox.last_uid,
                Mailbox.uidvalidity,
                Mailbox.highestmodseq,
                Mailbox.recentuid,
            ).where(Mailbox.account_id == row.id, Mailbox.name.in_(chunk))
        ).all()
        found: dict[int, list[Any]] = {box.id: [] for box in boxes}
        holding = [box.id for box in boxes if box.exists]  # an empty one has no live record
        if holding:
            for mailbox_id, *values in session.execute(
                select(Message.mailbox_id, Message.flags, Message.size, Message.uid).where(
                    Message.mailbox_id.in_(holding), Message.expunged.is_(False)
                )
            ):
                found[mailbox_id].append(values)
        for box in boxes:
            out[asked[box.name]] = _status(box, found[box.id])
    return out


def _status(box: Any, rows: Sequence[Any]) -> MailboxStatus:
    """The counts of a mailbox from its row's values and its live records'
    (flags, size, uid)."""
    flag_sets = [flags.split() for flags, _, _ in rows]
    return MailboxStatus(
        messages=box.exists,
        uidnext=box.last_uid + 1,
        uidvalidity=box.uidvalidity,
        unseen=sum(1 for f in flag_sets if "\\Seen" not in f),
        highestmodseq=box.highestmodseq,
        size=sum(size for _, size, _ in rows),
        deleted=sum(1 for f in flag_sets if "\\Deleted" in f),
        recent=sum(1 for _, _, uid in rows if uid > box.recentuid),
    )


# -- writes (inside a fenced write: ``fn(session, account_row)``) ----------------------


def create_mailbox(
    session: Session, account: Account, name: str, *, inherit_acl: bool = False
) -> None:
    """Create ``name`` and any superior that is missing (RFC 3501 6.3.3);
    with ``inherit_acl`` each new one takes the ACL of its superior."""
    mailbox.create_with_superiors(session, account, name, inherit_acl=inherit_acl)


def delete_mailbox(session: Session, account: Account, name: str) -> None:
    mailbox.delete_mailbox(session, account, name)


def rename_mailbox(session: Session, account: Account, old: str, new: str) -> None:
    """Rename a mailbox and its children; renaming INBOX moves its messages to
    a new mailbox and leaves INBOX, empty (RFC 3501 6.3.5)."""
    if old == "INBOX":
        src = mailbox.get_mailbox(session, account, "INBOX")
        dst = mailbox.create_mailbox(session, account, new)
        uids = [r.uid for r in messages.live_records(session, src)]
        messages.move_messages(session, account, src, dst, uids)
    else:
        mailbox.rename_mailbox(session, account, old, new)


def subscribe(session: Session, account: Account, name: str) -> None:
    mailbox.subscribe(session, account, name)


def unsubscribe(session: Session, account: Account, name: str) -> None:
    mailbox.unsubscribe(session, account, name)


def append(
    session: Session,
    account: Account,
    name: str,
    *,
    guid: str,
    size: int,
    flags: Iterable[str],
    internaldate: dt.datetime,
) -> Appended:
    """A record for bytes already staged in the spool (NoSuchMailbox if ``name`` is missing)."""
    box = mailbox.find_mailbox(session, account, name)
    if box is None:
        raise NoSuchMailbox(f"no such mailbox: {name}")
    record = messages.append(
        session, account, box, guid=guid, size=size, flags=flags, internaldate=internaldate
    )
    return Appended(box.uidvalidity, record.uid)


def append_many(
    session: Session,
    account: Account,
    name: str,
    items: Sequence[tuple[str, int, Sequence[str], dt.datetime]],
) -> tuple[Appended, ...]:
    """:func:`append` of several staged messages ``(guid, size, flags,
    internaldate)``, in order, in the caller's one transaction."""
    return tuple(
        append(session, account, name, guid=guid, size=size, flags=flags, internaldate=when)
        for guid, size, flags, when in items
    )


def store_flags(
    session: Session,
    account: Account,
    mailbox_id: int,
    uids: Sequence[int],
    flags: Iterable[str],
    *,
    mode: FlagMode,
    unchangedsince: int | None = None,
) -> FlagsStored:
    """Add, remove or replace flags (RFC 3501 6.4.6; RFC 7162 3.1.3 UNCHANGEDSINCE)."""
    result = messages.set_flags(
        session,
        account,
        _row(session, mailbox_id),
        uids,
        flags,
        mode=mode,
        unchangedsince=unchangedsince,
    )
    return FlagsStored(tuple(_record(m) for m in result.changed), result.modified)


def expunge(
    session: Session, account: Account, mailbox_id: int, uids: Sequence[int] | None = None
) -> tuple[int, ...]:
    """Expunge ``uids``, or every ``\\Deleted`` record when None; the UIDs expunged."""
    return tuple(messages.expunge(session, account, _row(session, mailbox_id), uids))


def claim_recent(session: Session, account: Account, mailbox_id: int) -> tuple[int, int]:
    """Claim the mailbox's unclaimed UIDs as \\Recent for the calling session
    (RFC 3501 2.3.2: only the first session told of a message gets it).

    Raises the mailbox's ``recentuid`` to its last UID under a row lock; the
    UIDs in ``(first, last]`` of the answer are the caller's (none when equal).
    Writes are serialized, so two sessions never claim the same UID.
    """
    row = session.get(Mailbox, mailbox_id, with_for_update=True)
    if row is None or row.account_id != account.id:
        raise NoSuchMailbox("the selected mailbox was deleted")
    before = row.recentuid
    if row.last_uid > before:
        row.recentuid = row.last_uid
    return before, row.recentuid


def claim_recent_many(session: Session, mailboxes: Mapping[int, str]) -> dict[int, tuple[int, int]]:
    """:func:`claim_recent` for many mailboxes in one write, each named by id
    with the account that owns it (``mailboxes``): the claimed ranges by
    mailbox id; a mailbox deleted, or now another account's, is left out.
    The caller runs the fence for those accounts in the same transaction
    (:meth:`peerd.node.node.Node.write_owned_many`)."""
    ids = sorted(mailboxes)
    claimed: dict[int, tuple[int, int]] = {}
    for i in range(0, len(ids), 500):
        rows = session.execute(
            select(Mailbox, Account.name)
            .join(Account, Account.id == Mailbox.account_id)
            .where(Mailbox.id.in_(ids[i : i + 500]))
            .with_for_update()
        ).all()
        for row, owner in rows:
            if mailboxes[row.id] != owner:
                continue
            before = row.recentuid
            if row.last_uid > before:
                row.recentuid = row.last_uid
            claimed[row.id] = (before, row.recentuid)
    return claimed


def copy_messages(
    session: Session,
    account: Account,
    mailbox_id: int,
    uids: Sequence[int],
    dest: str,
    *,
    move: bool,
) -> CopyResult:
    """COPY, or MOVE (RFC 6851), into the mailbox ``dest`` (NoSuchMailbox if missing)."""
    src = _row(session, mailbox_id)
    dst = mailbox.find_mailbox(session, account, dest)
    if dst is None:
        raise NoSuchMailbox(f"no such mailbox: {dest}")
    if move:
        return messages.move_messages(session, account, src, dst, uids)
    return messages.copy_messages(session, account, src, dst, uids)


# -- rows to values ---------------------------------------------------------------


def _row(session: Session, mailbox_id: int) -> Mailbox:
    row = session.get(Mailbox, mailbox_id)
    if row is None:
        raise NoSuchMailbox("the selected mailbox was deleted")
    return row


def _record(message: Message) -> Record:
    return Record(
        message.uid,
        message.guid,
        message.flags,
        message.modseq,
        message.size,
        message.internaldate,
    )


def _snapshot(session: Session, row: Mailbox) -> Snapshot:
    return _snapshot_of_row(
        session,
        row.id,
        row.uniqueid,
        row.name,
        row.uidvalidity,
        row.highestmodseq,
        row.last_uid,
        row.exists,
        row.checksum,
        row.recentuid,
    )


def _snapshot_of_row(
    session: Session,
    mid: int,
    uniqueid: str,
    name: str,
    uidvalidity: int,
    highestmodseq: int,
    last_uid: int,
    exists: int,
    checksum: int,
    recentuid: int,
) -> Snapshot:
    # The key covers everything a change to the records changes (UIDVALIDITY,
    # highest modseq, last UID, count and content checksum).
    key = (uidvalidity, highestmodseq, last_uid, exists, checksum)
    cached = _SNAPSHOTS.get(mid, key)
    if cached is None:
        rows = session.execute(
            select(*_RECORD_COLUMNS)
            .where(Message.mailbox_id == mid, Message.expunged.is_(False))
            .order_by(Message.uid)
        )
        records = tuple(Record(*r) for r in rows)
        cached = (records, keywords_of(records))
        _SNAPSHOTS.put(mid, key, *cached)
    records, keywords = cached
    return Snapshot(
        mid,
        uniqueid,
        name,
        uidvalidity,
        highestmodseq,
        last_uid + 1,
        records,
        recentuid,
        keywords,
    )


def keywords_of(records: Iterable[Record]) -> frozenset[str]:
    """The keywords ``records`` hold (each distinct flag list split once)."""
    lists = {r.flags for r in records}
    return frozenset(f for flags in lists for f in flags.split() if not f.startswith("\\"))


class SnapshotCache:
    """The shared records of recently opened mailboxes, least recently used out
    first past a budget of records; safe to use from any thread."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: OrderedDict[
            int, tuple[tuple[int, ...], tuple[Record, ...], frozenset[str]]
        ] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(
        self, mailbox_id: int, key: tuple[int, ...]
    ) -> tuple[tuple[Record, ...], frozenset[str]] | None:
        """The records and their keywords kept for ``mailbox_id`` at ``key``."""
        with self._lock:
            cached = self._entries.get(mailbox_id)
            if cached is None or cached[0] != key:
                return None
            self._entries.move_to_end(mailbox_id)
            return cached[1], cached[2]

    def put(
        self,
        mailbox_id: int,
        key: tuple[int, ...],
        records: tuple[Record, ...],
        keywords: frozenset[str],
    ) -> None:
        with self._lock:
            old = self._entries.pop(mailbox_id, None)
            if old is not None:
                self._size -= len(old[1])
            self._entries[mailbox_id] = (key, records, keywords)
            self._size += len(records)
            while self._size > self.budget and len(self._entries) > 1:
                _, (_, dropped, _) = self._entries.popitem(last=False)
                self._size -= len(dropped)


_SNAPSHOT_RECORDS: Final = 500_000  # records kept in all shared snapshots together (~50 MB)
_SNAPSHOTS: Final = SnapshotCache(_SNAPSHOT_RECORDS)
