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

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from engine import synclog
from engine.db import insert_ignore
from engine.errors import InvalidArgument, OverQuota
from engine.flags import format_flags, normalize_flags, parse_flags, record_hash
from engine.mailbox import bump_modseq
from engine.models import Account, GuidHistory, Mailbox, Message, MessageMeta

__all__ = [
    "CopyResult",
    "FlagChange",
    "append",
    "copy_messages",
    "expunge",
    "live_records",
    "move_messages",
    "note_guid",
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


def note_guid(session: Session, account: Account, guid: str) -> None:
    """Remember that this account has held ``guid`` (the no-loss rule needs it)."""
    insert_ignore(
        session,
        GuidHistory.__table__,
        {"account_id": account.id, "guid": guid},
        ["account_id", "guid"],
    )


def put_meta(session: Session, guid: str, meta: bytes | None) -> None:
    if meta is not None:
        insert_ignore(session, MessageMeta.__table__, {"guid": guid, "meta": meta}, ["guid"])


_INSERT_MESSAGE = insert(Message)


def _insert(
    session: Session,
    account: Account,
    mailbox: Mailbox,
    *,
    uid: int,
    guid: str,
    size: int,
    flags: str,
    internaldate: dt.datetime,
    modseq: int,
) -> Message:
    values = {
        "mailbox_id": mailbox.id,
        "uid": uid,
        "guid": guid,
        "size": size,
        "internaldate": internaldate,
        "flags": flags,
        "modseq": modseq,
        "expunged": False,
    }
    # Core INSERT: the ORM's unit of work costs more than the insert itself
    # on the delivery path. The returned record is a detached description.
    session.connection().execute(_INSERT_MESSAGE, values)
    record = Message(**values)
    mailbox.checksum ^= record_hash(uid, guid, flags, internaldate)
    mailbox.exists += 1
    account.quota_used += size
    note_guid(session, account, guid)
    return record


def _check_quota(account: Account, extra: int) -> None:
    if account.quota_limit is not None and account.quota_used + extra > account.quota_limit:
        raise OverQuota(
            f"over quota: {account.quota_used} + {extra} bytes > limit {account.quota_limit}"
        )


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
    if enforce_quota:
        _check_quota(account, size)
    mailbox.last_uid += 1
    modseq = bump_modseq(mailbox)
    record = _insert(
        session,
        account,
        mailbox,
        uid=mailbox.last_uid,
        guid=guid,
        size=size,
        flags=format_flags(normalize_flags(flags)),
        internaldate=_truncate(internaldate),
        modseq=modseq,
    )
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
        stored = format_flags(new)
        mailbox.checksum ^= record_hash(record.uid, record.guid, record.flags, record.internaldate)
        mailbox.checksum ^= record_hash(record.uid, record.guid, stored, record.internaldate)
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
        mailbox.checksum ^= record_hash(record.uid, record.guid, record.flags, record.internaldate)
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
        _check_quota(account, sum(r.size for r in records))
    if not records:
        return CopyResult(dest.uidvalidity, (), ())
    modseq = bump_modseq(dest)
    dest_uids: list[int] = []
    for record in records:
        dest.last_uid += 1
        _insert(
            session,
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
    synclog.record(session, account.name, dest.uniqueid, "append")
    return CopyResult(dest.uidvalidity, tuple(r.uid for r in records), tuple(dest_uids))


def move_messages(
    session: Session, account: Account, source: Mailbox, dest: Mailbox, uids: Sequence[int]
) -> CopyResult:
    """MOVE (RFC 6851): copy then expunge, in one transaction; quota unchanged."""
    result = copy_messages(session, account, source, dest, uids, enforce_quota=False)
    expunge(session, account, source, result.source_uids)
    return result
