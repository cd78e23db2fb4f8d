"""``Store.busy``: whether a write is queued or committing (the full-text
indexer stores text only in the store's pauses, or its share of the time)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

import migrations
from engine.store import Store
from tests.harness.daemons import template_database


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Store:
    shutil.copyfile(template_database(), tmp_path / "peerd.db")
    url = f"sqlite:///{tmp_path / 'peerd.db'}"
    migrations.upgrade(url)
    return Store(url, tmp_path / "data")


def test_busy_while_a_write_is_queued_or_committing(sqlite_store: Store) -> None:
    store = sqlite_store
    try:
        assert not store.busy()
        running, release = threading.Event(), threading.Event()

        def slow(session: Session) -> int:
            running.set()
            release.wait(10)
            return 1

        first = store.submit(slow)
        assert running.wait(10)
        assert store.busy()  # committing
        second = store.submit(lambda s: 2)
        assert store.busy()  # and one queued behind it
        release.set()
        assert first.result(10) == 1 and second.result(10) == 2
        deadline = time.monotonic() + 10
        while store.busy() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not store.busy()
    finally:
        store.close()
