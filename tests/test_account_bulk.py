"""Account rename and bulk creation in the store, on SQLite and PostgreSQL:
what ``account rename`` and ``account import`` rest on (the pair behaviour is
in tests/test_rename.py and tests/test_import.py)."""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import accounts, inventory, synclog
from engine.models import Mailbox, Subscription
from engine.passwords import verify_password
from engine.store import Store
from ownership import table as ownership_table

HASH = "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"


def test_create_accounts_makes_what_create_account_makes(store: Store) -> None:
    def bulk(s: Session) -> None:
        accounts.create_accounts(s, [(f"u{i}@example.test", HASH, 1024 * i) for i in range(600)])
        ownership_table.create_many(s, [f"u{i}@example.test" for i in range(600)], "alpha")
        accounts.create_account(s, "single", password_hash=HASH)

    store.write_sync(bulk)

    def shape(s: Session, name: str) -> tuple[list[str], list[str], str, set[str]]:
        account = accounts.get_account(s, name)
        boxes = list(s.scalars(select(Mailbox).where(Mailbox.account_id == account.id)))
        subs = list(
            s.scalars(select(Subscription.name).where(Subscription.account_id == account.id))
        )
        acl = json.loads(boxes[0].acl)
        kinds = synclog.pending(s, [name])[0].kinds
        return [b.name for b in boxes], subs, acl[name], kinds

    bulk_shape = store.read_sync(lambda s: shape(s, "u7@example.test"))
    assert bulk_shape == store.read_sync(lambda s: shape(s, "single"))
    assert bulk_shape == (["INBOX"], ["INBOX"], "lrswipkxtecda", {"account", "mailbox"})
    info = store.read_sync(lambda s: inventory.account_info(s, "u7@example.test"))
    assert info.quota_limit == 7 * 1024
    stored = store.read_sync(lambda s: accounts.get_account(s, "u599@example.test").password_hash)
    assert verify_password("Hello world!", stored)
    row = store.read_sync(lambda s: ownership_table.view(s, "u599@example.test"))
    assert row is not None and row.owner == "alpha"
    taken = store.read_sync(
        lambda s: ownership_table.unavailable(s, ["u1@example.test", "free"], "alpha")
    )
    assert set(taken) == {"u1@example.test"}


def test_rename_keeps_mailboxes_and_moves_rows(store: Store) -> None:
    def setup(s: Session) -> None:
        accounts.create_account(s, "alice", password_hash=HASH)
        ownership_table.create(s, "alice", "alpha")

    store.write_sync(setup)
    before = store.read_sync(lambda s: inventory.mailboxes(s, "alice").mailboxes)

    def rename(s: Session) -> None:
        accounts.rename_account(s, "alice", "alice.smith")
        ownership_table.rename(s, "alice", "alice.smith", "alpha", remember=True)

    store.write_sync(rename)
    after = store.read_sync(lambda s: inventory.mailboxes(s, "alice.smith").mailboxes)
    assert [(m.uniqueid, m.uidvalidity) for m in after] == [
        (m.uniqueid, m.uidvalidity) for m in before
    ]
    acl = after[0].acl
    assert set(json.loads(acl) if isinstance(acl, str) else acl) == {"alice.smith"}
    assert store.read_sync(lambda s: synclog.depth(s, "alice")) == 0
    assert store.read_sync(lambda s: synclog.depth(s, "alice.smith")) >= 2
    assert store.read_sync(lambda s: ownership_table.view(s, "alice")) is None
    assert store.read_sync(lambda s: ownership_table.renames_to(s, "alice.smith")) == [
        ("alice", "alice.smith")
    ]
    # A second rename before the partner took the first: it is owed one rename.
    store.write_sync(
        lambda s: (
            accounts.rename_account(s, "alice.smith", "as"),
            ownership_table.rename(s, "alice.smith", "as", "alpha", remember=True),
        )
    )
    assert store.read_sync(lambda s: ownership_table.renames_to(s, "as")) == [
        ("alice", "as"),
        ("alice.smith", "as"),
    ]
    assert store.read_sync(lambda s: ownership_table.renamed_away(s, "alice")) == "as"
    store.write_sync(lambda s: ownership_table.rename_done(s, "alice", "as"))
    assert store.read_sync(lambda s: ownership_table.renamed_away(s, "alice")) is None
