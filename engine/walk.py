"""Walking the stored messages in ``messages.id`` order, for the work done
once per message after it is stored: the full-text index
(:mod:`engine.textindex`) and the parsed keys and structures
(:mod:`engine.parsed`) each walk with a mark and ask which GUIDs they lack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import TableClause, bindparam, column, select, table
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

from engine import fastsql

__all__ = ["CHUNK", "Pending", "chunks", "done_among", "pending"]

CHUNK: Final = 400  # GUIDs in one IN (...): SQLite limits a statement's parameters


@dataclass(frozen=True, slots=True)
class Pending:
    """GUIDs still to do (live records' GUIDs the walker lacks), the highest
    ``messages.id`` looked at, and whether rows past it remain."""

    guids: tuple[str, ...]
    mark: int
    more: bool


def chunks(items: Sequence[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), CHUNK):
        yield list(items[i : i + CHUNK])


_MESSAGES = table("messages", column("id"), column("guid"), column("expunged"))
_WALK = (
    select(_MESSAGES.c.id, _MESSAGES.c.guid)
    .where(_MESSAGES.c.id > bindparam("after"), _MESSAGES.c.expunged == bindparam("no"))
    .order_by(_MESSAGES.c.id)
    .limit(bindparam("limit"))
)


def pending(
    session: Session,
    after: int,
    limit: int,
    done: Callable[[Session, list[str]], set[str]],
) -> Pending:
    """Walk ``messages`` past ``after`` (at most ``limit`` rows); ``done``
    says which of their GUIDs need nothing more."""
    # On the DB-API cursor (engine.fastsql): the walkers read once a walk,
    # and SQLAlchemy's per-execution work was most of such a read's CPU.
    rows = fastsql.fetch(session, _WALK, ("after", "no", "limit"), (after, False, limit))
    if not rows:
        return Pending((), after, False)
    guids = list(dict.fromkeys(guid for _, guid in rows))
    have = done(session, guids)
    return Pending(tuple(g for g in guids if g not in have), int(rows[-1][0]), len(rows) == limit)


def _done_query(done: TableClause) -> Callable[..., Executable]:
    def build(guids: list[Any], versions: list[Any]) -> Executable:
        return select(done.c.guid).where(done.c.guid.in_(guids), done.c.version.in_(versions))

    return build


_BUILDS: dict[str, Callable[..., Executable]] = {}


def done_among(session: Session, name: str, guids: Sequence[str], version: int) -> set[str]:
    """The ones among ``guids`` with a row at ``version`` in the table ``name``
    (a walker's own: its ``guid`` and ``version`` columns). On the DB-API
    cursor, one statement compiled per size of list (:func:`engine.fastsql.select_in`),
    not an expanding IN that SQLAlchemy renders again at each call."""
    build = _BUILDS.get(name)
    if build is None:
        build = _BUILDS.setdefault(
            name, _done_query(table(name, column("guid"), column("version")))
        )
    found: set[str] = set()
    for chunk in chunks(guids):
        found.update(row[0] for row in fastsql.select_in(session, build, chunk, [version]))
    return found
