"""``peerctl replicate -v`` prints the seed's order (issue 11 item 5): per
mailbox, RENAME when the replica has it under another name, CREATE with its
ACL, then SELECT and that mailbox's EXPUNGE, SETFLAGS, UPLOAD and SETSEEN;
the account's steps after; no Python ``None`` anywhere. The trace built from
a push in memory, and the real command against two daemons after a move, a
rename, a flag change, a new message and a password change (the seed's
"tracking messages between folders")."""

from __future__ import annotations

import imaplib
import smtplib
from pathlib import Path

from engine.compare import MailboxPush, Push
from engine.syncstate import MailboxSummary, RecordState
from peerd.replication.trace import push_steps
from tests.nodes import Node, make_pair, peerctl, running


def summary(name: str, uniqueid: str, acl: str = '{"alice": "lrswipkxtecda"}') -> MailboxSummary:
    return MailboxSummary(uniqueid, name, 1700000000, 3, 5, acl, 0, 1)


def record(uid: int, guid: str) -> RecordState:
    return RecordState(uid, guid, "", 0, 10, 2)


def test_push_steps_group_by_mailbox() -> None:
    push = Push(
        "alice",
        account_fields=("$scrypt$...", None, None),
        deletes=("u-gone",),
        mailboxes=(
            MailboxPush(summary("INBOX", "u-inbox"), (record(2, "g2"), record(3, "g3")), (1,)),
            MailboxPush(summary("Renamed", "u-old")),
            MailboxPush(summary("zzz", "u-zzz"), (record(1, "g1"),), create=True),
        ),
        subscriptions=("INBOX", "zzz"),
    )
    names = {"u-inbox": "INBOX", "u-old": "Old", "u-gone": "Trash"}
    assert push_steps(push, names, reserved=3, missing={"g3"}) == [
        "RESERVE [3 msgs]",
        "DELETE Trash",
        "SELECT INBOX",
        "EXPUNGE [1 msgs]",
        "SETFLAGS [1 msgs]",
        "UPLOAD [1 msgs]",
        "SETSEEN alice ...",
        "RENAME Old Renamed",
        "CREATE zzz u-zzz",
        '   "alice\tlrswipkxtecda\t" 3 1700000000',
        "SELECT zzz",
        "UPLOAD [1 msgs]",
        "SETSEEN alice ...",
        "SUB alice [2]",
        "QUOTA alice none",
    ]


def deliver(node: Node, subject: str) -> None:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30) as lmtp:
        lmtp.sendmail(
            "s@example.test",
            ["alice@example.test"],
            f"Subject: {subject}\r\nMessage-ID: <{subject}@t>\r\n\r\nbody\r\n".encode(),
        )


def replicate(node: Node) -> list[str]:
    done = peerctl(node, "replicate", "-u", "alice", "-v")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()


def test_replicate_v_prints_the_seeds_order(tmp_path: Path) -> None:
    # alpha replicates only when told: every change waits for `replicate`.
    alpha, beta = make_pair(tmp_path, {"alpha": {"sync": {"sync_log": False}}})
    with running(alpha, beta):
        alpha.add_account("alice")
        deliver(alpha, "one")
        deliver(alpha, "two")
        with imaplib.IMAP4("127.0.0.1", alpha.ports["imap"], timeout=20) as imap:
            imap.login("alice", "secret")
            assert imap.create("Old")[0] == "OK"
        replicate(alpha)

        with imaplib.IMAP4("127.0.0.1", alpha.ports["imap"], timeout=20) as imap:
            imap.login("alice", "secret")
            assert imap.rename("Old", "Renamed")[0] == "OK"
            assert imap.create("zzz")[0] == "OK"
            imap.select("INBOX")
            assert imap.uid("MOVE", "1", "zzz")[0] == "OK"
            assert imap.uid("STORE", "2", "+FLAGS", "(\\Flagged)")[0] == "OK"
        deliver(alpha, "three")
        alpha.call("PUT", "/v1/accounts/alice/password", {"password": "secret"})

        zzz = next(
            m
            for m in alpha.call("GET", "/v1/accounts/alice/mailboxes")["mailboxes"]
            if m["name"] == "zzz"
        )
        steps = replicate(alpha)
        assert steps == [
            "MAILBOXES INBOX Renamed zzz",
            "USER_SOME alice",
            "RESERVE [3 msgs]",
            "SELECT INBOX",
            "EXPUNGE [1 msgs]",
            "SETFLAGS [1 msgs]",
            "UPLOAD [1 msgs]",
            "SETSEEN alice ...",
            "RENAME Old Renamed",
            f"CREATE zzz {zzz['uniqueid']}",
            f'   "alice\tlrswipkxtecda\t" 1 {zzz["uidvalidity"]}',
            "SELECT zzz",
            "UPLOAD [1 msgs]",
            "SETSEEN alice ...",
            "QUOTA alice none",
            "ENDUSER",
        ], "\n".join(steps)
        assert not any("None" in line for line in steps)
        assert {
            m["name"] for m in beta.call("GET", "/v1/accounts/alice/mailboxes")["mailboxes"]
        } == {
            "INBOX",
            "Renamed",
            "zzz",
        }
