"""``Store.write(..., ride=s)``: a write that starts no commit of its own for
up to ``s`` seconds and joins the next batch another write starts (the parse
walker's rows ride on the deliveries' commits instead of adding one each)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.models import Duplicate
from engine.store import Store


def _note(value: str) -> Callable[[Session], str]:
    """A write of one row (a duplicates row serves: any table would)."""

    def write(session: Session) -> str:
        session.add(Duplicate(mailbox_uniqueid="rider", message_id=value))
        return value

    return write


def _notes(store: Store) -> list[str]:
    return store.read_sync(
        lambda s: sorted(
            s.scalars(select(Duplicate.message_id).where(Duplicate.mailbox_uniqueid == "rider"))
        )
    )


def test_a_rider_alone_commits_once_its_time_is_up(sqlite_store: Store) -> None:
    store = sqlite_store
    try:
        before = store.stats.batches

        async def ride() -> tuple[str, float]:
            started = time.monotonic()
            value = await store.write(_note("alone"), ride=0.4)
            return value, time.monotonic() - started

        value, took = asyncio.run(ride())
        assert value == "alone"
        assert took >= 0.35  # it waited for company
        assert store.stats.batches == before + 1
        assert _notes(store) == ["alone"]
    finally:
        store.close()


def test_a_rider_joins_the_next_write_and_shares_its_commit(sqlite_store: Store) -> None:
    store = sqlite_store
    try:
        before = store.stats.batches

        async def both() -> tuple[list[str], float]:
            started = time.monotonic()
            rider = asyncio.ensure_future(store.write(_note("rider"), ride=30.0))
            await asyncio.sleep(0.2)
            assert not rider.done()  # no commit of its own yet
            results = await asyncio.gather(rider, store.write(_note("driver")))
            return list(results), time.monotonic() - started

        results, took = asyncio.run(both())
        assert results == ["rider", "driver"]
        assert took < 10  # not its 30 s
        assert store.stats.batches == before + 1  # one commit for the two
        assert _notes(store) == ["driver", "rider"]
    finally:
        store.close()


def test_a_waiting_rider_commits_when_the_store_closes(sqlite_store: Store) -> None:
    store = sqlite_store
    outcome: list[object] = []

    async def ride() -> None:
        task = asyncio.ensure_future(store.write(_note("late"), ride=60.0))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await asyncio.to_thread(store.close)
        outcome.append(await task)
        outcome.append(time.monotonic() - started)

    asyncio.run(ride())
    assert outcome[0] == "late"
    assert isinstance(outcome[1], float) and outcome[1] < 10
    reopened = Store(store.url, store.data_dir, owner=False)
    try:
        assert _notes(reopened) == ["late"]
    finally:
        reopened.close()
