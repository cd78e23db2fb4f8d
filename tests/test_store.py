"""The store, on SQLite and on a real PostgreSQL server; the schema always comes from Alembic.

Every test that changes records checks the invariants afterwards, after failed
operations too: each mailbox's checksum is the XOR of its live records'
hashes, ``exists`` counts them, and the account's quota usage is the sum of
their sizes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import itertools
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

import migrations
from engine import accounts, delivery, mailbox, messages, synclog
from engine.errors import (
    AlreadyExists,
    Corrupt,
    InvalidArgument,
    NoSuchAccount,
    NoSuchMailbox,
    OverQuota,
    SyncProtocolError,
)
from engine.flags import record_hash
from engine.models import (
    Account,
    Duplicate,
    Mailbox,
    MailboxTombstone,
    Message,
    Subscription,
    SyncLogRow,
)
from engine.passwords import MIN_LN, hash_password, verify_password
from engine.spool import Spool, guid_of
from engine.store import Store
from engine.syncwire import decode_frame_views, decode_frames, encode_frames
from tests.example_counts import examples

T = TypeVar("T")
NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
# A real scrypt hash at the least cost, for the accounts of tests that never log in:
# create_account(password=...) hashes at ln=15, 0.15 s of CPU an account.
PW = hash_password("pw", MIN_LN)


# -- helpers -------------------------------------------------------------------


def payload(text: str, pad: int = 0) -> bytes:
    return f"Subject: {text}\r\nMessage-ID: <{text}@t>\r\n\r\n{text}{'x' * pad}\r\n".encode()


def put(store: Store, text: str, pad: int = 0) -> tuple[str, int]:
    data = payload(text, pad)
    guid, _ = store.spool.put(data)
    return guid, len(data)


def on_account(store: Store, name: str, fn: Callable[[Session, Account], T]) -> T:
    """Run ``fn(session, account)`` as one write."""
    return store.write_sync(lambda s: fn(s, accounts.get_account(s, name)))


def attempt(store: Store, fn: Callable[[Session], Any]) -> BaseException | None:
    try:
        store.write_sync(fn)
    except Exception as exc:
        return exc
    return None


def spool_files(store: Store) -> int:
    return sum(1 for p in store.spool.root.rglob("*") if p.is_file() and p.parent.name != "tmp")


def checked_live(s: Session, name: str) -> dict[str, tuple[Mailbox, list[Message]]]:
    """check_invariants's checks in ``s``; each mailbox and its live records, by name."""
    acct = accounts.get_account(s, name)
    used = 0
    out = {}
    for box in mailbox.list_mailboxes(s, acct):
        live = messages.live_records(s, box)
        out[box.name] = (box, live)
        xor = 0
        for r in live:
            xor ^= record_hash(r.uid, r.guid, r.flags, r.internaldate, r.modseq)
        assert box.checksum == xor, box.name
        assert box.exists == len(live), box.name
        all_records = s.scalars(select(Message).where(Message.mailbox_id == box.id)).all()
        assert all(r.uid <= box.last_uid for r in all_records), box.name
        assert all(r.modseq <= box.highestmodseq for r in all_records), box.name
        used += sum(r.size for r in live)
    assert acct.quota_used == used
    if acct.quota_limit is not None:
        assert acct.quota_used <= acct.quota_limit
    return out


def check_invariants(store: Store, name: str = "alice") -> None:
    """checksum == XOR of live record hashes; exists; quota_used == sum of live sizes."""
    store.read_sync(partial(checked_live, name=name))


def snapshot(store: Store) -> dict[str, Any]:
    """Everything an operation could change, comparable with ==."""

    def read(s: Session) -> dict[str, Any]:
        return {
            "accounts": s.execute(
                select(
                    Account.name, Account.quota_limit, Account.quota_used, Account.password_hash
                ).order_by(Account.name)
            ).all(),
            "mailboxes": s.execute(
                select(
                    Mailbox.uniqueid,
                    Mailbox.name,
                    Mailbox.uidvalidity,
                    Mailbox.last_uid,
                    Mailbox.highestmodseq,
                    Mailbox.checksum,
                    Mailbox.exists,
                    Mailbox.acl,
                ).order_by(Mailbox.uniqueid)
            ).all(),
            "messages": s.execute(
                select(
                    Message.mailbox_id,
                    Message.uid,
                    Message.guid,
                    Message.flags,
                    Message.modseq,
                    Message.size,
                    Message.expunged,
                ).order_by(Message.mailbox_id, Message.uid)
            ).all(),
            "subscriptions": s.execute(
                select(Subscription.account_id, Subscription.name).order_by(Subscription.name)
            ).all(),
            "tombstones": s.execute(select(MailboxTombstone.uniqueid)).all(),
            "sync_log": s.execute(
                select(
                    SyncLogRow.account, SyncLogRow.mailbox, SyncLogRow.kind, SyncLogRow.generation
                ).order_by(SyncLogRow.id)
            ).all(),
            "duplicates": s.execute(select(Duplicate.mailbox_uniqueid, Duplicate.message_id)).all(),
        }

    return store.read_sync(read)


def sync_rows(store: Store) -> list[tuple[str, str, str, int]]:
    return [
        tuple(row)  # type: ignore[misc]
        for row in store.read_sync(
            lambda s: s.execute(
                select(
                    SyncLogRow.account, SyncLogRow.mailbox, SyncLogRow.kind, SyncLogRow.generation
                ).order_by(SyncLogRow.id)
            ).all()
        )
    ]


def clear_sync_log(store: Store) -> None:
    store.write_sync(
        lambda s: synclog.acknowledge(s, [r for p in synclog.pending(s) for r in p.rows])
    )
    assert store.read_sync(synclog.depth) == 0


def box_state(store: Store, name: str, box: str) -> Mailbox:
    return store.read_sync(lambda s: mailbox.get_mailbox(s, accounts.get_account(s, name), box))


def append_to(
    store: Store,
    name: str,
    box: str,
    guid: str,
    size: int,
    *,
    flags: list[str] | None = None,
    internaldate: dt.datetime = NOW,
) -> Message:
    def op(s: Session, acct: Account) -> Message:
        target = mailbox.get_mailbox(s, acct, box)
        return messages.append(
            s, acct, target, guid=guid, size=size, flags=flags or (), internaldate=internaldate
        )

    return on_account(store, name, op)


# -- accounts ------------------------------------------------------------------


def test_account_create_password_quota_delete(store: Store) -> None:
    store.write_sync(lambda s: accounts.create_account(s, "alice", password="pw", quota_limit=1000))
    # Created with a subscribed INBOX, logged for replication in the same transaction.
    names, subs = store.read_sync(
        lambda s: (
            [m.name for m in mailbox.list_mailboxes(s, accounts.get_account(s, "alice"))],
            mailbox.subscriptions(s, accounts.get_account(s, "alice")),
        )
    )
    assert names == ["INBOX"] and subs == ["INBOX"]
    assert {(a, k) for a, _, k, _ in sync_rows(store)} == {
        ("alice", "account"),
        ("alice", "mailbox"),
    }

    for bad in ("bad name", "", "a" * 129, "x@", "über"):
        with pytest.raises(InvalidArgument):
            store.write_sync(partial(accounts.create_account, name=bad, password="pw"))
    with pytest.raises(InvalidArgument):
        store.write_sync(lambda s: accounts.create_account(s, "nopw"))
    with pytest.raises(InvalidArgument):
        store.write_sync(lambda s: accounts.create_account(s, "neg", password="pw", quota_limit=-1))
    before = snapshot(store)
    with pytest.raises(AlreadyExists):
        store.write_sync(lambda s: accounts.create_account(s, "alice", password="other"))
    assert snapshot(store) == before  # nothing half-created by any refused create

    # The domain part is case-insensitive, the local part is not.
    store.write_sync(lambda s: accounts.create_account(s, "John.Doe@Example.ORG", password="pw"))
    with pytest.raises(AlreadyExists):
        store.write_sync(
            lambda s: accounts.create_account(s, "John.Doe@example.org", password="pw")
        )
    store.write_sync(lambda s: accounts.create_account(s, "john.doe@example.org", password="pw"))

    # A password long enough that a random base64 salt or hash cannot hold it
    # by chance ("pw" sometimes did).
    store.write_sync(lambda s: accounts.set_password(s, "alice", "new-password-4711"))
    stored = store.read_sync(lambda s: accounts.get_account(s, "alice").password_hash)
    assert "new-password-4711" not in stored and stored.startswith("$scrypt$")
    assert verify_password("new-password-4711", stored) and not verify_password("pw", stored)
    with pytest.raises(NoSuchAccount):
        store.write_sync(lambda s: accounts.set_password(s, "nobody", "x"))

    store.write_sync(lambda s: accounts.set_quota(s, "alice", 5))
    assert store.read_sync(lambda s: accounts.get_account(s, "alice").quota_limit) == 5
    with pytest.raises(InvalidArgument):
        store.write_sync(lambda s: accounts.set_quota(s, "alice", -5))
    store.write_sync(lambda s: accounts.set_quota(s, "alice", None))
    assert store.read_sync(lambda s: accounts.get_account(s, "alice").quota_limit) is None

    # Delete takes the mailboxes and records along; the others stay.
    guid, size = put(store, "del")
    append_to(store, "alice", "INBOX", guid, size)
    clear_sync_log(store)
    store.write_sync(lambda s: accounts.delete_account(s, "alice"))
    with pytest.raises(NoSuchAccount):
        store.read_sync(lambda s: accounts.get_account(s, "alice"))
    with pytest.raises(NoSuchAccount):
        store.write_sync(lambda s: accounts.delete_account(s, "alice"))
    left = store.read_sync(
        lambda s: (
            s.scalar(select(func.count()).select_from(Message)),
            s.scalar(select(func.count()).select_from(Mailbox)),
        )
    )
    assert left == (0, 2)  # the two John Doe INBOXes
    assert sync_rows(store) == [("alice", "", "account", 1)]


# -- mailboxes -----------------------------------------------------------------


def test_mailboxes_create_rename_delete_and_inbox_rules(store: Store) -> None:
    store.write_sync(lambda s: accounts.create_account(s, "alice", password_hash=PW))
    work_guid, work_size = put(store, "in-work")

    def setup(s: Session, acct: Account) -> dict[str, str]:
        a = mailbox.create_mailbox(s, acct, "Work")
        b = mailbox.create_mailbox(s, acct, "Work/2026")
        c = mailbox.create_mailbox(s, acct, "Workshop")  # a prefix, not a child
        mailbox.subscribe(s, acct, "Work/2026")
        mailbox.subscribe(s, acct, "Workshop")
        messages.append(s, acct, a, guid=work_guid, size=work_size, internaldate=NOW)
        return {"Work": a.uniqueid, "Work/2026": b.uniqueid, "Workshop": c.uniqueid}

    ids = on_account(store, "alice", setup)
    before = box_state(store, "alice", "Work")
    on_account(store, "alice", lambda s, a: mailbox.rename_mailbox(s, a, "Work", "Jobs"))

    def read(s: Session) -> tuple[dict[str, str], list[str]]:
        acct = accounts.get_account(s, "alice")
        boxes = {m.name: m.uniqueid for m in mailbox.list_mailboxes(s, acct)}
        return boxes, mailbox.subscriptions(s, acct)

    boxes, subs = store.read_sync(read)
    assert boxes == {
        "INBOX": boxes["INBOX"],
        "Jobs": ids["Work"],
        "Jobs/2026": ids["Work/2026"],
        "Workshop": ids["Workshop"],
    }
    assert subs == ["INBOX", "Jobs/2026", "Workshop"]
    after = box_state(store, "alice", "Jobs")
    # A rename changes the name only: same records, uidvalidity and checksum.
    assert (after.uidvalidity, after.last_uid, after.checksum, after.exists) == (
        before.uidvalidity,
        before.last_uid,
        before.checksum,
        before.exists,
    )
    check_invariants(store)

    for old, new, error in (
        ("INBOX", "Old", InvalidArgument),  # RFC 3501 INBOX rename is the IMAP layer's
        ("Jobs", "Jobs/Sub", InvalidArgument),  # into itself
        ("Jobs", "Workshop", AlreadyExists),
        ("Nope", "Other", NoSuchMailbox),
        ("Jobs", "bad//name", InvalidArgument),
    ):
        before_all = snapshot(store)
        with pytest.raises(error):
            on_account(store, "alice", partial(mailbox.rename_mailbox, old=old, new=new))
        assert snapshot(store) == before_all, (old, new)

    # INBOX is case-insensitive, always spelled INBOX, and cannot go.
    with pytest.raises(AlreadyExists):
        on_account(store, "alice", lambda s, a: mailbox.create_mailbox(s, a, "inbox"))
    sub = on_account(store, "alice", lambda s, a: mailbox.create_mailbox(s, a, "iNbOx/Sub").name)
    assert sub == "INBOX/Sub"
    assert box_state(store, "alice", "inbox").name == "INBOX"
    for name in ("INBOX", "Inbox"):
        with pytest.raises(InvalidArgument):
            on_account(store, "alice", partial(mailbox.delete_mailbox, name=name))

    # Delete: a tombstone keeps the uniqueid, the quota its records used is
    # freed, the children stay, a new mailbox of that name is a new mailbox.
    used_before = store.read_sync(lambda s: accounts.get_account(s, "alice").quota_used)
    assert used_before == work_size
    clear_sync_log(store)
    on_account(store, "alice", lambda s, a: mailbox.delete_mailbox(s, a, "Jobs"))
    tombs = store.read_sync(lambda s: list(s.scalars(select(MailboxTombstone.uniqueid))))
    assert tombs == [ids["Work"]]
    assert sync_rows(store) == [("alice", ids["Work"], "mailbox", 1)]
    assert store.read_sync(lambda s: accounts.get_account(s, "alice").quota_used) == 0
    assert "Jobs/2026" in store.read_sync(read)[0]
    with pytest.raises(NoSuchMailbox):
        on_account(store, "alice", lambda s, a: mailbox.delete_mailbox(s, a, "Jobs"))
    again = on_account(store, "alice", lambda s, a: mailbox.create_mailbox(s, a, "Jobs"))
    assert again.uniqueid != ids["Work"] and again.uidvalidity > before.uidvalidity
    check_invariants(store)


# -- records -------------------------------------------------------------------


def test_append_and_flags_bump_modseq_and_keep_the_checksum(store: Store) -> None:
    store.write_sync(lambda s: accounts.create_account(s, "alice", password_hash=PW))
    seen_modseqs = [box_state(store, "alice", "INBOX").highestmodseq]

    def step() -> None:
        """After every operation: invariants, and the modseq never goes back."""
        check_invariants(store)
        seen_modseqs.append(box_state(store, "alice", "INBOX").highestmodseq)
        assert seen_modseqs[-1] >= seen_modseqs[-2]

    for i in range(3):
        guid, size = put(store, f"m{i}")
        record = append_to(
            store, "alice", "INBOX", guid, size, flags=["\\seen", "\\Recent", "$Work"]
        )
        step()
        assert record.uid == i + 1 and record.modseq == seen_modseqs[-1] > seen_modseqs[-2]
        assert record.flags == "$Work \\Seen"  # canonical spelling, \Recent never stored

    def store_flags(uids: list[int], flags: list[str], mode: str, since: int | None = None) -> Any:
        return on_account(
            store,
            "alice",
            lambda s, a: messages.set_flags(
                s,
                a,
                mailbox.get_mailbox(s, a, "INBOX"),
                uids,
                flags,
                mode=mode,
                unchangedsince=since,
            ),
        )

    change = store_flags([1, 2], ["\\Flagged"], "add")
    step()
    assert [r.uid for r in change.changed] == [1, 2]
    assert {r.modseq for r in change.changed} == {seen_modseqs[-1]} and seen_modseqs[
        -1
    ] > seen_modseqs[-2]

    unchanged = store_flags([1, 2], ["\\Flagged"], "add")  # already set: no new modseq
    step()
    assert unchanged.changed == () and seen_modseqs[-1] == seen_modseqs[-2]

    store_flags([2], ["$Work"], "remove")
    step()
    store_flags([3], ["\\Answered", "\\Draft"], "replace")
    step()
    refused = store_flags([1, 3], ["\\Deleted"], "add", since=seen_modseqs[-3])
    step()
    assert refused.modified == (3,) and [r.uid for r in refused.changed] == [1]
    flags = store.read_sync(
        lambda s: [
            r.flags
            for r in messages.live_records(
                s, mailbox.get_mailbox(s, accounts.get_account(s, "alice"), "INBOX")
            )
        ]
    )
    assert flags == ["$Work \\Deleted \\Flagged \\Seen", "\\Flagged \\Seen", "\\Answered \\Draft"]

    # Failed operations change nothing and keep the invariants.
    for flags_, mode in ((["\\Bogus"], "add"), (["bad flag"], "add"), (["ok"], "toggle")):
        before = snapshot(store)
        with pytest.raises(InvalidArgument):
            store_flags([1], flags_, mode)
        assert snapshot(store) == before
        step()
    before = snapshot(store)
    with pytest.raises(InvalidArgument):
        append_to(store, "alice", "INBOX", "0" * 40, 10, internaldate=dt.datetime(2026, 1, 1))
    assert snapshot(store) == before
    step()


def test_expunge_leaves_tombstones_and_frees_quota(store: Store) -> None:
    store.write_sync(
        lambda s: accounts.create_account(s, "alice", password_hash=PW, quota_limit=10_000)
    )
    sizes = []
    for i in range(4):
        guid, size = put(store, f"e{i}", pad=100 * i)
        append_to(store, "alice", "INBOX", guid, size)
        sizes.append(size)
    check_invariants(store)
    on_account(
        store,
        "alice",
        lambda s, a: messages.set_flags(
            s, a, mailbox.get_mailbox(s, a, "INBOX"), [2, 4], ["\\Deleted"]
        ),
    )
    before = box_state(store, "alice", "INBOX")
    gone = on_account(
        store, "alice", lambda s, a: messages.expunge(s, a, mailbox.get_mailbox(s, a, "INBOX"))
    )
    assert gone == [2, 4]
    check_invariants(store)
    after = box_state(store, "alice", "INBOX")
    assert after.highestmodseq == before.highestmodseq + 1 and after.exists == 2
    assert (
        store.read_sync(lambda s: accounts.get_account(s, "alice").quota_used)
        == sizes[0] + sizes[2]
    )
    tombstones = store.read_sync(
        lambda s: s.execute(
            select(Message.uid, Message.modseq)
            .where(Message.expunged.is_(True))
            .order_by(Message.uid)
        ).all()
    )
    assert [tuple(t) for t in tombstones] == [(2, after.highestmodseq), (4, after.highestmodseq)]
    # Expunging what is not there (again, or never) is a no-op without a new modseq.
    assert (
        on_account(
            store,
            "alice",
            lambda s, a: messages.expunge(s, a, mailbox.get_mailbox(s, a, "INBOX"), [2, 9]),
        )
        == []
    )
    assert box_state(store, "alice", "INBOX").highestmodseq == after.highestmodseq
    # A new append never reuses an expunged UID.
    guid, size = put(store, "e-new")
    assert append_to(store, "alice", "INBOX", guid, size).uid == 5
    check_invariants(store)


def test_copy_and_move_write_no_spool_files(store: Store) -> None:
    guids = [put(store, f"c{i}", pad=200) for i in range(3)]
    # Room for six: three appended, two copied, then a copy of two more is refused.
    limit = 6 * guids[0][1]
    store.write_sync(
        lambda s: accounts.create_account(s, "alice", password_hash=PW, quota_limit=limit)
    )
    for guid, size in guids:
        append_to(store, "alice", "INBOX", guid, size, flags=["\\Seen"])
    on_account(store, "alice", lambda s, a: mailbox.create_mailbox(s, a, "Archive"))
    files = spool_files(store)
    assert files == 3
    used = store.read_sync(lambda s: accounts.get_account(s, "alice").quota_used)

    def copy(s: Session, a: Account) -> Any:
        inbox, archive = mailbox.get_mailbox(s, a, "INBOX"), mailbox.get_mailbox(s, a, "Archive")
        return messages.copy_messages(s, a, inbox, archive, [3, 1, 7])

    copied = on_account(store, "alice", copy)
    assert copied.source_uids == (1, 3) and copied.dest_uids == (1, 2)
    check_invariants(store)
    used_after_copy = store.read_sync(lambda s: accounts.get_account(s, "alice").quota_used)
    assert used_after_copy == used + guids[0][1] + guids[2][1]  # a copy counts against quota

    def move(s: Session, a: Account) -> Any:
        inbox, archive = mailbox.get_mailbox(s, a, "INBOX"), mailbox.get_mailbox(s, a, "Archive")
        return messages.move_messages(s, a, inbox, archive, [2])

    moved = on_account(store, "alice", move)
    assert moved.dest_uids == (3,)
    check_invariants(store)
    assert store.read_sync(lambda s: accounts.get_account(s, "alice").quota_used) == used_after_copy
    archived = store.read_sync(
        lambda s: [
            (r.uid, r.guid, r.flags)
            for r in messages.live_records(
                s, mailbox.get_mailbox(s, accounts.get_account(s, "alice"), "Archive")
            )
        ]
    )
    assert archived == [
        (1, guids[0][0], "\\Seen"),
        (2, guids[2][0], "\\Seen"),
        (3, guids[1][0], "\\Seen"),
    ]
    assert spool_files(store) == files  # the bytes were never written again

    # A copy that would pass the quota is refused whole.
    before = snapshot(store)
    with pytest.raises(OverQuota):
        on_account(store, "alice", copy)
    assert snapshot(store) == before
    check_invariants(store)


def test_quota_is_enforced_and_an_over_quota_write_changes_nothing(store: Store) -> None:
    guid, size = put(store, "q", pad=50)
    store.write_sync(
        lambda s: accounts.create_account(s, "alice", password_hash=PW, quota_limit=2 * size)
    )
    append_to(store, "alice", "INBOX", guid, size)
    append_to(store, "alice", "INBOX", guid, size)  # exactly at the limit is allowed
    check_invariants(store)
    clear_sync_log(store)
    before = snapshot(store)
    with pytest.raises(OverQuota):
        append_to(store, "alice", "INBOX", guid, 1)
    assert snapshot(store) == before  # no record, no UID, no modseq, no sync-log row
    check_invariants(store)
    on_account(
        store, "alice", lambda s, a: messages.expunge(s, a, mailbox.get_mailbox(s, a, "INBOX"), [1])
    )
    assert append_to(store, "alice", "INBOX", guid, size).uid == 3
    check_invariants(store)


# -- the sync log --------------------------------------------------------------


def test_sync_log_rows_commit_with_their_change(store: Store) -> None:
    store.write_sync(lambda s: accounts.create_account(s, "alice", password_hash=PW))
    clear_sync_log(store)
    inbox_id = box_state(store, "alice", "INBOX").uniqueid
    guid, size = put(store, "s")

    def append_then_fail(s: Session) -> None:
        acct = accounts.get_account(s, "alice")
        messages.append(
            s, acct, mailbox.get_mailbox(s, acct, "INBOX"), guid=guid, size=size, internaldate=NOW
        )
        mailbox.create_mailbox(s, acct, "New")
        raise RuntimeError("the caller fails after writing")

    before = snapshot(store)
    assert isinstance(attempt(store, append_then_fail), RuntimeError)
    assert snapshot(store) == before and sync_rows(store) == []
    check_invariants(store)

    # Many changes to one mailbox: one row per kind, its generation counts them.
    for _ in range(5):
        append_to(store, "alice", "INBOX", guid, size)

    def flag(uid: int) -> Callable[[Session, Account], object]:
        return lambda s, a: messages.set_flags(
            s, a, mailbox.get_mailbox(s, a, "INBOX"), [uid], ["\\Flagged"]
        )

    for uid in (1, 2):
        on_account(store, "alice", flag(uid))
    assert sync_rows(store) == [("alice", inbox_id, "append", 5), ("alice", inbox_id, "flags", 2)]

    # acknowledge() drops what the partner has, keeps what changed since pending().
    snapshot_rows = store.read_sync(lambda s: synclog.pending(s, ["alice"])[0].rows)
    append_to(store, "alice", "INBOX", guid, size)  # during the sync
    assert store.write_sync(lambda s: synclog.acknowledge(s, snapshot_rows)) == 1
    assert sync_rows(store) == [("alice", inbox_id, "append", 6)]
    left = store.read_sync(lambda s: synclog.pending(s, ["alice"]))
    assert len(left) == 1 and left[0].kinds == {"append"} and left[0].mailboxes == {inbox_id}

    # Changes applied from the partner are not logged (no echo).
    clear_sync_log(store)
    store.write_sync(
        lambda s: messages.append(
            s,
            accounts.get_account(s, "alice"),
            mailbox.get_mailbox(s, accounts.get_account(s, "alice"), "INBOX"),
            guid=guid,
            size=size,
            internaldate=NOW,
        ),
        replaying=True,
    )
    assert sync_rows(store) == []
    check_invariants(store)


# -- group commit ---------------------------------------------------------------


def test_group_commit_of_concurrent_writes_isolates_the_failing_one(store: Store) -> None:
    store.write_sync(
        lambda s: accounts.create_account(s, "alice", password_hash=PW, quota_limit=50_000)
    )
    payloads = [put(store, f"g{i}") for i in range(60)]
    failing = {i for i in range(60) if i % 7 == 3}

    def op(i: int) -> Callable[[Session], tuple[int, int]]:
        guid, size = payloads[i]

        def run(s: Session) -> tuple[int, int]:
            acct = accounts.get_account(s, "alice")
            box = mailbox.get_mailbox(s, acct, "INBOX")
            record = messages.append(s, acct, box, guid=guid, size=size, internaldate=NOW)
            if i in failing:
                raise OverQuota("this one fails after writing")
            return i, record.uid

        return run

    async def burst() -> list[Any]:
        return await asyncio.gather(
            *(store.write(op(i)) for i in range(60)), return_exceptions=True
        )

    results = asyncio.run(burst())
    assert all(isinstance(results[i], OverQuota) for i in failing)
    ok = [r for i, r in enumerate(results) if i not in failing]
    assert [i for i, _ in ok] == [i for i in range(60) if i not in failing]
    assert sorted(uid for _, uid in ok) == list(range(1, len(ok) + 1))  # failed writes used no UID
    assert store.stats.largest_batch > 1  # they did share commits
    stored = store.read_sync(
        lambda s: {
            r.uid: r.guid
            for r in messages.live_records(
                s, mailbox.get_mailbox(s, accounts.get_account(s, "alice"), "INBOX")
            )
        }
    )
    assert stored == {uid: payloads[i][0] for i, uid in ok}  # each write got its own result
    assert sync_rows(store)[-1][2:] == ("append", len(ok))
    check_invariants(store)


def test_a_grouped_batch_whose_runner_raises_runs_each_op_alone(store: Store) -> None:
    """A batch of only grouped deliveries runs without a savepoint; if the runner
    raises (a bug, a broken row), nothing of it commits and each op runs again
    alone: only the broken one fails."""
    store.write_sync(lambda s: accounts.create_account(s, "alice", password_hash=PW))
    runner = delivery.DeliveryRunner(delivery.DeliveryOptions())
    payloads = [put(store, f"b{i}") for i in range(12)]

    class Breaking:
        """Raises for the batch that holds op 5 (its own batch too, when alone)."""

        def __call__(self, session: Session, ops: list[Any]) -> list[Any]:
            if any(op.message_id == "<b5@t>" for op in ops):
                raise RuntimeError("broken row")
            return runner(session, ops)

    breaking = Breaking()
    recipient = delivery.parse_recipient("alice", frozenset())

    async def burst() -> list[Any]:
        return await asyncio.gather(
            *(
                store.write_grouped(
                    breaking,
                    delivery.Delivery(recipient, guid, size, NOW, f"<b{i}@t>"),
                )
                for i, (guid, size) in enumerate(payloads)
            ),
            return_exceptions=True,
        )

    results = asyncio.run(burst())
    assert isinstance(results[5], Exception)
    delivered = [r for i, r in enumerate(results) if i != 5]
    assert all(isinstance(r, delivery.DeliveryResult) for r in delivered)
    assert sorted(r.uid for r in delivered) == list(range(1, 12))  # no UID lost or shared
    check_invariants(store)


def test_a_write_that_breaks_the_transaction_fails_alone(store: Store) -> None:
    store.write_sync(lambda s: accounts.create_account(s, "alice", password_hash=PW))

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


# -- the spool -----------------------------------------------------------------


def test_spool_names_by_sha1_and_never_serves_bad_bytes(store: Store) -> None:
    data = payload("verify")
    guid, directory = store.spool.put(data)
    assert guid == hashlib.sha1(data).hexdigest()
    assert store.spool.path(guid) == directory / guid and directory.name == guid[:2]
    assert store.spool.read(guid) == data
    assert store.spool.put(data)[0] == guid and spool_files(store) == 1  # stored once
    assert list(store.spool.tmp.iterdir()) == []

    with pytest.raises(Corrupt):
        store.spool.stage(b"other bytes", guid)  # a GUID that does not match is refused
    with pytest.raises(InvalidArgument):
        store.spool.read("../../etc/passwd")

    path = store.spool.path(guid)
    path.write_bytes(data[:-3])  # a partial file
    with pytest.raises(Corrupt):
        store.spool.read(guid)
    path.write_bytes(data.replace(b"verify", b"VERIFY"))  # same size, other bytes
    with pytest.raises(Corrupt):
        store.spool.read(guid)
    path.unlink()
    with pytest.raises(Corrupt):
        store.spool.read(guid)


def test_spool_cleans_leftover_temp_files_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    staged = spool.stage(b"never committed")
    assert staged.tmp is not None and staged.tmp.exists() and not spool.has(staged.guid)
    Spool(tmp_path / "spool", clean=False)  # a second process must not touch it
    assert staged.tmp.exists()
    Spool(tmp_path / "spool")  # the owner, at start
    assert list(spool.tmp.iterdir()) == [] and not spool.has(staged.guid)


def test_spool_makes_a_folder_on_first_use_and_its_name_durable_before_a_file_goes_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new spool has no GUID folders; the first file into one makes it,
    fsyncs the spool's root, and only then renames the file in (the commit,
    the batched ``put_many`` and the repair's ``restore`` alike)."""
    import engine.spool as spool_module

    root = tmp_path / "spool"
    spool = Spool(root)
    assert sorted(p.name for p in root.iterdir()) == ["tmp"] and spool.directories() == []
    events: list[tuple[str, str]] = []
    real_fsync_dir, real_rename = spool_module._fsync_dir, os.rename

    def fsync_dir(path: Path | str) -> None:
        events.append(("fsync", str(path)))
        real_fsync_dir(path)

    def rename(src: Any, dst: Any) -> None:
        events.append(("rename", str(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(spool_module, "_fsync_dir", fsync_dir)
    monkeypatch.setattr(os, "rename", rename)
    # Three messages in three different folders, and a fourth in the first's.
    by_folder: dict[str, bytes] = {}
    for i in itertools.count():
        by_folder.setdefault(guid_of(data := payload(f"folder {i}"))[:2], data)
        if len(by_folder) == 3:
            break
    one, two, three = by_folder.values()
    guid, _ = spool.put(one)
    assert events == [("fsync", str(root)), ("rename", str(spool.path(guid)))]
    assert spool.directories() == [str(root / guid[:2])]

    events.clear()
    same_folder = next(
        data
        for data in (payload(f"same {i}") for i in itertools.count())
        if guid_of(data)[:2] == guid[:2]
    )
    spool.put(same_folder)  # the folder is known: no second fsync of the root
    assert [kind for kind, _ in events] == ["rename"]

    events.clear()
    spool.fsync_dirs(spool.put_many([(guid_of(two), two)]))
    assert events[:2] == [("fsync", str(root)), ("rename", str(spool.path(guid_of(two))))]

    events.clear()
    spool.restore(guid_of(three), three)  # a repair into a folder never used
    assert events[:2] == [("fsync", str(root)), ("rename", str(spool.path(guid_of(three))))]
    assert [spool.read(guid_of(d)) for d in (one, two, three)] == [one, two, three]

    # A folder removed since (empty, by hand) is made again by the next write into it.
    gone = guid_of(two)[:2]
    spool.path(guid_of(two)).unlink()
    (root / gone).rmdir()
    events.clear()
    spool.put(two)
    assert ("fsync", str(root)) in events and spool.read(guid_of(two)) == two

    # Another process's spool (an LMTP worker's, a restart's) finds the folders made.
    assert Spool(root, clean=False).directories() == spool.directories()
    # Something else where a folder belongs is refused at start, not at a delivery.
    (root / "a0").write_text("not a folder")
    with pytest.raises(FileExistsError):
        Spool(root)


@pytest.mark.parametrize("flush", ["filesystem", "file"])
def test_spool_put_many_stores_views_keeps_what_is_there_and_refuses_bad_bytes(
    tmp_path: Path, flush: str
) -> None:
    spool = Spool(tmp_path / "spool", flush=flush)
    blobs = [payload(f"many {i}") * (i + 1) for i in range(5)]
    body = b"".join(encode_frames((guid_of(b), b) for b in blobs))
    frames = decode_frame_views(body)  # views into one buffer, as an UPLOAD has them
    assert [bytes(d) for _, d in frames] == blobs
    assert decode_frames(body) == [(guid_of(b), b) for b in blobs]
    dirs = spool.put_many(frames, verified=True)
    spool.fsync_dirs(dirs)
    assert dirs == {spool.path(guid_of(b)).parent for b in blobs}
    assert [spool.read(guid_of(b)) for b in blobs] == blobs
    assert [spool.size(guid_of(b)) for b in blobs] == [len(b) for b in blobs]
    assert list(spool.tmp.iterdir()) == []

    # Bytes already here are kept (their mtime refreshed for the sweep), not rewritten.
    held = spool.path(guid_of(blobs[0]))
    os.utime(held, (1_000_000, 1_000_000))
    inode = held.stat().st_ino
    spool.put_many([(guid_of(blobs[0]), blobs[0])])
    assert held.stat().st_ino == inode and held.stat().st_mtime > 1_000_000

    # Unverified bytes are hashed: a mismatch stores nothing and leaves no temp file.
    fresh = payload("fresh")
    with pytest.raises(Corrupt):
        spool.put_many([(guid_of(fresh), fresh), (guid_of(fresh), b"not those bytes")])
    assert not spool.has(guid_of(fresh)) and list(spool.tmp.iterdir()) == []
    with pytest.raises(SyncProtocolError):
        decode_frame_views(body.replace(b"many 3", b"MANY 3"))
    with pytest.raises(InvalidArgument):
        spool.has("../../etc/passwd")
    spool.close()


# -- delivery ------------------------------------------------------------------


def test_delivery_plus_addressing_local_domains_and_duplicates(store: Store) -> None:
    def setup(s: Session) -> None:
        acct = accounts.create_account(s, "alice", password_hash=PW)
        mailbox.create_mailbox(s, acct, "Lists")
        mailbox.create_mailbox(s, acct, "Lists/Python")
        accounts.create_account(s, "bob@other.test", password_hash=PW)

    store.write_sync(setup)
    counter = itertools.count()
    window = dt.timedelta(hours=1)

    def send(
        rcpt: str, message_id: str | None, window: dt.timedelta | None = window
    ) -> delivery.DeliveryResult:
        options = delivery.DeliveryOptions(frozenset({"example.test"}), window)
        guid, size = put(store, f"d{next(counter)}")
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

    # Plus-addressing: an existing folder, else INBOX.
    assert send("alice+Lists@example.test", "<1@x>").mailbox == "Lists"
    assert send("<alice+Lists/Python@EXAMPLE.test>", "<1b@x>").mailbox == "Lists/Python"
    assert send("alice+Nope@example.test", "<2@x>").mailbox == "INBOX"
    assert send("alice+@example.test", "<2b@x>").mailbox == "INBOX"
    assert send("alice+bad//name@example.test", "<2c@x>").mailbox == "INBOX"
    # Local domains map to the bare account; others need the full name.
    assert send("alice", "<3@x>").account == "alice"
    assert send("bob@Other.Test", "<3b@x>").account == "bob@other.test"
    for unknown in ("alice@other.test", "carol@example.test", "bob@example.test"):
        before = snapshot(store)
        with pytest.raises(NoSuchAccount):
            send(unknown, "<5@x>")
        assert snapshot(store) == before
    check_invariants(store)

    # Duplicates: one Message-ID per mailbox within the window.
    first = send("alice@example.test", "<4@x>")
    again = send("alice@example.test", "<4@x>")
    assert first.duplicate is False and first.uid is not None
    assert again.duplicate is True and again.uid is None
    assert send("alice+Lists@example.test", "<4@x>").duplicate is False  # per mailbox
    assert send("alice@example.test", None).duplicate is False  # no Message-ID: no check
    assert send("alice@example.test", None).duplicate is False
    assert send("alice@example.test", "<4@x>", window=None).duplicate is False  # turned off
    # ...and not after the window has passed.
    inbox_id = box_state(store, "alice", "INBOX").uniqueid
    store.write_sync(
        lambda s: s.execute(
            update(Duplicate)
            .where(Duplicate.mailbox_uniqueid == inbox_id, Duplicate.message_id == "<4@x>")
            .values(delivered_at=dt.datetime.now(dt.UTC) - window - dt.timedelta(minutes=1))
        )
    )
    late = send("alice@example.test", "<4@x>")
    assert late.duplicate is False
    assert send("alice@example.test", "<4@x>").duplicate is True  # the window starts again
    inbox = store.read_sync(
        lambda s: messages.live_records(
            s, mailbox.get_mailbox(s, accounts.get_account(s, "alice"), "INBOX")
        )
    )
    assert len(inbox) == 9
    check_invariants(store)
    # Pruning drops only entries older than the window.
    store.write_sync(
        lambda s: s.execute(
            update(Duplicate)
            .where(Duplicate.message_id == "<1@x>")
            .values(delivered_at=dt.datetime.now(dt.UTC) - 2 * window)
        )
    )
    assert store.write_sync(lambda s: delivery.prune_duplicates(s, window)) == 1
    assert send("alice+Lists@example.test", "<1@x>").duplicate is False
    assert (
        delivery.message_id_of(b"Subject: x\r\nMessage-Id:\r\n <a@b>\r\n\r\nMessage-ID: <no>\r\n")
        == "<a@b>"
    )


# -- the property ----------------------------------------------------------------

BOXES = ("INBOX", "Other")
UIDS = st.lists(st.integers(1, 6), min_size=1, max_size=4)
BOX = st.sampled_from(BOXES)
APPEND = st.tuples(st.just("append"), BOX, st.integers(0, 4))
OPS = st.one_of(
    APPEND,
    APPEND,  # twice as likely: the other operations need records
    st.tuples(
        st.just("flag"),
        BOX,
        UIDS,
        st.sampled_from(["add", "remove", "replace"]),
        st.sets(st.sampled_from(["\\Seen", "\\Deleted", "\\Flagged", "$Junk"]), max_size=3),
    ),
    st.tuples(st.just("expunge"), BOX, UIDS),
    st.tuples(st.just("copy"), BOX, BOX, UIDS),
    st.tuples(st.just("move"), BOX, BOX, UIDS),
)
_names = itertools.count()


class Model:
    """What the store should hold: per mailbox, live uid -> (guid, size, flags)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.boxes: dict[str, dict[int, tuple[str, int, frozenset[str]]]] = {b: {} for b in BOXES}
        self.last_uid = dict.fromkeys(BOXES, 0)

    @property
    def used(self) -> int:
        return sum(size for box in self.boxes.values() for _, size, _ in box.values())

    def fits(self, extra: int) -> bool:
        return self.limit is None or self.used + extra <= self.limit

    def add(self, box: str, guid: str, size: int, flags: frozenset[str]) -> None:
        self.last_uid[box] += 1
        self.boxes[box][self.last_uid[box]] = (guid, size, flags)

    def apply(self, op: tuple[Any, ...], files: list[tuple[str, int]]) -> bool:
        """Apply ``op``; False when the store must refuse it with OverQuota."""
        kind, box = op[0], op[1]
        if kind == "append":
            guid, size = files[op[2]]
            if not self.fits(size):
                return False
            self.add(box, guid, size, frozenset())
        elif kind == "flag":
            _, _, uids, mode, flags = op
            for uid in set(uids) & set(self.boxes[box]):
                guid, size, current = self.boxes[box][uid]
                new = (
                    current | flags
                    if mode == "add"
                    else current - flags
                    if mode == "remove"
                    else frozenset(flags)
                )
                self.boxes[box][uid] = (guid, size, new)
        elif kind == "expunge":
            for uid in set(op[2]) & set(self.boxes[box]):
                del self.boxes[box][uid]
        else:
            dest, uids = op[2], sorted(set(op[3]) & set(self.boxes[box]))
            records = [self.boxes[box][u] for u in uids]
            if kind == "copy" and not self.fits(sum(size for _, size, _ in records)):
                return False
            for record in records:
                self.add(dest, *record)
            if kind == "move":
                for uid in uids:
                    del self.boxes[box][uid]
        return True


def run_op(s: Session, name: str, op: tuple[Any, ...], files: list[tuple[str, int]]) -> None:
    acct = accounts.get_account(s, name)
    box = mailbox.get_mailbox(s, acct, op[1])
    kind = op[0]
    if kind == "append":
        guid, size = files[op[2]]
        messages.append(s, acct, box, guid=guid, size=size, internaldate=NOW)
    elif kind == "flag":
        messages.set_flags(s, acct, box, op[2], op[4], mode=op[3])
    elif kind == "expunge":
        messages.expunge(s, acct, box, op[2])
    else:
        dest = mailbox.get_mailbox(s, acct, op[2])
        (messages.copy_messages if kind == "copy" else messages.move_messages)(
            s, acct, box, dest, op[3]
        )


@settings(
    max_examples=examples(40),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(OPS, max_size=16), limit=st.one_of(st.none(), st.integers(0, 2000)))
def test_any_sequence_of_operations_keeps_checksum_and_quota(
    store: Store, ops: list[tuple[Any, ...]], limit: int | None
) -> None:
    files = [put(store, f"h{i}", pad=97 * i) for i in range(5)]  # 40 to 450 bytes
    name = f"h{next(_names)}"  # one fresh account per example, on the test's store

    def setup(s: Session) -> None:
        acct = accounts.create_account(s, name, password_hash=PW, quota_limit=limit)
        mailbox.create_mailbox(s, acct, "Other")

    store.write_sync(setup)
    model = Model(limit)
    for op in ops:
        allowed = model.apply(op, files)
        error = attempt(store, partial(run_op, name=name, op=op, files=files))
        assert (error is None) == allowed and (error is None or isinstance(error, OverQuota)), (
            op,
            error,
        )

        def read(s: Session) -> tuple[dict[str, Any], dict[str, int]]:
            # The invariants, and what the model holds, from one read of the records.
            boxes = checked_live(s, name)
            held, last = {}, {}
            for b in BOXES:
                box, live = boxes[b]
                held[b] = {r.uid: (r.guid, r.size, frozenset(r.flags.split())) for r in live}
                last[b] = box.last_uid
            return held, last

        held, last = store.read_sync(read)
        assert held == model.boxes and last == model.last_uid, op
    assert store.read_sync(lambda s: accounts.get_account(s, name).quota_used) == model.used


def test_a_repeated_value_is_processed_once_and_binds_as_it_would_alone(store: Store) -> None:
    """executemany passes a value through its type's processor once while
    the rows repeat the same object (a group commit's one timestamp); what
    it binds is what each row bound alone gives, values changing or not."""
    from engine import fastsql
    from engine.db import _conflict_statement

    later = NOW + dt.timedelta(seconds=1)
    equal_not_same = NOW + dt.timedelta(0)
    rows = [
        ("", "a", "m1", "append", 1, NOW, NOW),  # 2 processed
        ("", "a", "m2", "append", 1, NOW, NOW),  # 0: both as the row before
        ("", "a", "m3", "append", 1, equal_not_same, NOW),  # 1: equal is not the same
        ("", "a", "m4", "append", 2, later, later),  # 2
        ("", "a", "m5", "append", 2, later, later),  # 0
    ]
    keys = ("channel", "account", "mailbox", "kind", "generation", "created_at", "updated_at")

    def bind(s: Any) -> tuple[list[Any], list[Any], int]:
        statement = _conflict_statement(
            s, SyncLogRow.__table__, keys[:4], ("updated_at",), ("generation",)
        )
        prepared = fastsql._prepared(statement, s.connection().dialect, keys)
        assert prepared is not None
        calls = 0
        processors: list[Any] = []
        for name, i, constant, processor in prepared.params:
            if processor is not None and keys[i].endswith("_at"):

                def counted(value: Any, processor: Any = processor) -> Any:
                    nonlocal calls
                    calls += 1
                    return processor(value)

                processors.append((name, i, constant, counted))
            else:
                processors.append((name, i, constant, processor))
        counting = dataclasses.replace(prepared, params=tuple(processors))
        together = fastsql._bound_rows(counting, rows)
        together_calls = calls
        alone = [fastsql._bound(prepared, row) for row in rows]
        return together, alone, together_calls

    together, alone, calls = store.read_sync(bind)
    assert together == alone
    assert calls == 5  # of the rows' 10 timestamps


def test_hot_writes_take_the_cursor_path_and_agree_with_sqlalchemy(store: Store) -> None:
    """The group commit's bulk statements run on the DB-API cursor (engine.fastsql)
    on both databases, and what they write reads back through SQLAlchemy as written."""
    from engine import fastsql
    from engine.db import _conflict_statement

    def write(s: Any) -> bool:
        acct = accounts.create_account(s, "fast", password_hash="x")
        box = mailbox.get_mailbox(s, acct, "INBOX")
        statement = _conflict_statement(
            s,
            SyncLogRow.__table__,
            ("channel", "account", "mailbox", "kind"),
            ("updated_at",),
            ("generation",),
        )
        keys = ("channel", "account", "mailbox", "kind", "generation", "created_at", "updated_at")
        row = ("", "fast", box.uniqueid, "append", 1, NOW, NOW)
        ran = fastsql.executemany(s, statement, keys, [row, (*row[:6], NOW + dt.timedelta(1))])
        ids = fastsql.select_in(
            s,
            lambda names: select(Account.id, Account.name).where(Account.name.in_(names)),
            ["fast", "nobody"],
        )
        assert ids == [(acct.id, "fast")]
        return ran

    assert store.write_sync(write)

    def read(s: Any) -> tuple[int, dt.datetime, dt.datetime]:
        r = s.scalars(select(SyncLogRow).where(SyncLogRow.account == "fast")).all()
        (row,) = [x for x in r if x.kind == "append"]
        return row.generation, row.created_at, row.updated_at

    generation, created, updated = store.read_sync(read)
    assert generation == 2  # the second row met the first: ON CONFLICT added one
    assert created == NOW and updated == NOW + dt.timedelta(1)  # tz-aware, UTC, round trip
    # Stored exactly as SQLAlchemy stores it: an SQL comparison with a value it
    # binds finds the row (SQLite compares the text of the two).
    matching = store.read_sync(
        lambda s: s.scalar(
            select(func.count())
            .select_from(SyncLogRow)
            .where(SyncLogRow.account == "fast", SyncLogRow.created_at == NOW)
        )
    )
    assert matching == 1


def test_pending_puts_new_mail_before_flag_only_changes(store: Store) -> None:
    """The rolling worker syncs in the order pending() gives: an account with new
    mail before one whose changes are only flags, even if those came first."""
    for name in ("flagged", "mailed"):
        store.write_sync(partial(accounts.create_account, name=name, password_hash=PW))
    guid, size = put(store, "order")
    append_to(store, "flagged", "INBOX", guid, size)
    clear_sync_log(store)
    on_account(
        store,
        "flagged",
        lambda s, a: messages.set_flags(
            s, a, mailbox.get_mailbox(s, a, "INBOX"), [1], ["\\Flagged"]
        ),
    )
    append_to(store, "mailed", "INBOX", guid, size)  # later, but new mail
    order = store.read_sync(lambda s: [p.account for p in synclog.pending(s)])
    assert order == ["mailed", "flagged"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0002_recomputes_checksums_to_cover_modseqs(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    """A database from before 0002 holds checksums without modseqs; upgrading
    recomputes them (the invariants hold again), downgrading puts the old ones back."""
    url = (
        f"sqlite:///{tmp_path / 'old.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    # pg_url hands out a copy of a template already at head. The engine
    # writes the account at head (its models hold later columns, 0004),
    # then the database goes back to 0001 for the checksums of before 0002.
    if not migrations.current_revisions(url):
        migrations.upgrade(url)
    old = Store(url, tmp_path / "data")
    try:
        old.write_sync(lambda s: accounts.create_account(s, "alice", password_hash=PW))
        for i in range(4):
            guid, size = put(old, f"m{i}")
            append_to(old, "alice", "INBOX", guid, size, flags=["\\Seen"] if i % 2 else None)
        on_account(
            old,
            "alice",
            lambda s, a: messages.set_flags(s, a, mailbox.get_mailbox(s, a, "INBOX"), [2], ["x"]),
        )

        def without_modseqs(s: Session) -> dict[str, int]:
            # Columns named one by one: at 0001 the table lacks later ones.
            out = {}
            for box_id, uniqueid in s.execute(select(Mailbox.id, Mailbox.uniqueid)).all():
                xor = 0
                live = select(Message.uid, Message.guid, Message.flags, Message.internaldate).where(
                    Message.mailbox_id == box_id, Message.expunged.is_(False)
                )
                for uid, guid, flags, internaldate in s.execute(live):
                    digest = hashlib.sha1(
                        f"{uid}\0{guid}\0{flags}\0{int(internaldate.timestamp())}".encode(),
                        usedforsecurity=False,
                    ).digest()
                    xor ^= int.from_bytes(digest[:8], "big", signed=True)
                s.execute(update(Mailbox).where(Mailbox.id == box_id).values(checksum=xor))
                out[uniqueid] = xor
            return out

        command.downgrade(migrations.alembic_config(url), "0001")
        before = old.write_sync(without_modseqs)  # what the engine wrote before 0002
    finally:
        old.close()
    migrations.upgrade(url)
    new = Store(url, tmp_path / "data")
    try:
        check_invariants(new, "alice")
        command.downgrade(migrations.alembic_config(url), "0001")
        assert (
            new.read_sync(
                lambda s: {
                    uniqueid: checksum
                    for uniqueid, checksum in s.execute(select(Mailbox.uniqueid, Mailbox.checksum))
                }
            )
            == before
        )
    finally:
        new.close()


def test_background_writes_wait_while_a_quiet_section_is_open(store: Store) -> None:
    """A move's cut-over opens ``quiet()``: the indexers' writes do not queue
    in front of its mark and flip; other writes go on; they run after it."""
    order: list[str] = []

    def mark(what: str) -> Callable[[Session], None]:
        return lambda _session: order.append(what)

    async def scene() -> None:
        async with store.quiet():
            background = asyncio.create_task(store.write(mark("background"), background=True))
            await store.write(mark("cut-over"))
            await asyncio.sleep(0.2)
            assert not background.done() and order == ["cut-over"]
        await background
        await store.write(mark("after"), background=True)  # no section: at once

    asyncio.run(scene())
    assert order == ["cut-over", "background", "after"]
