"""The rolling fast path: push what changed since the last sync, in one request.

How this works: after a sync that left the replica equal to the owner, the
owner remembers the account state it pushed (the *mark*: summaries,
subscriptions, quota, password hash; no records). The next rolling sync of
the account starts from the mark instead of asking the replica (USER_SOME):

- :func:`owner_delta` reads the owner's state; if only records changed in
  mailboxes the mark knows (new mail, flags, expunges: what deliveries and
  IMAP sessions do all day), it plans the push with :func:`~engine.compare.compare`
  against the mark, as if the replica had answered "my state is the mark and
  nothing changed since": the records changed after each mailbox's marked
  highestmodseq are exactly the delta. Anything else (a mailbox created,
  renamed or deleted, an account field, a changed epoch) returns None and the
  caller takes the full path.
- It also names the GUIDs to send with the push: those of new records that
  no record the replica already held carries (a delivery, not a COPY or MOVE;
  moved mail is never uploaded again).
- On the replica, :func:`matches` checks that its state still is the mark
  (the whole account: every mailbox summary, subscriptions, quota, password).
  If anything differs (a change behind the owner's back, a lost reply), the
  replica refuses and the owner runs the full compare, which repairs it.

So a delivery reaches the partner in one round trip and one group commit
there, and the correctness of the full path is kept: the fast path only ever
applies a push the full compare would have produced from the same states.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

from engine import fastsql
from engine.compare import Push, compare
from engine.models import Account, Mailbox, Message
from engine.syncstate import (
    RECORD_COLUMNS,
    AccountState,
    MailboxState,
    RecordState,
    read_account_state,
    record_of,
)

__all__ = ["Delta", "mark_of", "matches", "owner_delta"]


@dataclass(frozen=True, slots=True)
class Delta:
    """A planned fast push: the owner's state it brings the replica to, the
    push, and the GUIDs whose bytes go with it."""

    state: AccountState
    push: Push
    upload: tuple[str, ...]


def mark_of(state: AccountState) -> AccountState:
    """The part of an owner's state the fast path compares with (no records)."""
    return replace(state, mailboxes=tuple(MailboxState(m.summary) for m in state.mailboxes))


def _same_shape(a: AccountState, b: AccountState) -> bool:
    """Equal but for the records' content: same account fields, same mailboxes
    (by uniqueid, with the same name, UIDVALIDITY and ACL)."""
    if (
        a.exists,
        a.password_hash,
        a.quota_limit,
        a.message_limit,
        a.subscriptions,
        a.sieve,
        a.vacations,
        a.annotations,
    ) != (
        b.exists,
        b.password_hash,
        b.quota_limit,
        b.message_limit,
        b.subscriptions,
        b.sieve,
        b.vacations,
        b.annotations,
    ):
        return False
    return _shape(a) == _shape(b)


def _shape(state: AccountState) -> set[tuple[str, str, int, str]]:
    return {
        (m.summary.uniqueid, m.summary.name, m.summary.uidvalidity, m.summary.acl)
        for m in state.mailboxes
    }


def matches(current: AccountState, mark: AccountState) -> bool:
    """On the replica: is its account still exactly the mark the owner holds?"""
    # import-imap's cursors are not part of the shape: a batch moves them
    # with its mail, and the fast push carries the owner's set.
    if not _same_shape(current, mark) or current.import_cursors != mark.import_cursors:
        return False
    mine = current.by_uniqueid()
    return all(m.summary.same_content(mine[m.summary.uniqueid].summary) for m in mark.mailboxes)


def owner_delta(session: Session, account: str, mark: AccountState) -> Delta | None:
    """Plan the fast push of ``account`` from ``mark``; None: take the full path."""
    state = read_account_state(session, account)
    if not state.exists or not _same_shape(state, mark) or state.tombstones != mark.tombstones:
        return None
    marked = mark.by_uniqueid()
    owner_records: dict[str, tuple[RecordState, ...]] = {}
    replica_view: list[MailboxState] = []
    for m in state.mailboxes:
        base = marked[m.summary.uniqueid].summary
        if m.summary.same_content(base):
            replica_view.append(MailboxState(base))
            continue
        found = fastsql.rows(session, _MAILBOX_ID, {"uniqueid": m.summary.uniqueid})
        if not found:
            return None
        # On the DB-API cursor (engine.fastsql): the plan runs for every
        # rolling DELTA, and the ORM's execution was most of its CPU.
        owner_records[m.summary.uniqueid] = tuple(
            record_of(row)
            for row in fastsql.rows(
                session, _RECORDS_SINCE, {"mailbox_id": found[0][0], "since": base.highestmodseq}
            )
        )
        # The replica as the mark says it is: its base is the marked
        # highestmodseq and it changed nothing since (it checks that).
        replica_view.append(MailboxState(replace(base, sync_base=base.highestmodseq), "delta"))
    replica = replace(mark, mailboxes=tuple(replica_view))
    repairs, push = compare(state, owner_records, replica, frozenset())
    if not repairs.empty:  # pragma: no cover - no replica records, nothing to repair
        return None
    return Delta(mark_of(state), push, _new_guids(session, account, push, marked))


def _new_guids(
    session: Session, account: str, push: Push, marked: dict[str, MailboxState]
) -> tuple[str, ...]:
    """GUIDs of the push's new records that no record the replica held has."""
    candidates: set[str] = set()
    for mp in push.mailboxes:
        base = marked[mp.summary.uniqueid].summary
        candidates.update(r.guid for r in mp.upserts if r.uid > base.last_uid)
    if not candidates:
        return ()
    held: set[str] = set()
    wanted = sorted(candidates)
    for i in range(0, len(wanted), 400):
        rows = fastsql.select_in(session, _held_query, wanted[i : i + 400], [account])
        for guid, uniqueid, modseq in rows:
            then = marked.get(uniqueid)
            # A live record at or below the marked modseq was on the replica then.
            if then is not None and modseq <= then.summary.highestmodseq:
                held.add(guid)
    return tuple(sorted(candidates - held))


_MAILBOX_ID = select(Mailbox.id).where(Mailbox.uniqueid == bindparam("uniqueid"))
# engine.syncstate.records_of(since=...) without uids: records and tombstones
# changed after the marked highestmodseq, in uid order.
_RECORDS_SINCE = (
    select(*RECORD_COLUMNS)
    .where(Message.mailbox_id == bindparam("mailbox_id"), Message.modseq > bindparam("since"))
    .order_by(Message.uid)
)


def _held_query(guids: list[Any], accounts: list[Any]) -> Executable:
    """The account's live records among ``guids`` (engine.fastsql.select_in)."""
    return (
        select(Message.guid, Mailbox.uniqueid, Message.modseq)
        .join(Mailbox, Mailbox.id == Message.mailbox_id)
        .join(Account, Account.id == Mailbox.account_id)
        .where(
            Account.name.in_(accounts),
            Message.guid.in_(guids),
            # A tombstone's bytes may have left the replica's spool (engine.sweep).
            Message.expunged.is_(False),
        )
    )
