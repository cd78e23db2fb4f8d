"""The full-text index in the database: filling it, emptying it, asking it.

How this works: the index holds, per GUID, the folded text
:func:`engine.fulltext.extract` gives (the tables of migration
``0010_fulltext``: an FTS5 trigram table on SQLite, a ``pg_trgm`` GIN-indexed
table on PostgreSQL; see :mod:`engine.fulltext` for why both are exact
substring tests). The text is a property of a message's bytes, so a COPY, a
MOVE or a second recipient of the same bytes costs nothing more.

- **Filling.** Nothing is indexed inside a delivery's transaction: extracting
  text is CPU work the group committer must not wait for. Instead
  :func:`pending` walks ``messages`` by ``id`` from a mark and names the live
  records' GUIDs that have no row at :data:`~engine.fulltext.EXTRACT_VERSION`;
  the daemon's indexer extracts them off the committer and :func:`put` stores
  them. Every way a record comes to exist (LMTP, APPEND, COPY, MOVE, a sync
  applied on the replica, a repair) adds a ``messages`` row with a higher
  ``id``, so one walk catches them all, including what a replica receives.
- **Emptying.** A row goes when the spool sweep removes its GUID's bytes
  (:func:`forget`, written by the index's writer right after the sweep's
  write: the last live record is gone), and :func:`unnamed` names the
  rows no live record names, for the same :func:`forget`.
- **Where.** On SQLite the two tables live in a database file of their own
  beside the node's (:func:`index_file`: ``peerd.db`` → ``peerd.fulltext.db``,
  made by :func:`create_index_file`; migration ``0013_fulltext_file`` dropped
  them from the node's file), written by the store's index writer
  (:meth:`engine.store.Store.index_write`) and ``ATTACH``-ed by its read
  connections (:func:`attach`), so the queries here name them as before.
  SQLite locks per file: the FTS5 inserts never hold the store's committer
  while a delivery or a replicated DELTA waits. The file is a cache of the
  spool's bytes, keyed by GUID (a GUID's text never changes): a row for a
  GUID no live record names answers nothing, and a file lost or left from
  before a restore is refilled or trimmed (:func:`unnamed`) by the indexer,
  search decoding what it lacks meanwhile. On PostgreSQL the table stays in
  the one database.
- **Asking.** :func:`ask` answers a SEARCH's BODY/TEXT keys for one mailbox:
  which of its GUIDs the index holds and which of those match each key.
  :class:`TextSearch` combines that with :func:`engine.fulltext.extract` for
  the GUIDs not indexed yet, so an answer never depends on how far the
  indexer has got: both read the same text, folded the same way.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Engine, bindparam, make_url, text
from sqlalchemy.orm import Session

from engine import walk
from engine.accounts import get_account
from engine.fulltext import (
    EXTRACT_VERSION,
    MIN_INDEXED,
    SQLITE_DDL,
    Key,
    Searchable,
    extract,
    fold,
    like_pattern,
    matches,
    sqlite_match,
)
from engine.walk import Pending, chunks

__all__ = [
    "Answer",
    "IndexCounts",
    "Pending",
    "TextSearch",
    "ask",
    "attach",
    "cache_connection",
    "counts",
    "create_index_file",
    "forget",
    "index_file",
    "live_guids",
    "pending",
    "put",
    "set_aside",
    "unnamed",
]

log = logging.getLogger("peerd.textindex")

SCHEMA: Final = "textindex"  # the index file's name on the read connections (ATTACH ... AS)

Question = tuple[Key, str]


def _sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def _docs(session: Session) -> str:
    """The table naming the indexed GUIDs and their version."""
    return "fulltext_docs" if _sqlite(session) else "fulltext"


# -- where ----------------------------------------------------------------------------------


def index_file(engine: Engine | str) -> Path | None:
    """The SQLite file of the index beside the node's database file
    (``peerd.db`` → ``peerd.fulltext.db``), for an engine or a database URL;
    None on PostgreSQL, or for a database in memory (the index stays in it,
    as before)."""
    url = make_url(engine) if isinstance(engine, str) else engine.url
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database).resolve()
    return path.with_name(f"{path.stem}.fulltext{path.suffix or '.db'}")


def set_aside(path: Path) -> Path:
    """Move a damaged index file (with its WAL and shared-memory files) out of
    the way, named by the time, for the store to make a new one; where it went."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("-wal", "-shm"):
        extra = path.with_name(path.name + suffix)
        if extra.exists():
            extra.rename(aside.with_name(aside.name + suffix))
    path.rename(aside)
    return aside


def create_index_file(path: Path) -> None:
    """Make the index's file and tables if they are not there (WAL, as the
    node's file: readers never wait for its writer). A file SQLite cannot
    read as a database (its header overwritten, a stray file) is set aside
    (:func:`set_aside`) and a new one made: the index is a cache of the
    spool's bytes, refilled by the indexer, and every read connection
    attaches this file, so one it cannot read would fail every read of the
    node. Damage deeper in the file is found by the check at start
    (``peerd.app.dbcheck``), which sets it aside the same way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _create_index_file(path)
    except sqlite3.DatabaseError as exc:
        if not path.exists():
            raise
        aside = set_aside(path)
        log.warning(
            "full-text index %s unreadable (%s): set aside as %s; the indexer refills a new one",
            path,
            exc,
            aside.name,
        )
        _create_index_file(path)


def _create_index_file(path: Path) -> None:
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if "fulltext_docs" not in tables or "fulltext" not in tables:
            db.execute("BEGIN IMMEDIATE")
            for ddl in SQLITE_DDL:
                db.execute(
                    ddl.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS").replace(
                        "CREATE VIRTUAL TABLE", "CREATE VIRTUAL TABLE IF NOT EXISTS"
                    )
                )
            db.execute("COMMIT")
    finally:
        db.close()


def cache_connection(dbapi_connection: Any, _record: Any) -> None:
    """The index writer's connections: its file is a cache of the spool's
    bytes (lost writes are indexed again), so a commit is not fsynced
    (``synchronous=NORMAL`` in WAL mode: durable at the next checkpoint;
    a crash loses the last commits, never the file's consistency)."""
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def attach(dbapi_connection: Any, _record: Any, *, path: Path) -> None:
    """A read connection of the node's database: the index's file too, as
    :data:`SCHEMA`; its tables' plain names resolve there (the node's file
    has none since ``0013_fulltext_file``)."""
    dbapi_connection.execute(f"ATTACH DATABASE ? AS {SCHEMA}", (str(path),))


# -- filling ----------------------------------------------------------------------------------


def _indexed(session: Session, guids: list[str]) -> set[str]:
    """The ones among ``guids`` with a row at the current version."""
    return walk.done_among(session, _docs(session), sorted(set(guids)), EXTRACT_VERSION)


def pending(session: Session, after: int, limit: int = 500) -> Pending:
    """Walk ``messages`` past ``after`` (at most ``limit`` rows): the GUIDs
    with no row at the current version."""
    return walk.pending(session, after, limit, _docs(session), EXTRACT_VERSION)


def live_guids(session: Session, account: str | None) -> list[str]:
    """Every GUID one account's live records name (None: every account's).
    An account that does not exist is :class:`~engine.errors.NoSuchAccount`."""
    query = "SELECT DISTINCT m.guid FROM messages AS m WHERE m.expunged = :no"
    params: dict[str, object] = {"no": False}
    if account is not None:
        query = (
            "SELECT DISTINCT m.guid FROM messages AS m"
            " JOIN mailboxes AS b ON b.id = m.mailbox_id"
            " WHERE m.expunged = :no AND b.account_id = :account"
        )
        params["account"] = get_account(session, account).id
    return sorted(session.scalars(text(query), params).all())


def put(session: Session, docs: Sequence[tuple[str, Searchable]]) -> None:
    """Store (or replace) the text of each GUID (named twice: the last one)."""
    docs = list(dict(docs).items())  # two messages with the same bytes share a GUID
    if not docs:
        return
    guids = [guid for guid, _ in docs]
    if not _sqlite(session):
        session.execute(
            text(
                "INSERT INTO fulltext (guid, version, header, body)"
                " VALUES (:guid, :version, :header, :body)"
                " ON CONFLICT (guid) DO UPDATE SET version = excluded.version,"
                " header = excluded.header, body = excluded.body"
            ),
            [
                {"guid": g, "version": EXTRACT_VERSION, "header": d.header, "body": d.body}
                for g, d in docs
            ],
        )
        return
    forget(session, guids)
    session.execute(
        text("INSERT INTO fulltext_docs (guid, version) VALUES (:guid, :version)"),
        [{"guid": g, "version": EXTRACT_VERSION} for g in guids],
    )
    ids: dict[str, int] = {}
    query = text("SELECT guid, id FROM fulltext_docs WHERE guid IN :guids").bindparams(
        bindparam("guids", expanding=True)
    )
    for chunk in chunks(guids):
        ids.update((g, int(i)) for g, i in session.execute(query, {"guids": chunk}))
    session.execute(
        text("INSERT INTO fulltext (rowid, header, body) VALUES (:id, :header, :body)"),
        [{"id": ids[g], "header": d.header, "body": d.body} for g, d in docs],
    )


# -- emptying ---------------------------------------------------------------------------------


def forget(session: Session, guids: Iterable[str]) -> None:
    """Drop the rows of ``guids`` (their bytes are gone, or about to be re-put)."""
    wanted = sorted(set(guids))
    for chunk in chunks(wanted):
        params = {"guids": chunk}
        if _sqlite(session):
            session.execute(
                text(
                    "DELETE FROM fulltext WHERE rowid IN"
                    " (SELECT id FROM fulltext_docs WHERE guid IN :guids)"
                ).bindparams(bindparam("guids", expanding=True)),
                params,
            )
            session.execute(
                text("DELETE FROM fulltext_docs WHERE guid IN :guids").bindparams(
                    bindparam("guids", expanding=True)
                ),
                params,
            )
        else:
            session.execute(
                text("DELETE FROM fulltext WHERE guid IN :guids").bindparams(
                    bindparam("guids", expanding=True)
                ),
                params,
            )


def unnamed(session: Session) -> list[str]:
    """The indexed GUIDs no live record names (a read: :func:`forget` them
    with the index's writer)."""
    docs = _docs(session)
    return list(
        session.scalars(
            text(
                f"SELECT guid FROM {docs} WHERE guid NOT IN"
                " (SELECT guid FROM messages WHERE expunged = :no)"
            ),
            {"no": False},
        ).all()
    )


# -- asking -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """For one mailbox: the GUIDs of its records the index does not hold (at
    the current version; usually none), and per question (BODY or TEXT, and
    the string) the indexed GUIDs that match. Every other GUID of the
    mailbox is indexed: it matches if and only if it is found (``found``
    may name GUIDs of other mailboxes too; nobody asks about those)."""

    unindexed: frozenset[str]
    found: dict[Question, frozenset[str]]


_SQLITE_SHORT_IN_MAILBOX: Final = {
    "BODY": "instr(f.body, :needle) > 0",
    "TEXT": "(instr(f.header, :needle) > 0 OR instr(f.body, :needle) > 0)",
}


def _found_sqlite(session: Session, mailbox_id: int, key: Key, string: str) -> frozenset[str]:
    """The GUIDs that match, node-wide: the FTS5 phrase query's rowids, each
    looked up by ``fulltext_docs``' primary key. Not joined with
    ``messages``: SQLite's plan for that walks the whole mailbox (a hundred
    times slower). A string too short for trigrams is looked for in the
    mailbox's rows only (``instr`` over the stored text; see
    :data:`engine.fulltext.SQLITE_SHORT`)."""
    match = sqlite_match(key, string)
    if match is None:
        query = (
            "SELECT d.guid FROM messages AS m JOIN fulltext_docs AS d ON d.guid = m.guid"
            " JOIN fulltext AS f ON f.rowid = d.id"
            f" WHERE m.mailbox_id = :mailbox AND d.version = :version"
            f" AND {_SQLITE_SHORT_IN_MAILBOX[key]}"
        )
        params = {"mailbox": mailbox_id, "version": EXTRACT_VERSION, "needle": fold(string)}
        return frozenset(session.scalars(text(query), params).all())
    query = (
        "SELECT guid FROM fulltext_docs WHERE version = :version"
        " AND id IN (SELECT rowid FROM fulltext WHERE fulltext MATCH :match)"
    )
    params = {"version": EXTRACT_VERSION, "match": match}
    return frozenset(session.scalars(text(query), params).all())


def _found_postgresql(session: Session, mailbox_id: int, key: Key, string: str) -> frozenset[str]:
    """The GUIDs that match. A string of 3 or more code points asks the
    trigram indexes alone (a bitmap of candidates, each rechecked with
    ``LIKE``), node-wide: joined with the mailbox in SQL the planner
    preferred rechecking every row of the mailbox. A shorter string (no
    trigram to look up) is looked for in the mailbox's rows only."""
    where = "f.body LIKE :pattern ESCAPE '\\'"
    if key == "TEXT":
        where = f"(f.header LIKE :pattern ESCAPE '\\' OR {where})"
    params = {"mailbox": mailbox_id, "version": EXTRACT_VERSION, "pattern": like_pattern(string)}
    if len(fold(string)) < MIN_INDEXED:
        query = (
            "SELECT f.guid FROM messages AS m JOIN fulltext AS f ON f.guid = m.guid"
            f" WHERE m.mailbox_id = :mailbox AND f.version = :version AND {where}"
        )
        return frozenset(session.scalars(text(query), params).all())
    query = f"SELECT f.guid FROM fulltext AS f WHERE f.version = :version AND {where}"
    return frozenset(session.scalars(text(query), params).all())


def ask(session: Session, mailbox_id: int, questions: Iterable[Question]) -> Answer:
    """The index's answers for ``mailbox_id`` (all its records, expunged ones
    too: a session may still show them)."""
    sqlite = _sqlite(session)
    if not sqlite:
        # The text lives out of line (TOAST): the planner counts a sequential
        # scan of ``fulltext`` as a few pages, not as decompressing every
        # message's text, and picks it over the trigram indexes (150 ms
        # instead of 2 for 1,000 messages). This transaction only.
        session.execute(text("SET LOCAL enable_seqscan = off"))
    # Only the records the index lacks come back (usually none), not every
    # indexed GUID of the mailbox: for 10,000 messages the rows of those
    # cost more than the rest of the SEARCH.
    unindexed = session.scalars(
        text(
            "SELECT m.guid FROM messages AS m WHERE m.mailbox_id = :mailbox AND NOT EXISTS"
            f" (SELECT 1 FROM {_docs(session)} AS d"
            " WHERE d.guid = m.guid AND d.version = :version)"
        ),
        {"mailbox": mailbox_id, "version": EXTRACT_VERSION},
    ).all()
    found: dict[Question, frozenset[str]] = {}
    # Strings that fold alike ("Fox", "FOX") are one query: both sides of
    # the search are folded (a SEARCH of a phrase's case variants asked the
    # index once per variant).
    asked: dict[Question, frozenset[str]] = {}
    for kind, string in dict.fromkeys(questions):
        same = (kind, fold(string))
        answer = asked.get(same)
        if answer is None:
            ask_one = _found_sqlite if sqlite else _found_postgresql
            answer = asked[same] = ask_one(session, mailbox_id, kind, string)
        found[kind, string] = answer
    return Answer(frozenset(unindexed), found)


class TextSearch:
    """One SEARCH's BODY and TEXT tests: the index's answer for the GUIDs it
    holds, :func:`engine.fulltext.extract` of the bytes (read with ``loader``,
    once per GUID) for the others. Not thread-safe; one search at a time."""

    __slots__ = ("_docs", "answer", "loader")

    def __init__(self, answer: Answer, loader: Callable[[str], bytes]) -> None:
        self.answer = answer
        self.loader = loader
        self._docs: dict[str, Searchable] = {}

    def _doc(self, guid: str) -> Searchable:
        doc = self._docs.get(guid)
        if doc is None:
            doc = self._docs[guid] = extract(self.loader(guid))
        return doc

    def test(self, key: Key, string: str) -> Callable[[str], bool]:
        """A predicate over a GUID: does ``key`` ``string`` match its message?"""
        unindexed = self.answer.unindexed
        found = self.answer.found.get((key, string))
        if found is None:
            return lambda guid: matches(self._doc(guid), key, string)
        if not unindexed:
            return found.__contains__

        def test(guid: str) -> bool:
            if guid in unindexed:
                return matches(self._doc(guid), key, string)
            return guid in found

        return test


@dataclass(frozen=True, slots=True)
class IndexCounts:
    """How much of an account's (or the node's) mail the index holds."""

    guids: int  # distinct GUIDs live records name
    indexed: int  # of those, with a row at the current version


def counts(session: Session, account: str | None) -> IndexCounts:
    guids = live_guids(session, account)
    return IndexCounts(len(guids), len(_indexed(session, guids)))
