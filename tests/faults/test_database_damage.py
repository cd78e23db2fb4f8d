"""A damaged database is noticed at start (issue 15, item 2).

64 random bytes are written over the start of a page (its b-tree header and
cell pointers) of each table and of an index, in a copy of a real node's
SQLite file. The node must not start: one line saying what is damaged and
what to do, exit status 65 (which the systemd unit does not restart on), no
traceback. Before, it started and answered every delivery ``451`` for ever,
or (``ownership``) died with a traceback after opening the sync listener.
"""

from __future__ import annotations

import contextlib
import imaplib
import random
import shutil
import smtplib
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import migrations
from engine.dbcheck import check_database
from peerd.app.dbcheck import EXIT_DATABASE_DAMAGED
from tests.harness.clients import run_command
from tests.harness.daemons import Daemon, to_toml, write_pair_configs
from tests.nodes import peerctl

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A lone node's database with rows in every table it fills: an account,
    deliveries (messages, duplicates, guid_history), a subscription, a deleted
    mailbox (mailbox_tombstones), its ownership row and sync-log rows."""
    workdir = tmp_path_factory.mktemp("template")
    config, _, ports = write_pair_configs(workdir, {"sync": {"sync_host": None}})
    node = Daemon(config).start()
    try:
        node.call("POST", "/v1/accounts", {"name": "alice", "password": "secret"})
        for i in range(5):
            with smtplib.LMTP("127.0.0.1", ports["alpha"]["lmtp"], timeout=30) as lmtp:
                lmtp.sendmail(
                    "s@example.test",
                    ["alice@example.test"],
                    f"Subject: m{i}\r\nMessage-ID: <m{i}@db>\r\n\r\nhello\r\n".encode(),
                )
        imap = imaplib.IMAP4("127.0.0.1", ports["alpha"]["imap"], timeout=30)
        imap.login("alice", "secret")
        imap.create("Temp")
        imap.subscribe("INBOX")
        imap.delete("Temp")
        imap.logout()
    finally:
        assert node.stop() == 0
    db = workdir / "var" / "alpha" / "peerd.db"
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    yield db


def damaged_copy(template: Path, workdir: Path, name: str) -> Path:
    """A node config in ``workdir`` whose database is ``template`` with 64
    random bytes over the start of the root page of table or index ``name``."""
    config, _, _ = write_pair_configs(workdir, {"sync": {"sync_host": None}})
    db = workdir / "var" / "alpha" / "peerd.db"
    db.parent.mkdir(parents=True)
    shutil.copy(template, db)
    with contextlib.closing(sqlite3.connect(db)) as connection:
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        (root,) = connection.execute(
            "SELECT rootpage FROM sqlite_schema WHERE name = ?", (name,)
        ).fetchone()
    offset = (root - 1) * page_size + (100 if root == 1 else 0)
    with open(db, "r+b") as handle:
        handle.seek(offset)
        handle.write(random.Random(f"peerd-{name}").randbytes(64))
    return config


def peerd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_command(
        "peerd",
        [*args, "-c", str(config)],
        config.parent,
        timeout=START_TIMEOUT,
    )


# table or index -> how the one line names it
DAMAGED = {
    "messages": "table messages",
    "ix_messages_guid": "index ix_messages_guid on messages",
    "duplicates": "table duplicates",
    "ownership": "table ownership",
    "accounts": "table accounts",
    "mailboxes": "table mailboxes",
    "guid_history": "table guid_history",
    "mailbox_tombstones": "table mailbox_tombstones",
    "subscriptions": "table subscriptions",
    "message_meta": "table message_meta",
    "sync_log": "table sync_log",
    "alembic_version": "table alembic_version",
}


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_a_damaged_table_or_index_stops_the_node_with_one_line(
    template: Path, tmp_path: Path, name: str
) -> None:
    config = damaged_copy(template, tmp_path, name)
    try:
        run = peerd(config, "run")
    except subprocess.TimeoutExpired:
        pytest.fail(f"peerd started and served from a database with {name} damaged")
    assert run.returncode == EXIT_DATABASE_DAMAGED, run.stderr[-3000:]
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    (line,) = lines
    assert "database damaged" in line and DAMAGED[name] in line, line
    assert "peerd rebuild --from-partner" in line
    assert "Traceback" not in run.stderr


def test_check_db_says_the_same_with_the_daemon_stopped(template: Path, tmp_path: Path) -> None:
    config = damaged_copy(template, tmp_path, "messages")
    run = peerd(config, "check-db")
    assert run.returncode == EXIT_DATABASE_DAMAGED
    assert run.stdout == "" and run.stderr.count("\n") == 1, run.stderr
    assert "database damaged" in run.stderr and "table messages" in run.stderr
    assert (
        check_database(f"sqlite:///{tmp_path / 'var' / 'alpha' / 'peerd.db'}", full=True).ok
        is False
    )


def test_the_unit_does_not_restart_on_that_status() -> None:
    unit = (ROOT / "configs" / "peerd.service").read_text()
    prevent = [line for line in unit.splitlines() if line.startswith("RestartPreventExitStatus=")]
    assert prevent and str(EXIT_DATABASE_DAMAGED) in prevent[0].split("=", 1)[1].split()


def test_check_db_on_demand_on_a_running_node(template: Path, tmp_path: Path) -> None:
    config, _, _ = write_pair_configs(tmp_path, {"sync": {"sync_host": None}})
    db = tmp_path / "var" / "alpha" / "peerd.db"
    db.parent.mkdir(parents=True)
    shutil.copy(template, db)
    node = Daemon(config).start()
    try:
        run = peerctl(node, "check-db", "--full")
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("database: ok (sqlite quick_check+integrity_check"), run.stdout
        assert "database: ok (sqlite quick_check" in peerctl(node, "status").stdout
    finally:
        node.stop()


def test_postgresql_is_checked_with_amcheck(pg_url: str, tmp_path: Path) -> None:
    migrations.upgrade(pg_url)
    config = tmp_path / "pg.toml"
    config.write_text(
        to_toml(
            {
                "node": {"name": "alpha", "data_dir": "var/alpha"},
                "database": {"url": pg_url},
                "sync": {"sync_authname": "repl", "sync_password": "repl-secret"},
            }
        )
    )
    run = peerd(config, "check-db", "--full")
    assert run.returncode == 0, run.stderr
    assert "ok (postgresql amcheck" in run.stdout, run.stdout
    result = check_database(pg_url)
    assert result.ok and result.checked and result.method.startswith("amcheck")
