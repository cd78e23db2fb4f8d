"""Apply the pushes of many accounts the replica lacks, in a few statements.

How this works: on a first ``replicate --all`` onto an empty partner every
push creates an account with its mailboxes, records and subscriptions.
:func:`apply_push` does that through the ORM, a flush per object; here the
pushes of a whole batch go in one INSERT per table (accounts, mailboxes,
messages, GUID history, subscriptions), with every value computed first
exactly as :func:`apply_push` would leave it (each mailbox's checksum, count,
``last_uid``, ``recentuid``, HIGHESTMODSEQ and ``sync_base``; each account's
quota use and ``uidvalidity_used``; the same sync-log changes).

Only pushes :func:`is_fresh` accepts come here: the account is created, no
mailbox is deleted or expunged in, and no Sieve, vacation or METADATA state
comes with it. :func:`apply_new_accounts` checks everything :func:`apply_push`
checks and raises on the first problem; the caller runs it in a savepoint
and, when it raises, applies each push alone (so one bad account fails
alone, as a push on its own would).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from engine import synclog
from engine.accounts import normalize_account_name
from engine.apply import ApplyResult
from engine.compare import Push
from engine.db import execute_rows, insert_ignore, utcnow
from engine.errors import AlreadyExists, InvalidArgument, SyncProtocolError
from engine.flags import record_hash
from engine.limits import MAX_MAILBOXES, MAX_PASSWORD_HASH, check_count, check_length
from engine.mailbox import normalize_mailbox_name
from engine.models import Account, GuidHistory, Mailbox, Message, Subscription
from engine.syncstate import MailboxSummary

__all__ = ["apply_new_accounts", "is_fresh"]

_INSERT_MESSAGE = insert(Message).inline()
_CHUNK = 500


def is_fresh(push: Push) -> bool:
    """Whether ``push`` only creates an account (what this module applies)."""
    return (
        push.create_account
        and push.account_fields is not None
        and not push.delete_account
        and not push.deletes
        and not push.sieve
        and not push.vacations
        and not push.annotations
        and all(mp.create and not mp.expunges for mp in push.mailboxes)
    )


def apply_new_accounts(
    session: Session, pushes: Sequence[Push], has: Callable[[str], bool]
) -> list[ApplyResult]:
    """Apply ``pushes`` (each :func:`is_fresh`); one result per push, in order."""
    names = [p.account for p in pushes]
    if len(set(names)) != len(names):
        raise SyncProtocolError("an account is named twice in one batch")
    for push in pushes:
        if not is_fresh(push):
            raise SyncProtocolError(f"{push.account}: not a new account's push")
        if normalize_account_name(push.account) != push.account:
            raise InvalidArgument(f"{push.account}: not a normalized account name")
        assert push.account_fields is not None
        password_hash, quota, _ = push.account_fields
        if quota is not None and quota < 0:
            raise InvalidArgument("quota must be >= 0 bytes")
        check_length(password_hash, MAX_PASSWORD_HASH, "a password hash")
        check_count(len(push.mailboxes) - 1, MAX_MAILBOXES, "mailboxes")
        boxes = [normalize_mailbox_name(mp.summary.name) for mp in push.mailboxes]
        if len(set(boxes)) != len(boxes):
            raise AlreadyExists(f"{push.account}: a mailbox name is given twice")
    for chunk in _chunks(names):
        found = session.scalar(select(Account.name).where(Account.name.in_(chunk)).limit(1))
        if found is not None:
            raise AlreadyExists(f"account {found} already exists")
    uniqueids = [mp.summary.uniqueid for p in pushes for mp in p.mailboxes]
    if len(set(uniqueids)) != len(uniqueids):
        raise SyncProtocolError("a mailbox uniqueid is given twice in one batch")
    for chunk in _chunks(uniqueids):
        taken = session.scalar(select(Mailbox.uniqueid).where(Mailbox.uniqueid.in_(chunk)).limit(1))
        if taken is not None:
            raise SyncProtocolError(f"mailbox {taken} belongs to another account")
    guids = sorted({r.guid for p in pushes for mp in p.mailboxes for r in mp.upserts})
    missing = [g for g in guids if not has(g)]
    if missing:
        raise SyncProtocolError(
            f"{len(missing)} message(s) not uploaded, e.g. {missing[0]}: RESERVE/UPLOAD first"
        )

    now = utcnow()
    account_rows = []
    for push in pushes:
        assert push.account_fields is not None
        password_hash, quota, messages = push.account_fields
        account_rows.append(
            {
                "name": push.account,
                "password_hash": password_hash,
                "quota_limit": quota,
                "message_limit": messages,
                "quota_used": sum(r.size for mp in push.mailboxes for r in mp.upserts),
                "uidvalidity_used": max(
                    (mp.summary.uidvalidity for mp in push.mailboxes), default=0
                ),
                "created_at": now,
                "updated_at": now,
            }
        )
    session.execute(insert(Account), account_rows)
    ids: dict[str, int] = {}
    for chunk in _chunks(names):
        query = select(Account.name, Account.id).where(Account.name.in_(chunk))
        ids.update((name, int(ident)) for name, ident in session.execute(query))

    results: list[ApplyResult] = []
    box_rows = []
    for push in pushes:
        result = ApplyResult()
        for mp in push.mailboxes:
            owner = mp.summary
            checksum = 0
            for r in mp.upserts:
                checksum ^= record_hash(r.uid, r.guid, r.flags, r.when(), r.modseq)
            exists = len({r.uid for r in mp.upserts})
            equal = checksum == owner.checksum and exists == owner.exists
            last_uid = max(0, owner.last_uid)
            summary = MailboxSummary(
                uniqueid=owner.uniqueid,
                name=normalize_mailbox_name(owner.name),
                uidvalidity=owner.uidvalidity,
                last_uid=last_uid,
                highestmodseq=owner.highestmodseq,
                acl=owner.acl,
                checksum=checksum,
                exists=exists,
                sync_base=owner.highestmodseq if equal else 0,
            )
            if not equal:
                result.mismatched.append(owner.uniqueid)
            result.summaries.append(summary)
            box_rows.append(
                {
                    "account_id": ids[push.account],
                    "uniqueid": summary.uniqueid,
                    "name": summary.name,
                    "uidvalidity": summary.uidvalidity,
                    "last_uid": last_uid,
                    "highestmodseq": summary.highestmodseq,
                    "acl": summary.acl,
                    "checksum": checksum,
                    "exists": exists,
                    "sync_base": summary.sync_base,
                    "recentuid": last_uid,
                    "created_at": now,
                }
            )
        results.append(result)
    if box_rows:
        session.execute(insert(Mailbox), box_rows)
    box_ids: dict[str, int] = {}
    for chunk in _chunks(uniqueids):
        query = select(Mailbox.uniqueid, Mailbox.id).where(Mailbox.uniqueid.in_(chunk))
        box_ids.update((u, int(i)) for u, i in session.execute(query))

    message_rows: list[dict[str, object]] = []
    history: dict[tuple[int, str], None] = {}
    subscriptions: list[dict[str, object]] = []
    changes: list[tuple[str, str, str]] = []
    for push in pushes:
        account_id = ids[push.account]
        changes.append((push.account, "", "account"))
        for mp in push.mailboxes:
            box_id = box_ids[mp.summary.uniqueid]
            changes.append((push.account, mp.summary.uniqueid, "mailbox"))
            for r in mp.upserts:
                message_rows.append(
                    {
                        "mailbox_id": box_id,
                        "uid": r.uid,
                        "guid": r.guid,
                        "size": r.size,
                        "internaldate": r.when(),
                        "flags": r.flags,
                        "modseq": r.modseq,
                        "expunged": False,
                    }
                )
                history[(account_id, r.guid)] = None
            if mp.upserts:
                changes.append((push.account, mp.summary.uniqueid, "append"))
        if push.subscriptions is not None:
            subscriptions.extend(
                {"account_id": account_id, "name": name} for name in set(push.subscriptions)
            )
            changes.append((push.account, "", "sub"))
    if message_rows:
        execute_rows(session, _INSERT_MESSAGE, message_rows)
    insert_ignore(
        session,
        GuidHistory.__table__,
        [{"account_id": a, "guid": g} for a, g in history],
        ["account_id", "guid"],
    )
    if subscriptions:
        session.execute(insert(Subscription), subscriptions)
    synclog.record_many(session, changes)
    return results


def _chunks(values: list[str]) -> list[list[str]]:
    return [values[i : i + _CHUNK] for i in range(0, len(values), _CHUNK)]
