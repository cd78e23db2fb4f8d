"""engine.mailview: what IMAP and POP3 read and write, as values, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import pytest
from sqlalchemy.orm import Session

from engine import accounts, mailview
from engine.errors import AlreadyExists, InvalidArgument, NoSuchAccount, NoSuchMailbox
from engine.models import Account
from engine.passwords import MIN_LN, hash_password
from engine.store import Store

# A real scrypt hash at the least cost (ln=15 is 0.15 s of CPU an account).
PW = hash_password("pw", MIN_LN)

T = TypeVar("T")
WHEN = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


def write(store: Store, fn: Callable[[Session, Account], T]) -> T:
    return store.write_sync(lambda s: fn(s, accounts.get_account(s, "alice")))


def append(store: Store, name: str, text: str, flags: tuple[str, ...] = ()) -> int:
    data = f"Subject: {text}\r\n\r\n{text}\r\n".encode()
    guid, _ = store.spool.put(data)
    done = write(
        store,
        lambda s, a: mailview.append(
            s, a, name, guid=guid, size=len(data), flags=flags, internaldate=WHEN
        ),
    )
    return done.uid


@pytest.fixture
def alice(store: Store) -> Store:
    store.write_sync(lambda s: accounts.create_account(s, "alice", password_hash=PW))
    for n in range(4):
        append(store, "INBOX", f"m{n}")
    return store


def test_a_snapshot_is_shared_until_the_mailbox_changes(alice: Store) -> None:
    first = alice.read_sync(lambda s: mailview.snapshot(s, "alice", "INBOX"))
    assert [r.uid for r in first.records] == [1, 2, 3, 4]
    assert first.uidnext == 5 and first.name == "INBOX"
    again = alice.read_sync(lambda s: mailview.snapshot_of(s, first.mailbox_id))
    assert again.records is first.records  # read once, shared by every session
    stored = write(
        alice,
        lambda s, a: mailview.store_flags(s, a, first.mailbox_id, [2, 3], ["\\Seen"], mode="add"),
    )
    after = alice.read_sync(lambda s: mailview.snapshot_of(s, first.mailbox_id))
    assert after.records is not first.records
    # The changed records come back as they now are in the mailbox.
    assert stored.changed == after.records[1:3]
    assert [r.flags for r in after.records] == ["", "\\Seen", "\\Seen", ""]
    assert after.highestmodseq > first.highestmodseq
    version = alice.read_sync(lambda s: mailview.version(s, first.mailbox_id))
    assert version == mailview.Version(after.highestmodseq, after.uidnext)


def test_a_snapshot_carries_the_keywords_of_its_records(alice: Store) -> None:
    # Found once with the records (SELECT's FLAGS), kept with them, and
    # found again when a STORE changes them.
    box = alice.read_sync(lambda s: mailview.snapshot(s, "alice", "INBOX"))
    assert box.keywords == frozenset()
    write(
        alice,
        lambda s, a: mailview.store_flags(
            s, a, box.mailbox_id, [1, 3], ["$Work", "\\Seen"], mode="add"
        ),
    )
    write(
        alice, lambda s, a: mailview.store_flags(s, a, box.mailbox_id, [2], ["$Later"], mode="add")
    )
    after = alice.read_sync(lambda s: mailview.snapshot_of(s, box.mailbox_id))
    assert after.keywords == {"$Work", "$Later"}
    again = alice.read_sync(lambda s: mailview.snapshot(s, "alice", "INBOX"))
    assert again.records is after.records and again.keywords == after.keywords


def test_unchangedsince_refuses_records_changed_since(alice: Store) -> None:
    box = alice.read_sync(lambda s: mailview.snapshot(s, "alice", "INBOX"))
    write(alice, lambda s, a: mailview.store_flags(s, a, box.mailbox_id, [1], ["$A"], mode="add"))
    stored = write(
        alice,
        lambda s, a: mailview.store_flags(
            s, a, box.mailbox_id, [1, 2], ["$B"], mode="replace", unchangedsince=box.highestmodseq
        ),
    )
    assert stored.modified == (1,)
    assert [r.uid for r in stored.changed] == [2]


def test_expunged_uids_are_vanished_in_the_same_read_as_the_snapshot(alice: Store) -> None:
    box = alice.read_sync(lambda s: mailview.snapshot(s, "alice", "INBOX"))
    write(
        alice,
        lambda s, a: mailview.store_flags(s, a, box.mailbox_id, [2], ["\\Deleted"], mode="add"),
    )
    assert write(alice, lambda s, a: mailview.expunge(s, a, box.mailbox_id)) == (2,)
    assert write(alice, lambda s, a: mailview.expunge(s, a, box.mailbox_id, [3])) == (3,)
    now, gone = alice.read_sync(
        lambda s: mailview.snapshot_and_vanished(s, "alice", "INBOX", box.uidvalidity, 1)
    )
    assert [r.uid for r in now.records] == [1, 4] and gone == (2, 3)
    _, other = alice.read_sync(
        lambda s: mailview.snapshot_and_vanished(s, "alice", "INBOX", box.uidvalidity + 1, 1)
    )
    assert other == ()
    assert alice.read_sync(lambda s: mailview.live_uids(s, box.mailbox_id, [4, 3, 1])) == (1, 4)


def test_a_snapshot_by_name_is_the_snapshot_by_id_and_says_what_is_missing(alice: Store) -> None:
    write(alice, lambda s, a: mailview.create_mailbox(s, a, "Work/Q1"))
    alice.write_sync(lambda s: accounts.create_account(s, "bob", password="pw"))
    for asked in ("INBOX", "inbox", "Work/Q1"):
        box = alice.read_sync(partial(mailview.snapshot, account="alice", name=asked))
        again = alice.read_sync(partial(mailview.snapshot_of, mailbox_id=box.mailbox_id))
        assert box == again and box.name == ("INBOX" if asked == "inbox" else asked)
    bobs = alice.read_sync(lambda s: mailview.snapshot(s, "bob", "INBOX"))
    assert bobs.mailbox_id != box.mailbox_id and bobs.records == ()
    with pytest.raises(NoSuchMailbox):
        alice.read_sync(lambda s: mailview.snapshot(s, "alice", "work/q1"))
    with pytest.raises(NoSuchMailbox):
        alice.read_sync(lambda s: mailview.snapshot(s, "bob", "Work/Q1"))
    with pytest.raises(NoSuchAccount):
        alice.read_sync(lambda s: mailview.snapshot(s, "carol", "INBOX"))
    with pytest.raises(NoSuchAccount):  # the account is looked for first, as always
        alice.read_sync(lambda s: mailview.snapshot(s, "carol", "a//b"))
    with pytest.raises(InvalidArgument):
        alice.read_sync(lambda s: mailview.snapshot(s, "alice", "a//b"))


def test_a_deleted_mailbox_is_gone_for_an_open_session(alice: Store) -> None:
    write(alice, lambda s, a: mailview.create_mailbox(s, a, "work/old"))
    assert append(alice, "work/old", "x") == 1
    box = alice.read_sync(lambda s: mailview.snapshot(s, "alice", "work/old"))
    write(alice, lambda s, a: mailview.delete_mailbox(s, a, "work/old"))
    with pytest.raises(NoSuchMailbox):
        alice.read_sync(lambda s: mailview.snapshot_of(s, box.mailbox_id))
    assert alice.read_sync(lambda s: mailview.version(s, box.mailbox_id)) is None
    assert alice.read_sync(lambda s: mailview.live_uids(s, box.mailbox_id, [1])) == ()
    with pytest.raises(NoSuchMailbox):
        write(alice, lambda s, a: mailview.expunge(s, a, box.mailbox_id))


def test_create_makes_superiors_and_refuses_an_existing_name(alice: Store) -> None:
    write(alice, lambda s, a: mailview.create_mailbox(s, a, "a/b/c"))
    listing = alice.read_sync(lambda s: mailview.listing(s, "alice"))
    assert listing.names == ("INBOX", "a", "a/b", "a/b/c")
    assert listing.subscriptions == ("INBOX",)
    with pytest.raises(AlreadyExists):
        write(alice, lambda s, a: mailview.create_mailbox(s, a, "a/b"))


def test_renaming_inbox_moves_its_messages(alice: Store) -> None:
    write(alice, lambda s, a: mailview.rename_mailbox(s, a, "INBOX", "old"))
    inbox = alice.read_sync(lambda s: mailview.snapshot(s, "alice", "INBOX"))
    old = alice.read_sync(lambda s: mailview.snapshot(s, "alice", "old"))
    assert inbox.records == () and len(old.records) == 4


def test_copy_move_and_status(alice: Store) -> None:
    box = alice.read_sync(lambda s: mailview.snapshot(s, "alice", "INBOX"))
    with pytest.raises(NoSuchMailbox):
        write(
            alice,
            lambda s, a: mailview.copy_messages(s, a, box.mailbox_id, [1], "nope", move=False),
        )
    write(alice, lambda s, a: mailview.create_mailbox(s, a, "Trash"))
    moved = write(
        alice, lambda s, a: mailview.copy_messages(s, a, box.mailbox_id, [1, 2], "Trash", move=True)
    )
    assert moved.source_uids == (1, 2) and moved.dest_uids == (1, 2)
    write(
        alice, lambda s, a: mailview.store_flags(s, a, box.mailbox_id, [3], ["\\Seen"], mode="add")
    )
    status = alice.read_sync(lambda s: mailview.status(s, "alice", "INBOX"))
    assert (status.messages, status.unseen, status.deleted, status.uidnext) == (2, 1, 0, 5)
    trash = alice.read_sync(lambda s: mailview.status(s, "alice", "Trash"))
    assert trash.messages == 2 and trash.size == status.size  # two messages of one size each


def test_many_mailboxes_read_and_claimed_in_one_go(alice: Store) -> None:
    """snapshots_of and claim_recent_many (one wake-up of IDLE sessions) give
    what snapshot_of and claim_recent give one mailbox at a time."""
    write(alice, lambda s, a: mailview.create_mailbox(s, a, "Work"))
    append(alice, "Work", "w1")
    alice.write_sync(lambda s: accounts.create_account(s, "bob", password_hash=PW))
    inbox = alice.read_sync(lambda s: mailview.snapshot(s, "alice", "INBOX"))
    work = alice.read_sync(lambda s: mailview.snapshot(s, "alice", "Work"))
    bobs = alice.read_sync(lambda s: mailview.snapshot(s, "bob", "INBOX"))
    ids = [inbox.mailbox_id, work.mailbox_id, bobs.mailbox_id, 999_999]
    both = alice.read_sync(lambda s: mailview.snapshots_of(s, ids))
    assert set(both) == set(ids[:3])  # an unknown (deleted) mailbox is left out
    for one in (inbox, work, bobs):
        assert both[one.mailbox_id] == one
    # Work's records not cached yet: read from the records query, then shared.
    append(alice, "Work", "w2")
    again = alice.read_sync(lambda s: mailview.snapshots_of(s, [work.mailbox_id]))
    fresh = alice.read_sync(lambda s: mailview.snapshot_of(s, work.mailbox_id))
    assert again[work.mailbox_id] == fresh and [r.uid for r in fresh.records] == [1, 2]
    assert again[work.mailbox_id].records is fresh.records
    # The claim: each mailbox's unclaimed UIDs once; one named with the wrong
    # owner is left alone.
    wanted = {inbox.mailbox_id: "alice", work.mailbox_id: "alice", bobs.mailbox_id: "alice"}
    claimed = alice.write_sync(lambda s: mailview.claim_recent_many(s, wanted))
    assert claimed == {inbox.mailbox_id: (0, 4), work.mailbox_id: (0, 2)}
    again_claimed = alice.write_sync(lambda s: mailview.claim_recent_many(s, wanted))
    assert again_claimed == {inbox.mailbox_id: (4, 4), work.mailbox_id: (2, 2)}
    bob_claims = alice.write_sync(lambda s: mailview.claim_recent_many(s, {bobs.mailbox_id: "bob"}))
    assert bob_claims == {bobs.mailbox_id: (0, 0)}
