"""Apply a sync: the push on the replica, the repairs on the owner.

How this works: :func:`apply_push` runs on the replica inside one store write
flagged ``replaying`` (changes reach IMAP listeners but write no sync-log
row, so nothing echoes back). It deletes mailboxes by uniqueid, renames in
two phases (every moving mailbox first gets a temporary name, so swaps and
cycles cannot collide), creates mailboxes with the owner's uniqueid and
UIDVALIDITY, then upserts and expunges records by UID, keeping checksum,
``exists`` and quota exact. Records take the owner's modseq and the mailbox
the owner's HIGHESTMODSEQ, exactly (the owner first raised its own above
ours when we had gone ahead: :class:`~engine.compare.Restamp`), and the
mailbox's ``sync_base`` becomes that HIGHESTMODSEQ when the result matches
the owner's summary: the next sync then exchanges only newer changes. A
record whose GUID is not in the spool is refused: bytes first.

:func:`apply_repairs` runs on the owner as a normal write (its changes are
logged and replicate like any other): it copies the replica's unknown
messages in with new UIDs and moves the owner's split-conflicting records to
new UIDs, after raising ``last_uid`` past both sides' so no UID is reused,
and raises HIGHESTMODSEQ past the replica's, restamping the records the push
will change there (RFC 7162 3.1: a modseq a client saw is never reused for
older state).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from engine import annotations as annotation_store
from engine import fastsql, importcursors, synclog
from engine import sieve as sieve_store
from engine.accounts import create_account, delete_account, find_account
from engine.compare import MailboxPush, Push, Repairs, Restamp
from engine.errors import SyncProtocolError, TemporaryFailure
from engine.flags import record_hash
from engine.mailbox import (
    bump_modseq,
    create_mailbox,
    create_mailboxes,
    find_mailbox,
    get_mailbox_by_uniqueid,
    note_uidvalidity,
    remember_deleted,
)
from engine.messages import NewRecords, append, expunge, records_by_uid
from engine.models import Account, Mailbox, Message, Subscription
from engine.syncstate import MailboxSummary, summary_of

__all__ = ["ApplyResult", "RepairResult", "apply_push", "apply_repairs"]

log = logging.getLogger("peerd.apply")


@dataclass(slots=True)
class ApplyResult:
    summaries: list[MailboxSummary] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RepairResult:
    copied: int = 0
    reassigned: int = 0
    restamped: int = 0
    mailboxes_created: int = 0
    details: list[str] = field(default_factory=list)


def _drop_mailbox(session: Session, account: Account, mailbox: Mailbox) -> None:
    live = session.scalars(
        select(Message.size).where(Message.mailbox_id == mailbox.id, Message.expunged.is_(False))
    )
    account.quota_used = max(0, account.quota_used - sum(live))
    remember_deleted(session, account, mailbox.uniqueid, mailbox.name)
    synclog.record(session, account.name, mailbox.uniqueid, "mailbox")
    session.delete(mailbox)
    session.flush()


def _apply_records(
    session: Session,
    account: Account,
    mailbox: Mailbox,
    push: MailboxPush,
    has: Callable[[str], bool],
) -> None:
    owner = push.summary
    stamp_modseq = owner.highestmodseq
    if push.expunges:
        for record in records_by_uid(session, mailbox, push.expunges):
            mailbox.checksum ^= record_hash(
                record.uid, record.guid, record.flags, record.internaldate, record.modseq
            )
            mailbox.exists -= 1
            account.quota_used = max(0, account.quota_used - record.size)
            record.expunged = True
            # The owner's modseq, not ours: this is not a change the replica
            # made, so it must not show up in the next delta.
            record.modseq = stamp_modseq
    if push.upserts:
        missing = sorted({r.guid for r in push.upserts if not has(r.guid)})
        if missing:
            raise SyncProtocolError(
                f"{len(missing)} message(s) not uploaded, e.g. {missing[0]}: RESERVE/UPLOAD first"
            )
        existing: dict[int, Message] = {}
        if not push.create:
            uids = sorted(r.uid for r in push.upserts)
            for i in range(0, len(uids), 500):
                chunk = uids[i : i + 500]
                # Which of them are here at all, on the cursor: a rolling
                # delta's new mail is not, and needs no ORM query.
                if not fastsql.select_in(session, _uids_present, [mailbox.id], chunk):
                    continue
                for row in session.scalars(
                    select(Message).where(Message.mailbox_id == mailbox.id, Message.uid.in_(chunk))
                ):
                    existing[row.uid] = row
        new = NewRecords(session)
        for r in push.upserts:
            when = r.when()
            found = existing.get(r.uid)
            if found is None:
                new.add(
                    account,
                    mailbox,
                    uid=r.uid,
                    guid=r.guid,
                    size=r.size,
                    flags=r.flags,
                    internaldate=when,
                    modseq=r.modseq,
                )
                continue
            if not found.expunged:
                mailbox.checksum ^= record_hash(
                    found.uid, found.guid, found.flags, found.internaldate, found.modseq
                )
                mailbox.exists -= 1
                account.quota_used = max(0, account.quota_used - found.size)
            found.guid, found.flags, found.internaldate = r.guid, r.flags, when
            found.size, found.modseq, found.expunged = r.size, r.modseq, False
            new.count(
                account,
                mailbox,
                uid=r.uid,
                guid=r.guid,
                size=r.size,
                flags=r.flags,
                when=when,
                modseq=r.modseq,
            )
        new.write()
    mailbox.last_uid = max(mailbox.last_uid, owner.last_uid)
    # \Recent is not replicated (RFC 3501 2.3.2 makes it per session): what
    # the owner holds counts as claimed here, so a failover does not make a
    # whole mailbox \Recent again; mail that arrives here after it is.
    mailbox.recentuid = mailbox.last_uid
    # Exactly the owner's (never max with ours): a replica ahead of its owner
    # would hand clients modseqs the owner reuses once it fails over here.
    mailbox.highestmodseq = owner.highestmodseq
    mailbox.acl = owner.acl
    if push.upserts or push.expunges:
        kind = "append" if push.upserts else "expunge"
        synclog.record(session, account.name, mailbox.uniqueid, kind)


# Built once (each rolling delta reads its account's mailboxes).
_ACCOUNT_MAILBOXES = select(Mailbox).where(Mailbox.account_id == bindparam("account"))


def _uids_present(boxes: Sequence[Any], uids: Sequence[Any]) -> Any:
    return select(Message.uid).where(Message.mailbox_id.in_(boxes), Message.uid.in_(uids))


def apply_push(session: Session, push: Push, has: Callable[[str], bool]) -> ApplyResult:
    """Make the replica's account equal to the owner's, as ``push`` says."""
    result = ApplyResult()
    account = find_account(session, push.account)
    if push.delete_account:
        if account is not None:
            delete_account(session, push.account)
        return result
    if account is None:
        if push.account_fields is None:
            raise SyncProtocolError(f"account {push.account} does not exist here; send its fields")
        password_hash, quota, messages = push.account_fields
        account = create_account(
            session,
            push.account,
            password_hash=password_hash,
            quota_limit=quota,
            create_inbox=False,
        )
        account.message_limit = messages
    elif push.account_fields is not None:
        account.password_hash, account.quota_limit, account.message_limit = push.account_fields
        synclog.record(session, account.name, "", "account")

    for uniqueid in push.deletes:
        mailbox = get_mailbox_by_uniqueid(session, uniqueid)
        if mailbox is not None and mailbox.account_id == account.id:
            _drop_mailbox(session, account, mailbox)

    # Renames in two phases, so "a->b, b->a" and name reuse cannot collide.
    current = {m.uniqueid: m for m in session.scalars(_ACCOUNT_MAILBOXES, {"account": account.id})}
    targets = {p.summary.name: p.summary.uniqueid for p in push.mailboxes}
    moving = [
        current[p.summary.uniqueid]
        for p in push.mailboxes
        if p.summary.uniqueid in current and current[p.summary.uniqueid].name != p.summary.name
    ]
    # A mailbox the owner does not have that sits on a wanted name steps aside.
    for mailbox in current.values():
        owner_of_name = targets.get(mailbox.name)
        if (
            owner_of_name is not None
            and owner_of_name != mailbox.uniqueid
            and mailbox not in moving
        ):
            moving.append(mailbox)
    for mailbox in moving:
        mailbox.name = f"peerd-rename/{mailbox.uniqueid}"
    session.flush()
    for mailbox in moving:
        wanted = next(
            (p.summary.name for p in push.mailboxes if p.summary.uniqueid == mailbox.uniqueid), None
        )
        mailbox.name = wanted or f"Recovered/{mailbox.uniqueid}"
        synclog.record(session, account.name, mailbox.uniqueid, "mailbox")
    session.flush()

    # The mailboxes we lack, created together (one INSERT, not one flush each).
    absent = [p.summary for p in push.mailboxes if p.summary.uniqueid not in current]
    elsewhere: set[str] = set()
    for i in range(0, len(absent), 500):
        chunk = [s.uniqueid for s in absent[i : i + 500]]
        elsewhere.update(
            session.scalars(select(Mailbox.uniqueid).where(Mailbox.uniqueid.in_(chunk)))
        )
    if elsewhere:
        raise SyncProtocolError(f"mailbox {min(elsewhere)} belongs to another account")
    current.update(
        create_mailboxes(
            session,
            account,
            [(s.name, s.uniqueid, s.uidvalidity, s.acl) for s in absent],
        )
    )

    for mp in push.mailboxes:
        summary = mp.summary
        mailbox = current[summary.uniqueid]
        if mailbox.uidvalidity != summary.uidvalidity:
            # Same uniqueid, other UIDVALIDITY: our records mean nothing.
            account.quota_used = max(0, account.quota_used - _live_size(session, mailbox))
            for row in session.scalars(select(Message).where(Message.mailbox_id == mailbox.id)):
                session.delete(row)
            mailbox.uidvalidity, mailbox.checksum, mailbox.exists = summary.uidvalidity, 0, 0
            note_uidvalidity(account, summary.uidvalidity)
            session.flush()
        _apply_records(session, account, mailbox, mp, has)
        if (
            mailbox.checksum == summary.checksum
            and mailbox.exists == summary.exists
            and mailbox.highestmodseq == summary.highestmodseq
        ):
            mailbox.sync_base = summary.highestmodseq
        else:
            mailbox.sync_base = 0
            result.mismatched.append(summary.uniqueid)
        result.summaries.append(summary_of(mailbox))

    if push.subscriptions is not None:
        have = set(
            session.scalars(select(Subscription.name).where(Subscription.account_id == account.id))
        )
        want = set(push.subscriptions)
        for name in have - want:
            sub = session.get(Subscription, (account.id, name))
            if sub is not None:
                session.delete(sub)
        for name in want - have:
            session.add(Subscription(account_id=account.id, name=name))
        synclog.record(session, account.name, "", "sub")
    if push.sieve is not None:
        sieve_store.replace_scripts(session, account, push.sieve)
    if push.vacations is not None:
        sieve_store.replace_vacations(session, account, push.vacations)
    if push.annotations is not None:
        annotation_store.replace(session, account, push.annotations)
    if push.import_cursors is not None:
        importcursors.replace(session, account, push.import_cursors)
        synclog.record(session, account.name, "", "import")
    session.flush()
    return result


def _restamp(session: Session, account: Account, box: Mailbox, restamp: Restamp) -> int:
    """Apply one :class:`Restamp`; how many records got a new modseq."""
    box.highestmodseq = max(box.highestmodseq, restamp.floor)
    changed = 0
    if restamp.bump:
        modseq = bump_modseq(box)
        for record in records_by_uid(session, box, restamp.uids):
            box.checksum ^= record_hash(
                record.uid, record.guid, record.flags, record.internaldate, record.modseq
            )
            box.checksum ^= record_hash(
                record.uid, record.guid, record.flags, record.internaldate, modseq
            )
            record.modseq = modseq
            changed += 1
    synclog.record(session, account.name, box.uniqueid, "flags")
    return changed


def _live_size(session: Session, mailbox: Mailbox) -> int:
    return sum(
        session.scalars(
            select(Message.size).where(
                Message.mailbox_id == mailbox.id, Message.expunged.is_(False)
            )
        )
    )


def apply_repairs(
    session: Session, account_name: str, repairs: Repairs, has: Callable[[str], bool]
) -> RepairResult:
    """On the owner: keep the replica's unknown mail and resolve UID splits.

    ``has`` says whether a GUID's bytes are in the spool: each record kept
    from the replica must have them (fetched, or spooled here before).
    """
    result = RepairResult()
    account = find_account(session, account_name)
    if account is None:
        raise SyncProtocolError(f"no account {account_name} here to repair")
    missing = sorted({r.guid for p in repairs.pulls for r in p.records if not has(r.guid)})
    if missing:
        raise TemporaryFailure(
            f"{len(missing)} message(s) to keep are not in the spool, e.g. {missing[0]}"
        )
    for uniqueid, last_uid in repairs.raise_last_uid:
        box = get_mailbox_by_uniqueid(session, uniqueid)
        if box is not None and box.last_uid < last_uid:
            box.last_uid = last_uid
            synclog.record(session, account.name, box.uniqueid, "mailbox")
    # Before reassigns and pulls, so the records they add are above the floor too.
    for restamp in repairs.restamps:
        box = get_mailbox_by_uniqueid(session, restamp.uniqueid)
        if box is None:
            continue
        result.restamped += _restamp(session, account, box, restamp)
    for reassign in repairs.reassigns:
        mailbox = get_mailbox_by_uniqueid(session, reassign.uniqueid)
        if mailbox is None:
            continue
        mailbox.last_uid = max(mailbox.last_uid, reassign.min_last_uid)
        moved = records_by_uid(session, mailbox, reassign.uids)
        for old in moved:
            new = append(
                session,
                account,
                mailbox,
                guid=old.guid,
                size=old.size,
                flags=old.flags.split(),
                internaldate=old.internaldate,
                enforce_quota=False,
            )
            result.reassigned += 1
            result.details.append(
                f"{mailbox.name}: UID {old.uid} named two messages; ours is now UID {new.uid}"
            )
        expunge(session, account, mailbox, [m.uid for m in moved])
    for pull in repairs.pulls:
        target: Mailbox | None = None
        if pull.target is not None:
            target = get_mailbox_by_uniqueid(session, pull.target)
        if target is None:
            existing = find_mailbox(session, account, pull.name)
            if existing is not None and pull.adopt_uniqueid is None:
                target = existing
            else:
                name = (
                    pull.name
                    if existing is None
                    else f"{pull.name}-{(pull.adopt_uniqueid or 'x')[:8]}"
                )
                target = create_mailbox(session, account, name, uniqueid=pull.adopt_uniqueid)
                result.mailboxes_created += 1
                result.details.append(f"mailbox {name} kept from the replica")
        target.last_uid = max(target.last_uid, pull.min_last_uid)
        for record in pull.records:
            new = append(
                session,
                account,
                target,
                guid=record.guid,
                size=record.size,
                flags=record.flags.split(),
                internaldate=dt.datetime.fromtimestamp(record.internaldate, dt.UTC),
                enforce_quota=False,
            )
            result.copied += 1
            result.details.append(
                f"{target.name}: message {record.guid[:12]} only on the replica "
                f"(UID {record.uid}) copied in as UID {new.uid}"
            )
    if repairs.import_cursors is not None:
        # A cursor moved on the replica (it owned the account meanwhile):
        # kept, so a rerun of the import resumes after it.
        importcursors.replace(session, account, repairs.import_cursors)
        synclog.record(session, account.name, "", "import")
    for line in result.details:
        log.warning("repair %s: %s", account_name, line)
    return result
