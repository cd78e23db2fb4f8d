"""Mail copied in from another IMAP server: import cursors and batches.

How this works: ``peerctl import-imap`` reads a remote mailbox in UID order
and hands its messages here in batches (spooled first, like an APPEND). One
batch is one transaction: it creates the local mailbox if needed, appends
the messages with their flags and internal dates (quota enforced), and moves
the mailbox's :class:`~engine.models.ImportCursor` (the remote UIDVALIDITY
and the highest remote UID done) in the same commit. A kill at any moment
leaves the cursor exactly at the last committed message, so a rerun copies
each message once.

A message the cursor already covers (same UIDVALIDITY, UID at or below
``last_uid``) is skipped, so a batch sent twice appends nothing. When the
remote UIDVALIDITY differs from the cursor's (the remote mailbox was rebuilt)
its UIDs mean nothing here: the caller must match messages by
:func:`message_keys` (Message-ID, internal date, size) and send only the
unmatched ones with ``rematch`` set; a batch without it is refused rather
than appending every message a second time.

Over quota, a batch commits the messages that fit, leaves the cursor just
before the first that did not, and says so: raise the quota and rerun.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import synclog
from engine.errors import InvalidArgument, OverQuota
from engine.mailbox import create_mailbox, find_mailbox, list_mailboxes, subscribe
from engine.messages import NewRecords, add_appended, check_quota, live_records
from engine.models import Account, ImportCursor
from engine.msgid import message_id_of, message_key

__all__ = [
    "Batch",
    "Cursor",
    "ImportedMessage",
    "Outcome",
    "cursors",
    "import_batch",
    "message_key",
    "message_keys",
]


@dataclass(frozen=True, slots=True)
class ImportedMessage:
    """One remote message, its bytes already staged in the spool as ``guid``."""

    uid: int  # the remote UID
    guid: str
    size: int
    flags: tuple[str, ...]
    internaldate: dt.datetime


@dataclass(frozen=True, slots=True)
class Batch:
    mailbox: str  # the local name
    uidvalidity: int  # the remote mailbox's
    done_uid: int  # every remote UID up to this one is in the batch or needs no copy
    messages: tuple[ImportedMessage, ...] = ()
    rematch: bool = False  # messages were matched by key: a new UIDVALIDITY is fine
    subscribe: bool = False


@dataclass(frozen=True, slots=True)
class Cursor:
    mailbox: str
    uidvalidity: int | None  # None: the mailbox exists, nothing imported into it
    last_uid: int
    exists: int


@dataclass(frozen=True, slots=True)
class Outcome:
    appended: int
    skipped: int  # already covered by the cursor (a batch sent again)
    last_uid: int  # the cursor after the batch
    over_quota: str = ""  # why the batch stopped early, "" if it did not


def cursors(session: Session, account: Account) -> list[Cursor]:
    """Every mailbox of ``account`` with its import cursor, if any."""
    rows = {
        c.mailbox: c
        for c in session.scalars(select(ImportCursor).where(ImportCursor.account_id == account.id))
    }
    out: list[Cursor] = []
    for box in list_mailboxes(session, account):
        row = rows.get(box.uniqueid)
        out.append(
            Cursor(
                box.name,
                row.uidvalidity if row else None,
                row.last_uid if row else 0,
                box.exists,
            )
        )
    return out


def message_keys(
    session: Session, account: Account, name: str, read: Callable[[str], bytes]
) -> list[str]:
    """The :func:`message_key` of every live message in ``name`` (one per
    message: two equal copies give the key twice). ``read`` gives a GUID's
    bytes: the Message-ID is read from the header, so this reads every
    message of the mailbox (only done when a remote UIDVALIDITY changed)."""
    box = find_mailbox(session, account, name)
    if box is None:
        return []
    return [
        message_key(message_id_of(read(r.guid)), _aware(r.internaldate), r.size)
        for r in live_records(session, box)
    ]


def _aware(when: dt.datetime) -> dt.datetime:
    """SQLite gives naive UTC datetimes back, PostgreSQL aware ones."""
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def import_batch(session: Session, account: Account, batch: Batch) -> Outcome:
    """Append ``batch`` and move its mailbox's cursor, in the caller's transaction."""
    box = find_mailbox(session, account, batch.mailbox)
    if box is None:
        box = create_mailbox(session, account, batch.mailbox)
    if batch.subscribe:
        subscribe(session, account, box.name)
    cursor = session.get(ImportCursor, (account.id, box.uniqueid))
    covered = 0
    if cursor is not None and cursor.uidvalidity == batch.uidvalidity:
        covered = cursor.last_uid
    elif cursor is not None and not batch.rematch:
        raise InvalidArgument(
            f"the remote UIDVALIDITY of {box.name} changed ({cursor.uidvalidity} ->"
            f" {batch.uidvalidity}): match the messages again (rematch)"
        )
    records = NewRecords(session)
    appended = skipped = 0
    last = max(covered, batch.done_uid)
    over = ""
    for message in _ascending(batch.messages):
        if message.uid <= covered:
            skipped += 1
            continue
        try:
            check_quota(account, message.size)
        except OverQuota as exc:
            # Everything below this UID is done; this one and the rest are not.
            last, over = max(covered, message.uid - 1), exc.message
            break
        add_appended(
            records,
            account,
            box,
            guid=message.guid,
            size=message.size,
            flags=message.flags,
            internaldate=message.internaldate,
        )
        appended += 1
    records.write()
    if appended:
        synclog.record(session, account.name, box.uniqueid, "append")
    if cursor is None or (cursor.uidvalidity, cursor.last_uid) != (batch.uidvalidity, last):
        # The cursor travels with the account (engine.importcursors).
        synclog.record(session, account.name, "", "import")
    if cursor is None:
        session.add(
            ImportCursor(
                account_id=account.id,
                mailbox=box.uniqueid,
                uidvalidity=batch.uidvalidity,
                last_uid=last,
            )
        )
    else:
        cursor.uidvalidity, cursor.last_uid = batch.uidvalidity, last
    return Outcome(appended, skipped, last, over)


def _ascending(messages: Sequence[ImportedMessage]) -> list[ImportedMessage]:
    uids = [m.uid for m in messages]
    if len(set(uids)) != len(uids):
        raise InvalidArgument("a batch names one remote UID twice")
    return sorted(messages, key=lambda m: m.uid)
