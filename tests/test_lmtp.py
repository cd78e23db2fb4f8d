"""LMTP (RFC 2033) against a real ``peerd run`` on loopback, with smtplib.LMTP.

What a mail admin relies on: one reply per accepted recipient after DATA,
clear permanent and temporary errors, nothing stored in part, and a daemon
that keeps serving after bad input, a locked database or a full disk.
"""

from __future__ import annotations

import hashlib
import imaplib
import os
import signal
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.store import Store
from ownership import table as ownership_table
from tests.conftest import LoneNode
from tests.harness.certs import self_signed
from tests.harness.daemons import ModuleNodes, to_toml
from tests.harness.procs import Proc, pid_alive, wait_until

NodeFactory = Callable[..., LoneNode]


def msg(subject: str, body: bytes = b"hello\r\n", message_id: str | None = None) -> bytes:
    mid = message_id or f"<{subject}@test>"
    return f"Subject: {subject}\r\nMessage-ID: {mid}\r\n\r\n".encode() + body


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def spool_files(node: LoneNode) -> list[Path]:
    root = node.workdir_data / "spool"
    return [p for p in root.rglob("*") if p.is_file() and p.parent.name != "tmp"]


def temp_files(node: LoneNode) -> list[Path]:
    return list((node.workdir_data / "spool" / "tmp").iterdir())


# The `node` fixture (tests/conftest.py): a lone node, its partner beta named.
pytestmark = pytest.mark.node(partner="beta", overrides={"lmtp": {"max_message_size": "200K"}})


@pytest.fixture
def node(shared_node: LoneNode) -> LoneNode:
    """One node for the module's tests that need only accounts of their own
    (``shared_node``: earlier tests' accounts deleted); the tests that stop,
    kill or configure a node start their own (``lone_node``)."""
    return shared_node


def test_lhlo_advertises_the_extensions(node: LoneNode) -> None:
    with node.lmtp() as client:
        code, _ = client.ehlo("client.test")  # smtplib.LMTP sends LHLO
        assert code == 250
        assert client.esmtp_features["size"] == str(200 * 1024)
        for extension in ("8bitmime", "pipelining", "enhancedstatuscodes"):
            assert client.has_extn(extension), extension
        assert not client.has_extn("starttls")  # no [tls] certificate here
        code, _ = client.helo("client.test")  # LMTP has no HELO (RFC 2033 4.1)
        assert code >= 500


def test_one_reply_per_accepted_recipient_in_rcpt_order(node: LoneNode) -> None:
    data = msg("mixed")
    node.add_account("alice")
    node.add_account("full", quota_limit=len(data) - 1)
    node.add_account("bob")
    with node.lmtp() as client:
        client.ehlo("client.test")
        assert client.mail("sender@example.test")[0] == 250
        assert client.rcpt("alice@example.test")[0] == 250
        code, text = client.rcpt("nobody@example.test")
        assert (code, text[:6]) == (550, b"5.1.1 ")
        assert client.rcpt("full@example.test")[0] == 250
        assert client.rcpt("bob@example.test")[0] == 250
        # Three accepted recipients: three replies after the one DATA.
        replies = [client.data(data), client.getreply(), client.getreply()]
        assert [code for code, _ in replies] == [250, 552, 250]
        assert replies[0][1].startswith(b"2.1.5") and replies[2][1].startswith(b"2.1.5")
        assert replies[1][1].startswith(b"5.2.2")
        assert client.noop()[0] == 250  # and the session goes on
    for account in ("alice", "bob"):
        assert [r["guid"] for r in node.records(account)] == [sha1(data)]
    assert node.records("full") == []
    assert node.call("GET", "/v1/accounts/full")["quota_used"] == 0


def test_over_quota_single_recipient_552_and_nothing_stored(node: LoneNode) -> None:
    node.add_account("full", quota_limit=100)
    with node.lmtp() as client, pytest.raises(smtplib.SMTPDataError) as info:
        client.sendmail("s@example.test", ["full@example.test"], msg("big", b"z" * 200 + b"\r\n"))
    error = info.value.smtp_error
    assert info.value.smtp_code == 552 and isinstance(error, bytes) and error.startswith(b"5.2.2")
    assert node.records("full") == []
    # Room for a small one still.
    with node.lmtp() as client:
        assert client.sendmail("s@example.test", ["full@example.test"], b"Subject: s\r\n\r\n") == {}
    assert len(node.records("full")) == 1


def test_duplicate_message_id_is_stored_once_and_both_get_250(node: LoneNode) -> None:
    node.add_account("carol")
    replies = []
    for body in (b"first\r\n", b"retry, same id\r\n"):
        with node.lmtp() as client:
            client.ehlo("x")
            client.mail("s@example.test")
            client.rcpt("carol@example.test")
            replies.append(client.data(msg("dup", body, message_id="<same@x>")))
    assert [code for code, _ in replies] == [250, 250]
    assert [r["guid"] for r in node.records("carol")] == [
        sha1(msg("dup", b"first\r\n", "<same@x>"))
    ]


def test_different_message_ids_are_never_taken_for_duplicates(node: LoneNode) -> None:
    """The Message-ID kept for the duplicate check was read as ASCII with
    every other octet as U+FFFD, and cut at 255 characters: two different
    messages whose ids differ only in UTF-8 (RFC 6532) or after the 255th
    character read the same, and the second was answered 250 and dropped."""
    node.add_account("carol")
    prefix = "<" + "x" * 300
    ids = [b"<\xc3\xa4@x>", b"<\xc3\xb6@x>", b"<\xff@x>", b"<\xfe@x>"]
    ids += [f"{prefix}1@x>".encode(), f"{prefix}2@x>".encode()]
    sent = [b"Subject: id %d\r\nMessage-ID: %s\r\n\r\nbody\r\n" % (n, i) for n, i in enumerate(ids)]
    with node.lmtp() as client:
        for data in sent:
            assert client.sendmail("s@example.test", ["carol@example.test"], data) == {}
    assert [r["guid"] for r in node.records("carol")] == [sha1(data) for data in sent]
    # The same id again is still a duplicate.
    with node.lmtp() as client:
        again = sent[0].replace(b"body", b"retry")
        assert client.sendmail("s@example.test", ["carol@example.test"], again) == {}
    assert len(node.records("carol")) == len(sent)


def test_plus_addressing_delivers_to_an_existing_folder_or_inbox(node: LoneNode) -> None:
    node.add_account("dora", password="pw")
    imap = imaplib.IMAP4("127.0.0.1", node.port("imap"), timeout=30)
    try:
        imap.login("dora", "pw")
        assert imap.create("Lists")[0] == "OK"
    finally:
        imap.logout()
    with node.lmtp() as client:
        client.sendmail("s@example.test", ["dora+Lists@example.test"], msg("to-lists"))
        client.sendmail("s@example.test", ["dora+NoSuchFolder@example.test"], msg("to-inbox"))
        # The same Message-ID in another folder is not a duplicate.
        client.sendmail("s@example.test", ["dora@example.test"], msg("to-lists"))
    assert [r["guid"] for r in node.records("dora", "Lists")] == [sha1(msg("to-lists"))]
    assert [r["guid"] for r in node.records("dora")] == [
        sha1(msg("to-inbox")),
        sha1(msg("to-lists")),
    ]


def test_oversized_message_552_per_recipient_and_nothing_stored(node: LoneNode) -> None:
    node.add_account("dave")
    node.add_account("erin")
    files = len(spool_files(node))
    with node.lmtp() as client:
        client.ehlo("x")
        client.mail("s@example.test")
        client.rcpt("dave@example.test")
        client.rcpt("erin@example.test")
        first = client.data(msg("big", b"z" * 300_000 + b"\r\n"))
        second = client.getreply()
        assert (first[0], second[0]) == (552, 552)
        assert first[1].startswith(b"5.3.4") and second[1].startswith(b"5.3.4")
        # The session goes on, and a message that fits is delivered.
        assert client.sendmail("s@example.test", ["dave@example.test"], msg("small")) == {}
    assert [r["guid"] for r in node.records("dave")] == [sha1(msg("small"))]
    assert node.records("erin") == []
    assert len(spool_files(node)) == files + 1 and temp_files(node) == []


def test_100kb_command_line_gets_a_clear_500_and_the_session_goes_on(node: LoneNode) -> None:
    node.add_account("frank")
    with node.lmtp() as client:
        client.ehlo("x")
        code, text = client.docmd("MAIL FROM:<" + "a" * 100_000 + "@example.test>")
        assert code == 500 and b"too long" in text.lower()
        assert client.noop()[0] == 250
        assert client.sendmail("s@example.test", ["frank@example.test"], msg("after-long")) == {}
    assert len(node.records("frank")) == 1


# The limits of one transaction the next two tests reach, on one node of the
# module's (max_line, max_recipients: each test stays far from the other's).
LIMITS = {"lmtp": {"max_line": 1000, "max_recipients": 2}}


def test_lmtp_max_line_is_honoured(module_nodes: ModuleNodes) -> None:
    node = module_nodes.lone(LIMITS)
    node.add_account("max")
    with node.lmtp() as client:
        client.ehlo("x")
        # Longer than RFC 5321's least 512 octets, shorter than max_line: accepted.
        code, text = client.docmd("MAIL FROM:<" + "a" * 800 + "@example.test>")
        assert code == 250, text
        code, _ = client.docmd("RCPT TO:<max@example.test>" + " " * 1000)
        assert code == 500
        assert client.rcpt("max@example.test")[0] == 250
        assert client.data(msg("long-sender"))[0] == 250
    assert len(node.records("max")) == 1


def test_broken_mime_and_8bit_bytes_are_stored_as_is(node: LoneNode) -> None:
    node.add_account("gus")
    broken = (
        b'Content-Type: multipart/mixed; boundary="never"\r\n'
        b"Subject: broken\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"--nev\r\n!!! not base64 \xff\xfe\xe9t\xe9\r\nunterminated\r\n"
    )
    with node.lmtp() as client:
        assert client.sendmail("s@example.test", ["gus@example.test"], broken) == {}
    (record,) = node.records("gus")
    assert record["guid"] == sha1(broken) and record["size"] == len(broken)
    store = Store(node.db_url, node.workdir_data, owner=False)
    try:
        assert store.spool.read(record["guid"]) == broken
    finally:
        store.close()


def test_nul_bytes_554_and_nothing_stored(node: LoneNode) -> None:
    node.add_account("hana")
    with node.lmtp() as client:
        client.ehlo("x")
        client.mail("s@example.test")
        client.rcpt("hana@example.test")
        client.rcpt("hana+x@example.test")
        replies = [client.data(msg("nul", b"a\0b\r\n")), client.getreply()]
        assert all(code == 554 and text.startswith(b"5.6.0") for code, text in replies)
        assert client.sendmail("s@example.test", ["hana@example.test"], msg("clean")) == {}
    assert [r["guid"] for r in node.records("hana")] == [sha1(msg("clean"))]


def test_client_disconnecting_mid_data_stores_nothing(node: LoneNode) -> None:
    node.add_account("ida")
    for partial in (b"Subject: cut\r\n\r\nhalf a mess", b"Subject: cut\r\n\r\n" + b"q" * 150_000):
        with socket.create_connection(("127.0.0.1", node.port("lmtp")), timeout=30) as sock:
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"220")
            for line in (
                b"LHLO x\r\n",
                b"MAIL FROM:<s@example.test>\r\n",
                b"RCPT TO:<ida@example.test>\r\n",
                b"DATA\r\n",
            ):
                sock.sendall(line)
                while (reply := reader.readline())[3:4] == b"-":
                    pass
            assert reply.startswith(b"354")
            sock.sendall(partial)
            reader.close()
    # The daemon keeps serving; only the complete message is there.
    with node.lmtp() as client:
        assert client.sendmail("s@example.test", ["ida@example.test"], msg("after")) == {}
    assert [r["guid"] for r in node.records("ida")] == [sha1(msg("after"))]
    assert temp_files(node) == []


def test_locked_database_gives_451_then_works_after_release(node: LoneNode) -> None:
    node.add_account("hugo")
    # Another writer holds the write lock past the daemon's 5 s busy timeout.
    holder = sqlite3.connect(node.db_path, timeout=1, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with node.lmtp(timeout=60) as client:
            client.ehlo("x")
            client.mail("s@example.test")
            # WAL: the RCPT check only reads, and readers are not blocked.
            assert client.rcpt("hugo@example.test")[0] == 250
            started = time.monotonic()
            code, text = client.data(msg("locked"))
            assert code == 451 and text.startswith(b"4."), (code, text)
            assert time.monotonic() - started >= 4.5  # it waited before giving up
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert node.records("hugo") == []
    with node.lmtp() as client:
        assert client.sendmail("s@example.test", ["hugo@example.test"], msg("unlocked")) == {}
    assert [r["guid"] for r in node.records("hugo")] == [sha1(msg("unlocked"))]
    assert node.audit("hugo") == ["unlocked"]


# Where mounting is not allowed, peerd runs with a file size limit instead:
# writes past it fail with EFBIG, which the spool maps to StorageFull as it
# does ENOSPC. The wrapper execs peerd, so the pid we stop is peerd's own.
_FSIZE_WRAPPER = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (900_000, 900_000)); "
    "os.execv(sys.executable, [sys.executable, '-m', 'peerd', 'run', '-c', sys.argv[1]])"
)


@pytest.fixture
def spool_mounted(tmp_path: Path) -> Iterator[bool]:
    """A 1 MB tmpfs on the node's spool when this host allows mounts (root)."""
    spool = tmp_path / "node" / "var" / "alpha" / "spool"
    spool.mkdir(parents=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(spool)],
        capture_output=True,
    )
    if mount.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", str(spool)], check=True)


def test_full_spool_gives_452_and_nothing_stored(
    lone_node: NodeFactory, spool_mounted: bool
) -> None:
    node = lone_node(start=False)
    try:
        if spool_mounted:
            node.start()
        else:
            argv = [sys.executable, "-c", _FSIZE_WRAPPER, str(node.config)]
            node.proc = Proc(argv, node.log, cwd=node.workdir).start()
            node.wait_ready()
        node.add_account("ivan")
        node.add_account("jo")
        with node.lmtp() as client:
            client.ehlo("x")
            client.mail("s@example.test")
            client.rcpt("ivan@example.test")
            client.rcpt("jo@example.test")
            replies = [client.data(msg("huge", b"q" * 1_500_000 + b"\r\n")), client.getreply()]
            for code, text in replies:
                assert code == 452 and text.startswith(b"4.3.1"), (code, text)
            assert temp_files(node) == []  # the part that was written is gone
            assert client.sendmail("s@example.test", ["ivan@example.test"], msg("fits")) == {}
        assert [r["guid"] for r in node.records("ivan")] == [sha1(msg("fits"))]
        assert node.records("jo") == []
        assert [p.name for p in spool_files(node)] == [sha1(msg("fits"))]
    finally:
        node.stop()  # before the unmount


def test_sigterm_during_a_burst_exits_0_and_keeps_every_acknowledged_message(
    lone_node: NodeFactory,
) -> None:
    node = lone_node()
    node.add_account("jack")
    burst = node.burst("jack", threads=4, per_thread=400)
    wait_until(lambda: len(burst.acked) >= 60, 60, "60 deliveries")
    assert node.proc is not None
    node.proc.send(signal.SIGTERM)
    assert node.proc.wait(30) == 0
    burst.join()
    assert len(burst.acked) < 1600  # it was stopped in the middle
    stored = node.audit("jack")  # the node is down: read its store directly
    assert len(stored) == len(set(stored))
    assert set(burst.acked) <= set(stored)
    # In flight at the signal: finished (stored, maybe without its 250) or not at all.
    assert set(stored) - set(burst.acked) <= burst.unknown
    node.start()
    assert len(node.records("jack")) == len(stored)


def test_account_owned_by_the_partner_gets_451_at_rcpt(lone_node: NodeFactory) -> None:
    node = lone_node()
    node.add_account("kate")
    node.add_account("liam")
    with node.lmtp() as client:
        assert client.sendmail("s@example.test", ["kate@example.test"], msg("before")) == {}
    assert node.stop() == 0
    # Ownership moves to beta behind the stopped node's back (as a failover on beta would).
    store = Store(node.db_url, node.workdir_data, owner=False)
    try:
        store.write_sync(
            lambda s: ownership_table.set_owner(
                s, "kate", "beta", state="failed_over", reason="test"
            )
        )
    finally:
        store.close()
    node.start()
    with node.lmtp() as client:
        client.ehlo("x")
        client.mail("s@example.test")
        code, text = client.rcpt("kate@example.test")
        assert code == 451 and text.startswith(b"4.") and b"beta" in text
        assert client.rcpt("liam@example.test")[0] == 250  # others on this node still work
        assert client.data(msg("after"))[0] == 250
    assert [r["guid"] for r in node.records("kate")] == [sha1(msg("before"))]
    assert [r["guid"] for r in node.records("liam")] == [sha1(msg("after"))]


# --- LMTP worker processes ([lmtp] workers) -------------------------------------


def lmtp_workers(node: LoneNode) -> list[dict[str, int]]:
    return list(node.call("GET", "/v1/status")["lmtp"]["workers"])


def test_a_killed_lmtp_worker_is_restarted_and_no_acknowledged_message_is_lost(
    lone_node: NodeFactory,
) -> None:
    node = lone_node()
    node.add_account("mia")
    (worker,) = lmtp_workers(node)
    burst = node.burst("mia", threads=3, per_thread=400, tag="w")
    wait_until(lambda: len(burst.acked) >= 30, 60, "30 deliveries")
    os.kill(worker["pid"], signal.SIGKILL)
    burst.join()
    # The listening socket stayed open in the daemon: a new worker takes the
    # connections that waited in its backlog.
    wait_until(lambda: lmtp_workers(node)[0]["restarts"] == 1, 30, "the worker restarted")
    (again,) = lmtp_workers(node)
    assert again["pid"] != worker["pid"]
    with node.lmtp() as client:
        assert client.sendmail("s@example.test", ["mia@example.test"], msg("after")) == {}
    stored = node.audit("mia")
    assert len(stored) == len(set(stored))
    assert set(burst.acked) <= set(stored)
    assert set(stored) - set(burst.acked) <= burst.unknown | {"after"}
    # What the dead worker had written and nobody will commit is gone.
    assert all(f".{worker['pid']}." not in p.name for p in temp_files(node))
    assert node.call("GET", "/v1/status")["counters"]["lmtp_worker_restarts"] == 1


def _lhlo_size(node: LoneNode) -> str:
    with node.lmtp() as client:
        code, text = client.docmd("LHLO", "t")
        assert code == 250
    return next(line.split()[1] for line in text.decode().splitlines() if line.startswith("SIZE"))


def test_a_restarted_lmtp_worker_runs_the_daemons_config_not_the_edited_file(
    lone_node: NodeFactory,
) -> None:
    """A worker started again read the config file: edited since to a value
    only a restart applies, it alone took it; edited to an error, it died on
    it with a traceback, again and again, and LMTP was down."""
    node = lone_node()
    node.add_account("nina")
    size = _lhlo_size(node)
    original = node.config.read_text()
    edits = []
    for size_in_file in ("1K", "huge"):  # a change only a restart applies, then an error
        sections = tomllib.loads(original)
        sections.setdefault("lmtp", {})["max_message_size"] = size_in_file
        edits.append(to_toml(sections))
    try:
        for restarts, text in enumerate(edits, start=1):
            node.config.write_text(text)
            (worker,) = lmtp_workers(node)
            os.kill(worker["pid"], signal.SIGKILL)
            wait_until(
                lambda n=restarts: lmtp_workers(node)[0]["restarts"] == n,  # type: ignore[misc]
                30,
                f"restart {restarts}",
            )
            assert _lhlo_size(node) == size  # the daemon's value, not the file's
            with node.lmtp() as client:
                assert (
                    client.sendmail("s@example.test", ["nina@example.test"], msg(f"edit{restarts}"))
                    == {}
                )
    finally:
        node.config.write_text(original)
    assert len(node.records("nina")) == 2
    assert node.call("GET", "/v1/status")["counters"]["lmtp_worker_restarts"] == 2
    assert "Traceback" not in node.log.read_text()


def test_the_lmtp_worker_dies_with_the_daemon(lone_node: NodeFactory) -> None:
    node = lone_node()
    (worker,) = lmtp_workers(node)
    assert node.proc is not None
    node.kill9()
    # PR_SET_PDEATHSIG: no orphan keeps the LMTP port (a restart must bind it).
    wait_until(lambda: not pid_alive(worker["pid"]), 10, "the worker to die with the daemon")
    node.start()
    node.add_account("ned")
    with node.lmtp() as client:
        assert client.sendmail("s@example.test", ["ned@example.test"], msg("back")) == {}
    assert [r["guid"] for r in node.records("ned")] == [sha1(msg("back"))]


def test_lmtp_in_the_daemon_itself_with_no_workers(
    module_nodes: ModuleNodes, lmtp_cert: tuple[Path, Path]
) -> None:
    # The module's node with no workers: the STARTTLS tests' (its certificate
    # plays no part in a delivery in the clear).
    node = module_nodes.lone(tls_config(lmtp_cert, workers=0))
    assert "lmtp" not in node.call("GET", "/v1/status")
    node.add_account("olga")
    node.add_account("pia", quota_limit=10)
    with node.lmtp() as client:
        client.ehlo("x")
        client.mail("s@example.test")
        client.rcpt("olga@example.test")
        client.rcpt("pia@example.test")
        replies = [client.data(msg("inproc")), client.getreply()]
    assert [code for code, _ in replies] == [250, 552]
    assert [r["guid"] for r in node.records("olga")] == [sha1(msg("inproc"))]
    assert node.records("pia") == []


def test_file_by_file_spool_flush_delivers_the_same(lone_node: NodeFactory) -> None:
    node = lone_node({"node": {"spool_flush": "file"}})
    node.add_account("quin")
    burst = node.burst("quin", threads=3, per_thread=10, tag="f")
    wait_until(lambda: len(burst.acked) == 30, 60, "30 deliveries")
    burst.join()
    assert sorted(node.audit("quin")) == sorted(burst.acked)


def test_pipelined_commands_get_their_replies_in_order(node: LoneNode) -> None:
    """RFC 2920 with RFC 2033: MAIL, RCPTs and DATA in one write (as Postfix
    sends them), then the message and the next transaction's commands in one
    more; the replies come in order, one per recipient after the data."""
    node.add_account("pip")
    node.add_account("pop")
    with socket.create_connection(("127.0.0.1", node.port("lmtp")), timeout=30) as sock:
        reader = sock.makefile("rb")

        def replies(n: int) -> list[bytes]:
            out: list[bytes] = []
            while len(out) < n:
                line = reader.readline()
                assert line, "connection closed"
                if line[3:4] != b"-":
                    out.append(line[:3])
            return out

        assert replies(1) == [b"220"]
        sock.sendall(b"LHLO x\r\n")
        assert replies(1) == [b"250"]
        sock.sendall(
            b"MAIL FROM:<s@example.test>\r\nRCPT TO:<pip@example.test>\r\n"
            b"RCPT TO:<nobody@example.test>\r\nRCPT TO:<pop@example.test>\r\nDATA\r\n"
        )
        assert replies(5) == [b"250", b"250", b"550", b"250", b"354"]
        sock.sendall(
            msg("piped") + b".\r\n"
            b"MAIL FROM:<s@example.test>\r\nRCPT TO:<pip@example.test>\r\nDATA\r\n"
        )
        assert replies(2 + 3) == [b"250", b"250", b"250", b"250", b"354"]
        sock.sendall(msg("second") + b".\r\nQUIT\r\n")
        assert replies(2) == [b"250", b"221"]
    assert [r["guid"] for r in node.records("pip")] == [sha1(msg("piped")), sha1(msg("second"))]
    assert [r["guid"] for r in node.records("pop")] == [sha1(msg("piped"))]


@pytest.mark.parametrize("workers", [1, 0])
def test_sigterm_tells_an_open_session_421(lone_node: NodeFactory, workers: int) -> None:
    """A session in the middle of a transaction when the daemon is asked to
    stop gets 421 (RFC 5321 3.8) rather than a dropped connection."""
    node = lone_node({"lmtp": {"workers": workers}})
    node.add_account("quit")
    with socket.create_connection(("127.0.0.1", node.port("lmtp")), timeout=30) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        sock.sendall(b"LHLO x\r\nMAIL FROM:<s@example.test>\r\n")
        while not reader.readline().startswith(b"250 "):
            pass  # the LHLO reply
        assert reader.readline().startswith(b"250")  # MAIL
        assert node.proc is not None
        node.proc.send(signal.SIGTERM)
        assert reader.readline().startswith(b"421 4.3.2")
    assert node.proc.wait(30) == 0


# --- STARTTLS (RFC 3207), offered when [tls] has a certificate -------------------


@pytest.fixture(scope="module")
def lmtp_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The certificate and key of the module's STARTTLS nodes."""
    return self_signed(tmp_path_factory.mktemp("tls"), "lmtp")


def tls_config(cert: tuple[Path, Path], workers: int) -> dict[str, Any]:
    return {"tls": {"cert": str(cert[0]), "key": str(cert[1])}, "lmtp": {"workers": workers}}


@pytest.fixture
def tls_node(
    module_nodes: ModuleNodes, lmtp_cert: tuple[Path, Path], request: pytest.FixtureRequest
) -> LoneNode:
    """The module's lone node with a [tls] certificate (``workers`` from the
    test's parameter, 1 by default; one node per value) and one fresh
    account, tlsuser."""
    node = module_nodes.lone(tls_config(lmtp_cert, getattr(request, "param", 1)))
    node.add_account("tlsuser")
    return node


def client_context(node: LoneNode) -> ssl.SSLContext:
    """Trusts the node's certificate only, and checks it names 127.0.0.1."""
    config = node.config.read_text()
    cert = config.split('cert = "', 1)[1].split('"', 1)[0]
    return ssl.create_default_context(cafile=cert)


def read_reply(reader: Any) -> bytes:
    """The last line of the next (possibly multi-line) reply."""
    while (line := reader.readline())[3:4] == b"-":
        pass
    assert line, "the server closed the connection"
    return bytes(line)


@pytest.mark.parametrize("tls_node", [1, 0], indirect=True, ids=["worker", "in-daemon"])
def test_starttls_then_delivery_over_tls(tls_node: LoneNode) -> None:
    with tls_node.lmtp() as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        code, _ = client.starttls(context=client_context(tls_node))
        assert code == 220
        client.ehlo("client.test")  # RFC 3207 4.2: LHLO again, and no STARTTLS now
        assert not client.has_extn("starttls") and client.has_extn("pipelining")
        assert client.sendmail("s@example.test", ["tlsuser@example.test"], msg("tls")) == {}
    assert [r["guid"] for r in tls_node.records("tlsuser")] == [sha1(msg("tls"))]


@pytest.mark.parametrize("tls_node", [1, 0], indirect=True, ids=["worker", "in-daemon"])
def test_plaintext_injected_behind_starttls_is_not_run_inside_tls(tls_node: LoneNode) -> None:
    """The CVE-2011-0411 class: commands sent in the clear in the same segment
    as STARTTLS must not be taken as sent over TLS. If they were, the TLS
    session would start inside the attacker's transaction: the client's RCPT
    would be accepted and its DATA answered 354."""
    context = client_context(tls_node)
    with socket.create_connection(("127.0.0.1", tls_node.port("lmtp")), timeout=30) as raw:
        reader = raw.makefile("rb")
        assert read_reply(reader).startswith(b"220")
        raw.sendall(b"LHLO client.test\r\n")
        assert read_reply(reader).startswith(b"250")
        raw.sendall(
            b"STARTTLS\r\nLHLO evil.test\r\nMAIL FROM:<evil@example.test>\r\n"
            b"RCPT TO:<tlsuser@example.test>\r\n"
        )
        assert read_reply(reader) == b"220 2.0.0 Ready to start TLS\r\n"
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            secure = tls.makefile("rb")
            tls.sendall(b"RCPT TO:<tlsuser@example.test>\r\nDATA\r\n")
            assert read_reply(secure).startswith(b"503 5.5.1")  # no LHLO, no MAIL
            assert read_reply(secure).startswith(b"503 5.5.1")
            tls.sendall(b"LHLO client.test\r\nMAIL FROM:<s@example.test>\r\nDATA\r\n")
            assert read_reply(secure).startswith(b"250")  # LHLO
            assert read_reply(secure).startswith(b"250")  # MAIL
            assert read_reply(secure).startswith(b"503 5.5.1")  # DATA: no recipient
    assert tls_node.records("tlsuser") == []


def test_plaintext_sent_while_the_handshake_starts_is_never_answered_over_tls(
    tls_node: LoneNode,
) -> None:
    """STARTTLS, then a command in a separate segment a moment later, then the
    handshake (issue 9's attack): the command is either thrown away with the
    rest of the plaintext or it breaks the handshake; it is never answered
    over TLS."""
    context = client_context(tls_node)
    answered_over_tls = 0
    handshakes = 0
    for attempt in range(20):
        with socket.create_connection(("127.0.0.1", tls_node.port("lmtp")), timeout=30) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = raw.makefile("rb")
            assert read_reply(reader).startswith(b"220")
            raw.sendall(b"LHLO client.test\r\n")
            assert read_reply(reader).startswith(b"250")
            raw.sendall(b"STARTTLS\r\n")
            time.sleep(0.001 * (attempt % 4))
            raw.sendall(b"NOOP\r\n")
            assert read_reply(reader) == b"220 2.0.0 Ready to start TLS\r\n"
            try:
                tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
            except (ssl.SSLError, ConnectionError):
                continue  # the plaintext broke the handshake: refused
            with tls:
                handshakes += 1
                secure = tls.makefile("rb")
                tls.sendall(b"HELP\r\n")
                try:
                    first = read_reply(secure)
                except (ssl.SSLError, ConnectionError, AssertionError):
                    continue
                answered_over_tls += not first.startswith(b"214")
    assert answered_over_tls == 0, f"{answered_over_tls} of {handshakes} TLS sessions"
    # The daemon keeps serving after the failed handshakes.
    with tls_node.lmtp() as client:
        assert client.noop()[0] == 250


def test_lmtp_starttls_can_be_switched_off(lone_node: NodeFactory, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "lmtp")
    node = lone_node({"tls": {"cert": str(cert), "key": str(key)}, "lmtp": {"starttls": False}})
    with node.lmtp() as client:
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        assert client.docmd("STARTTLS")[0] == 502


# --- hostile input on the wire (the core's limits seen through the daemon) -------


def test_rcpt_before_mail_gets_503_and_the_session_goes_on(node: LoneNode) -> None:
    node.add_account("order")
    with node.lmtp() as client:
        client.ehlo("x")
        assert client.rcpt("order@example.test")[0] == 503  # RFC 5321 3.3
        assert client.docmd("DATA")[0] == 503
        assert client.sendmail("s@example.test", ["order@example.test"], msg("in-order")) == {}
    assert [r["guid"] for r in node.records("order")] == [sha1(msg("in-order"))]


def test_too_many_recipients_get_452_and_the_accepted_ones_get_the_message(
    module_nodes: ModuleNodes,
) -> None:
    node = module_nodes.lone(LIMITS)
    for name in ("r1", "r2", "r3"):
        node.add_account(name)
    with node.lmtp() as client:
        client.ehlo("x")
        client.mail("s@example.test")
        assert client.rcpt("r1@example.test")[0] == 250
        assert client.rcpt("r2@example.test")[0] == 250
        code, text = client.rcpt("r3@example.test")  # RFC 5321 4.5.3.1.10
        assert (code, text[:6]) == (452, b"4.5.3 ")
        assert [client.data(msg("two")), client.getreply()][1][0] == 250
    assert len(node.records("r1")) == 1 and len(node.records("r2")) == 1
    assert node.records("r3") == []


def test_dot_stuffing_and_bare_lf_on_the_wire(node: LoneNode) -> None:
    """RFC 5321 4.5.2 unstuffing; a bare LF stored as CRLF; LF.LF (or CR-less
    dot lines) end nothing, only CRLF.CRLF does (SMTP smuggling)."""
    node.add_account("dots")
    wire = b"Subject: edge\r\n\r\n..dot\r\n...\r\nbare\nlf\r\nnot\n.\nthe end\r\n.\r\n"
    stored = b"Subject: edge\r\n\r\n.dot\r\n..\r\nbare\r\nlf\r\nnot\r\n.\r\nthe end\r\n"
    with socket.create_connection(("127.0.0.1", node.port("lmtp")), timeout=30) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        sock.sendall(b"LHLO x\r\nMAIL FROM:<s@example.test>\r\nRCPT TO:<dots@example.test>\r\n")
        assert read_reply(reader).startswith(b"250 ")
        assert reader.readline().startswith(b"250")
        assert reader.readline().startswith(b"250")
        sock.sendall(b"DATA\r\n")
        assert reader.readline().startswith(b"354")
        sock.sendall(wire + b"QUIT\r\n")
        assert reader.readline().startswith(b"250 2.1.5")
        assert reader.readline().startswith(b"221")
    assert [r["guid"] for r in node.records("dots")] == [sha1(stored)]


def test_a_long_data_line_is_stored_and_one_over_the_size_limit_gets_552(
    node: LoneNode,
) -> None:
    node.add_account("wide")
    files = len(spool_files(node))
    long_line = msg("wide", b"w" * 5000 + b"\r\n")  # over RFC 5321's 1000, under the size
    with node.lmtp() as client:
        assert client.sendmail("s@example.test", ["wide@example.test"], long_line) == {}
        client.ehlo("x")
        client.mail("s@example.test")
        client.rcpt("wide@example.test")
        # One line, no line end, longer than max_message_size (200K here).
        code, text = client.data(b"z" * 300_000)
        assert (code, text[:6]) == (552, b"5.3.4 ")
        assert client.noop()[0] == 250
    assert [r["guid"] for r in node.records("wide")] == [sha1(long_line)]
    assert len(spool_files(node)) == files + 1 and temp_files(node) == []
