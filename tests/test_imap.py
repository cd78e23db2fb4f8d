"""IMAP against a real daemon with imaplib: commands, untagged updates, IDLE, limits, referrals."""

from __future__ import annotations

import imaplib
import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodes import Node, make_pair, make_single
from tests.procs import wait_until

MESSAGE = (
    "From: Bob Example <bob@example.test>\r\nTo: alice@example.test\r\nSubject: =?UTF-8?B?SGVsbG8gd29ybGQ=?=\r\n"
    "Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{n}@t>\r\nMIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n'
    "needle number {n}\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    "AAECAw==\r\n--b1--\r\n"
)


def deliver(node: Node, n: int, rcpt: str = "alice@example.test") -> None:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"]) as lmtp:
        lmtp.sendmail("s@example.test", [rcpt], MESSAGE.format(n=n).encode())


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Node]:
    node = make_single(
        tmp_path,
        overrides={
            "imap": {"login_failure_delay": "100ms", "max_literal": "1M", "idle_timeout": "30m"}
        },
    )
    node.start()
    node.add_account("alice")
    try:
        yield node
    finally:
        node.stop()


def connect(node: Node, login: bool = True) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=20)
    if login:
        client.login("alice", "secret")
    return client


def test_mailbox_commands(served: Node) -> None:
    c = connect(served)
    try:
        assert c.create("Work/2026")[0] == "OK"
        assert c.create("Sent")[0] == "OK"
        listing = b"\n".join(x for x in c.list()[1] if isinstance(x, bytes))
        assert b'"Work"' in listing or b" Work" in listing
        assert b"\\Sent" in listing and b"Work/2026" in listing
        assert c.rename("Work", "Jobs")[0] == "OK"
        assert c.subscribe("Jobs/2026")[0] == "OK"
        assert b"Jobs/2026" in b"".join(x for x in c.lsub()[1] if isinstance(x, bytes))
        assert c.unsubscribe("Jobs/2026")[0] == "OK"
        assert c.delete("Jobs/2026")[0] == "OK"
        assert c.create("Jobs")[0] == "NO"  # already there
        assert c.select("Nowhere")[0] == "NO"
        typ, data = c.status("INBOX", "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ)")
        assert typ == "OK" and b"MESSAGES 0" in data[0]
        assert c.namespace()[0] == "OK"
        assert c.xatom("ID", "NIL")[0] == "OK"
    finally:
        c.logout()


def test_append_fetch_search_store_copy_move_expunge(served: Node) -> None:
    for n in range(3):
        deliver(served, n)
    c = connect(served)
    try:
        typ, data = c.append("INBOX", "(\\Seen $Work)", None, MESSAGE.format(n=9).encode())
        assert typ == "OK" and b"APPENDUID" in data[0]
        assert c.select("INBOX")[1] == [b"4"]
        typ, data = c.uid(
            "FETCH", "1:*", "(UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE INTERNALDATE)"
        )
        first = data[0] if isinstance(data[0], bytes) else data[0][0]
        assert (
            b'"=?UTF-8?B?SGVsbG8gd29ybGQ=?="' in first
            and b'("Bob Example" NIL "bob" "example.test")' in first
        )
        assert b'("TEXT" "PLAIN" ("CHARSET" "utf-8")' in first and b'"MIXED"' in first
        typ, data = c.fetch(
            "1",
            "(BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[]<0.4>)",
        )
        pieces = [p for item in data if isinstance(item, tuple) for p in item]
        # A part's body ends before the CRLF that belongs to the boundary (RFC 2046 5.1.1).
        assert b"needle number 0" in pieces and b"From" in pieces
        assert any(p.startswith(b"Content-Type: application/octet-stream") for p in pieces)
        assert c.search(None, "SUBJECT", "hello")[1] == [b"1 2 3 4"]  # RFC 2047 decoded
        assert c.search(None, "BODY", '"needle number 1"')[1] == [b"2"]
        assert c.search(None, "UNSEEN")[1] == [b"1 2 3"]
        assert c.uid("SEARCH", "KEYWORD", "$Work")[1] == [b"4"]
        assert c.search(None, "OR", "LARGER", "1", "1:2", "NOT", "4")[1] == [b"1 2 3"]
        assert c.search("UTF-8", "FROM", "bob")[1] == [b"1 2 3 4"]
        typ, data = c.store("1:2", "+FLAGS", "(\\Flagged)")
        assert typ == "OK" and len(data) == 2
        c.fetch("3", "(BODY[TEXT])")  # not PEEK: sets \Seen
        assert c.search(None, "SEEN")[1] == [b"3 4"]
        assert c.create("Archive")[0] == "OK"
        typ, data = c.uid("COPY", "1", "Archive")
        assert typ == "OK"
        typ, data = c.uid("MOVE", "2", "Archive")
        assert typ == "OK"
        assert c.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
        typ, data = c.expunge()
        # imaplib also returns the EXPUNGE the MOVE sent (for sequence 2).
        assert typ == "OK" and data == [b"2", b"1"]
        assert c.select("INBOX")[1] == [b"2"]
        assert c.select("Archive")[1] == [b"2"]
        assert c.close()[0] == "OK"
    finally:
        c.logout()


def test_condstore_and_unchangedsince(served: Node) -> None:
    deliver(served, 1)
    replies = b"".join(
        raw(
            served,
            [
                b"a LOGIN alice secret\r\n",
                b"b ENABLE CONDSTORE\r\n",
                b"c SELECT INBOX\r\n",
                b"d STORE 1 (UNCHANGEDSINCE 1) +FLAGS (\\Seen)\r\n",
                b"e STORE 1 +FLAGS (\\Flagged)\r\n",
                b"f FETCH 1 (FLAGS) (CHANGEDSINCE 2)\r\n",
            ],
        )
    )
    assert b"* ENABLED CONDSTORE" in replies and b"[HIGHESTMODSEQ 2]" in replies
    assert b"d OK [MODIFIED 1]" in replies
    assert b"* 1 FETCH (FLAGS (\\Flagged) MODSEQ (3))" in replies


def test_untagged_updates_between_sessions_and_idle_woken_by_lmtp(served: Node) -> None:
    deliver(served, 1)
    watcher = connect(served)
    actor = connect(served)
    try:
        watcher.select("INBOX")
        actor.select("INBOX")
        actor.store("1", "+FLAGS", "(\\Flagged)")
        watcher.noop()
        flags = watcher.response("FETCH")[1]
        assert flags and b"\\Flagged" in flags[0]
        # IDLE, woken by an LMTP delivery.
        sock = socket.create_connection(("127.0.0.1", served.ports["imap"]), timeout=20)
        stream = sock.makefile("rb")
        stream.readline()
        sock.sendall(b"a LOGIN alice secret\r\nb SELECT INBOX\r\nc IDLE\r\n")
        while not stream.readline().startswith(b"+"):
            pass
        deliver(served, 2)
        line = stream.readline()
        assert line.rstrip().endswith(b"EXISTS") and line.startswith(b"* 2")
        sock.sendall(b"DONE\r\n")
        assert stream.readline().startswith(b"c OK")
        sock.close()
        actor.store("1", "+FLAGS", "(\\Deleted)")
        actor.expunge()
        watcher.noop()
        assert watcher.response("EXPUNGE")[1] == [b"1"]
    finally:
        watcher.logout()
        actor.logout()


def raw(node: Node, lines: list[bytes]) -> list[bytes]:
    sock = socket.create_connection(("127.0.0.1", node.ports["imap"]), timeout=20)
    stream = sock.makefile("rb")
    out = [stream.readline()]
    for line in lines:
        sock.sendall(line)
        time.sleep(0.05)
    sock.sendall(b"z LOGOUT\r\n")
    while (reply := stream.readline()) and not reply.startswith(b"z "):
        out.append(reply)
    out.append(reply)
    sock.close()
    return out


def test_malformed_input_and_limits(served: Node) -> None:
    replies = raw(
        served,
        [
            b"a FETCH 1 FLAGS\r\n",  # wrong state
            b"b LOGIN alice secret\r\n",
            b"c SELECT INBOX\r\n",
            b"d FETCH 0:x FLAGS\r\n",  # bad sequence set
            b"e SEARCH (UNSEEN\r\n",  # unbalanced
            b"f APPEND INBOX {99999999}\r\n",  # huge literal: refused unread
            b"g FROBNICATE\r\n",
            b"h NOOP\r\n",
        ],
    )
    text = b"".join(replies)
    assert b"a BAD" in text and b"d BAD" in text and b"e BAD" in text and b"g BAD" in text
    assert b"f NO [TOOBIG]" in text and b"h OK" in text


def test_failed_logins_are_delayed_then_cut(served: Node) -> None:
    c = connect(served, login=False)
    started = time.monotonic()
    for _ in range(2):
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            c.login("alice", "wrong")
    assert time.monotonic() - started >= 0.2
    with pytest.raises((imaplib.IMAP4.error, imaplib.IMAP4.abort)):
        c.login("alice", "wrong")
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        c.noop()
    c.shutdown()


def test_idle_timeout(tmp_path: Path) -> None:
    node = make_single(tmp_path, overrides={"imap": {"idle_timeout": "1s"}})
    node.start()
    try:
        sock = socket.create_connection(("127.0.0.1", node.ports["imap"]), timeout=20)
        stream = sock.makefile("rb")
        stream.readline()
        assert b"BYE" in stream.readline()
        sock.close()
    finally:
        node.stop()


def test_authenticate_plain_and_referral_for_the_partners_account(tmp_path: Path) -> None:
    alpha, beta = make_pair(tmp_path)
    try:
        alpha.start()
        beta.start()
        alpha.add_account("alice")
        beta.add_account("bob")
        wait_until(lambda: _exists(alpha, "bob"), 10, "bob replicated to alpha")
        c = imaplib.IMAP4("127.0.0.1", alpha.ports["imap"], timeout=20)
        assert c.authenticate("PLAIN", lambda _: b"\0alice\0secret")[0] == "OK"
        c.logout()
        c = imaplib.IMAP4("127.0.0.1", alpha.ports["imap"], timeout=20)
        with pytest.raises(imaplib.IMAP4.error, match="REFERRAL imap://bob@"):
            c.login("bob", "secret")
        c.logout()
    finally:
        alpha.stop()
        beta.stop()


def _exists(node: Node, account: str) -> bool:
    import urllib.error

    try:
        node.call("GET", f"/v1/accounts/{account}")
    except urllib.error.HTTPError as exc:
        exc.close()
        return False
    return True


def test_switchover_closes_the_accounts_sessions(tmp_path: Path) -> None:
    alpha, beta = make_pair(tmp_path)
    try:
        alpha.start()
        beta.start()
        alpha.add_account("alice")
        sock = socket.create_connection(("127.0.0.1", alpha.ports["imap"]), timeout=20)
        stream = sock.makefile("rb")
        stream.readline()
        sock.sendall(b"a LOGIN alice secret\r\nb SELECT INBOX\r\nc IDLE\r\n")
        while not stream.readline().startswith(b"+"):
            pass
        alpha.call("POST", "/v1/switchover", {"accounts": ["alice"]})
        rest = stream.read()  # the server ends the session
        assert b"* BYE [UNAVAILABLE]" in rest
        sock.close()
        client = connect(alpha, login=False)
        with pytest.raises(imaplib.IMAP4.error, match="REFERRAL"):
            client.login("alice", "secret")
        client.logout()
    finally:
        alpha.stop()
        beta.stop()


def test_refusals_say_why(served: Node) -> None:
    deliver(served, 1)
    text = b"".join(
        raw(
            served,
            [
                b"a AUTHENTICATE PLAIN\r\n",
                b"*\r\n",  # cancelled: BAD (RFC 3501 6.2.2)
                b"b AUTHENTICATE CRAM-MD5\r\n",
                b"c LOGIN alice secret\r\n",
                b"d CREATE inbox\r\n",  # INBOX exists, in any case
                b"e STORE 1 +FLAGS (\\Deleted)\r\n",  # nothing selected
                b"f EXAMINE INBOX\r\n",
                b"g STORE 1 +FLAGS (\\Deleted)\r\n",  # read-only
                b"h SEARCH RETURN (COUNT) ALL\r\n",  # ESEARCH is not offered
                b"i SELECT INBOX (QRESYNC (1 1))\r\n",  # QRESYNC is not enabled
                b"j STATUS INBOX (MESSAGES SIZE DELETED UNSEEN)\r\n",
                b"k FETCH 2 FLAGS\r\n",  # only one message
                b"l ENABLE CONDSTORE\r\n",  # only before SELECT (RFC 5161 3.1)
            ],
        )
    )
    assert b"+ \r\na BAD AUTHENTICATE cancelled" in text
    assert b"b NO unsupported mechanism CRAM-MD5" in text
    assert b"d NO [ALREADYEXISTS]" in text
    assert b"e BAD STORE is not allowed now (authenticated)" in text
    assert b"g NO [CANNOT] mailbox is read-only" in text
    assert b"h BAD SEARCH RETURN needs ESEARCH" in text
    assert b"i BAD QRESYNC is not enabled" in text
    assert b"* STATUS INBOX (MESSAGES 1 SIZE " in text and b" DELETED 0 UNSEEN 1)" in text
    assert b"k BAD message sequence number out of range" in text
    assert b"l BAD ENABLE is not allowed now (selected)" in text


def test_overlong_line_ends_the_session_with_a_reason(tmp_path: Path) -> None:
    node = make_single(tmp_path, overrides={"imap": {"max_line": 1024}})
    node.start()
    try:
        sock = socket.create_connection(("127.0.0.1", node.ports["imap"]), timeout=20)
        stream = sock.makefile("rb")
        stream.readline()
        sock.sendall(b"a NOOP " + b"x" * 2000 + b"\r\n")
        assert stream.readline().startswith(b"* BYE [TOOBIG] line too long")
        assert stream.readline() == b""  # closed: the stream cannot be resynchronised
        sock.close()
    finally:
        node.stop()


def test_command_rate_is_refused_with_limit_then_cut_off(tmp_path: Path) -> None:
    node = make_single(tmp_path, overrides={"imap": {"commands_per_second": 5}})
    node.start()
    try:
        sock = socket.create_connection(("127.0.0.1", node.ports["imap"]), timeout=20)
        stream = sock.makefile("rb")
        stream.readline()

        def replies(tags: list[str]) -> list[bytes]:
            sock.sendall(b"".join(f"{t} NOOP\r\n".encode() for t in tags))
            return [stream.readline() for _ in tags]

        # Over the budget: answered NO [LIMIT] (RFC 5530 3), not run, not a silent delay.
        first = replies([f"a{n}" for n in range(7)])
        assert all(line.startswith(f"a{n} OK".encode()) for n, line in enumerate(first[:5]))
        assert first[5].startswith(b"a5 NO [LIMIT] too many commands: at most 5 per second")
        assert first[6].startswith(b"a6 NO [LIMIT]")
        time.sleep(1.1)  # a new window: the budget is whole again
        assert replies(["b0"])[0].startswith(b"b0 OK")
        # Still sending at twice the rate after being told: BYE [LIMIT] and closed.
        tags = [f"c{n}" for n in range(11)]
        sock.sendall(b"".join(f"{t} NOOP\r\n".encode() for t in tags))
        rest = stream.read()
        assert rest.count(b" OK NOOP completed") == 4 and rest.count(b" NO [LIMIT]") == 5
        assert rest.endswith(b"* BYE [LIMIT] too many commands (over 5 per second)\r\n")
        sock.close()
    finally:
        node.stop()
