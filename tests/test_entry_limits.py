"""Limits the sync channel enforces, enforced where the data enters (issue 9 item 2).

A value the partner's sync decoder refuses (engine.limits) would wedge the
account's replication for ever, so each is refused at entry on a real daemon:
mailbox names (CREATE, RENAME of a parent, SUBSCRIBE), mailboxes and
subscriptions per account (IMAP ``NO [LIMIT]``), and config values that would
let larger data in (a start refusal naming the key).
"""

from __future__ import annotations

import imaplib
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.limits import MAX_MAILBOX_NAME, MAX_MAILBOXES, MAX_SCRIPTS, MAX_SUBSCRIPTIONS
from tests.conftest import LoneNode
from tests.test_api_cli import request
from tests.test_hostile import _start_with

NodeFactory = Callable[..., LoneNode]


@contextmanager
def imap_as(node: LoneNode, user: str) -> Iterator[imaplib.IMAP4]:
    client = imaplib.IMAP4("127.0.0.1", node.port("imap"), timeout=60)
    try:
        client.login(user, "secret")
        yield client
    finally:
        client.logout()


def refused(answer: tuple[str, list[Any]]) -> bool:
    typ, data = answer
    return typ == "NO" and b"[LIMIT]" in (data[0] or b"")


def test_mailbox_names_past_the_sync_limit_are_refused(lone_node: NodeFactory) -> None:
    node = lone_node()
    node.add_account("carol")
    longest = "n" * MAX_MAILBOX_NAME
    with imap_as(node, "carol") as imap:
        assert refused(imap.create(longest + "n")), "CREATE"
        assert imap.create(longest)[0] == "OK"
        assert refused(imap.subscribe(longest + "n")), "SUBSCRIBE"
        # A RENAME of a parent renames its children: one of them would be
        # 1,052 characters long (the partner refuses past 1,000).
        assert imap.create("p/" + "c" * 100)[0] == "OK"
        assert refused(imap.rename("p", "q" * 950)), "RENAME"
        typ, listed = imap.list('""', '"p/*"')
        assert typ == "OK" and len(listed) == 1 and b"c" * 100 in (listed[0] or b"")
    # Nothing past the limit was stored: the account's state as the sync
    # channel sends it stays within what the partner decodes.
    status, _, body = request(node, "GET", "/v1/accounts/carol/mailboxes")
    assert status == 200
    names = [m["name"] for m in body["mailboxes"]]
    assert max(len(n) for n in names) == MAX_MAILBOX_NAME, names


def _seed(node: LoneNode, account: str, table: str, count: int) -> None:
    """Give ``account`` ``count`` more mailboxes (or subscriptions) straight in
    the node's database: a hundred thousand IMAP CREATEs would take too long."""
    with sqlite3.connect(node.db_path, timeout=30) as db:
        (account_id,) = db.execute("SELECT id FROM accounts WHERE name = ?", (account,)).fetchone()
        if table == "mailboxes":
            db.executemany(
                "INSERT INTO mailboxes (account_id, uniqueid, name, uidvalidity, last_uid,"
                ' highestmodseq, acl, checksum, "exists", sync_base, created_at)'
                " VALUES (?, ?, ?, ?, 0, 1, '{}', 0, 0, 0, '2026-01-01 00:00:00')",
                ((account_id, uuid.uuid4().hex, f"seeded/{n}", 1000 + n) for n in range(count)),
            )
        else:
            db.executemany(
                "INSERT INTO subscriptions (account_id, name) VALUES (?, ?)",
                ((account_id, f"seeded/{n}") for n in range(count)),
            )


def test_mailboxes_and_subscriptions_per_account_are_capped(lone_node: NodeFactory) -> None:
    node = lone_node()
    node.add_account("dave")
    # dave has INBOX (mailbox and subscription): one short of each limit.
    _seed(node, "dave", "mailboxes", MAX_MAILBOXES - 2)
    _seed(node, "dave", "subscriptions", MAX_SUBSCRIPTIONS - 2)
    with imap_as(node, "dave") as imap:
        assert imap.create("last")[0] == "OK"
        assert refused(imap.create("one-too-many")), "CREATE"
        assert imap.subscribe("last")[0] == "OK"
        assert refused(imap.subscribe("one-too-many")), "SUBSCRIBE"
        # At the limit, what exists still works: a rename adds nothing. It
        # reads the renamed mailbox's children, not the account's 100,000
        # mailboxes and subscriptions (which took 9 s of the store's time).
        started = time.monotonic()
        assert imap.rename("last", "renamed")[0] == "OK"
        assert time.monotonic() - started < 5, "RENAME read every mailbox of the account"
        assert imap.delete("renamed")[0] == "OK"
        assert imap.create("again")[0] == "OK"
        # LIST-STATUS of every mailbox: a few hundred STATUS a read, not one
        # read each (which took 239 s for 100,000 on this machine).
        started = time.monotonic()
        typ, _ = imap._simple_command("LIST", '""', '"*"', "RETURN", "(STATUS (MESSAGES UNSEEN))")
        took = time.monotonic() - started
        assert typ == "OK"
        statuses = imap.untagged_responses.pop("STATUS", [])
        imap.untagged_responses.pop("LIST", None)
        assert len(statuses) == MAX_MAILBOXES, len(statuses)
        assert b"seeded/7 (MESSAGES 0 UNSEEN 0)" in statuses
        assert took < 60, f"LIST-STATUS of {MAX_MAILBOXES} mailboxes took {took:.0f} s"
        # A RENAME of the parent of them all moves every one and every
        # subscription under it, a few hundred rows a statement: one query
        # and one log row each held the store's only writer (every
        # delivery of the node) for over a minute.
        assert imap.delete("again")[0] == "OK"
        assert imap.create("seeded")[0] == "OK"
        started = time.monotonic()
        assert imap.rename("seeded", "moved")[0] == "OK"
        took = time.monotonic() - started
        typ, found = imap.lsub('""', "moved/12345")
        assert typ == "OK" and found == [b'(\\HasNoChildren) "/" moved/12345'], found
        typ, found = imap.list('""', "seeded*")
        assert typ == "OK" and found == [None], found
        assert took < 40, f"RENAME of a mailbox with {MAX_MAILBOXES - 3} children took {took:.0f} s"
    log = (node.workdir / f"{node.name}.log").read_text()
    assert "Traceback" not in log


def test_config_values_past_the_sync_limits_are_refused_at_start(
    lone_node: NodeFactory, tmp_path: Path
) -> None:
    node = lone_node(start=False)

    def many_scripts(config: dict[str, Any]) -> None:
        config.setdefault("managesieve", {})["max_scripts"] = MAX_SCRIPTS + 1

    assert "[managesieve] max_scripts" in _start_with(tmp_path, node, many_scripts)

    def big_messages(config: dict[str, Any]) -> None:
        config.setdefault("lmtp", {})["max_message_size"] = "300M"

    error = _start_with(tmp_path, node, big_messages)
    assert "max_message_size" in error and "sync_max_request" in error

    def big_literals(config: dict[str, Any]) -> None:
        config.setdefault("imap", {})["max_literal"] = "100M"
        config.setdefault("sync", {})["sync_max_request"] = "64M"

    assert "max_literal" in _start_with(tmp_path, node, big_literals)
