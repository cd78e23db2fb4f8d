"""Sieve scripts and vacation records in the store (SQLite and PostgreSQL), and
their trip through the sync protocol's state, push and apply."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session

import migrations
from engine import accounts, sieve, syncwire
from engine.apply import apply_push
from engine.compare import compare
from engine.errors import (
    NoSuchScript,
    ScriptActive,
    ScriptExists,
    SyncProtocolError,
    TooManyScripts,
)
from engine.models import Account
from engine.passwords import MIN_LN, hash_password
from engine.store import Store
from engine.syncstate import read_account_state

# A real scrypt hash at the least cost (ln=15 is 0.15 s of CPU an account).
PW = hash_password("pw", MIN_LN)


def on(store: Store, name: str, fn: Callable[[Session, Account], Any]) -> Any:
    return store.write_sync(lambda s: fn(s, accounts.get_account(s, name)))


def test_scripts_per_account(store: Store) -> None:
    for name in ("alice", "bob"):

        def create(s: Session, n: str = name) -> object:
            return accounts.create_account(s, n, password_hash=PW)

        store.write_sync(create)
    on(store, "alice", lambda s, a: sieve.put_script(s, a, "one", "keep;", max_scripts=2))
    on(store, "alice", lambda s, a: sieve.put_script(s, a, "two", "stop;", max_scripts=2))
    with pytest.raises(TooManyScripts):
        on(store, "alice", lambda s, a: sieve.put_script(s, a, "three", "keep;", max_scripts=2))
    # Replacing an existing one is not a new script.
    on(store, "alice", lambda s, a: sieve.put_script(s, a, "one", "discard;", max_scripts=2))
    on(store, "alice", lambda s, a: sieve.set_active(s, a, "one"))
    assert on(store, "alice", sieve.list_scripts) == [("one", True), ("two", False)]
    assert store.read_sync(lambda s: sieve.active_script(s, "alice")) == ("one", "discard;")
    assert store.read_sync(lambda s: sieve.active_script(s, "bob")) is None
    with pytest.raises(ScriptActive):
        on(store, "alice", lambda s, a: sieve.delete_script(s, a, "one"))
    with pytest.raises(ScriptExists):
        on(store, "alice", lambda s, a: sieve.rename_script(s, a, "two", "one"))
    on(store, "alice", lambda s, a: sieve.rename_script(s, a, "one", "main"))
    assert on(store, "alice", sieve.list_scripts) == [("main", True), ("two", False)]
    with pytest.raises(NoSuchScript):
        on(store, "alice", lambda s, a: sieve.set_active(s, a, "one"))
    on(store, "alice", lambda s, a: sieve.set_active(s, a, ""))
    assert store.read_sync(lambda s: sieve.active_script(s, "alice")) is None
    assert on(store, "bob", sieve.list_scripts) == []


def test_vacation_reply_once(store: Store) -> None:
    store.write_sync(lambda s: accounts.create_account(s, "alice", password_hash=PW))
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)

    def due(when: dt.datetime, key: str = "k1") -> bool:
        return bool(on(store, "alice", lambda s, a: sieve.vacation_due(s, a, key, 3, when)))

    assert due(now)
    assert not due(now + dt.timedelta(days=2))
    assert due(now, "k2")  # another sender or handle
    assert due(now + dt.timedelta(days=3, seconds=1))


def test_sieve_state_replicates_through_push(store: Store, tmp_path: Any) -> None:
    """The owner's scripts and records, compared with an empty replica, pushed
    through the wire encoding and applied, make the replica's the same."""
    url = f"sqlite:///{tmp_path / 'replica.db'}"
    migrations.upgrade(url)
    replica = Store(url, tmp_path / "replica")
    try:
        for s in (store, replica):
            s.write_sync(lambda x: accounts.create_account(x, "alice", password_hash=PW))
        on(store, "alice", lambda s, a: sieve.put_script(s, a, "main", "keep;", max_scripts=5))
        on(store, "alice", lambda s, a: sieve.put_script(s, a, "old", "stop;", max_scripts=5))
        on(store, "alice", lambda s, a: sieve.set_active(s, a, "main"))
        on(store, "alice", lambda s, a: sieve.vacation_due(s, a, "k" * 64, 7))
        on(replica, "alice", lambda s, a: sieve.put_script(s, a, "gone", "keep;", max_scripts=5))
        owner = store.read_sync(lambda s: read_account_state(s, "alice"))
        theirs = replica.read_sync(lambda s: read_account_state(s, "alice"))
        _, push = compare(owner, {}, theirs, frozenset())
        assert push.sieve == (("main", "keep;", True), ("old", "stop;", False))
        wire = syncwire.decode_push(
            syncwire.decode_json(syncwire.encode_json(syncwire.encode_push(push)))
        )
        replica.write_sync(lambda s: apply_push(s, wire, lambda guid: True))
        after = replica.read_sync(lambda s: read_account_state(s, "alice"))
        assert after.sieve == owner.sieve and after.vacations == owner.vacations
        assert len(after.vacations) == 1
        # Equal now: the next compare pushes no Sieve part.
        _, again = compare(owner, {}, after, frozenset())
        assert again.sieve is None and again.vacations is None
    finally:
        replica.close()


@pytest.mark.parametrize(
    "bad",
    [
        [["a", "keep;", True], ["b", "keep;", True]],  # two active
        [["a", "keep;"]],
        [["a", 1, False]],
        [["x" * 513, "keep;", False]],
    ],
)
def test_sieve_part_is_checked(bad: Any) -> None:
    with pytest.raises(SyncProtocolError):
        syncwire.decode_push({"account": "alice", "sieve": bad})


def test_vacation_part_is_checked() -> None:
    with pytest.raises(SyncProtocolError):
        syncwire.decode_push({"account": "a", "vacations": [["k", "2026-12-01T00:00:00"]]})
    with pytest.raises(SyncProtocolError):
        syncwire.decode_push({"account": "a", "vacations": [["k", "tomorrow"]]})
