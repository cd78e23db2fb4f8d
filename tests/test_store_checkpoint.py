"""SQLite: a commit never copies the WAL back into the database file (that
wrote megabytes and fsynced the file inside the commit of whichever batch
crossed 1,000 WAL pages, so about one delivery in a hundred waited for it);
the store's checkpointer thread does it beside the commits."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
from pathlib import Path

from sqlalchemy.orm import Session

import migrations
from engine.models import MessageMeta
from engine.store import CHECKPOINT_IDLE, Store
from tests.harness.daemons import template_database


def test_commits_leave_the_checkpoint_to_the_checkpointer(tmp_path: Path) -> None:
    shutil.copyfile(template_database(), tmp_path / "peerd.db")
    db = tmp_path / "peerd.db"
    url = f"sqlite:///{db}"
    migrations.upgrade(url)
    store = Store(url, tmp_path / "data")
    try:
        store.write_sync(lambda s: None)
        time.sleep(CHECKPOINT_IDLE * 2)  # what the first commit left is checkpointed
        before = db.stat().st_size
        # Pages a migration freed (0013 dropped the full-text tables) are
        # reused before the file grows.
        with contextlib.closing(sqlite3.connect(db)) as plain:
            page_size, free = (
                plain.execute(f"PRAGMA {pragma}").fetchone()[0]
                for pragma in ("page_size", "freelist_count")
            )
        big = 6 * 1024 * 1024  # 1,500 pages of 4 KiB: over SQLite's 1,000-page autocheckpoint

        def write(session: Session) -> None:
            for i in range(24):
                session.add(MessageMeta(guid=f"{i:040x}", meta=bytes([i]) * (big // 24)))

        store.write_sync(write)
        assert db.stat().st_size == before  # the commit wrote the WAL only
        assert Path(f"{db}-wal").stat().st_size > big
        deadline = time.monotonic() + 10 * CHECKPOINT_IDLE
        while db.stat().st_size < before + big - free * page_size and time.monotonic() < deadline:
            time.sleep(0.05)
        assert db.stat().st_size >= before + big - free * page_size  # the checkpointer copied it
        assert store.stats.extra.get("checkpoints", 0) >= 1
        assert store.read_sync(lambda s: len(s.query(MessageMeta).all())) == 24
    finally:
        store.close()
