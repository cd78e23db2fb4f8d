"""Import cursors as replication carries them: one account's whole set.

How this works: ``peerctl import-imap`` keeps, per local mailbox, how far it
copied the old server's mailbox (:class:`~engine.models.ImportCursor`: the
old UIDVALIDITY and the highest old UID done; :mod:`engine.mailimport`
moves it). So that a rerun on the partner resumes there after a switchover
or a failover, the set travels with the account like its METADATA entries:
a part of the account state and of a push (:mod:`engine.syncwire`), with an
``import`` sync-log row when a batch moves a cursor.

A cursor only ever moves up while its old UIDVALIDITY stays (a message
copied stays copied, even if the user deletes it later), so two copies of
a set are merged, never one thrown away: :func:`merge` takes, per mailbox,
the higher ``last_uid`` when both name the same UIDVALIDITY and the owner's
cursor when they differ (the owner's import is the one that goes on). The
owner adopts the merge before it pushes (a repair, as for mail only the
replica holds), so a cursor the old owner moved just before it failed is
not lost at failback, and the messages the no-loss repair copies back are
not imported a second time.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from engine import fastsql
from engine.models import Account, ImportCursor

__all__ = ["CursorRow", "merge", "replace", "rows"]

CursorRow = tuple[str, int, int]
"""(mailbox uniqueid, old UIDVALIDITY, last old UID): the replicated form."""


def rows(session: Session, account_id: int) -> tuple[CursorRow, ...]:
    """The account's cursors in the replicated form, sorted by mailbox."""
    found = fastsql.rows(session, _ROWS, {"account_id": account_id})
    return tuple((m, int(v), int(u)) for m, v, u in found)


# Read for every account state (engine.syncstate): on the DB-API cursor.
_ROWS = (
    select(ImportCursor.mailbox, ImportCursor.uidvalidity, ImportCursor.last_uid)
    .where(ImportCursor.account_id == bindparam("account_id"))
    .order_by(ImportCursor.mailbox)
)


def merge(owner: Iterable[CursorRow], replica: Iterable[CursorRow]) -> tuple[CursorRow, ...]:
    """Both sides' cursors as one set (module docstring), sorted."""
    out = {m: (v, u) for m, v, u in replica}
    for mailbox, validity, last in owner:
        theirs = out.get(mailbox)
        if theirs is not None and theirs[0] == validity:
            last = max(last, theirs[1])
        out[mailbox] = (validity, last)
    return tuple((m, v, u) for m, (v, u) in sorted(out.items()))


def replace(session: Session, account: Account, wanted: Iterable[CursorRow]) -> None:
    """Make the account's cursors exactly ``wanted``."""
    want = {m: (v, u) for m, v, u in wanted}
    for row in session.scalars(select(ImportCursor).where(ImportCursor.account_id == account.id)):
        value = want.pop(row.mailbox, None)
        if value is None:
            session.delete(row)
        elif (row.uidvalidity, row.last_uid) != value:
            row.uidvalidity, row.last_uid = value
    for mailbox, (validity, last) in want.items():
        session.add(
            ImportCursor(
                account_id=account.id, mailbox=mailbox, uidvalidity=validity, last_uid=last
            )
        )
