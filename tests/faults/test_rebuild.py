"""Rebuild a node from its partner, end to end, with two real daemons (issue 15, item 2).

beta's database is damaged; it refuses to start (exit 65). ``peerd rebuild
--from-partner`` has alpha take beta's accounts, puts the damaged file
aside, and has alpha replicate everything into a fresh store. After it, beta
holds every message byte for byte, with the same UIDs, flags and modseqs,
and ``failback`` brings its accounts home.
"""

from __future__ import annotations

import contextlib
import hashlib
import imaplib
import random
import smtplib
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from peerd.app.dbcheck import EXIT_DATABASE_DAMAGED
from tests.harness.clients import run_command
from tests.nodes import Node
from tests.procs import wait_until

BIG = (b"z" * 76 + b"\r\n") * 2000


def deliver(node: Node, account: str, subject: str, body: bytes = b"hi\r\n") -> bytes:
    data = f"Subject: {subject}\r\nMessage-ID: <{subject}@rebuild>\r\n\r\n".encode() + body
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30) as lmtp:
        assert lmtp.sendmail("s@example.test", [f"{account}@example.test"], data) == {}
    return data


def imap_session(node: Node, account: str) -> imaplib.IMAP4:
    imap = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=30)
    imap.login(account, "secret")
    imap.select("INBOX")
    return imap


def mailbox(node: Node, account: str) -> dict[str, Any]:
    """INBOX as the API shows it, the records with what must be equal on both nodes."""
    box = dict(node.mailbox(account))
    box["messages"] = [
        (r["uid"], r["guid"], sorted(r["flags"]), r["modseq"], r["size"], r["internaldate"])
        for r in box["messages"]
    ]
    box.pop("checksum", None)
    return box


def spool(node: Node, guid: str) -> bytes:
    return (node.workdir / "var" / node.name / "spool" / guid[:2] / guid).read_bytes()


def peerd(node: Node, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_command(
        "peerd",
        [*args, "-c", str(node.config)],
        node.workdir,
        timeout=timeout,
    )


def damage(db: Path, table: str) -> None:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        (root,) = connection.execute(
            "SELECT rootpage FROM sqlite_schema WHERE name = ?", (table,)
        ).fetchone()
    with open(db, "r+b") as handle:
        handle.seek((root - 1) * page_size)
        handle.write(random.Random(7).randbytes(64))


def test_rebuild_a_node_from_its_partner(pair: tuple[Node, Node]) -> None:
    alpha, beta = pair
    alpha.add_account("alice")  # owned by alpha
    beta.add_account("bob")  # owned by beta
    sent: dict[str, list[bytes]] = {"alice": [], "bob": []}
    for i in range(4):
        sent["alice"].append(deliver(alpha, "alice", f"a{i}", BIG if i == 1 else b"a\r\n"))
        sent["bob"].append(deliver(beta, "bob", f"b{i}", BIG if i == 2 else b"b\r\n"))
    imap = imap_session(alpha, "alice")
    imap.uid("STORE", "1:2", "+FLAGS", r"(\Flagged)")
    imap.uid("STORE", "3", "+FLAGS", r"(\Deleted)")
    imap.expunge()
    imap.logout()
    del sent["alice"][2]
    imap = imap_session(beta, "bob")
    imap.uid("STORE", "2", "+FLAGS", r"(\Seen $Label)")
    imap.logout()
    owners = {"alice": alpha, "bob": beta}

    def converged() -> bool:
        return all(mailbox(alpha, a) == mailbox(beta, a) for a in owners)

    wait_until(converged, 30, "both accounts equal on both nodes")
    before = {a: mailbox(owner, a) for a, owner in owners.items()}

    beta.stop()
    damage(beta.db_path, "messages")
    refused = peerd(beta, "run", timeout=60)
    assert refused.returncode == EXIT_DATABASE_DAMAGED, refused.stderr[-2000:]
    assert "peerd rebuild --from-partner" in refused.stderr

    rebuilt = peerd(beta, "rebuild", "--from-partner")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    out = rebuilt.stdout
    assert "alpha took 1 account(s) this node owned: bob" in out, out
    assert "put aside as" in out and "this node owns none" in out
    assert "rebuilt beta from alpha: 2 account(s), 7 message(s)" in out, out
    assert list((beta.db_path.parent).glob("peerd.db.damaged-*")), "the damaged file is kept"

    beta.start()
    for account, box in before.items():
        assert mailbox(beta, account) == box, account  # UIDs, flags, modseqs, HIGHESTMODSEQ
        assert mailbox(alpha, account) == box
        for record in box["messages"]:
            guid = record[1]
            assert spool(beta, guid) == spool(alpha, guid)
            assert hashlib.sha1(spool(beta, guid)).hexdigest() == guid
    assert alpha.call("GET", "/v1/owner/bob")["owner"] == "alpha"

    back = beta.call("POST", "/v1/failback", {})
    assert [r["account"] for r in back["partner"]["moved"]] == ["bob"]
    imap = imap_session(beta, "bob")
    typ, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[])")
    imap.logout()
    assert typ == "OK"
    assert [item[1] for item in data if isinstance(item, tuple)] == sent["bob"]
