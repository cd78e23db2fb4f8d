"""METADATA entries (RFC 5464): an account's per-mailbox and server annotations.

How this works: an entry is a row of ``annotations`` keyed by the account,
the mailbox's uniqueid (``""`` for the server's entries, RFC 5464 3.1) and
the entry name in lower case (entry names are case-insensitive, RFC 5464
3.2). The mailbox is named by uniqueid so a RENAME keeps its entries; a
DELETE drops them (:func:`engine.mailbox.delete_mailbox`). A write checks the limits the
sync channel enforces (:mod:`engine.limits`: value size, entry count), logs
an ``annotation`` change for replication, and replication carries the
account's whole set (:func:`rows`, :func:`replace`), as Cyrus's sync
protocol carries ANNOTATION records with each mailbox and user.

Reads take the account's name, writes its row (inside
``Node.write_owned``), like :mod:`engine.mailview`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from engine import accounts, fastsql, synclog
from engine.errors import TooManyAnnotations
from engine.limits import MAX_ANNOTATIONS, check_annotation
from engine.mailbox import get_mailbox
from engine.models import Account, Annotation

__all__ = [
    "AnnotationRow",
    "entries",
    "replace",
    "rows",
    "set_entries",
]

AnnotationRow = tuple[str, str, bytes]
"""(mailbox uniqueid or ``""``, entry name, value): the replicated form."""


def _key(session: Session, account: Account, name: str) -> str:
    """The uniqueid of mailbox ``name``; ``""`` names the server (RFC 5464 3.1)."""
    return "" if name == "" else get_mailbox(session, account, name).uniqueid


def entries(session: Session, account: str, name: str) -> dict[str, bytes]:
    """Every entry of mailbox ``name`` (``""``: the server's), by entry name."""
    row = accounts.get_account(session, account)
    key = _key(session, row, name)
    query = select(Annotation.entry, Annotation.value).where(
        Annotation.account_id == row.id, Annotation.mailbox == key
    )
    return {entry: bytes(value) for entry, value in session.execute(query)}


def set_entries(
    session: Session, account: Account, name: str, changes: Sequence[tuple[str, bytes | None]]
) -> None:
    """Set (or, for None, remove) entries of mailbox ``name``: all or none."""
    key = _key(session, account, name)
    for entry, value in changes:
        check_annotation(entry, value or b"")
    for entry, value in changes:
        row = session.get(Annotation, (account.id, key, entry.lower()))
        if value is None:
            if row is not None:
                session.delete(row)
        elif row is None:
            session.add(
                Annotation(account_id=account.id, mailbox=key, entry=entry.lower(), value=value)
            )
        else:
            row.value = value
    session.flush()
    count = session.scalar(
        select(func.count()).select_from(Annotation).where(Annotation.account_id == account.id)
    )
    if int(count or 0) > MAX_ANNOTATIONS:
        # The caller's transaction rolls back with the error: nothing was set.
        raise TooManyAnnotations(f"an account holds at most {MAX_ANNOTATIONS} METADATA entries")
    synclog.record(session, account.name, "", "annotation")


def rows(session: Session, account_id: int) -> tuple[AnnotationRow, ...]:
    """The account's entries in the replicated form, sorted."""
    found = fastsql.rows(session, _ROWS, {"account_id": account_id})
    return tuple((m, e, bytes(v)) for m, e, v in found)


# Read for every account state (engine.syncstate): on the DB-API cursor.
_ROWS = (
    select(Annotation.mailbox, Annotation.entry, Annotation.value)
    .where(Annotation.account_id == bindparam("account_id"))
    .order_by(Annotation.mailbox, Annotation.entry)
)


def replace(session: Session, account: Account, wanted: Iterable[AnnotationRow]) -> None:
    """Make the account's entries exactly ``wanted`` (the owner's, on the replica)."""
    want = {(m, e): v for m, e, v in wanted}
    for row in session.scalars(select(Annotation).where(Annotation.account_id == account.id)):
        value = want.pop((row.mailbox, row.entry), None)
        if value is None:
            session.delete(row)
        elif bytes(row.value) != value:
            row.value = value
    for (mailbox, entry), value in want.items():
        session.add(Annotation(account_id=account.id, mailbox=mailbox, entry=entry, value=value))
    session.flush()
