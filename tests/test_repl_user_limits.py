"""User actions at the limits replicate (two real daemons on loopback).

Each test makes a change a client may make, within every limit the owner
enforces, and checks that the replica converges to it, that the owner's
sync log drains, and that another account's mail still replicates after it:
no accepted action may leave an account (or the channel) stuck.

The pair's beta takes requests of 24 KiB (and messages that fit in them, as
the config requires), alpha those of the defaults (256 MiB): the sizes that
reach the channel's limit at its default are reached here in a few hundred
kilobytes, and alpha must cut its requests to its partner's lower limit.
"""

from __future__ import annotations

import datetime as dt
import imaplib
import os
import smtplib
import socket
import urllib.error
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session

from engine import accounts, mailbox
from engine.apply import apply_push
from engine.compare import MailboxPush, Push
from engine.limits import MAX_TOMBSTONES, check_acl
from engine.models import MailboxTombstone
from engine.store import Store
from engine.syncstate import MailboxSummary, read_account_state
from engine.syncwire import encode_json, encode_push, split_push
from peerd.replication import client
from tests.harness.daemons import ModuleNodes
from tests.nodes import Node
from tests.procs import wait_until

# beta's: alpha keeps the defaults (256 MiB requests, 64 MiB messages).
LIMITS = {
    "sync": {"sync_max_request": "24K"},
    "imap": {"max_literal": "16K"},
    "lmtp": {"max_message_size": "16K"},
}


@pytest.fixture
def limited_pair(module_nodes: ModuleNodes) -> tuple[Node, Node]:
    return module_nodes.pair({"beta": LIMITS})


def deliver(node: Node, account: str, subject: str) -> None:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30) as lmtp:
        lmtp.sendmail(
            "s@example.test",
            [f"{account}@example.test"],
            f"Subject: {subject}\r\nMessage-ID: <{subject}@t>\r\n\r\nhello\r\n".encode(),
        )


def imap(node: Node, account: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=30)
    client.login(account, "secret")
    return client


def multiappend(node: Node, account: str, messages: list[bytes], batch: int = 8192) -> None:
    """APPEND ``messages`` to INBOX with MULTIAPPEND (RFC 3502) and LITERAL+
    (RFC 7888), in commands of at most ``batch`` bytes of messages: one round
    trip each."""
    with socket.create_connection(("127.0.0.1", node.ports["imap"]), timeout=30) as sock:
        reader = sock.makefile("rb")

        def command(tag: str, text: bytes) -> None:
            sock.sendall(text)
            while not (line := reader.readline()).startswith(tag.encode() + b" "):
                assert line, "connection closed"
            assert line.startswith(f"{tag} OK".encode()), line

        reader.readline()  # the greeting
        command("a", f"a LOGIN {account} secret\r\n".encode())
        held: list[bytes] = []
        for n, message in enumerate([*messages, b""]):
            if held and (not message or sum(map(len, held)) + len(message) > batch):
                parts = b"".join(b" {%d+}\r\n" % len(m) + m for m in held)
                command(f"b{n}", f"b{n} APPEND INBOX".encode() + parts + b"\r\n")
                held = []
            held.append(message)


def flags_of(node: Node, account: str, mailbox: str = "INBOX") -> list[tuple[int, str, Any]]:
    try:
        box = node.mailbox(account, mailbox)
    except urllib.error.HTTPError as exc:
        exc.close()
        return []
    return [(m["uid"], m["guid"], sorted(m["flags"])) for m in box["messages"]]


def depth(node: Node, account: str) -> int:
    return int(node.call("GET", f"/v1/status?account={account}")["sync_log_depth"])


def still_replicates(alpha: Node, beta: Node, account: str) -> None:
    """The owner's log for ``account`` drains, and a new account's mail reaches the partner."""
    wait_until(lambda: depth(alpha, account) == 0, 20, f"alpha's sync log for {account} to drain")
    other = f"{account}-next"
    alpha.add_account(other)
    deliver(alpha, other, f"{other}-1")
    wait_until(lambda: len(flags_of(beta, other)) == 1, 20, f"{other}'s mail on beta")


def test_many_long_keywords_on_many_messages_replicate(limited_pair: tuple[Node, Node]) -> None:
    # Each message's flags stay far within the limit (about 4 KB of 8 KB);
    # one STORE on all of them makes a change of 200 KB, eight times what
    # one sync request may carry.
    alpha, beta = limited_pair
    alpha.add_account("keywords")
    multiappend(alpha, "keywords", [f"Subject: k{i}\r\n\r\nbody\r\n".encode() for i in range(48)])
    wait_until(lambda: len(flags_of(beta, "keywords")) == 48, 20, "the 48 messages on beta")

    keywords = " ".join(f"k{n:02d}{'x' * 120}{n:02d}" for n in range(32))
    with imap(alpha, "keywords") as client:
        client.select("INBOX")
        status, _ = client.store("1:*", "+FLAGS.SILENT", f"({keywords})")
        assert status == "OK"
    want = flags_of(alpha, "keywords")
    assert len(want[0][2]) == 32

    wait_until(lambda: flags_of(beta, "keywords") == want, 30, "the keywords on beta")
    still_replicates(alpha, beta, "keywords")


def test_copy_of_many_messages_at_once_replicates(limited_pair: tuple[Node, Node]) -> None:
    # A COPY of 600 messages names 600 GUIDs the replica holds already: the
    # question which it lacks (RESERVE) is 26 KB, more than one request.
    alpha, beta = limited_pair
    alpha.add_account("copier")
    multiappend(alpha, "copier", [f"Subject: c{i}\r\n\r\nbody\r\n".encode() for i in range(600)])
    with imap(alpha, "copier") as client:
        assert client.create("Copies")[0] == "OK"
    wait_until(lambda: len(flags_of(beta, "copier")) == 600, 30, "the 600 messages on beta")
    with imap(alpha, "copier") as client:
        client.select("INBOX")
        assert client.copy("1:*", "Copies")[0] == "OK"
    want = flags_of(alpha, "copier", "Copies")
    assert len(want) == 600
    wait_until(lambda: flags_of(beta, "copier", "Copies") == want, 30, "the copies on beta")
    still_replicates(alpha, beta, "copier")


def test_large_account_sets_go_in_pushes_of_their_own() -> None:
    # 60 subscriptions of 1,000 characters and 60 METADATA values of 1 KB,
    # each set within a request of 100 KB, both together not: each is
    # applied alone, after the push of the account's fields and mailboxes.
    summary = MailboxSummary("ab" * 16, "INBOX", 1, 0, 0, "{}", 0, 0)
    push = Push(
        "sets",
        account_fields=("", None, None),
        mailboxes=(MailboxPush(summary, create=True),),
        subscriptions=tuple(f"{n:03d}" + "s" * 997 for n in range(60)),
        annotations=tuple(("", f"/private/e{n}", b"v" * 1024) for n in range(60)),
    )
    budget = 100_000
    parts = split_push(push, budget)
    sizes = [len(encode_json(encode_push(part))) for part in parts]
    assert max(sizes) <= budget, sizes
    assert parts[0].account_fields == push.account_fields
    assert parts[0].mailboxes == push.mailboxes
    assert [p.subscriptions for p in parts if p.subscriptions is not None] == [push.subscriptions]
    assert [p.annotations for p in parts if p.annotations is not None] == [push.annotations]


def _long_acl_summary(n: int) -> MailboxSummary:
    acl = check_acl({f"user{i:02d}{'x' * 84}": "lrswipkxtecda" for i in range(8)})
    return MailboxSummary(f"{n:032x}", f"box{n:04d}", 1, 0, 0, acl, 0, 0)


def test_a_push_of_many_summaries_goes_in_requests_that_fit() -> None:
    """APPLY's side: the summaries of a first sync (or a rename of them all)
    in several pushes after the account's fields and deletes, the mailboxes
    the replica holds before the new ones."""
    boxes = tuple(MailboxPush(_long_acl_summary(n), create=n % 3 == 0) for n in range(40))
    push = Push(
        "amy",
        account_fields=("x", None, None),
        deletes=tuple(f"{n:032x}" for n in range(100, 400)),
        mailboxes=boxes,
    )
    budget = 8000
    parts = split_push(push, budget)
    assert max(len(encode_json(encode_push(part))) for part in parts) <= budget
    assert parts[0].account_fields == push.account_fields
    assert [d for part in parts for d in part.deletes] == list(push.deletes)
    assert not parts[0].mailboxes and not parts[0].deletes
    named = [m for part in parts for m in part.mailboxes]
    assert sorted(named, key=lambda m: m.summary.uniqueid) == list(boxes)
    assert [m.create for m in named] == sorted(m.create for m in boxes)
    first_mailbox = next(i for i, part in enumerate(parts) if part.mailboxes)
    assert all(not part.deletes for part in parts[first_mailbox:])
    # Within the budget, the push goes whole.
    assert split_push(push, 10**6) == [push]


def test_a_chain_or_cycle_of_renames_goes_in_one_push() -> None:
    """Swaps, cycles of three and a chain of five: with the replica's names
    (``held``) no push leaves a mailbox aside (``Recovered/``), so a sync
    cut short between two of them (and a failover then) shows none."""
    held = {f"{n:032x}": f"box{n:04d}" for n in range(60)}
    target = dict(held)
    for n in range(0, 20, 2):  # swaps
        target[f"{n:032x}"], target[f"{n + 1:032x}"] = held[f"{n + 1:032x}"], held[f"{n:032x}"]
    for n in range(20, 41, 3):  # cycles of three
        for i in range(3):
            target[f"{n + i:032x}"] = held[f"{n + (i + 1) % 3:032x}"]
    for n in range(50, 55):  # a chain: each takes the next one's name, the last a new one
        target[f"{n:032x}"] = held[f"{n + 1:032x}"] if n < 54 else "fresh"
    boxes = tuple(
        MailboxPush(replace(_long_acl_summary(int(u, 16)), name=target[u]))
        for u in sorted(held)
        if target[u] != held[u]
    )
    parts = split_push(Push("amy", mailboxes=boxes), 8000, held)
    assert sum(1 for p in parts if p.mailboxes) > 3
    names = dict(held)
    for part in parts:
        wanted = {m.summary.name for m in part.mailboxes}
        inside = {m.summary.uniqueid for m in part.mailboxes}
        aside = [u for u, name in names.items() if name in wanted and u not in inside]
        assert not aside, (part, aside)
        names.update({m.summary.uniqueid: m.summary.name for m in part.mailboxes})
    assert names == target


def test_deleted_mailboxes_are_remembered_up_to_a_bound(sqlite_store: Store) -> None:
    # Every account state (every rolling delta) carries the account's
    # tombstones, and the sync decoder takes a bounded number: a user who
    # creates and deletes mailboxes in a loop must not grow them for ever.
    store = sqlite_store
    old = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)

    def fill(session: Session, name: str) -> None:
        account = accounts.create_account(session, name, password_hash="x")
        session.execute(
            insert(MailboxTombstone),
            [
                {
                    "account_id": account.id,
                    "uniqueid": f"{n:032x}",
                    "name": f"old{n}",
                    "deleted_at": old + dt.timedelta(seconds=n),
                }
                for n in range(MAX_TOMBSTONES)
            ],
        )
        mailbox.create_mailbox(session, account, "gone")

    def tombstones(name: str) -> frozenset[str]:
        return store.read_sync(lambda s: read_account_state(s, name).tombstones)

    # On the owner: a user's DELETE.
    store.write_sync(lambda s: fill(s, "owner"))
    gone = store.write_sync(
        lambda s: mailbox.delete_mailbox(s, accounts.get_account(s, "owner"), "gone").uniqueid
    )
    held = tombstones("owner")
    assert len(held) == MAX_TOMBSTONES
    assert gone in held and f"{0:032x}" not in held and f"{1:032x}" in held

    # On a replica: the owner's delete applied.
    store.write_sync(lambda s: fill(s, "replica"))
    doomed = store.read_sync(
        lambda s: mailbox.get_mailbox(s, accounts.get_account(s, "replica"), "gone").uniqueid
    )
    store.write_sync(
        lambda s: apply_push(s, Push("replica", deletes=(doomed,)), store.spool.has),
        replaying=True,
    )
    held = tombstones("replica")
    assert len(held) == MAX_TOMBSTONES
    assert doomed in held and f"{0:032x}" not in held


def test_new_mail_larger_together_than_a_request_replicates(
    limited_pair: tuple[Node, Node],
) -> None:
    # Two messages of 15 KB in one APPEND (alpha takes them: its limits are
    # the defaults), each within beta's limits too, together not: they go
    # in two UPLOADs.
    alpha, beta = limited_pair
    alpha.add_account("twice")
    wait_until(lambda: depth(alpha, "twice") == 0, 20, "the account on beta")
    multiappend(
        alpha,
        "twice",
        [f"Subject: t{i}\r\n\r\n".encode() + os.urandom(7_000).hex().encode() for i in range(2)],
        batch=64 << 10,
    )
    want = flags_of(alpha, "twice")
    assert len(want) == 2
    wait_until(lambda: flags_of(beta, "twice") == want, 30, "the two messages on beta")
    still_replicates(alpha, beta, "twice")


def test_messages_go_in_batches_within_a_budget_and_a_count() -> None:
    """UPLOAD and the repair's FETCH cut their messages the same way: a batch
    ends before the message that would pass the budget (frame headers
    counted) or the count; one message past the budget goes alone."""
    header = client.FRAME_HEADER
    guids = [f"g{i}" for i in range(6)]
    sizes = [100, 100, 100, 1000, 50, 50]
    budget = 2 * (100 + header)
    assert client.size_batches(guids, sizes, budget) == [
        ["g0", "g1"],
        ["g2"],
        ["g3"],
        ["g4", "g5"],
    ]
    assert client.size_batches(guids, sizes, 10**9, 4) == [["g0", "g1", "g2", "g3"], ["g4", "g5"]]
    assert client.size_batches([], [], budget) == []
    assert client.size_batches(guids, sizes, 1) == [[g] for g in guids]  # each alone
