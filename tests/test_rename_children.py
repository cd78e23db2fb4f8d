"""RENAME moves a mailbox's children and their subscriptions, found in SQL
(``LIKE`` with its wildcards escaped, then an exact prefix test), not by
reading every mailbox of the account: names that ``LIKE`` alone would take
for children (a ``_`` or ``%`` in the name, a different ASCII case, which
SQLite's ``LIKE`` ignores) stay where they are."""

from __future__ import annotations

from sqlalchemy.orm import Session

from engine import accounts, mailbox
from engine.models import Account
from engine.passwords import MIN_LN, hash_password
from engine.store import Store

PW = hash_password("pw", MIN_LN)

# The mailbox renamed, its children, and names a careless LIKE would match.
RENAMED = "a_b%c"
CHILDREN = ("a_b%c/x", "a_b%c/x/y")
STRANGERS = ("aXbYc/x", "a_b%cz/x", "A_B%C/x", "a_b%C/x", "a_b%c_x")


def test_rename_moves_exactly_the_children_and_their_subscriptions(store: Store) -> None:
    store.write_sync(lambda s: accounts.create_account(s, "alice", password_hash=PW))

    def setup(s: Session, acct: Account) -> None:
        for name in (RENAMED, *CHILDREN, *STRANGERS):
            mailbox.create_mailbox(s, acct, name)
            mailbox.subscribe(s, acct, name)

    def rename(s: Session, acct: Account) -> list[str]:
        return sorted(mailbox.rename_mailbox(s, acct, RENAMED, "moved"))

    store.write_sync(lambda s: setup(s, accounts.get_account(s, "alice")))
    moved = store.write_sync(lambda s: rename(s, accounts.get_account(s, "alice")))
    assert moved == ["moved", "moved/x", "moved/x/y"]

    def read(s: Session) -> tuple[list[str], list[str]]:
        acct = accounts.get_account(s, "alice")
        return mailbox.mailbox_names(s, acct), sorted(mailbox.subscriptions(s, acct))

    names, subscribed = store.read_sync(read)
    expected = sorted(["INBOX", "moved", "moved/x", "moved/x/y", *STRANGERS])
    assert names == expected  # sorted by the query
    assert subscribed == sorted(["INBOX", "moved", "moved/x", "moved/x/y", *STRANGERS])
