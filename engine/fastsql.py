"""The store's hottest statements, run on the DB-API cursor.

How this works: a Core statement is compiled once per database (SQLite or
PostgreSQL) into its SQL text, the order of its parameters and the bind
processor of each parameter's type — SQLAlchemy's own, so a tz-aware datetime
or a boolean becomes exactly what the column stores. :func:`executemany` then
runs it with plain tuples on the cursor of the session's connection, inside
the session's transaction. That skips SQLAlchemy's per-execution work (cache
keys, parameter dictionaries, result set-up), which in a group commit of
deliveries cost more than SQLite itself: a batch writes a handful of
statements with many rows each.

:func:`rows` runs a SELECT the same way, with named values, and passes
each value of its rows through its column type's result processor: the
reads made of every account's state on each rolling DELTA, on both nodes
(:func:`engine.syncstate.read_account_state`), are eight small SELECTs,
each of which cost more in SQLAlchemy's ORM execution than in SQLite.

:func:`select_in` does the same for ``SELECT ... WHERE column IN (...)`` with
a list of values: one compiled statement per size bucket (powers of two;
the list is padded by repeating its last value, which IN ignores), each
value of the rows passed through its column type's result processor.

A statement that needs a value the caller does not give (a column default
computed in Python) is not prepared: :func:`executemany` returns False and
the caller runs it through SQLAlchemy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable
from sqlalchemy.sql.elements import BindParameter

__all__ = ["executemany", "rows", "select_in"]

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class _Prepared:
    sql: str
    positional: bool
    # For each parameter of the SQL text, in order: its name, the index of the
    # caller's value (or -1: a constant of the statement), the constant, the processor.
    params: tuple[tuple[str, int, Any, Processor], ...]
    # For a SELECT: each result column's processor (what SQLAlchemy would apply).
    results: tuple[Processor, ...] = ()


_CACHE: dict[tuple[int, str, tuple[str, ...]], _Prepared | None] = {}
_LOCK = threading.Lock()


def _prepare(statement: Any, dialect: Dialect, keys: tuple[str, ...]) -> _Prepared | None:
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    binds: dict[str, BindParameter[Any]] = compiled.binds
    names = list(compiled.positiontup) if compiled.positional else list(binds)
    index = {key: i for i, key in enumerate(keys)}
    params: list[tuple[str, int, Any, Processor]] = []
    for name in names:
        bind = binds[name]
        # dialect_impl: the database's own variant of the type (SQLite's
        # DATETIME stores a string of its own format), as SQLAlchemy runs it.
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if name in index:
            params.append((name, index[name], None, processor))
        elif bind.value is not None and not bind.callable:
            value = processor(bind.value) if processor is not None else bind.value
            params.append((name, -1, value, None))
        else:
            return None  # a value SQLAlchemy would compute: not for this path
    results = tuple(
        column.type.dialect_impl(dialect).result_processor(dialect, None)
        for column in getattr(statement, "selected_columns", ())
    )
    return _Prepared(compiled.string, bool(compiled.positional), tuple(params), results)


def _prepared(statement: Any, dialect: Dialect, keys: tuple[str, ...]) -> _Prepared | None:
    cache_key = (id(statement), dialect.name, keys)
    with _LOCK:
        if cache_key in _CACHE:
            return _CACHE[cache_key]
    prepared = _prepare(statement, dialect, keys)
    with _LOCK:
        _CACHE[cache_key] = prepared
        # The statement must live as long as its entry (ids are reused).
        _KEEP[cache_key] = statement
    return prepared


_KEEP: dict[tuple[int, str, tuple[str, ...]], Any] = {}


def _bound(prepared: _Prepared, row: Sequence[Any]) -> Any:
    values = [
        constant if i < 0 else (processor(row[i]) if processor is not None else row[i])
        for _, i, constant, processor in prepared.params
    ]
    if prepared.positional:
        return tuple(values)
    return {name: value for (name, _, _, _), value in zip(prepared.params, values, strict=True)}


_NOTHING = object()  # in no row: the first value of each column is processed


def _bound_rows(prepared: _Prepared, rows: Sequence[Sequence[Any]]) -> list[Any]:
    """:func:`_bound` of each row, where a value that is the very object the
    row before had in that place (a group commit's one timestamp on every
    row) is not passed through its processor again."""
    params = prepared.params
    processed = [
        (j, processor) for j, (_, i, _, processor) in enumerate(params) if i >= 0 and processor
    ]
    last: list[tuple[Any, Any]] = [(_NOTHING, None)] * len(params)
    names = [name for name, _, _, _ in params]
    bound: list[Any] = []
    for row in rows:
        values = [row[i] if i >= 0 else constant for _, i, constant, _ in params]
        for j, processor in processed:
            value = values[j]
            seen, done = last[j]
            if value is not seen:
                done = processor(value)
                last[j] = (value, done)
            values[j] = done
        bound.append(
            tuple(values) if prepared.positional else dict(zip(names, values, strict=True))
        )
    return bound


def executemany(
    session: Session, statement: Executable, keys: Sequence[str], rows: Sequence[Sequence[Any]]
) -> bool:
    """Run ``statement`` once per row (values in ``keys`` order) on the session's
    connection. False (nothing run) if the statement cannot be prepared."""
    if not rows:
        return True
    connection = session.connection()
    prepared = _prepared(statement, connection.dialect, tuple(keys))
    if prepared is None:
        return False
    cursor = connection.connection.cursor()
    try:
        cursor.executemany(prepared.sql, _bound_rows(prepared, rows))
    finally:
        cursor.close()
    return True


def rows(session: Session, statement: Executable, values: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The rows of the SELECT ``statement`` with its bind parameters set from
    ``values``, on the session's connection, each value passed through its
    column's result processor, as SQLAlchemy would. The session's pending
    ORM changes are flushed first, as its own ``execute`` would (autoflush)."""
    if session.autoflush:
        session.flush()
    connection = session.connection()
    keys = tuple(sorted(values))
    prepared = _prepared(statement, connection.dialect, keys)
    if prepared is None:
        raise ValueError("fastsql.rows: the statement has parameters it was not given")
    cursor = connection.connection.cursor()
    try:
        cursor.execute(prepared.sql, _bound(prepared, [values[key] for key in keys]))
        found = cursor.fetchall()
    finally:
        cursor.close()
    return _processed(prepared, found)


def _processed(prepared: _Prepared, found: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Each row's values through their columns' result processors."""
    if not any(prepared.results):
        return [tuple(row) for row in found]
    return [
        tuple(p(v) if p is not None else v for p, v in zip(prepared.results, row, strict=True))
        for row in found
    ]


def _bucket(n: int) -> int:
    size = 1
    while size < n:
        size *= 2
    return size


def select_in(
    session: Session,
    build: Callable[..., Executable],
    *lists: Sequence[Any],
) -> list[tuple[Any, ...]]:
    """Rows of ``build(params_1, params_2, ...)``: a SELECT with one IN list per
    argument, each bound to the values of the matching list (at most 512)."""
    from sqlalchemy import bindparam

    if any(not values for values in lists):
        return []
    if any(len(values) > 512 for values in lists):
        raise ValueError("select_in takes at most 512 values per list")
    sizes = tuple(_bucket(len(values)) for values in lists)
    connection = session.connection()
    dialect = connection.dialect
    cache_key = (id(build), dialect.name, tuple(str(n) for n in sizes))
    with _LOCK:
        prepared = _CACHE.get(cache_key)
    if prepared is None:
        groups = [[f"l{g}v{i}" for i in range(n)] for g, n in enumerate(sizes)]
        statement = build(*[[bindparam(name) for name in group] for group in groups])
        prepared = _prepare(statement, dialect, tuple(name for group in groups for name in group))
        if prepared is None:  # pragma: no cover - a build function's mistake
            raise ValueError("select_in: the statement has parameters it was not given")
        with _LOCK:
            _CACHE[cache_key] = prepared
            _KEEP[cache_key] = build
    padded = [
        value
        for values, n in zip(lists, sizes, strict=True)
        for value in [*values, *([values[-1]] * (n - len(values)))]
    ]
    cursor = connection.connection.cursor()
    try:
        cursor.execute(prepared.sql, _bound(prepared, padded))
        rows = cursor.fetchall()
    finally:
        cursor.close()
    return _processed(prepared, rows)
