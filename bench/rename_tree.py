"""RENAME of a mailbox with many children, over IMAP on a real daemon.

    .venv/bin/python -m bench.rename_tree [--children 100000] [--runs 3]

Each run starts a fresh node (SQLite, its partner named but not running, so
nothing replicates meanwhile), gives one account a mailbox ``tree`` with
``--children`` children (``tree/0`` ...) and as many subscriptions, written
straight into its database (100,000 IMAP CREATEs would take minutes), then
times ``RENAME tree moved`` through imaplib: the one transaction renames
every child, logs each for replication and moves the subscriptions, and
holds the store's only writer (every delivery of the node) meanwhile. It
prints the wall time and the daemon's CPU over the command, and checks
that every child moved.
"""

from __future__ import annotations

import argparse
import imaplib
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.lmtp_ingest import cpu_seconds
from tests.harness.daemons import make_lone
from tests.nodes import Node, running

__all__ = ["main"]


def seed(node: Node, account: str, children: int) -> None:
    """``tree/0`` ... and a subscription to each, in the node's database."""
    with sqlite3.connect(node.db_path, timeout=60) as db:
        (account_id,) = db.execute("SELECT id FROM accounts WHERE name = ?", (account,)).fetchone()
        db.executemany(
            "INSERT INTO mailboxes (account_id, uniqueid, name, uidvalidity, last_uid,"
            ' highestmodseq, acl, checksum, "exists", sync_base, created_at)'
            " VALUES (?, ?, ?, ?, 0, 1, '{}', 0, 0, 0, '2026-01-01 00:00:00')",
            ((account_id, uuid.uuid4().hex, f"tree/{n}", 1000 + n) for n in range(children)),
        )
        db.executemany(
            "INSERT INTO subscriptions (account_id, name) VALUES (?, ?)",
            ((account_id, f"tree/{n}") for n in range(children)),
        )


def one_run(children: int) -> tuple[float, float]:
    """(wall s, daemon CPU s) of one RENAME of a tree of ``children``."""
    with tempfile.TemporaryDirectory(prefix="peerd-bench-") as tmp:
        node = make_lone(Path(tmp))
        with running(node):
            node.add_account("dave")
            client = imaplib.IMAP4("127.0.0.1", node.port("imap"), timeout=600)
            try:
                client.login("dave", "secret")
                assert client.create("tree")[0] == "OK"
                seed(node, "dave", children)
                pid = node.pid
                assert pid is not None
                before = cpu_seconds(pid)
                started = time.perf_counter()
                typ, data = client.rename("tree", "moved")
                wall = time.perf_counter() - started
                cpu = cpu_seconds(pid) - before
                assert typ == "OK", data
                typ, found = client.list('""', "moved/*")
                assert typ == "OK" and len(found) == children, len(found)
            finally:
                client.logout()
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    walls, cpus = [], []
    for run in range(1, args.runs + 1):
        wall, cpu = one_run(args.children)
        walls.append(wall)
        cpus.append(cpu)
        print(f"run {run}: RENAME of {args.children} children {wall:.2f} s, daemon CPU {cpu:.2f} s")
    print(
        f"median of {args.runs}: {statistics.median(walls):.2f} s "
        f"({min(walls):.2f}-{max(walls):.2f}), daemon CPU {statistics.median(cpus):.2f} s"
    )


if __name__ == "__main__":
    main()
