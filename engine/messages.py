"""Message record operations: append, flags, expunge, copy and move.

How this works: a record is (uid, GUID, flags, internaldate, size, modseq)
in one mailbox. Every operation that changes records allocates one new
modseq for the mailbox and gives it to every record it touches (RFC 7162
3.1), keeps the mailbox checksum, ``exists`` and the account's quota usage
exact by XOR-ing record hashes in and out, and logs the change. Copy and
move write records only: the bytes stay under their GUID in the spool.

Expunged records stay as tombstones (``expunged``) with the modseq of their
expunge, so a QRESYNC client can learn what vanished and replication can tell
"expunged here" from "never here".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from engine import synclog
from engine.db import execute_rows, insert_ignore
from engine.errors import InvalidArgument, OverMessageQuota, OverQuota
from engine.flags import format_flags, normalize_flags, parse_flags, record_hash
from engine.limits import check_flags
from engine.mailbox import bump_modseq
from engine.models import Account, GuidHistory, Mailbox, Message, MessageMeta

__all__ = [
    "CopyResult",
    "FlagChange",
    "NewRecords",
    "QuotaHolder",
    "RecordBox",
    "add_appended",
    "append",
    "check_message_limit",
    "check_quota",
    "copy_messages",
    "expunge",
    "live_messages",
    "live_records",
    "move_messages",
    "put_meta",
    "records_by_uid",
    "set_flags",
]


@dataclass(frozen=True, slots=True)
class CopyResult:
    """Source and destination UIDs, in order (RFC 4315 COPYUID)."""

    uidvalidity: int
    source_uids: tuple[int, ...]
    dest_uids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class FlagChange:
    """What a STORE did: records changed, and UIDs refused by UNCHANGEDSINCE."""

    changed: tuple[Message, ...]
    modified: tuple[int, ...]


def _truncate(when: dt.datetime) -> dt.datetime:
    if when.tzinfo is None:
        raise InvalidArgument("internaldate must carry a timezone")
    return when.astimezone(dt.UTC).replace(microsecond=0)


def put_meta(session: Session, items: Iterable[tuple[str, bytes | None]]) -> None:
    """Cache per-GUID metadata (one statement for many GUIDs)."""
    rows = [{"guid": guid, "meta": meta} for guid, meta in items if meta is not None]
    insert_ignore(session, MessageMeta.__table__, rows, ["guid"])


# No RETURNING, no Python-side defaults: every column is given.
_INSERT_MESSAGE = insert(Message).inline()


class RecordBox(Protocol):
    """What appending to a mailbox reads and changes: an ORM :class:`Mailbox`,
    or a plain row of it (a group commit's deliveries use those)."""

    id: int
    last_uid: int
    highestmodseq: int
    checksum: int
    exists: int


class QuotaHolder(Protocol):
    """What appending charges: an ORM :class:`Account` or a plain row of it."""

    id: int
    quota_limit: int | None
    quota_used: int
    message_limit: int | None


class NewRecords:
    """New records collected in memory and written with one executemany per table.

    :meth:`add` does the bookkeeping at once (the mailbox checksum and
    ``exists``, the account's quota usage, all on the ORM objects) and
    :meth:`write` inserts the rows and the GUID history. A group commit's
    deliveries, a COPY of a thousand messages and a replication upload each
    cost a few statements rather than two per record: Core inserts, since the
    ORM's unit of work costs more than the insert itself.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.rows: list[dict[str, object]] = []
        self.guids: dict[tuple[int, str], None] = {}

    def add(
        self,
        account: QuotaHolder,
        mailbox: RecordBox,
        *,
        uid: int,
        guid: str,
        size: int,
        flags: str,
        internaldate: dt.datetime,
        modseq: int,
    ) -> dict[str, object]:
        """One record; returns its row (``Message(**row)`` describes it)."""
        values: dict[str, object] = {
            "mailbox_id": mailbox.id,
            "uid": uid,
            "guid": guid,
            "size": size,
            "internaldate": internaldate,
            "flags": flags,
            "modseq": modseq,
            "expunged": False,
        }
        self.rows.append(values)
        self.count(
            account,
            mailbox,
            uid=uid,
            guid=guid,
            size=size,
            flags=flags,
            when=internaldate,
            modseq=modseq,
        )
        return values

    def count(
        self,
        account: QuotaHolder,
        mailbox: RecordBox,
        *,
        uid: int,
        guid: str,
        size: int,
        flags: str,
        when: dt.datetime,
        modseq: int,
    ) -> None:
        """A live record now in ``mailbox`` (a new row, or a tombstone revived)."""
        mailbox.checksum ^= record_hash(uid, guid, flags, when, modseq)
        mailbox.exists += 1
        account.quota_used += size
        self.guids[(account.id, guid)] = None

    def write(self) -> None:
        if self.rows:
            self.session.flush()  # the mailboxes' ids and state before the rows
            execute_rows(self.session, _INSERT_MESSAGE, self.rows)
        insert_ignore(
            self.session,
            GuidHistory.__table__,
            [{"account_id": a, "guid": g} for a, g in self.guids],
            ["account_id", "guid"],
        )
        self.rows = []
        self.guids = {}


def check_quota(account: QuotaHolder, extra: int) -> None:
    """Raise :class:`OverQuota` if ``extra`` more bytes would pass the limit."""
    if account.quota_limit is not None and account.quota_used + extra > account.quota_limit:
        raise OverQuota(
            f"over quota: {account.quota_used} + {extra} bytes > limit {account.quota_limit}"
        )


def live_messages(session: Session, account_id: int) -> int:
    """The account's live messages, all mailboxes (QUOTA MESSAGE's usage)."""
    count = session.scalar(
        select(func.count())
        .select_from(Message)
        .join(Mailbox, Mailbox.id == Message.mailbox_id)
        .where(Mailbox.account_id == account_id, Message.expunged.is_(False))
    )
    return int(count or 0)


def check_message_limit(limit: int | None, count: int, extra: int) -> None:
    """Raise :class:`OverMessageQuota` if ``extra`` more messages than ``count``
    would pass ``limit`` (RFC 9208 5.2)."""
    if limit is not None and count + extra > limit:
        raise OverMessageQuota(f"over quota: {count} + {extra} messages > limit {limit}")


def add_appended(
    records: NewRecords,
    account: QuotaHolder,
    mailbox: RecordBox,
    *,
    guid: str,
    size: int,
    flags: Iterable[str] = (),
    internaldate: dt.datetime,
    enforce_quota: bool = True,
) -> int:
    """An APPEND into ``records``; returns its UID (the next of the mailbox).
    :meth:`NewRecords.write` and a sync-log row for the mailbox are the caller's."""
    if enforce_quota:
        check_quota(account, size)
    mailbox.last_uid += 1
    records.add(
        account,
        mailbox,
        uid=mailbox.last_uid,
        guid=guid,
        size=size,
        flags=check_flags(format_flags(normalize_flags(flags))),
        internaldate=_truncate(internaldate),
        modseq=bump_modseq(mailbox),
    )
    return mailbox.last_uid


def append(
    session: Session,
    account: Account,
    mailbox: Mailbox,
    *,
    guid: str,
    size: int,
    flags: Iterable[str] = (),
    internaldate: dt.datetime,
    enforce_quota: bool = True,
) -> Message:
    """Add a record for spooled bytes; the next UID of the mailbox."""
    if enforce_quota and account.message_limit is not None:
        check_message_limit(account.message_limit, live_messages(session, account.id), 1)
    records = NewRecords(session)
    add_appended(
        records,
        account,
        mailbox,
        guid=guid,
        size=size,
        flags=flags,
        internaldate=internaldate,
        enforce_quota=enforce_quota,
    )
    record = Message(**records.rows[-1])
    records.write()
    synclog.record(session, account.name, mailbox.uniqueid, "append")
    return record


def live_records(session: Session, mailbox: Mailbox) -> list[Message]:
    return list(
        session.scalars(
            select(Message)
            .where(Message.mailbox_id == mailbox.id, Message.expunged.is_(False))
            .order_by(Message.uid)
        )
    )


def records_by_uid(session: Session, mailbox: Mailbox, uids: Iterable[int]) -> list[Message]:
    wanted = sorted(set(uids))
    out: list[Message] = []
    # Chunked: SQLite limits bound parameters per statement.
    for i in range(0, len(wanted), 500):
        out.extend(
            session.scalars(
                select(Message).where(
                    Message.mailbox_id == mailbox.id,
                    Message.expunged.is_(False),
                    Message.uid.in_(wanted[i : i + 500]),
                )
            )
        )
    out.sort(key=lambda m: m.uid)
    return out


def set_flags(
    session: Session,
    account: Account,
    mailbox: Mailbox,
    uids: Iterable[int],
    flags: Iterable[str],
    *,
    mode: str = "add",
    unchangedsince: int | None = None,
) -> FlagChange:
    """STORE: ``mode`` is ``add``, ``remove`` or ``replace`` (RFC 3501 6.4.6).

    With ``unchangedsince`` (RFC 7162 3.1.3) a record whose modseq is higher
    is left alone and reported in ``modified``.
    """
    if mode not in ("add", "remove", "replace"):
        raise InvalidArgument(f"unknown flag mode {mode!r}")
    wanted = normalize_flags(flags)
    changed: list[Message] = []
    modified: list[int] = []
    modseq: int | None = None
    only_seen = True
    for record in records_by_uid(session, mailbox, uids):
        if unchangedsince is not None and record.modseq > unchangedsince:
            modified.append(record.uid)
            continue
        current = parse_flags(record.flags)
        if mode == "add":
            new = current | wanted
        elif mode == "remove":
            new = current - wanted
        else:
            new = wanted
        if new == current:
            continue
        if (new ^ current) - {"\\Seen"}:
            only_seen = False
        if modseq is None:
            modseq = bump_modseq(mailbox)
        stored = check_flags(format_flags(new))
        mailbox.checksum ^= record_hash(
            record.uid, record.guid, record.flags, record.internaldate, record.modseq
        )
        mailbox.checksum ^= record_hash(
            record.uid, record.guid, stored, record.internaldate, modseq
        )
        record.flags = stored
        record.modseq = modseq
        changed.append(record)
    if changed:
        synclog.record(session, account.name, mailbox.uniqueid, "seen" if only_seen else "flags")
    return FlagChange(tuple(changed), tuple(modified))


def expunge(
    session: Session, account: Account, mailbox: Mailbox, uids: Iterable[int] | None = None
) -> list[int]:
    """Expunge the given UIDs, or every ``\\Deleted`` record when ``uids`` is None."""
    if uids is None:
        records = [r for r in live_records(session, mailbox) if "\\Deleted" in parse_flags(r.flags)]
    else:
        records = records_by_uid(session, mailbox, uids)
    if not records:
        return []
    modseq = bump_modseq(mailbox)
    for record in records:
        mailbox.checksum ^= record_hash(
            record.uid, record.guid, record.flags, record.internaldate, record.modseq
        )
        mailbox.exists -= 1
        account.quota_used = max(0, account.quota_used - record.size)
        record.expunged = True
        record.modseq = modseq
    synclog.record(session, account.name, mailbox.uniqueid, "expunge")
    return [r.uid for r in records]


def copy_messages(
    session: Session,
    account: Account,
    source: Mailbox,
    dest: Mailbox,
    uids: Sequence[int],
    *,
    enforce_quota: bool = True,
) -> CopyResult:
    """COPY without new bytes: new records in ``dest`` for the same GUIDs."""
    records = records_by_uid(session, source, uids)
    if enforce_quota:
        check_quota(account, sum(r.size for r in records))
        if account.message_limit is not None:
            count = live_messages(session, account.id)
            check_message_limit(account.message_limit, count, len(records))
    if not records:
        return CopyResult(dest.uidvalidity, (), ())
    modseq = bump_modseq(dest)
    dest_uids: list[int] = []
    new = NewRecords(session)
    for record in records:
        dest.last_uid += 1
        new.add(
            account,
            dest,
            uid=dest.last_uid,
            guid=record.guid,
            size=record.size,
            flags=record.flags,
            internaldate=record.internaldate,
            modseq=modseq,
        )
        dest_uids.append(dest.last_uid)
    new.write()
    synclog.record(session, account.name, dest.uniqueid, "append")
    return CopyResult(dest.uidvalidity, tuple(r.uid for r in records), tuple(dest_uids))


def move_messages(
    session: Session, account: Account, source: Mailbox, dest: Mailbox, uids: Sequence[int]
) -> CopyResult:
    """MOVE (RFC 6851): copy then expunge, in one transaction; quota unchanged."""
    result = copy_messages(session, account, source, dest, uids, enforce_quota=False)
    expunge(session, account, source, result.source_uids)
    return result
