"""METADATA entries and ACLs in the store: limits shared with the sync channel,
replication through a push, digests (engine.annotations, engine.acl)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session

import migrations
from engine import accounts, syncwire
from engine import acl as acl_store
from engine import annotations as notes
from engine import mailbox as mailbox_ops
from engine.apply import apply_push
from engine.compare import compare
from engine.errors import (
    AnnotationTooLarge,
    LimitExceeded,
    NoSuchMailbox,
    SyncProtocolError,
    TooManyAnnotations,
)
from engine.limits import MAX_ANNOTATION_VALUE, MAX_ANNOTATIONS
from engine.models import Account
from engine.passwords import MIN_LN, hash_password
from engine.store import Store
from engine.syncstate import account_digests, read_account_state

# A real scrypt hash at the least cost (ln=15 is 0.15 s of CPU an account).
PW = hash_password("pw", MIN_LN)


def on(store: Store, name: str, fn: Callable[[Session, Account], Any]) -> Any:
    return store.write_sync(lambda s: fn(s, accounts.get_account(s, name)))


def entries(store: Store, name: str) -> dict[str, bytes]:
    return dict(store.read_sync(lambda s: notes.entries(s, "alice", name)))


def test_entries_per_mailbox_and_server_within_the_limits(store: Store) -> None:
    store.write_sync(lambda s: accounts.create_account(s, "alice", password_hash=PW))
    on(store, "alice", lambda s, a: mailbox_ops.create_mailbox(s, a, "Box"))
    on(store, "alice", lambda s, a: notes.set_entries(s, a, "Box", [("/Private/A", b"1")]))
    on(store, "alice", lambda s, a: notes.set_entries(s, a, "", [("/shared/b", b"2")]))
    assert entries(store, "Box") == {"/private/a": b"1"}
    assert entries(store, "") == {"/shared/b": b"2"}
    with pytest.raises(NoSuchMailbox):
        entries(store, "Nowhere")
    big = b"x" * (MAX_ANNOTATION_VALUE + 1)
    with pytest.raises(AnnotationTooLarge):
        on(store, "alice", lambda s, a: notes.set_entries(s, a, "", [("/shared/c", big)]))
    many = [(f"/private/n{i}", b"v") for i in range(MAX_ANNOTATIONS - 1)]
    with pytest.raises(TooManyAnnotations):
        on(store, "alice", lambda s, a: notes.set_entries(s, a, "", many))
    assert entries(store, "") == {"/shared/b": b"2"}  # all or nothing
    on(store, "alice", lambda s, a: notes.set_entries(s, a, "", many[:-1]))
    on(store, "alice", lambda s, a: notes.set_entries(s, a, "", [("/shared/b", None)]))
    assert "/shared/b" not in entries(store, "")
    # Deleting the mailbox drops its entries.
    on(store, "alice", lambda s, a: mailbox_ops.delete_mailbox(s, a, "Box"))
    on(store, "alice", lambda s, a: mailbox_ops.create_mailbox(s, a, "Box"))
    assert entries(store, "Box") == {}


def test_acl_limits(store: Store) -> None:
    store.write_sync(lambda s: accounts.create_account(s, "alice", password_hash=PW))

    def give(who: str, rights: str = "lr") -> None:
        on(store, "alice", lambda s, a: acl_store.change(s, a, "INBOX", who, lambda _: rights))

    give("bob")
    assert store.read_sync(lambda s: acl_store.mailbox_acl(s, "alice", "INBOX"))["bob"] == "lr"
    with pytest.raises(LimitExceeded):
        give("x" * 256)
    with pytest.raises(LimitExceeded):
        give("carol", "lrz")
    for n in range(98):
        give(f"u{n}")
    with pytest.raises(LimitExceeded):
        give("one-more")


def test_annotations_replicate_through_push(store: Store, tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'replica.db'}"
    migrations.upgrade(url)
    replica = Store(url, tmp_path / "replica")
    try:
        for s in (store, replica):
            s.write_sync(lambda x: accounts.create_account(x, "alice", password_hash=PW))
        on(
            store,
            "alice",
            lambda s, a: notes.set_entries(s, a, "INBOX", [("/private/c", b"\x01\xff")]),
        )
        on(store, "alice", lambda s, a: notes.set_entries(s, a, "", [("/shared/s", b"v")]))
        on(
            replica,
            "alice",
            lambda s, a: notes.set_entries(s, a, "", [("/shared/gone", b"g")]),
        )
        before = store.read_sync(lambda s: account_digests(s, ["alice"]))
        owner = store.read_sync(lambda s: read_account_state(s, "alice"))
        theirs = replica.read_sync(lambda s: read_account_state(s, "alice"))
        assert before != replica.read_sync(lambda s: account_digests(s, ["alice"]))
        _, push = compare(owner, {}, theirs, frozenset())
        assert push.annotations == owner.annotations and len(owner.annotations) == 2
        wire = syncwire.decode_push(
            syncwire.decode_json(syncwire.encode_json(syncwire.encode_push(push)))
        )
        replica.write_sync(lambda s: apply_push(s, wire, lambda guid: True))
        after = replica.read_sync(lambda s: read_account_state(s, "alice"))
        assert after.annotations == owner.annotations
        assert replica.read_sync(lambda s: account_digests(s, ["alice"])) == before
        _, again = compare(owner, {}, after, frozenset())
        assert again.annotations is None
    finally:
        replica.close()


@pytest.mark.parametrize(
    "bad",
    [
        [["", "/private/a"]],
        [["not-a-uniqueid!", "/private/a", ""]],
        [["", "/p" * 600, ""]],
        [["", "/private/a", "***"]],
        [["", "/private/a", base64.b64encode(b"x" * (MAX_ANNOTATION_VALUE + 1)).decode()]],
        [["", f"/private/{n}", ""] for n in range(MAX_ANNOTATIONS + 1)],
    ],
)
def test_annotation_part_is_checked(bad: Any) -> None:
    with pytest.raises(SyncProtocolError):
        syncwire.decode_push({"account": "alice", "annotations": bad})


def test_acl_past_the_limit_is_refused_by_the_decoder() -> None:
    summary = {
        "uniqueid": "a" * 32,
        "name": "INBOX",
        "uidvalidity": 1,
        "last_uid": 0,
        "highestmodseq": 1,
        "checksum": 0,
        "exists": 0,
        "acl": "x" * 65537,
    }
    with pytest.raises(SyncProtocolError):
        syncwire.decode_summary(summary)
