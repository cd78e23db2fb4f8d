"""``peerd backup`` and ``peerd restore``: a consistent copy of a running node, and back.

How this works: a node's state is its database and its spool. A message's
bytes are durable in the spool, under their GUID, before the row that names
them commits, and a spool file is never changed once it is in place (it is
written to a temp file and renamed). So the database is copied **first**, as
one snapshot taken while the node runs, and the spool **after**: every GUID
the snapshot names was already in the spool when the snapshot was taken,
and the files copied later are the same bytes. The only way such a file
can leave the spool meanwhile is the spool sweep, which removes a file only
once no message has named it for ``[node] spool_sweep_grace``; the copy
checks every named GUID regardless, so a backup either holds every message
its database names, with bytes that hash to their GUID, or fails saying so.

- SQLite: the online backup API (``sqlite3.Connection.backup``) copies the
  database in one step under one read transaction: a snapshot, and WAL mode
  lets the node keep writing meanwhile.
- PostgreSQL: a ``REPEATABLE READ`` transaction exports its snapshot;
  ``pg_dump --snapshot`` dumps exactly that, and the GUID list is read in the
  same transaction.

The backup directory holds ``peerd.db`` (SQLite) or ``peerd.pgdump``
(``pg_dump --format=custom``), ``spool/<xx>/<guid>`` and, written last,
``backup.json`` (:class:`Manifest`): a directory without it is not a backup.
``restore`` puts both back into an empty node (same node name); the daemon
migrates the schema at start if the backup is older. ``docs/backup.md``.
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from engine.db import normalize_url
from peerd.node.config import Config
from peerd.node.version import release

__all__ = ["BackupError", "Manifest", "backup", "restore"]

MANIFEST = "backup.json"
SQLITE_FILE = "peerd.db"
PG_FILE = "peerd.pgdump"
_LIVE_GUIDS = "SELECT DISTINCT guid FROM messages WHERE NOT expunged"
_REVISION = "SELECT version_num FROM alembic_version"


class BackupError(Exception):
    """A backup or restore that cannot be made: the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """``backup.json``: what a backup holds. ``started_at`` is taken before
    the database snapshot: every delivery acknowledged before it is inside."""

    node: str
    release: str
    schema: str
    database: str
    started_at: str
    finished_at: str
    files: int
    bytes: int

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        try:
            data = json.loads((directory / MANIFEST).read_text())
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except FileNotFoundError as exc:
            raise BackupError(
                f"{directory} has no {MANIFEST}: not a backup, or one that did not finish"
            ) from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BackupError(f"{directory / MANIFEST} is unreadable: {exc}") from exc


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    raise BackupError(f"{name} not found: install postgresql-client")


def _pg_env(url: URL) -> dict[str, str]:
    """libpq's environment for ``url`` (the password never on a command line)."""
    env = dict(os.environ)
    for key, value in (
        ("PGHOST", url.host),
        ("PGPORT", url.port),
        ("PGUSER", url.username),
        ("PGPASSWORD", url.password),
        ("PGDATABASE", url.database),
    ):
        if value is not None:
            env[key] = str(value)
    return env


def _sqlite_path(url: URL) -> Path:
    if not url.database or url.database == ":memory:":
        raise BackupError("the database is in memory: nothing to back up")
    return Path(url.database)


def _url(config: Config) -> URL:
    return make_url(normalize_url(config.database_url))


# -- backup --------------------------------------------------------------------


def _snapshot_sqlite(source: Path, dest: Path) -> tuple[str, list[str]]:
    if not source.exists():
        raise BackupError(f"{source} does not exist: is [database] url right?")
    live = sqlite3.connect(source.resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
    copy = sqlite3.connect(dest)
    try:
        live.backup(copy)  # one step: one read transaction, one snapshot
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        revision = copy.execute(_REVISION).fetchone()[0]
        guids = [row[0] for row in copy.execute(_LIVE_GUIDS)]
    finally:
        copy.close()
        live.close()
    return str(revision), guids


def _snapshot_postgresql(url: URL, dest: Path) -> tuple[str, list[str]]:
    import psycopg

    env = _pg_env(url)
    try:
        conn = psycopg.connect(
            url.set(drivername="postgresql").render_as_string(hide_password=False),
            autocommit=True,
        )
    except psycopg.Error as exc:
        raise BackupError(f"cannot connect to PostgreSQL: {exc}") from exc
    with conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        dump = subprocess.run(
            [_pg_tool("pg_dump"), "--format=custom", f"--snapshot={row[0]}", "--file", str(dest)],
            env=env,
            capture_output=True,
            text=True,
        )
        if dump.returncode != 0:
            raise BackupError(f"pg_dump failed: {dump.stderr.strip()}")
        revision = conn.execute(_REVISION).fetchone()
        guids = [str(r[0]) for r in conn.execute(_LIVE_GUIDS).fetchall()]
        conn.execute("COMMIT")
    assert revision is not None
    return str(revision[0]), guids


def _copy_spool(guids: Iterable[str], source: Path, dest: Path) -> tuple[int, int, list[str]]:
    """Copy each GUID's file, checking its bytes hash to it: (files, bytes, problems)."""
    files = size = 0
    problems: list[str] = []
    for guid in sorted(set(guids)):
        src = source / guid[:2] / guid
        try:
            data = src.read_bytes()
        except FileNotFoundError:
            problems.append(f"{guid}: missing from {source}")
            continue
        if hashlib.sha1(data).hexdigest() != guid:
            problems.append(f"{guid}: its bytes in {source} do not match its GUID")
            continue
        target = dest / guid[:2] / guid
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(data)
        files += 1
        size += len(data)
    return files, size, problems


def _fail_on(problems: list[str], what: str) -> None:
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise BackupError(f"{what}: {len(problems)} message file(s) not copied: {shown}")


def backup(config: Config, dest: Path) -> Manifest:
    """Copy the running node's database, then its spool, into ``dest`` (new or empty)."""
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty: give a new directory")
    dest.mkdir(mode=0o750, parents=True, exist_ok=True)
    started = _now()
    url = _url(config)
    if url.get_backend_name() == "sqlite":
        kind = "sqlite"
        revision, guids = _snapshot_sqlite(_sqlite_path(url), dest / SQLITE_FILE)
    elif url.get_backend_name() == "postgresql":
        kind = "postgresql"
        revision, guids = _snapshot_postgresql(url, dest / PG_FILE)
    else:
        raise BackupError(f"cannot back up a {url.get_backend_name()} database")
    (dest / "spool").mkdir()
    files, size, problems = _copy_spool(guids, config.node.data_dir / "spool", dest / "spool")
    _fail_on(problems, "the backup is incomplete (no backup.json written)")
    os.sync()
    manifest = Manifest(config.node.name, release(), revision, kind, started, _now(), files, size)
    partial = dest / (MANIFEST + ".tmp")
    partial.write_text(json.dumps(asdict(manifest), indent=1) + "\n")
    os.replace(partial, dest / MANIFEST)
    os.sync()
    return manifest


# -- restore -------------------------------------------------------------------


def _empty_database(config: Config, url: URL) -> None:
    if url.get_backend_name() == "sqlite":
        path = _sqlite_path(url)
        if path.exists() and path.stat().st_size > 0:
            raise BackupError(f"{path} exists: restore into a node with no database")
        return
    from sqlalchemy import create_engine, inspect

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = inspect(conn).get_table_names()
    except Exception as exc:
        raise BackupError(f"cannot read the database: {exc}") from exc
    finally:
        engine.dispose()
    if tables:
        raise BackupError(f"the database {url.database} has tables: restore into an empty database")


def _chown_like(paths: Iterable[Path], model: Path) -> None:
    """Run as root, leave the files to the data directory's owner (the service user)."""
    if os.geteuid() != 0:
        return
    st = model.stat()
    for path in paths:
        os.chown(path, st.st_uid, st.st_gid)


def restore(config: Config, source: Path) -> Manifest:
    """Put the backup in ``source`` into this node, which must have no data yet."""
    manifest = Manifest.read(source)
    if manifest.node != config.node.name:
        raise BackupError(
            f"the backup is of node {manifest.node}, this config is node {config.node.name}"
        )
    url = _url(config)
    kind = url.get_backend_name()
    if kind != manifest.database:
        raise BackupError(
            f"the backup holds a {manifest.database} database, the config a {kind} one"
        )
    spool = config.node.data_dir / "spool"
    if spool.exists() and any(spool.glob("[0-9a-f][0-9a-f]/*")):
        raise BackupError(f"{spool} holds messages: restore into a node with no data")
    _empty_database(config, url)
    config.node.data_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if kind == "sqlite":
        target = _sqlite_path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        saved = sqlite3.connect((source / SQLITE_FILE).resolve().as_uri() + "?mode=ro", uri=True)
        fresh = sqlite3.connect(target)
        try:
            saved.backup(fresh)
        finally:
            fresh.close()
            saved.close()
        written.append(target)
    else:
        load = subprocess.run(
            [
                _pg_tool("pg_restore"),
                "--no-owner",
                "--exit-on-error",
                "--dbname",
                url.database or "",
                str(source / PG_FILE),
            ],
            env=_pg_env(url),
            capture_output=True,
            text=True,
        )
        if load.returncode != 0:
            raise BackupError(f"pg_restore failed: {load.stderr.strip()}")
    spool.mkdir(parents=True, exist_ok=True)
    guids = [p.name for p in (source / "spool").glob("[0-9a-f][0-9a-f]/*")]
    files, _, problems = _copy_spool(guids, source / "spool", spool)
    _fail_on(problems, "the restore is incomplete")
    if files != manifest.files:
        raise BackupError(f"the backup lists {manifest.files} files, {files} were found")
    written += [spool, *spool.iterdir(), *spool.glob("*/*")]
    _chown_like(written, config.node.data_dir)
    os.sync()
    return manifest
