"""The store, on SQLite and on a real PostgreSQL server; the schema always comes from Alembic."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import migrations
from engine import accounts, delivery, mailbox, messages, synclog
from engine.errors import AlreadyExists, Corrupt, InvalidArgument, NoSuchAccount, OverQuota
from engine.flags import record_hash
from engine.models import MailboxTombstone, Message, SyncLogRow
from engine.store import Store

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'peerd.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    migrations.upgrade(url)
    s = Store(url, tmp_path / "data")
    try:
        yield s
    finally:
        s.close()


def put(store: Store, text: str) -> tuple[str, int]:
    data = f"Subject: {text}\r\nMessage-ID: <{text}@t>\r\n\r\n{text}\r\n".encode()
    guid, _ = store.spool.put(data)
    return guid, len(data)


def check_invariants(store: Store, name: str = "alice") -> None:
    """checksum == XOR of live record hashes; exists; quota_used == sum of live sizes."""

    def read(s: Any) -> None:
        acct = accounts.get_account(s, name)
        used = 0
        for box in mailbox.list_mailboxes(s, acct):
            live = messages.live_records(s, box)
            xor = 0
            for r in live:
                xor ^= record_hash(r.uid, r.guid, r.flags, r.internaldate)
            assert box.checksum == xor, box.name
            assert box.exists == len(live), box.name
            used += sum(r.size for r in live)
        assert acct.quota_used == used

    store.read_sync(read)


def test_account_lifecycle(store: Store) -> None:
    store.write_sync(lambda s: accounts.create_account(s, "alice", password="pw", quota_limit=1000))
    names = store.read_sync(
        lambda s: [m.name for m in mailbox.list_mailboxes(s, accounts.get_account(s, "alice"))]
    )
    assert names == ["INBOX"]
    with pytest.raises(AlreadyExists):
        store.write_sync(lambda s: accounts.create_account(s, "alice", password="pw"))
    with pytest.raises(InvalidArgument):
        store.write_sync(lambda s: accounts.create_account(s, "bad name", password="pw"))
    store.write_sync(lambda s: accounts.set_password(s, "alice", "new"))
    from engine.passwords import verify_password

    stored = store.read_sync(lambda s: accounts.get_account(s, "alice").password_hash)
    assert verify_password("new", stored) and not verify_password("pw", stored)
    store.write_sync(lambda s: accounts.delete_account(s, "alice"))
    with pytest.raises(NoSuchAccount):
        store.read_sync(lambda s: accounts.get_account(s, "alice"))


def test_mailboxes_rename_keeps_uniqueid_and_moves_children(store: Store) -> None:
    def setup(s: Any) -> dict[str, str]:
        acct = accounts.create_account(s, "alice", password="pw")
        a = mailbox.create_mailbox(s, acct, "Work")
        b = mailbox.create_mailbox(s, acct, "Work/2026")
        mailbox.subscribe(s, acct, "Work/2026")
        return {"Work": a.uniqueid, "Work/2026": b.uniqueid}

    ids = store.write_sync(setup)
    store.write_sync(
        lambda s: mailbox.rename_mailbox(s, accounts.get_account(s, "alice"), "Work", "Jobs")
    )

    def read(s: Any) -> tuple[dict[str, str], list[str]]:
        acct = accounts.get_account(s, "alice")
        return {m.name: m.uniqueid for m in mailbox.list_mailboxes(s, acct)}, mailbox.subscriptions(
            s, acct
        )

    boxes, subs = store.read_sync(read)
    assert boxes["Jobs"] == ids["Work"] and boxes["Jobs/2026"] == ids["Work/2026"]
    assert subs == ["INBOX", "Jobs/2026"]
    store.write_sync(lambda s: mailbox.delete_mailbox(s, accounts.get_account(s, "alice"), "Jobs"))
    tombs = store.read_sync(lambda s: list(s.scalars(select(MailboxTombstone.uniqueid))))
    assert tombs == [ids["Work"]]
    with pytest.raises(InvalidArgument):
        store.write_sync(
            lambda s: mailbox.delete_mailbox(s, accounts.get_account(s, "alice"), "inbox")
        )


def test_append_flags_expunge_copy_move_keep_invariants(store: Store) -> None:
    store.write_sync(
        lambda s: accounts.create_account(s, "alice", password="pw", quota_limit=10_000)
    )
    guids = [put(store, f"m{i}") for i in range(4)]

    def fill(s: Any) -> list[int]:
        acct = accounts.get_account(s, "alice")
        box = mailbox.get_mailbox(s, acct, "INBOX")
        return [
            messages.append(s, acct, box, guid=g, size=n, internaldate=NOW).modseq for g, n in guids
        ]

    modseqs = store.write_sync(fill)
    assert modseqs == sorted(set(modseqs))
    check_invariants(store)
    files_before = len(list(store.spool.guids()))

    def work(s: Any) -> tuple[Any, Any]:
        acct = accounts.get_account(s, "alice")
        inbox = mailbox.get_mailbox(s, acct, "INBOX")
        change = messages.set_flags(s, acct, inbox, [1, 2], ["\\Seen", "$Label1"], mode="add")
        assert {r.modseq for r in change.changed} == {inbox.highestmodseq}
        refused = messages.set_flags(s, acct, inbox, [1], ["\\Flagged"], unchangedsince=1)
        archive = mailbox.create_mailbox(s, acct, "Archive")
        copied = messages.copy_messages(s, acct, inbox, archive, [1, 2])
        moved = messages.move_messages(s, acct, inbox, archive, [3])
        messages.expunge(s, acct, inbox, [4])
        return refused, (copied, moved)

    refused, (copied, moved) = store.write_sync(work)
    assert refused.modified == (1,)
    assert copied.source_uids == (1, 2) and copied.dest_uids == (1, 2)
    assert moved.dest_uids == (3,)
    assert len(list(store.spool.guids())) == files_before  # copy and move wrote no bytes
    check_invariants(store)
    expunged = store.read_sync(
        lambda s: [
            (m.uid, m.expunged)
            for m in s.scalars(select(Message).order_by(Message.id))
            if m.expunged
        ]
    )
    assert {uid for uid, _ in expunged} == {3, 4}  # tombstones kept


def test_quota_is_enforced_and_a_failed_write_leaves_nothing(store: Store) -> None:
    store.write_sync(lambda s: accounts.create_account(s, "alice", password="pw", quota_limit=100))
    guid, size = put(store, "x" * 200)

    def over(s: Any) -> None:
        acct = accounts.get_account(s, "alice")
        messages.append(
            s, acct, mailbox.get_mailbox(s, acct, "INBOX"), guid=guid, size=size, internaldate=NOW
        )

    store.write_sync(
        lambda s: synclog.acknowledge(s, [r for p in synclog.pending(s) for r in p.rows])
    )
    with pytest.raises(OverQuota):
        store.write_sync(over)
    assert store.read_sync(lambda s: synclog.depth(s)) == 0
    check_invariants(store)


def test_sync_log_is_one_row_per_mailbox_and_acknowledge_keeps_newer_changes(store: Store) -> None:
    store.write_sync(lambda s: accounts.create_account(s, "alice", password="pw"))

    def deliver_one(text: str) -> None:
        guid, size = put(store, text)

        def op(s: Any) -> None:
            acct = accounts.get_account(s, "alice")
            messages.append(
                s,
                acct,
                mailbox.get_mailbox(s, acct, "INBOX"),
                guid=guid,
                size=size,
                internaldate=NOW,
            )

        store.write_sync(op)

    for i in range(5):
        deliver_one(f"a{i}")
    rows = store.read_sync(
        lambda s: list(s.execute(select(SyncLogRow.kind, SyncLogRow.generation)))
    )
    assert ("append", 5) in [(k, g) for k, g in rows]
    snapshot = store.read_sync(lambda s: synclog.pending(s, ["alice"])[0].rows)
    deliver_one("during-sync")
    store.write_sync(lambda s: synclog.acknowledge(s, snapshot))
    left = store.read_sync(lambda s: synclog.pending(s, ["alice"]))
    assert left and left[0].kinds == {"append"}  # the change made during the sync stays


def test_group_commit_isolates_a_failing_write(store: Store) -> None:
    store.write_sync(
        lambda s: accounts.create_account(s, "alice", password="pw", quota_limit=50_000)
    )
    payloads = [put(store, f"g{i}") for i in range(40)]

    def op(guid: str, size: int, fail: bool) -> Any:
        def run(s: Any) -> int:
            acct = accounts.get_account(s, "alice")
            box = mailbox.get_mailbox(s, acct, "INBOX")
            record = messages.append(s, acct, box, guid=guid, size=size, internaldate=NOW)
            if fail:
                raise InvalidArgument("this one fails after writing")
            return record.uid

        return run

    futures = [store.submit(op(g, n, i % 7 == 3)) for i, (g, n) in enumerate(payloads)]
    done = concurrent.futures.wait(futures)
    assert not done.not_done
    ok = [f.result() for f in futures if f.exception() is None]
    failed = [f for f in futures if f.exception() is not None]
    assert len(failed) == len([i for i in range(40) if i % 7 == 3])
    assert sorted(ok) == list(range(1, len(ok) + 1))  # failed writes used no UID
    assert store.stats.largest_batch > 1
    check_invariants(store)


def test_spool_verifies_guids_and_cleans_temp_files(store: Store, tmp_path: Path) -> None:
    guid, _ = put(store, "verify")
    assert store.spool.read(guid).startswith(b"Subject: verify")
    store.spool.path(guid).write_bytes(b"tampered")
    with pytest.raises(Corrupt):
        store.spool.read(guid)
    leftover = store.spool.tmp / "deadbeef.1.2.3"
    leftover.write_bytes(b"half a message")
    from engine.spool import Spool

    Spool(store.spool.root)
    assert not leftover.exists()


def test_delivery_plus_addressing_local_domains_and_duplicates(store: Store) -> None:
    def setup(s: Any) -> None:
        acct = accounts.create_account(s, "alice", password="pw")
        mailbox.create_mailbox(s, acct, "Lists")
        accounts.create_account(s, "bob@other.test", password="pw")

    store.write_sync(setup)
    options = delivery.DeliveryOptions(frozenset({"example.test"}), dt.timedelta(hours=1))

    def send(rcpt: str, message_id: str | None) -> delivery.DeliveryResult:
        guid, size = put(store, f"d-{rcpt}-{message_id}")
        recipient = delivery.parse_recipient(rcpt, options.local_domains)
        return store.write_sync(
            lambda s: delivery.deliver(
                s,
                recipient,
                guid=guid,
                size=size,
                internaldate=NOW,
                message_id=message_id,
                meta=None,
                options=options,
            )
        )

    assert send("alice+Lists@example.test", "<1@x>").mailbox == "Lists"
    assert send("alice+Nope@example.test", "<2@x>").mailbox == "INBOX"
    assert send("bob@other.test", "<3@x>").account == "bob@other.test"
    assert send("alice@example.test", "<4@x>").duplicate is False
    assert send("alice@example.test", "<4@x>").duplicate is True
    assert send("alice+Lists@example.test", "<4@x>").duplicate is False  # per mailbox
    with pytest.raises(NoSuchAccount):
        send("carol@example.test", "<5@x>")


def test_a_write_that_breaks_the_transaction_fails_alone(store: Store) -> None:
    store.write_sync(lambda s: accounts.create_account(s, "alice", password="pw"))

    def huge(s: Any) -> None:
        accounts.get_account(s, "alice").quota_limit = 2**70  # the database cannot hold it
        s.flush()

    def ok(n: int) -> Any:
        return lambda s: mailbox.create_mailbox(s, accounts.get_account(s, "alice"), f"Box{n}").name

    futures = [store.submit(ok(1)), store.submit(huge), store.submit(ok(2))]
    assert futures[0].result() == "Box1" and futures[2].result() == "Box2"
    assert futures[1].exception() is not None
    limit = store.read_sync(lambda s: accounts.get_account(s, "alice").quota_limit)
    assert limit is None
