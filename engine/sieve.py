"""Sieve scripts and vacation reply-once records, per account, in the store.

How this works: ManageSieve (RFC 5804) writes an account's scripts through
the functions here, each in the caller's (fenced) transaction; at most one
script per account is active and delivery runs that one. The engine never
parses a script: the service compiled it before it got here. Vacation
records (RFC 5230 section 4.2) are named by the key the Sieve core gives
(a hash of the handle and the sender) and hold the time before which no
second reply goes out.

Every change logs a ``sieve`` row in the sync log, so the rolling
replicator pushes the account; replication carries the whole set of
scripts (name, content, active mark) and the live vacation records as part
of the account's state (``docs/protocol.md``: the SIEVE part of a push), so
after a failover the survivor runs the same script and does not answer a
sender twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.orm import Session

from engine import fastsql, synclog
from engine.db import utcnow
from engine.errors import NoSuchScript, ScriptActive, ScriptExists, TooManyScripts
from engine.limits import (
    MAX_SCRIPT_CHARS,
    MAX_SCRIPT_NAME,
    MAX_SCRIPTS,
    MAX_VACATIONS,
    check_length,
)
from engine.models import Account, SieveScript, VacationSent

__all__ = [
    "ScriptRow",
    "VacationRow",
    "active_script",
    "delete_script",
    "get_script",
    "list_scripts",
    "put_script",
    "rename_script",
    "replace_scripts",
    "replace_vacations",
    "script_rows",
    "set_active",
    "utc",
    "vacation_due",
    "vacation_rows",
]

# (name, content, active): what replication carries per script.
ScriptRow = tuple[str, str, bool]
# (key, until as ISO 8601 UTC): one reply-once record.
VacationRow = tuple[str, str]


def _log(session: Session, account: Account) -> None:
    synclog.record(session, account.name, "", "sieve")


def _script(session: Session, account: Account, name: str) -> SieveScript:
    row = session.get(SieveScript, (account.id, name))
    if row is None:
        raise NoSuchScript(f"no such script: {name}")
    return row


def list_scripts(session: Session, account: Account) -> list[tuple[str, bool]]:
    """(name, active) for LISTSCRIPTS, by name."""
    query = (
        select(SieveScript.name, SieveScript.active)
        .where(SieveScript.account_id == account.id)
        .order_by(SieveScript.name)
    )
    return [(name, bool(active)) for name, active in session.execute(query)]


def get_script(session: Session, account: Account, name: str) -> str:
    return _script(session, account, name).content


def put_script(
    session: Session, account: Account, name: str, content: str, *, max_scripts: int
) -> None:
    """Store or replace ``name``; a new name beyond ``max_scripts`` is refused
    (and beyond :data:`~engine.limits.MAX_SCRIPTS`, whatever ``max_scripts``)."""
    check_length(name, MAX_SCRIPT_NAME, "a Sieve script's name")
    check_length(content, MAX_SCRIPT_CHARS, "a Sieve script")
    max_scripts = min(max_scripts, MAX_SCRIPTS)
    row = session.get(SieveScript, (account.id, name))
    if row is None:
        count = len(list_scripts(session, account))
        if count >= max_scripts:
            raise TooManyScripts(f"at most {max_scripts} scripts per account")
        session.add(SieveScript(account_id=account.id, name=name, content=content, active=False))
    else:
        row.content = content
        row.modseq += 1
        row.changed_at = utcnow()
    _log(session, account)


def set_active(session: Session, account: Account, name: str) -> None:
    """Make ``name`` the active script; ``""`` leaves none active (RFC 5804 2.8)."""
    if name:
        _script(session, account, name)
    for row in session.scalars(select(SieveScript).where(SieveScript.account_id == account.id)):
        want = bool(name) and row.name == name
        if row.active != want:
            row.active = want
            row.modseq += 1
            row.changed_at = utcnow()
    _log(session, account)


def delete_script(session: Session, account: Account, name: str) -> None:
    row = _script(session, account, name)
    if row.active:
        raise ScriptActive(f"script {name} is active")
    session.delete(row)
    _log(session, account)


def rename_script(session: Session, account: Account, old: str, new: str) -> None:
    """Rename keeping content and the active mark (RFC 5804 2.11.1)."""
    row = _script(session, account, old)
    if old == new:
        return
    check_length(new, MAX_SCRIPT_NAME, "a Sieve script's name")
    if session.get(SieveScript, (account.id, new)) is not None:
        raise ScriptExists(f"script {new} exists")
    session.add(
        SieveScript(
            account_id=account.id,
            name=new,
            content=row.content,
            active=row.active,
            modseq=row.modseq + 1,
        )
    )
    session.delete(row)
    _log(session, account)


def active_script(session: Session, account_name: str) -> tuple[str, str] | None:
    """``(name, content)`` of the account's active script, if it has one."""
    query = (
        select(SieveScript.name, SieveScript.content)
        .join(Account, Account.id == SieveScript.account_id)
        .where(Account.name == account_name, SieveScript.active.is_(True))
    )
    row = session.execute(query).first()
    return None if row is None else (row[0], row[1])


def vacation_due(
    session: Session, account: Account, key: str, days: int, now: dt.datetime | None = None
) -> bool:
    """True (and the record written) if no reply for ``key`` went out in the last ``days``."""
    now = now or utcnow()
    row = session.get(VacationSent, (account.id, key))
    if row is not None and utc(row.until) > now:
        return False
    until = now + dt.timedelta(days=days)
    if row is None:
        held = session.scalar(select(func.count()).where(VacationSent.account_id == account.id))
        if int(held or 0) >= MAX_VACATIONS:
            # At the sync limit: the record that ends first makes room (its
            # sender may get a second reply early; the account keeps syncing).
            oldest = select(VacationSent.key).where(VacationSent.account_id == account.id)
            first = session.scalar(oldest.order_by(VacationSent.until).limit(1))
            session.execute(
                delete(VacationSent).where(
                    VacationSent.account_id == account.id, VacationSent.key == first
                )
            )
        session.add(VacationSent(account_id=account.id, key=key, until=until))
    else:
        row.until = until
    session.execute(
        delete(VacationSent).where(VacationSent.account_id == account.id, VacationSent.until < now)
    )
    _log(session, account)
    return True


def utc(when: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; the store writes UTC.
    return when.astimezone(dt.UTC) if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


# -- replication -------------------------------------------------------------


# Read for every account state (engine.syncstate): on the DB-API cursor.
_SCRIPT_ROWS = (
    select(SieveScript.name, SieveScript.content, SieveScript.active)
    .where(SieveScript.account_id == bindparam("account_id"))
    .order_by(SieveScript.name)
)
_VACATION_ROWS = (
    select(VacationSent.key, VacationSent.until)
    .where(VacationSent.account_id == bindparam("account_id"))
    .order_by(VacationSent.key)
)


def script_rows(session: Session, account_id: int) -> tuple[ScriptRow, ...]:
    found = fastsql.rows(session, _SCRIPT_ROWS, {"account_id": account_id})
    return tuple((n, c, bool(a)) for n, c, a in found)


def vacation_rows(session: Session, account_id: int) -> tuple[VacationRow, ...]:
    found = fastsql.rows(session, _VACATION_ROWS, {"account_id": account_id})
    return tuple((k, utc(u).isoformat()) for k, u in found)


def replace_scripts(session: Session, account: Account, scripts: Iterable[ScriptRow]) -> None:
    """Make the account's scripts exactly ``scripts`` (the owner's, on the replica)."""
    want = {name: (content, active) for name, content, active in scripts}
    for row in session.scalars(select(SieveScript).where(SieveScript.account_id == account.id)):
        if row.name not in want:
            session.delete(row)
            continue
        content, active = want.pop(row.name)
        if (row.content, row.active) != (content, active):
            row.content, row.active = content, active
            row.modseq += 1
            row.changed_at = utcnow()
    for name, (content, active) in want.items():
        session.add(SieveScript(account_id=account.id, name=name, content=content, active=active))
    session.flush()


def replace_vacations(session: Session, account: Account, rows: Iterable[VacationRow]) -> None:
    session.execute(delete(VacationSent).where(VacationSent.account_id == account.id))
    for key, until in rows:
        session.add(
            VacationSent(account_id=account.id, key=key, until=dt.datetime.fromisoformat(until))
        )
    session.flush()
