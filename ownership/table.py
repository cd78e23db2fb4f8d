"""Reading and changing the ownership table.

How this works: every account has one row (created with the account, owner =
the node that created it unless told otherwise, epoch 1). :func:`check_owner`
is the fence every local write path calls (LMTP RCPT, IMAP/POP3 login): it
raises :class:`NotOwner` naming the owner when this node is not it, or while
the account is ``moving`` (a switchover is draining it). :func:`adopt` is how
a row from the partner is taken: only a higher epoch replaces what we know,
so an epoch never goes down.

Every change to a row is told to the store's listeners after its commit
(:data:`CHANGED`, through :func:`engine.synclog.note`): LMTP forgets the
recipients it recently accepted, so a node that just lost an account
refuses its next RCPT rather than its next DATA.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import bindparam, exists, func, insert, select
from sqlalchemy.orm import Session

from engine import fastsql, synclog
from engine.db import utcnow
from engine.models import Account, SyncLogRow
from ownership.errors import NotOwner
from ownership.models import STATES, Ownership, Rename
from ownership.rows import OwnershipView, row_view

# The kind of the change note a row's change leaves (its mailbox is "").
CHANGED = "ownership"


def _changed(session: Session, account: str) -> None:
    synclog.note(session, account, "", CHANGED)


__all__ = [
    "CHANGED",
    "adopt",
    "adopt_view",
    "adopt_views",
    "check_owner",
    "count_by_owner",
    "count_rows",
    "create",
    "create_many",
    "delete",
    "fence_many",
    "get",
    "list_rows",
    "mark_moving",
    "prune_deleted",
    "release_interrupted",
    "rename",
    "rename_done",
    "renamed_away",
    "renamed_onto",
    "renames_to",
    "rows_of",
    "set_home",
    "set_owner",
    "take_over",
    "unavailable",
    "unmark_moving",
    "view",
    "views",
    "views_of",
]


def get(session: Session, account: str) -> Ownership | None:
    return session.get(Ownership, account)


def view(session: Session, account: str) -> OwnershipView | None:
    """The row as a value (what the control API, the pair operations and each
    rolling sync on both nodes read): one statement built once, on the
    cursor, with no ORM object made."""
    found = fastsql.rows(session, _VIEW, {"account": account})
    return OwnershipView(*found[0]) if found else None


_VIEW = select(
    Ownership.account, Ownership.owner, Ownership.home, Ownership.epoch, Ownership.state
).where(Ownership.account == bindparam("account"))


def views(session: Session, owner: str | None = None) -> list[OwnershipView]:
    """:func:`list_rows` as values, read without ORM objects (the exchange at
    start reads every row of the pair)."""
    query = select(
        Ownership.account, Ownership.owner, Ownership.home, Ownership.epoch, Ownership.state
    ).order_by(Ownership.account)
    if owner is not None:
        query = query.where(Ownership.owner == owner)
    return [OwnershipView(*row) for row in session.execute(query)]


def fence_many(session: Session, accounts: Iterable[str], node: str) -> dict[str, NotOwner]:
    """:func:`check_owner` for many accounts in one query (a group commit's
    deliveries): the refusals, by account; an account not named may be written."""
    names = sorted(set(accounts))
    refused: dict[str, NotOwner] = {}
    for i in range(0, len(names), 500):
        rows = fastsql.select_in(session, _fence_rows, names[i : i + 500])
        for account, owner, state, epoch in rows:
            refusal = _refusal(account, owner, state, epoch, node)
            if refusal is not None:
                refused[account] = refusal
    return refused


def _fence_rows(names: list[Any]) -> Any:
    return select(Ownership.account, Ownership.owner, Ownership.state, Ownership.epoch).where(
        Ownership.account.in_(names)
    )


def _refusal(account: str, owner: str, state: str, epoch: int, node: str) -> NotOwner | None:
    """The fence's rule: only the owner writes, and not while a switchover drains it."""
    if owner != node:
        return NotOwner(account, owner, epoch)
    if state == "moving":
        return NotOwner(account, owner, epoch, moving=True)
    return None


def list_rows(session: Session, owner: str | None = None) -> list[Ownership]:
    query = select(Ownership).order_by(Ownership.account)
    if owner is not None:
        query = query.where(Ownership.owner == owner)
    return list(session.scalars(query))


def count_rows(session: Session) -> int:
    """How many ownership rows this node holds."""
    return int(session.scalar(select(func.count()).select_from(Ownership)) or 0)


def count_by_owner(session: Session) -> dict[str, int]:
    """Accounts per owner; a row whose account is not here (deleted, its
    deletion not yet replicated) is not an account anyone serves."""
    rows = session.execute(
        select(Ownership.owner, func.count())
        .join(Account, Account.name == Ownership.account)
        .group_by(Ownership.owner)
    )
    return {owner: int(n) for owner, n in rows}


def create(session: Session, account: str, owner: str, home: str | None = None) -> Ownership:
    row = Ownership(
        account=account, owner=owner, home=home or owner, epoch=1, state="normal", reason="created"
    )
    session.add(row)
    _changed(session, account)
    return row


def create_many(session: Session, accounts: Sequence[str], owner: str) -> None:
    """:func:`create` for many new accounts in one statement (bulk provisioning)."""
    if not accounts:
        return
    now = utcnow()
    session.execute(
        insert(Ownership),
        [
            {
                "account": a,
                "owner": owner,
                "home": owner,
                "epoch": 1,
                "state": "normal",
                "reason": "created",
                "updated_at": now,
            }
            for a in accounts
        ],
    )
    for account in accounts:
        _changed(session, account)


def unavailable(session: Session, accounts: Sequence[str], me: str) -> dict[str, str]:
    """Names among ``accounts`` that a new account cannot take now, and why:
    a rename away from it or its deletion has not reached the partner yet,
    or it has a row (the partner's account). Rows of deleted accounts the
    partner has taken are pruned first."""
    names = list(accounts)
    out: dict[str, str] = {}
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        prune_deleted(session, chunk)
        for old in session.scalars(select(Rename.old).where(Rename.old.in_(chunk))):
            out[old] = f"{old} was renamed and the partner has not taken that rename yet"
        for row in session.scalars(select(Ownership).where(Ownership.account.in_(chunk))):
            if row.account in out:
                continue
            out[row.account] = (
                f"{row.account} is owned by {row.owner}"
                if row.owner != me
                else f"{row.account} was deleted and the partner has not taken the deletion yet"
            )
    return out


def delete(session: Session, account: str) -> None:
    row = session.get(Ownership, account)
    if row is not None:
        session.delete(row)
        _changed(session, account)


def prune_deleted(session: Session, accounts: Iterable[str] | None = None) -> list[str]:
    """Drop the rows of deleted accounts whose deletion the partner has.

    Deleting an account keeps its row: the owner's sync must still show its
    epoch to push the deletion (a replica's fence refuses a sender without
    one). Once no sync-log row is left for the account, the partner has
    acknowledged it, and the row is garbage. (A replica holding a row for an
    account that has not arrived yet loses nothing: the owner's next sync
    brings the row again.)
    """
    query = (
        select(Ownership)
        .outerjoin(Account, Account.name == Ownership.account)
        .where(Account.id.is_(None))
        .where(~exists().where(SyncLogRow.account == Ownership.account))
    )
    if accounts is not None:
        query = query.where(Ownership.account.in_(list(accounts)))
    pruned = []
    for row in session.scalars(query):
        pruned.append(row.account)
        session.delete(row)
        _changed(session, row.account)
    return pruned


def check_owner(session: Session, account: str, node: str) -> OwnershipView:
    """The fence: raise :class:`NotOwner` unless ``node`` may write ``account``
    now (inside every owned write: the row is read on the cursor, see :func:`view`)."""
    row = view(session, account)
    if row is None:
        # An account with no ownership row is one this node created before
        # ownership existed, or one being created: it is local.
        return OwnershipView(account, node, node, 0, "normal")
    refusal = _refusal(account, row.owner, row.state, row.epoch, node)
    if refusal is not None:
        raise refusal
    return row


def set_owner(
    session: Session,
    account: str,
    owner: str,
    *,
    state: str,
    reason: str,
    epoch: int | None = None,
    home: str | None = None,
) -> Ownership:
    """Move ownership, epoch + 1 unless one is given (it must be higher)."""
    if state not in STATES:
        raise ValueError(f"unknown ownership state {state!r}")
    row = session.get(Ownership, account)
    if row is None:
        row = create(session, account, owner, home)
        session.flush()
    new_epoch = row.epoch + 1 if epoch is None else epoch
    if new_epoch < row.epoch:
        raise ValueError(f"epoch {new_epoch} is lower than the known {row.epoch}")
    row.owner = owner
    row.epoch = new_epoch
    row.state = state
    row.reason = reason
    row.updated_at = utcnow()
    if home is not None:
        row.home = home
    _changed(session, account)
    return row


def adopt(
    session: Session,
    account: str,
    *,
    owner: str,
    home: str,
    epoch: int,
    state: str,
    reason: str,
) -> bool:
    """Take the partner's row if its epoch is higher; True when it changed ours."""
    row = session.get(Ownership, account)
    return _adopt(session, row, account, owner, home, epoch, state, reason) is not None


def _adopt(
    session: Session,
    row: Ownership | None,
    account: str,
    owner: str,
    home: str,
    epoch: int,
    state: str,
    reason: str,
) -> Ownership | None:
    """:func:`adopt` given our row (None: we have none); the row when it changed."""
    if row is None:
        row = Ownership(
            account=account, owner=owner, home=home, epoch=epoch, state=state, reason=reason
        )
        session.add(row)
    elif epoch > row.epoch:
        row.owner, row.home, row.epoch, row.state, row.reason = owner, home, epoch, state, reason
        row.updated_at = utcnow()
    else:
        return None
    _changed(session, account)
    return row


def adopt_view(session: Session, row: OwnershipView, reason: str) -> bool:
    """:func:`adopt` a row read from the wire (:func:`ownership.rows.parse_row`).

    The row of a name renamed here and not yet renamed on the partner is not
    taken: the partner's stale row would bring the old name back.
    """
    if renamed_away(session, row.account) is not None:
        return False
    return adopt(
        session,
        row.account,
        owner=row.owner,
        home=row.home,
        epoch=row.epoch,
        state=row.state,
        reason=reason,
    )


def adopt_views(session: Session, rows: Sequence[OwnershipView], reason: str) -> list[bool]:
    """:func:`adopt_view` of each row (True where it changed ours), reading
    the rows and renames they name in a query per 500 (an exchange of every
    row of a pair)."""
    names = sorted({r.account for r in rows})
    mine: dict[str, Ownership] = {}
    away: set[str] = set()
    for i in range(0, len(names), 500):
        chunk = names[i : i + 500]
        mine.update(
            (r.account, r)
            for r in session.scalars(select(Ownership).where(Ownership.account.in_(chunk)))
        )
        away.update(session.scalars(select(Rename.old).where(Rename.old.in_(chunk))))
    out = []
    for row in rows:
        if row.account in away:
            out.append(False)
            continue
        now = _adopt(
            session,
            mine.get(row.account),
            row.account,
            row.owner,
            row.home,
            row.epoch,
            row.state,
            reason,
        )
        if now is not None:
            mine[row.account] = now
        out.append(now is not None)
    return out


def take_over(session: Session, me: str, partner: str, reason: str) -> list[Ownership]:
    """Failover: every account ``partner`` owns becomes ours, epoch + 1."""
    taken = []
    for row in list_rows(session, owner=partner):
        taken.append(set_owner(session, row.account, me, state="failed_over", reason=reason))
    return taken


def mark_moving(session: Session, accounts: list[str], me: str) -> dict[str, str]:
    """Switchover, step 1: stop local writes for the accounts we own.

    Returns each marked account's state before, for :func:`unmark_moving`:
    an aborted switchover of a ``failed_over`` account leaves it
    ``failed_over``, so ``status`` still shows that it is away from home
    after a failover.
    """
    previous = {}
    for account in accounts:
        row = get(session, account)
        if row is not None and row.owner == me and row.state != "moving":
            previous[account] = row.state
            row.state = "moving"
            row.reason = "switchover: draining"
            _changed(session, account)
    return previous


def unmark_moving(session: Session, previous: dict[str, str]) -> None:
    for account, state in previous.items():
        row = get(session, account)
        if row is not None and row.state == "moving":
            row.state = state
            row.reason = "switchover aborted"
            _changed(session, account)


def release_interrupted(session: Session, me: str) -> list[str]:
    """Accounts left ``moving`` by a switchover this node never finished.

    A crash between :func:`mark_moving` and the flip leaves the rows
    ``moving``, and the fence would refuse their writes for ever. The flip
    never committed, so this node still owns them at the same epoch: they
    are ``normal`` again (their state before is not kept across a crash).
    """
    released = []
    for row in list_rows(session, owner=me):
        if row.state == "moving":
            row.state = "normal"
            row.reason = "switchover interrupted by a restart"
            row.updated_at = utcnow()
            released.append(row.account)
            _changed(session, row.account)
    return released


def set_home(session: Session, account: str, home: str) -> Ownership:
    row = get(session, account)
    if row is None:
        raise ValueError(f"no ownership row for {account}")
    row.home = home
    row.epoch += 1  # the row changed: the partner must take it
    row.reason = f"home moved to {home}"
    row.updated_at = utcnow()
    _changed(session, account)
    return row


def rename(
    session: Session,
    old: str,
    new: str,
    me: str,
    *,
    remember: bool,
    like: OwnershipView | None = None,
) -> OwnershipView:
    """Move ``old``'s row to ``new`` (same owner, home, epoch and state); the new row.

    ``like`` (the partner's row, on a replica) replaces what the row says
    when its epoch is not lower. With ``remember`` (the owner, with a
    partner) the rename is kept in ``account_renames`` until the partner
    acknowledges it (:func:`rename_done`); a rename of a name that itself
    came from a pending rename (A -> B, then B -> C) makes that one A -> C too,
    so a partner that still has A ends with C.
    """
    row = session.get(Ownership, old)
    current = row_view(row) if row is not None else OwnershipView(old, me, me, 1, "normal")
    if like is not None and like.epoch >= current.epoch:
        current = like
    if row is not None:
        session.delete(row)
        _changed(session, old)
    session.flush()
    target = session.get(Ownership, new)
    if target is None:
        target = Ownership(account=new)
        session.add(target)
    elif target.epoch > current.epoch:
        raise ValueError(f"{new} is known at a higher epoch ({target.epoch}) than {old}")
    target.owner, target.home = current.owner, current.home
    target.epoch, target.state = current.epoch, current.state
    target.reason = f"renamed from {old}"
    target.updated_at = utcnow()
    _changed(session, new)
    if remember:
        for earlier in session.scalars(select(Rename).where(Rename.new == old)):
            earlier.new = new
        session.merge(Rename(old=old, new=new, epoch=current.epoch, renamed_at=utcnow()))
        session.flush()
        for same in session.scalars(select(Rename).where(Rename.old == Rename.new)):
            session.delete(same)
    return OwnershipView(new, current.owner, current.home, current.epoch, current.state)


def renamed_away(session: Session, account: str) -> str | None:
    """The name ``account`` was renamed to, while the partner has not taken it."""
    found = session.get(Rename, account)
    return found.new if found is not None else None


def rows_of(session: Session, accounts: Iterable[str]) -> dict[str, Ownership]:
    """The rows of these accounts (those that have one), in a query per 500.
    While the caller holds the answer, :func:`get` of those accounts in this
    session costs no query (the session's identity map keeps them)."""
    names = sorted(set(accounts))
    out: dict[str, Ownership] = {}
    for i in range(0, len(names), 500):
        query = select(Ownership).where(Ownership.account.in_(names[i : i + 500]))
        out.update((r.account, r) for r in session.scalars(query))
    return out


def views_of(session: Session, accounts: Iterable[str]) -> dict[str, OwnershipView]:
    """:func:`rows_of` as values."""
    return {name: row_view(row) for name, row in rows_of(session, accounts).items()}


def renamed_onto(session: Session, accounts: Sequence[str]) -> set[str]:
    """Which of these accounts have a rename onto them the partner has not taken."""
    names = sorted(set(accounts))
    out: set[str] = set()
    for i in range(0, len(names), 500):
        out.update(session.scalars(select(Rename.new).where(Rename.new.in_(names[i : i + 500]))))
    return out


def renames_to(session: Session, account: str) -> list[tuple[str, str]]:
    """The (old, new) renames the partner still needs before it syncs ``account``
    (asked before each rolling sync: one statement built once, on the cursor)."""
    return [(old, new) for old, new in fastsql.rows(session, _RENAMES_TO, {"account": account})]


_RENAMES_TO = (
    select(Rename.old, Rename.new)
    .where(Rename.new == bindparam("account"))
    .order_by(Rename.renamed_at)
)


def rename_done(session: Session, old: str, new: str) -> None:
    """The partner acknowledged the rename ``old`` -> ``new``."""
    found = session.get(Rename, old)
    if found is not None and found.new == new:
        session.delete(found)
