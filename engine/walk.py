"""Walking the stored messages in ``messages.id`` order, for the work done
once per message after it is stored: the full-text index
(:mod:`engine.textindex`) and the parsed keys and structures
(:mod:`engine.parsed`) each walk with a mark and ask which GUIDs they lack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from sqlalchemy import TableClause, TextClause, column, select, table, text
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

from engine import fastsql

__all__ = ["CHUNK", "Pending", "chunks", "done_among", "pending"]

T = TypeVar("T")

CHUNK: Final = 400  # GUIDs in one IN (...): SQLite limits a statement's parameters


@dataclass(frozen=True, slots=True)
class Pending:
    """GUIDs still to do (live records' GUIDs the walker lacks), the highest
    ``messages.id`` looked at, and whether rows past it remain."""

    guids: tuple[str, ...]
    mark: int
    more: bool


def chunks(items: Sequence[T]) -> Iterable[list[T]]:
    for i in range(0, len(items), CHUNK):
        yield list(items[i : i + CHUNK])


# The walk's statements, built once: each walker asks once a second
# however idle the node is (``peerd.pair.walker``).
_PAGE: Final = text(
    "SELECT max(id), count(*) FROM (SELECT id FROM messages"
    " WHERE id > :after AND expunged = :no ORDER BY id LIMIT :limit) AS page"
)
_LACKING: dict[str, TextClause] = {}


def pending(session: Session, after: int, limit: int, table: str, version: int) -> Pending:
    """Walk ``messages`` past ``after`` (at most ``limit`` rows): the GUIDs
    with no row at ``version`` in ``table`` (a table of this package with
    ``guid`` and ``version`` columns).

    The test runs in the database (``NOT EXISTS``), not on the page's rows
    brought into Python and asked about in chunks: a walk that finds
    nothing to do (the walkers rescan a thousand ids below their
    mark once a second, on both nodes) costs two index scans, not a
    thousand rows through the ORM's result machinery and a query per
    chunk of them.
    """
    connection = session.connection()  # text only: the ORM's execution adds nothing
    last, count = connection.execute(_PAGE, {"after": after, "no": False, "limit": limit}).one()
    if not count:
        return Pending((), after, False)
    query = _LACKING.get(table)
    if query is None:
        query = _LACKING[table] = text(
            "SELECT m.guid FROM messages AS m"
            " WHERE m.id > :after AND m.id <= :last AND m.expunged = :no"
            f" AND NOT EXISTS (SELECT 1 FROM {table} AS d"
            "  WHERE d.guid = m.guid AND d.version = :version)"
            " ORDER BY m.id"
        )
    guids = connection.scalars(
        query, {"after": after, "last": last, "no": False, "version": version}
    ).all()
    return Pending(tuple(dict.fromkeys(guids)), int(last), count == limit)


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
