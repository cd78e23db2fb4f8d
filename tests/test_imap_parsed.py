"""SORT, THREAD and FETCH's structures served from what the store keeps (issues 10, 16).

A message's RFC 5256 sort keys and its ENVELOPE, BODYSTRUCTURE and BODY are
parsed once, after the message is stored (LMTP, APPEND, a sync applied on the
replica), into ``message_parsed`` (migration ``0012_sortcache``). These tests
deliver with ``smtplib.LMTP`` and ``imaplib`` to real daemons, wait until the
node holds a row for every message, then hide the spool (the messages' bytes)
and restart the node with cold caches: SORT, THREAD and FETCH must give the
same answers as before, which they can only do from the stored rows. The
replica does the same after a failover, and a store made at ``0011_recent``
is filled when the node starts on it.
"""

from __future__ import annotations

import datetime as dt
import imaplib
import shutil
import smtplib
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command

import migrations
from engine import accounts, mailbox
from engine.messages import append
from engine.spool import guid_of
from engine.store import Store
from ownership import table as ownership_table
from peerd.pair import indexer, parsewalk
from tests.nodes import Node, make_single
from tests.procs import wait_until

ACCOUNT = "alice"


def plain(n: int, subject: str, date: str, *, sender: str, refs: str = "") -> bytes:
    header = (
        f"From: {sender}\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
        f"Date: {date}\r\nMessage-ID: <p{n}@t>\r\n"
    )
    if refs:
        header += f"References: {refs}\r\nIn-Reply-To: {refs.split()[-1]}\r\n"
    return f"{header}\r\nbody {n}\r\n".encode()


# Delivered by LMTP: one thread, dates out of arrival order, From out of order.
DELIVERED = [
    plain(1, "plans", "Mon, 05 Jan 2026 10:00:00 +0000", sender="Zed <zed@example.test>"),
    plain(
        2,
        "Re: plans",
        "Mon, 05 Jan 2026 12:00:00 +0200",  # 10:00 UTC: the same instant as 1
        sender="amy@example.test",
        refs="<p1@t>",
    ),
    plain(
        3,
        "=?UTF-8?Q?Re=3A_caf=C3=A9?=",
        "Sun, 04 Jan 2026 09:00:00 -0500",
        sender='"Bob" <bob@example.test>',
        refs="<p1@t> <p2@t>",
    ),
]

# APPENDed: MIME that the structure parser has to get right.
APPENDED = [
    (
        b"From: carol@example.test\r\nTo: group: g1@d1.org, g2@d2.org;, undisclosed:;\r\n"
        b"Subject: [list] Fwd: nested\r\nDate: Tue, 06 Jan 2026 08:00:00 +0000\r\n"
        b"Message-ID: <p4@t>\r\nReferences: <p3@t>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed;\r\n boundary="outer\r\n b"\r\n\r\n'
        b"--outer b\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nhello\r\n"
        b"--outer b\r\nContent-Type: message/rfc822\r\n"
        b'Content-Disposition: attachment;\r\n filename*0="a b";\r\n filename*1=".eml"\r\n\r\n'
        b"From: =?ISO-8859-1?Q?Andr=E9?= <andre@example.test>\r\nSubject: inner\r\n"
        b'Content-Type: multipart/alternative; boundary="in"\r\n\r\n'
        b"--in\r\nContent-Type: text/plain\r\n\r\ninner text\r\n"
        b"--in\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n<p>x=3D1</p>\r\n--in--\r\n"
        b"\r\n--outer b--\r\n"
    ),
    (
        b"From: dave@example.test\r\nSubject: Re: Re: plans (fwd)\r\n"
        b"Date: not a date\r\nMessage-ID: <p5@t>\r\nIn-Reply-To: <p1@t>\r\n\r\nno date\r\n"
    ),
    b"Subject: =?UTF-8?B?w6lsw6g=?=\r\n\r\nno header but a subject\r\n",
]

APPENDED_AT = '"01-Jan-2030 00:00:00 +0000"'

COMMANDS: list[tuple[str, tuple[str, ...]]] = [
    ("SORT", ("(ARRIVAL)", "UTF-8", "ALL")),
    ("SORT", ("(DATE)", "UTF-8", "ALL")),
    ("SORT", ("(SUBJECT)", "UTF-8", "ALL")),
    ("SORT", ("(FROM)", "UTF-8", "ALL")),
    ("SORT", ("(REVERSE DATE SIZE)", "UTF-8", "ALL")),
    ("SORT", ("(DISPLAYFROM)", "UTF-8", "ALL")),
    ("THREAD", ("REFERENCES", "UTF-8", "ALL")),
    ("THREAD", ("ORDEREDSUBJECT", "UTF-8", "ALL")),
    ("FETCH", ("1:*", "(BODYSTRUCTURE)")),
    ("FETCH", ("1:*", "(ENVELOPE BODY)")),
]


def lmtp_deliver(node: Node, data: bytes) -> None:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30) as lmtp:
        lmtp.docmd("LHLO", "t")
        lmtp.mail("s@example.test")
        assert lmtp.rcpt(f"{ACCOUNT}@example.test")[0] == 250
        assert lmtp.data(data)[0] == 250


def fill(node: Node) -> None:
    for data in DELIVERED:
        lmtp_deliver(node, data)
    client = connect(node)
    try:
        for data in APPENDED:
            # One internal date for all: 5 and 6 have no usable Date, so SORT
            # DATE falls back to it (RFC 5256 2.2), and their tie must not
            # depend on whether they arrived in the same second. After the
            # deliveries', so ARRIVAL stays 1..6.
            assert client.append("INBOX", None, APPENDED_AT, data)[0] == "OK"
    finally:
        client.logout()


def connect(node: Node) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=30)
    client.login(ACCOUNT, "secret")
    return client


def answers(node: Node) -> dict[str, list[Any]]:
    """Each command's untagged data, as UID commands: the same on both nodes."""
    client = connect(node)
    try:
        assert client.select("INBOX")[0] == "OK"
        out: dict[str, list[Any]] = {}
        for name, args in COMMANDS:
            typ, data = client.uid(name, *args)
            assert typ == "OK", (name, args, data)
            out[f"{name} {' '.join(args)}"] = data
        return out
    finally:
        client.logout()


def _query(node: Node, sql: str) -> set[str]:
    with sqlite3.connect(node.db_path) as db:
        return {row[0] for row in db.execute(sql)}


def parsed_everything(node: Node) -> bool:
    """Whether the node's store holds a parsed row for every live record's GUID."""
    live = _query(node, "SELECT guid FROM messages WHERE expunged = 0")
    return bool(live) and live <= _query(node, "SELECT guid FROM message_parsed")


@contextmanager
def spool_hidden(node: Node) -> Iterator[None]:
    """The node's message files moved away (the node must be stopped)."""
    spool = node.workdir_data / "spool"
    hidden = node.workdir_data / "spool.hidden"
    spool.rename(hidden)
    spool.mkdir()
    try:
        yield
    finally:
        shutil.rmtree(spool)
        hidden.rename(spool)


def flat(data: list[Any]) -> bytes:
    """imaplib's untagged data as one byte string (literals included)."""
    out = b""
    for item in data:
        out += b"".join(item) if isinstance(item, tuple) else item
    return out


def uids(data: list[Any]) -> list[int]:
    return [int(x) for x in b" ".join(d for d in data if d).split()]


def test_sort_thread_and_structures_come_from_the_store_after_lmtp_and_append(
    tmp_path: Path,
) -> None:
    node = make_single(tmp_path)
    node.start()
    try:
        node.add_account(ACCOUNT)
        fill(node)
        wait_until(lambda: parsed_everything(node), 30, "the parse walker")
        before = answers(node)
    finally:
        node.stop()
    # What RFC 5256 says of this mailbox: 1 and 2 were sent at the same
    # instant (mailbox order), 5 has no valid Date and 6 none (their internal
    # dates, today, are last); an empty From sorts first.
    assert uids(before["SORT (DATE) UTF-8 ALL"]) == [3, 1, 2, 4, 5, 6]
    assert uids(before["SORT (FROM) UTF-8 ALL"]) == [6, 2, 3, 4, 5, 1]
    assert before["THREAD REFERENCES UTF-8 ALL"] == [b"(1 (2 3 4)(5))(6)"]
    structures = flat(before["FETCH 1:* (BODYSTRUCTURE)"])
    assert b'"message" "rfc822"' in structures.lower() and b'"outer b"' in structures
    # Cold caches, no message bytes: only the stored rows can answer.
    with spool_hidden(node):
        node.start()
        try:
            after = answers(node)
        finally:
            node.stop()
    assert after == before


def test_the_replica_parses_what_it_receives_and_serves_it_after_a_failover(
    pair: tuple[Node, Node],
) -> None:
    alpha, beta = pair
    alpha.add_account(ACCOUNT)
    fill(alpha)
    wait_until(lambda: parsed_everything(alpha), 30, "alpha's parse walker")
    live = _query(alpha, "SELECT guid FROM messages WHERE expunged = 0")
    wait_until(
        lambda: live <= _query(beta, "SELECT guid FROM message_parsed"), 30, "beta's parse walker"
    )
    on_alpha = answers(alpha)
    alpha.stop()
    beta.stop()
    with spool_hidden(beta):
        beta.start()
        assert [r["account"] for r in beta.call("POST", "/v1/failover", {})["taken"]] == [ACCOUNT]
        assert answers(beta) == on_alpha
        beta.stop()


def test_a_store_upgraded_from_0011_is_parsed_when_the_node_starts(tmp_path: Path) -> None:
    node = make_single(tmp_path)
    url = node.db_url
    node.db_path.parent.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(url)
    store = Store(url, node.workdir_data)
    try:

        def create(s: Any) -> None:
            accounts.create_account(s, ACCOUNT, password="secret")
            ownership_table.create(s, ACCOUNT, node.name)

        store.write_sync(create)
        payloads = DELIVERED + APPENDED
        dirs = store.spool.put_many((guid_of(p), p) for p in payloads)

        def put(s: Any) -> None:
            acct = accounts.get_account(s, ACCOUNT)
            box = mailbox.get_mailbox(s, acct, "INBOX")
            when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
            for i, data in enumerate(payloads):
                append(
                    s,
                    acct,
                    box,
                    guid=guid_of(data),
                    size=len(data),
                    internaldate=when + dt.timedelta(seconds=i),
                )

        store.write_sync(put, dirs=dirs)
    finally:
        store.close()
    command.downgrade(migrations.alembic_config(url), "0011_recent")
    with sqlite3.connect(node.db_path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "message_parsed" not in tables and "messages" in tables
    node.start()
    try:
        # The node upgrades the store and its walker parses the messages there.
        wait_until(lambda: parsed_everything(node), 30, "the parse walker")
        first = answers(node)
    finally:
        node.stop()
    assert uids(first["SORT (ARRIVAL) UTF-8 ALL"]) == [1, 2, 3, 4, 5, 6]
    # 5 and 6 have no usable Date: their internal dates, set above, come first.
    assert uids(first["SORT (DATE) UTF-8 ALL"]) == [5, 6, 3, 1, 2, 4]
    with spool_hidden(node):
        node.start()
        try:
            assert answers(node) == first
        finally:
            node.stop()


def test_a_session_sorts_again_after_mail_comes_goes_or_changes_flags(tmp_path: Path) -> None:
    """SORT/THREAD ALL keep their items for the session's unchanged view of
    the mailbox; a new message, an expunge or a flag change is seen."""
    node = make_single(tmp_path)
    node.start()
    try:
        node.add_account(ACCOUNT)
        fill(node)
        client = connect(node)
        try:
            client.select("INBOX")

            def by_date() -> list[int]:
                typ, data = client.uid("SORT", "(DATE)", "UTF-8", "ALL")
                assert typ == "OK"
                return uids(data)

            assert by_date() == [3, 1, 2, 4, 5, 6]
            assert by_date() == [3, 1, 2, 4, 5, 6]  # the order kept for this view
            typ, data = client.uid("SORT", "(REVERSE DATE)", "UTF-8", "ALL")
            assert typ == "OK" and uids(data) == [5, 6, 4, 1, 2, 3]  # ties keep mailbox order
            for key in ("ARRIVAL", "SIZE", "SUBJECT", "FROM", "TO", "CC"):  # more than it keeps
                assert client.uid("SORT", f"({key})", "UTF-8", "ALL")[0] == "OK"
            assert by_date() == [3, 1, 2, 4, 5, 6]
            client.store("1", "+FLAGS", "\\Flagged")
            assert by_date() == [3, 1, 2, 4, 5, 6]
            typ, data = client.uid("SORT", "(DATE)", "UTF-8", "FLAGGED")  # not ALL
            assert typ == "OK" and uids(data) == [1]
            lmtp_deliver(node, plain(7, "early", "Sat, 03 Jan 2026 00:00:00 +0000", sender="x@t"))
            client.noop()
            assert by_date() == [7, 3, 1, 2, 4, 5, 6]
            client.store("2", "+FLAGS", "\\Deleted")  # UID 2
            client.expunge()
            assert by_date() == [7, 3, 1, 4, 5, 6]
            typ, data = client.sort("(DATE)", "UTF-8", "ALL")  # sequence numbers now
            assert typ == "OK" and uids(data) == [6, 2, 1, 3, 4, 5]
            typ, data = client.uid("THREAD", "REFERENCES", "UTF-8", "ALL")
            # UID 2 gone: 3's reference to it is a dummy, pruned below 1.
            assert typ == "OK" and data == [b"(7)(1 (3 4)(5))(6)"]
        finally:
            client.logout()
    finally:
        node.stop()


def test_the_walkers_rows_ride_on_the_deliveries_commits(tmp_path: Path) -> None:
    """Mail delivered one message at a time: the parse walker's rows join the
    next delivery's commit (a write that rides) instead of a commit, and a
    WAL flush, of their own after each walk."""
    node = make_single(tmp_path)
    node.start()
    try:
        node.add_account(ACCOUNT)
        count = 12
        before = node.call("GET", "/v1/status")["store"]
        with smtplib.LMTP("127.0.0.1", node.ports["lmtp"]) as client:
            for n in range(count):
                data = plain(1000 + n, f"ride {n}", "Mon, 1 Dec 2025 10:00:00 +0000", sender="a@x")
                client.sendmail("a@x", [f"{ACCOUNT}@example.test"], data)
                # The walker's gap passes, then it parses this one before
                # the next comes: its rows wait for that delivery's commit.
                time.sleep(parsewalk.GAP + 0.05)
        wait_until(lambda: parsed_everything(node), 30, "the parse walker")
        after = node.call("GET", "/v1/status")["store"]
    finally:
        node.stop()
    writes = after["writes"] - before["writes"]
    commits = after["batches"] - before["batches"]
    # Writes that shared another's commit: the walker's, one a walk.
    assert writes - commits >= count // 2, (writes, commits)


def test_a_stream_of_lone_deliveries_is_walked_in_a_few_walks(tmp_path: Path) -> None:
    """Deliveries that each commit alone, back to back: the walkers gather the
    commits of a gap into one walk, instead of a walk (a read, two
    thread hand-offs, a write of the store) after each delivery."""
    node = make_single(tmp_path)
    node.start()
    try:
        node.add_account(ACCOUNT)
        count = 40
        wait_until(lambda: node.call("GET", "/v1/index")["pending"] == 0, 30, "the indexer")
        before = node.call("GET", "/v1/status")["store"]["writes"]
        started = time.monotonic()
        with smtplib.LMTP("127.0.0.1", node.ports["lmtp"]) as client:
            for n in range(count):
                data = plain(2000 + n, f"lone {n}", "Mon, 1 Dec 2025 10:00:00 +0000", sender="a@x")
                client.sendmail("a@x", [f"{ACCOUNT}@example.test"], data)
        took = time.monotonic() - started
        writes = node.call("GET", "/v1/status")["store"]["writes"] - before
    finally:
        node.stop()
    # Besides the deliveries: the parse walker's writes (one a walk, a walk a
    # GAP or a POLL at most) and the indexer's (a slice of SLICE texts
    # when its share is due). Without the gathering, a write of the walker's
    # for each delivery.
    walks = took / parsewalk.GAP + took / parsewalk.POLL + 2
    assert writes - count <= walks + count / indexer.SLICE + took / indexer.GAP + 1, (writes, took)
