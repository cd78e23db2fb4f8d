"""``Store.busy``: whether a write is queued or committing (the full-text
indexer stores text only in the store's pauses, or its share of the time)."""

from __future__ import annotations

import threading
import time

from sqlalchemy.orm import Session

from engine.store import Store


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
