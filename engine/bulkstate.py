"""Many accounts' replication state in a few statements (``replicate --all``).

How this works: :func:`read_states` gives, for a batch of accounts, exactly
what :func:`engine.syncstate.read_account_state` gives for each one (the same
values, in the same order), and :func:`owner_views` exactly what
:func:`engine.syncstate.owner_view` gives, but each table is read once for the
whole batch (``WHERE account_id IN (...)``, at most :data:`CHUNK` values a
statement) instead of once per account and once per mailbox. The live records
of every mailbox sent in full come from one query per chunk of mailboxes; the
rarer delta reads (a replica that holds a ``sync_base``) stay one query per
mailbox, as in the one-account path.

A batch of a thousand accounts of five mailboxes is then about ten statements
where the one-account path ran some fifteen thousand: on an empty partner the
first ``replicate --all`` was bound by those statements, not by the disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import sieve as sieve_store
from engine.models import (
    Account,
    Annotation,
    Mailbox,
    MailboxTombstone,
    Message,
    SieveScript,
    Subscription,
    VacationSent,
)
from engine.syncstate import (
    MAILBOX_STATE,
    RECORD_COLUMNS,
    AccountState,
    MailboxState,
    MailboxSummary,
    RecordState,
    known_guids,
    record_of,
    records_of,
)

__all__ = ["CHUNK", "OwnerView", "owner_views", "read_states"]

T = TypeVar("T")

CHUNK = 500  # values in one IN list (SQLite allows 32,766; PostgreSQL plans these well)

_MAILBOX_COLUMNS = (Mailbox.id, Mailbox.account_id, *MAILBOX_STATE)


@dataclass(frozen=True, slots=True)
class OwnerView:
    """One account's side of a compare, as :func:`engine.syncstate.owner_view` returns it."""

    state: AccountState
    records: dict[str, tuple[RecordState, ...]]
    known: frozenset[str]


def _chunks(values: Sequence[T]) -> Iterable[list[T]]:
    for start in range(0, len(values), CHUNK):
        yield list(values[start : start + CHUNK])


@dataclass(slots=True)
class _Read:
    states: dict[str, AccountState]
    box_ids: dict[str, int]  # mailbox uniqueid -> row id


def _read(
    session: Session,
    names: Sequence[str],
    records_for: Mapping[str, Mapping[str, MailboxSummary]] | None,
) -> _Read:
    accounts: dict[int, tuple[str, str, int | None, int | None]] = {}
    query = select(
        Account.id, Account.name, Account.password_hash, Account.quota_limit, Account.message_limit
    )
    for wanted in _chunks(sorted(set(names))):
        for ident, name, password_hash, quota, messages in session.execute(
            query.where(Account.name.in_(wanted))
        ):
            accounts[ident] = (name, password_hash, quota, messages)
    ids = sorted(accounts)
    boxes: dict[int, list[tuple[int, MailboxSummary]]] = {i: [] for i in ids}
    subs: dict[int, list[str]] = {i: [] for i in ids}
    tombs: dict[int, set[str]] = {i: set() for i in ids}
    scripts: dict[int, list[tuple[str, str, bool]]] = {i: [] for i in ids}
    vacations: dict[int, list[tuple[str, str]]] = {i: [] for i in ids}
    notes: dict[int, list[tuple[str, str, bytes]]] = {i: [] for i in ids}
    for chunk in _chunks(ids):
        # ORDER BY the name in SQL, as the one-account read does (the
        # database's collation, not Python's, decides the order).
        for row in session.execute(
            select(*_MAILBOX_COLUMNS)
            .where(Mailbox.account_id.in_(chunk))
            .order_by(Mailbox.account_id, Mailbox.name)
        ):
            summary = MailboxSummary(
                uniqueid=row.uniqueid,
                name=row.name,
                uidvalidity=row.uidvalidity,
                last_uid=row.last_uid,
                highestmodseq=row.highestmodseq,
                acl=row.acl,
                checksum=row.checksum,
                exists=row.exists,
                sync_base=row.sync_base,
            )
            boxes[row.account_id].append((row.id, summary))
        for account_id, name in session.execute(
            select(Subscription.account_id, Subscription.name)
            .where(Subscription.account_id.in_(chunk))
            .order_by(Subscription.account_id, Subscription.name)
        ):
            subs[account_id].append(name)
        for account_id, uniqueid in session.execute(
            select(MailboxTombstone.account_id, MailboxTombstone.uniqueid).where(
                MailboxTombstone.account_id.in_(chunk)
            )
        ):
            tombs[account_id].add(uniqueid)
        for account_id, name, content, active in session.execute(
            select(
                SieveScript.account_id, SieveScript.name, SieveScript.content, SieveScript.active
            )
            .where(SieveScript.account_id.in_(chunk))
            .order_by(SieveScript.account_id, SieveScript.name)
        ):
            scripts[account_id].append((name, content, bool(active)))
        for account_id, key, until in session.execute(
            select(VacationSent.account_id, VacationSent.key, VacationSent.until)
            .where(VacationSent.account_id.in_(chunk))
            .order_by(VacationSent.account_id, VacationSent.key)
        ):
            vacations[account_id].append((key, sieve_store.utc(until).isoformat()))
        for account_id, box, entry, value in session.execute(
            select(Annotation.account_id, Annotation.mailbox, Annotation.entry, Annotation.value)
            .where(Annotation.account_id.in_(chunk))
            .order_by(Annotation.account_id, Annotation.mailbox, Annotation.entry)
        ):
            notes[account_id].append((box, entry, bytes(value)))

    # Which mailboxes need records, and how (read_account_state's rule).
    full: list[int] = []
    plans: dict[int, tuple[str, int]] = {}  # mailbox id -> (mode, since)
    box_ids: dict[str, int] = {}
    for account_id, (name, *_rest) in accounts.items():
        theirs_all = records_for.get(name, {}) if records_for is not None else None
        for box_id, summary in boxes[account_id]:
            box_ids[summary.uniqueid] = box_id
            if theirs_all is None:
                continue
            theirs = theirs_all.get(summary.uniqueid)
            if theirs is not None and theirs.same_content(summary):
                continue
            if theirs is not None and 0 < summary.sync_base <= theirs.highestmodseq:
                plans[box_id] = ("delta", summary.sync_base)
            else:
                plans[box_id] = ("full", 0)
                full.append(box_id)
    records = _live_records(session, full)
    for box_id, (mode, since) in plans.items():
        if mode == "delta":
            records[box_id] = records_of(session, box_id, since=since)

    states: dict[str, AccountState] = {}
    for account_id, (name, password_hash, quota, messages) in accounts.items():
        mailboxes = tuple(
            MailboxState(summary, plans[box_id][0], records.get(box_id, ()))
            if box_id in plans
            else MailboxState(summary)
            for box_id, summary in boxes[account_id]
        )
        states[name] = AccountState(
            name=name,
            exists=True,
            password_hash=password_hash,
            quota_limit=quota,
            message_limit=messages,
            subscriptions=tuple(subs[account_id]),
            mailboxes=mailboxes,
            tombstones=frozenset(tombs[account_id]),
            sieve=tuple(scripts[account_id]),
            vacations=tuple(vacations[account_id]),
            annotations=tuple(notes[account_id]),
        )
    for name in names:
        if name not in states:
            states[name] = AccountState(name=name, exists=False)
    return _Read(states, box_ids)


def _live_records(session: Session, box_ids: list[int]) -> dict[int, tuple[RecordState, ...]]:
    """Every live record of these mailboxes, by mailbox, in UID order."""
    out: dict[int, list[RecordState]] = {i: [] for i in box_ids}
    for chunk in _chunks(sorted(box_ids)):
        query = (
            select(Message.mailbox_id, *RECORD_COLUMNS)
            .where(Message.mailbox_id.in_(chunk), Message.expunged.is_(False))
            .order_by(Message.mailbox_id, Message.uid)
        )
        for row in session.execute(query):
            out[row[0]].append(record_of(row[1:]))
    return {i: tuple(r) for i, r in out.items()}


def read_states(
    session: Session,
    names: Sequence[str],
    *,
    records_for: Mapping[str, Mapping[str, MailboxSummary]] | None = None,
) -> dict[str, AccountState]:
    """:func:`engine.syncstate.read_account_state` of each of ``names``;
    ``records_for``: the other side's summaries, by account then uniqueid (an
    account it does not name gets full records for every mailbox)."""
    return _read(session, names, records_for).states


def owner_views(session: Session, replicas: Mapping[str, AccountState]) -> dict[str, OwnerView]:
    """:func:`engine.syncstate.owner_view` (no ``include``) of each account in
    ``replicas`` (account name -> the replica's state of it)."""
    read = _read(session, list(replicas), None)
    full: list[int] = []
    since: dict[str, tuple[int, int, list[int]]] = {}  # uniqueid -> (box id, since, uids)
    for name, replica in replicas.items():
        theirs = replica.by_uniqueid()
        for m in read.states[name].mailboxes:
            uniqueid = m.summary.uniqueid
            r = theirs.get(uniqueid)
            if r is not None and r.mode == "none" and m.summary.same_content(r.summary):
                continue
            box_id = read.box_ids[uniqueid]
            if r is not None and r.mode == "none":
                since[uniqueid] = (box_id, r.summary.highestmodseq, [])
            elif r is not None and r.mode == "delta":
                since[uniqueid] = (box_id, r.summary.sync_base, [x.uid for x in r.records])
            else:
                full.append(box_id)
    live = _live_records(session, full)
    out: dict[str, OwnerView] = {}
    for name, replica in replicas.items():
        own = read.states[name]
        records: dict[str, tuple[RecordState, ...]] = {}
        for m in own.mailboxes:
            uniqueid = m.summary.uniqueid
            box_id = read.box_ids[uniqueid]
            if uniqueid in since:
                _, base, uids = since[uniqueid]
                records[uniqueid] = records_of(session, box_id, since=base, uids=uids)
            elif box_id in live:
                records[uniqueid] = live[box_id]
        candidates = [r.guid for m in replica.mailboxes for r in m.records if not r.expunged]
        known = known_guids(session, name, candidates) if candidates else frozenset()
        out[name] = OwnerView(own, records, known)
    return out
