"""``peerd backup`` of a running node under delivery load, and ``peerd restore``
into a fresh node (docs/backup.md): every message acknowledged before the
backup started is in the restored node, readable over IMAP, its bytes
hashing to its GUID. On SQLite (online backup API) and PostgreSQL
(``pg_dump`` of an exported snapshot). A backup whose spool lacks a file the
database names fails and is not marked complete.
"""

from __future__ import annotations

import hashlib
import imaplib
import json
import re
import smtplib
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tests.harness.clients import run_command
from tests.harness.postgres import PgServer
from tests.nodes import Node, make_single, running

ACCOUNT = "alice"


class Load:
    """Deliveries over LMTP in a thread; remembers when each 250 came."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.acked: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with smtplib.LMTP("127.0.0.1", self.node.ports["lmtp"], timeout=30) as lmtp:
                n = 0
                while not self.stop.is_set():
                    n += 1
                    subject = f"load {n}"
                    body = f"Subject: {subject}\r\nMessage-ID: <{n}@load>\r\n\r\n{'x' * n}\r\n"
                    lmtp.sendmail("s@example.test", [f"{ACCOUNT}@example.test"], body)
                    self.acked.append((time.time(), subject))
        except BaseException as exc:  # reported by the test
            self.error = exc

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)

    def wait_for(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"only {len(self.acked)} deliveries"
            time.sleep(0.05)


def _peerd(node: Node, command: str, *rest: str) -> subprocess.CompletedProcess[str]:
    return run_command(
        "peerd",
        [command, "-c", str(node.config), *rest],
        node.workdir,
        timeout=300,
    )


def _fresh(workdir: Path, name: str = "alpha", db: dict[str, Any] | None = None) -> Node:
    workdir.mkdir()
    return make_single(workdir, name, {"database": db} if db else None)


def _readable(node: Node) -> dict[str, str]:
    """Subject -> GUID of every message in the INBOX, read over IMAP; each one's
    bytes must hash to the GUID the store lists for it."""
    listed = {r["uid"]: r["guid"] for r in node.mailbox(ACCOUNT)["messages"]}
    imap = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=30)
    try:
        imap.login(ACCOUNT, "secret")
        imap.select("INBOX", readonly=True)
        _, data = imap.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
    finally:
        imap.logout()
    found: dict[str, str] = {}
    for item in data:
        if not isinstance(item, tuple):
            continue
        uid = re.search(rb"UID (\d+)", item[0])
        subject = re.search(rb"Subject: (load \d+)", item[1])
        assert uid and subject, item[0]
        guid = hashlib.sha1(item[1]).hexdigest()
        assert listed[int(uid.group(1))] == guid
        found[subject.group(1).decode()] = guid
    return found


def _backup_under_load_and_restore(
    tmp_path: Path, source_db: dict[str, Any], fresh_db: dict[str, Any]
) -> None:
    old = _fresh(tmp_path / "old", db=source_db)
    backup_dir = tmp_path / "backup"
    with running(old):
        old.add_account(ACCOUNT)
        with Load(old) as load:
            load.wait_for(30)
            started = time.time()
            made = _peerd(old, "backup", str(backup_dir))
            during = len(load.acked)
            load.wait_for(during + 10)  # the node kept delivering after the backup
            assert load.error is None, load.error
    assert made.returncode == 0, made.stderr
    assert "every delivery acknowledged before" in made.stdout
    manifest = json.loads((backup_dir / "backup.json").read_text())
    assert manifest["node"] == "alpha" and manifest["files"] >= 30
    before = {subject for at, subject in load.acked if at < started}
    assert len(before) >= 30

    new = _fresh(tmp_path / "new", db=fresh_db)
    restored = _peerd(new, "restore", str(backup_dir))
    assert restored.returncode == 0, restored.stderr
    with running(new):
        found = _readable(new)
    missing = sorted(before - set(found), key=lambda s: int(s.split()[1]))
    assert not missing, f"acknowledged before the backup but not restored: {missing}"
    # A second restore into the now-used node is refused, changing nothing.
    again = _peerd(new, "restore", str(backup_dir))
    assert again.returncode == 1 and "restore into a node with no" in again.stderr


def test_backup_under_load_and_restore_on_sqlite(tmp_path: Path) -> None:
    _backup_under_load_and_restore(tmp_path, {}, {})


def test_backup_under_load_and_restore_on_postgresql(tmp_path: Path, pg_server: PgServer) -> None:
    _backup_under_load_and_restore(
        tmp_path, {"url": pg_server.create_database()}, {"url": pg_server.create_database()}
    )


def test_a_backup_missing_a_message_file_fails_and_is_not_marked_complete(tmp_path: Path) -> None:
    node = make_single(tmp_path)
    with running(node):
        node.add_account(ACCOUNT)
        with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30) as lmtp:
            for n in range(3):
                lmtp.sendmail(
                    "s@example.test", [f"{ACCOUNT}@example.test"], f"Subject: m{n}\r\n\r\n"
                )
        guid = node.mailbox(ACCOUNT)["messages"][1]["guid"]
        (tmp_path / "var" / "alpha" / "spool" / guid[:2] / guid).unlink()
        made = _peerd(node, "backup", str(tmp_path / "backup"))
    assert made.returncode == 1
    assert f"1 message file(s) not copied: {guid}: missing from" in made.stderr
    assert not (tmp_path / "backup" / "backup.json").exists()
    # Into a directory that is not empty: refused before anything is copied.
    again = _peerd(node, "backup", str(tmp_path / "backup"))
    assert again.returncode == 1 and "is not empty" in again.stderr


def test_restore_refuses_a_backup_of_another_node(tmp_path: Path) -> None:
    node = _fresh(tmp_path / "a")
    with running(node):
        node.add_account(ACCOUNT)
        assert _peerd(node, "backup", str(tmp_path / "backup")).returncode == 0
    other = _fresh(tmp_path / "b", "beta")
    refused = _peerd(other, "restore", str(tmp_path / "backup"))
    assert refused.returncode == 1
    assert "the backup is of node alpha, this config is node beta" in refused.stderr
    assert not (tmp_path / "b" / "var" / "beta" / "peerd.db").exists()
