"""The one database module: declarative base, metadata, engines, sessions.

How this works: each package keeps its own models (``engine.models``,
``ownership.models``) on the single :data:`Base` defined here, so Alembic sees
one ``MetaData`` with one naming convention. The schema is only ever created
by Alembic migrations (``migrations/``); nothing calls ``create_all``.

SQLite is the embedded default. It runs in WAL mode with ``synchronous=FULL``
so a committed transaction survives a power cut, and with a busy timeout so a
briefly locked database waits instead of failing. Python's sqlite3 module
starts transactions lazily and breaks SAVEPOINT; we take over ``BEGIN``
ourselves (the SQLAlchemy pysqlite recipe, sent from the dialect's
``do_begin`` on the DB-API connection) and make the writer's transactions
``BEGIN IMMEDIATE`` so two writers never deadlock on a lock upgrade.
PostgreSQL (``postgresql+psycopg://``) needs none of this.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

__all__ = [
    "Base",
    "UTCDateTime",
    "insert_ignore",
    "make_engine",
    "metadata",
    "normalize_url",
    "upsert",
    "utcnow",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

SQLITE_BUSY_TIMEOUT_MS = 5000


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    SQLite has no timezone type and hands back naive values; PostgreSQL keeps
    ``timestamptz``. This type stores UTC and always returns aware datetimes,
    so code never compares naive with aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = metadata
    type_annotation_map = {dt.datetime: UTCDateTime()}


def normalize_url(url: str) -> str:
    """Accept the driver names an admin is likely to write.

    peerd talks to PostgreSQL through psycopg 3; ``postgresql://`` and the
    ``postgresql+asyncpg://`` spelling used in DESIGN.md both mean that.
    """
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, *, immediate: bool = False, autocheckpoint: bool = True) -> Engine:
    """Build an engine for ``url``.

    ``immediate`` makes every SQLite transaction ``BEGIN IMMEDIATE``: use it for
    the engine that writes, so a write lock is taken up front.
    ``autocheckpoint`` False: its commits never copy the WAL back into the
    database file (``wal_autocheckpoint=0``); the caller checkpoints
    (:class:`engine.store.Store` does, in a thread of its own).
    """
    url = normalize_url(url)
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)
    # Connections are pooled (opening one costs the PRAGMAs below); the
    # daemon disposes of the engine at shutdown so no handle holds the WAL.
    engine = create_engine(
        url, pool_size=8, max_overflow=8, connect_args={"check_same_thread": False, "timeout": 30}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        if not autocheckpoint:
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    def _do_begin(dbapi_connection: Any) -> None:
        # On the DB-API connection, where the dialect begins a transaction:
        # SQLAlchemy wraps an error here as it does a statement's (a locked
        # database is its OperationalError), and the BEGIN skips the
        # statement machinery of ``exec_driver_sql`` in a "begin" event
        # (0.07-0.1 ms of CPU a transaction on this project's machines, of
        # the 0.3-0.4 a session's transaction costs; docs/benchmarks.md).
        dbapi_connection.execute(begin)

    engine.dialect.do_begin = _do_begin  # type: ignore[method-assign]  # this engine's own dialect
    return engine


_STATEMENTS: dict[tuple[str, str, str, tuple[str, ...], tuple[str, ...], tuple[str, ...]], Any] = {}


def _conflict_statement(
    session: Any,
    table: Any,
    keys: tuple[str, ...],
    replace: tuple[str, ...] = (),
    increment: tuple[str, ...] = (),
) -> Any:
    """A cached ``INSERT ... ON CONFLICT`` for this database.

    SQLite and PostgreSQL both spell it ``ON CONFLICT``; the statement is
    built once and run with parameters, so SQLAlchemy compiles it once.
    """
    dialect = session.get_bind().dialect.name
    cache_key = (dialect, table.name, "", keys, replace, increment)
    stmt = _STATEMENTS.get(cache_key)
    if stmt is not None:
        return stmt
    from sqlalchemy.dialects import postgresql, sqlite

    if dialect == "sqlite":
        base: Any = sqlite.insert(table)
    elif dialect == "postgresql":
        base = postgresql.insert(table)
    else:  # pragma: no cover - only the two supported databases
        raise RuntimeError(f"unsupported database {dialect}")
    if not replace and not increment:
        stmt = base.on_conflict_do_nothing(index_elements=list(keys))
    else:
        update = {name: base.excluded[name] for name in replace}
        update.update({name: table.c[name] + 1 for name in increment})
        stmt = base.on_conflict_do_update(index_elements=list(keys), set_=update)
    _STATEMENTS[cache_key] = stmt
    return stmt


Rows = dict[str, Any] | list[dict[str, Any]]


def execute_rows(session: Any, statement: Any, values: Rows) -> None:
    """Run a Core INSERT/UPDATE for one row or many (an executemany): on the
    DB-API cursor when the rows share their keys (:mod:`engine.fastsql`), else
    through SQLAlchemy."""
    from engine import fastsql

    rows = values if isinstance(values, list) else [values]
    if not rows:
        return
    keys = tuple(rows[0])
    if all(len(row) == len(keys) for row in rows) and fastsql.executemany(
        session, statement, keys, [tuple(row[k] for k in keys) for row in rows]
    ):
        return
    session.connection().execute(statement, values)


def insert_ignore(session: Any, table: Any, values: Rows, keys: list[str]) -> None:
    """INSERT a row (or a list of rows, as one executemany) unless one with the
    same ``keys`` exists: one statement, no read."""
    execute_rows(session, _conflict_statement(session, table, tuple(keys)), values)


def upsert(
    session: Any,
    table: Any,
    values: Rows,
    keys: list[str],
    *,
    replace: tuple[str, ...] = (),
    increment: tuple[str, ...] = (),
) -> None:
    """INSERT, or on a key conflict take ``replace`` from the new row and add one to ``increment``.

    ``values`` may be a list of rows (one executemany); their keys must differ.
    """
    stmt = _conflict_statement(session, table, tuple(keys), replace, increment)
    execute_rows(session, stmt, values)
