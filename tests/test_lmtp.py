"""LMTP against a real daemon with smtplib.LMTP: per-recipient replies, limits, failures, crashes."""

from __future__ import annotations

import contextlib
import resource
import signal
import smtplib
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.store import Store
from tests.nodes import Node, make_single
from tests.procs import wait_until


def msg(subject: str, body: bytes = b"hello\r\n", message_id: str | None = None) -> bytes:
    mid = message_id or f"<{subject}@test>"
    return f"Subject: {subject}\r\nMessage-ID: {mid}\r\n\r\n".encode() + body


def inbox(node: Node, account: str, name: str = "INBOX") -> list[dict[str, Any]]:
    return list(node.mailbox(account, name)["messages"])


def lmtp(node: Node) -> smtplib.LMTP:
    return smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30)


@pytest.fixture
def small_node(tmp_path: Path) -> Iterator[Node]:
    node = make_single(tmp_path, overrides={"lmtp": {"max_message_size": "200K"}})
    node.start()
    try:
        yield node
    finally:
        node.stop()


def test_lhlo_advertises_the_extensions(small_node: Node) -> None:
    with lmtp(small_node) as client:
        code, text = client.docmd("LHLO", "client.test")
        assert code == 250
        for ext in (b"SIZE 204800", b"8BITMIME", b"PIPELINING", b"ENHANCEDSTATUSCODES"):
            assert ext in text


def test_one_reply_per_recipient_with_mixed_results(small_node: Node) -> None:
    node = small_node
    node.add_account("alice")
    node.add_account("full", quota_limit=10)
    node.add_account("bob")
    with lmtp(node) as client:
        client.docmd("LHLO", "client.test")
        assert client.mail("sender@example.test")[0] == 250
        assert client.rcpt("alice@example.test")[0] == 250
        code, text = client.rcpt("nobody@example.test")
        assert (code, text[:5]) == (550, b"5.1.1")
        assert client.rcpt("full@example.test")[0] == 250
        assert client.rcpt("bob+Nowhere@example.test")[0] == 250
        first = client.data(msg("mixed"))
        replies = [first, client.getreply(), client.getreply()]
    assert [r[0] for r in replies] == [250, 552, 250]
    assert replies[1][1].startswith(b"5.2.2")
    assert len(inbox(node, "alice")) == 1 and len(inbox(node, "bob")) == 1
    assert inbox(node, "full") == []


def test_duplicates_and_plus_addressing(small_node: Node) -> None:
    node = small_node
    node.add_account("carol")
    with lmtp(node) as client:
        client.sendmail("s@example.test", ["carol@example.test"], msg("dup", message_id="<same@x>"))
        client.sendmail("s@example.test", ["carol@example.test"], msg("dup", message_id="<same@x>"))
    assert len(inbox(node, "carol")) == 1


def test_oversized_message_gets_552_per_recipient_and_nothing_is_stored(small_node: Node) -> None:
    node = small_node
    node.add_account("dave")
    node.add_account("erin")
    with lmtp(node) as client:
        client.docmd("LHLO", "client.test")
        client.mail("s@example.test")
        client.rcpt("dave@example.test")
        client.rcpt("erin@example.test")
        first = client.data(msg("big", b"z" * 300_000 + b"\r\n"))
        second = client.getreply()
        assert first[0] == 552 and second[0] == 552
        # The session goes on.
        assert client.noop()[0] == 250
    assert inbox(node, "dave") == [] and inbox(node, "erin") == []


def test_long_command_line_broken_mime_and_nul_bytes(small_node: Node) -> None:
    node = small_node
    node.add_account("frank")
    with lmtp(node) as client:
        client.docmd("LHLO", "client.test")
        code, _ = client.docmd("MAIL FROM:<" + "a" * 100_000 + "@example.test>")
        assert code == 500
        assert client.noop()[0] == 250
        broken = b'Content-Type: multipart/mixed; boundary="never"\r\nSubject: broken\r\n\r\n--nev\r\nunterminated'
        assert client.sendmail("s@example.test", ["frank@example.test"], broken) == {}
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("s@example.test", ["frank@example.test"], msg("nul", b"a\0b\r\n"))
        assert info.value.smtp_code == 554
    messages = inbox(node, "frank")
    assert len(messages) == 1  # broken MIME is kept as is, the NUL message is not


def test_client_disconnecting_mid_data_stores_nothing(small_node: Node) -> None:
    node = small_node
    node.add_account("gina")
    sock = socket.create_connection(("127.0.0.1", node.ports["lmtp"]))
    reader = sock.makefile("rb")
    reader.readline()
    for line in (
        b"LHLO x\r\n",
        b"MAIL FROM:<s@example.test>\r\n",
        b"RCPT TO:<gina@example.test>\r\n",
        b"DATA\r\n",
    ):
        sock.sendall(line)
        while True:
            reply = reader.readline()
            if reply[3:4] != b"-":
                break
    sock.sendall(b"Subject: cut\r\n\r\nhalf a mess")
    sock.close()
    time.sleep(0.3)
    with lmtp(node) as client:
        client.sendmail("s@example.test", ["gina@example.test"], msg("after"))
    assert [m["size"] for m in inbox(node, "gina")] == [len(msg("after"))]


def test_locked_database_gives_451_and_nothing_stored(small_node: Node) -> None:
    node = small_node
    node.add_account("hugo")
    conn = sqlite3.connect(node.db_path, timeout=1, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        with lmtp(node) as client:
            client.docmd("LHLO", "x")
            client.mail("s@example.test")
            code, _ = client.rcpt("hugo@example.test")
            if code == 250:
                reply = client.data(msg("locked"))
                assert reply[0] == 451
            else:  # the fence read itself may already wait out the lock
                assert code == 451
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    with lmtp(node) as client:
        client.sendmail("s@example.test", ["hugo@example.test"], msg("unlocked"))
    assert [m["size"] for m in inbox(node, "hugo")] == [len(msg("unlocked"))]


def test_full_spool_gives_452_and_nothing_stored(tmp_path: Path) -> None:
    node = make_single(tmp_path)
    spool = tmp_path / "var" / "alpha" / "spool"
    spool.mkdir(parents=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(spool)], capture_output=True
        ).returncode
        == 0
    )
    preexec = None
    if not mounted:
        # No mount here: a file size limit makes writes fail with EFBIG instead.
        def preexec() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))

    try:
        node.start(preexec=preexec)
        node.add_account("ivan")
        with lmtp(node) as client:
            client.docmd("LHLO", "x")
            client.mail("s@example.test")
            client.rcpt("ivan@example.test")
            reply = client.data(msg("huge", b"q" * 2_000_000 + b"\r\n"))
            assert reply[0] == 452 and reply[1].startswith(b"4.3.1")
            client.sendmail("s@example.test", ["ivan@example.test"], msg("fits"))
        assert [m["size"] for m in inbox(node, "ivan")] == [len(msg("fits"))]
        assert not any((spool / "tmp").iterdir())
    finally:
        node.stop()
        if mounted:
            subprocess.run(["umount", str(spool)], check=False)


def burst(
    node: Node, account: str, count: int, threads: int, acked: list[str], stop: threading.Event
) -> list[threading.Thread]:
    def run(t: int) -> None:
        with contextlib.suppress(OSError, smtplib.SMTPException), lmtp(node) as client:
            for i in range(count):
                if stop.is_set():
                    return
                subject = f"burst-{t}-{i}"
                client.sendmail(
                    "s@example.test",
                    [f"{account}@example.test"],
                    msg(subject, b"x" * 3000 + b"\r\n"),
                )
                acked.append(subject)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    return workers


def subjects(node: Node, account: str) -> list[str]:
    store = Store(f"sqlite:///{node.db_path}", node.workdir / "var" / node.name, owner=False)
    try:
        found = []
        for m in inbox(node, account):
            data = store.spool.read(m["guid"])  # verifies the bytes against the GUID
            found.append(data.split(b"\r\n")[0].removeprefix(b"Subject: ").decode())
        return found
    finally:
        store.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stop_during_a_burst_loses_no_acknowledged_message(tmp_path: Path, sig: int) -> None:
    node = make_single(tmp_path)
    node.start()
    try:
        node.add_account("jack")
        acked: list[str] = []
        stop = threading.Event()
        workers = burst(node, "jack", 200, 4, acked, stop)
        wait_until(lambda: len(acked) >= 60, 30, "some deliveries")
        assert node.proc is not None
        node.proc.send(sig)
        assert node.proc.popen is not None
        code = node.proc.popen.wait(30)
        stop.set()
        for w in workers:
            w.join(30)
        if sig == signal.SIGTERM:
            assert code == 0
        node.start()
        stored = subjects(node, "jack")
        assert set(acked) <= set(stored)
        # At most the deliveries in flight at the kill are there without a 250.
        assert len(set(stored) - set(acked)) <= 4
        assert len(stored) == len(set(stored))
        status = node.call("GET", "/v1/accounts/jack")
        assert status["quota_used"] == sum(m["size"] for m in inbox(node, "jack"))
        # The MTA retries a message whose 250 was lost: suppression keeps one copy.
        extra = sorted(set(stored) - set(acked))
        for subject in extra:
            with lmtp(node) as client:
                client.sendmail(
                    "s@example.test", ["jack@example.test"], msg(subject, b"x" * 3000 + b"\r\n")
                )
        assert sorted(subjects(node, "jack")) == sorted(stored)
    finally:
        node.stop()


def test_not_owned_account_is_refused_with_451(tmp_path: Path) -> None:
    node = make_single(tmp_path, overrides={"partner": {"name": "beta"}})
    node.start()
    try:
        node.add_account("kate", owner="beta")
        with lmtp(node) as client:
            client.docmd("LHLO", "x")
            client.mail("s@example.test")
            code, text = client.rcpt("kate@example.test")
        assert code == 451 and b"beta" in text
    finally:
        node.stop()
