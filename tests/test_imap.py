"""IMAP against a real daemon with imaplib: commands, untagged updates, IDLE, limits, referrals."""

from __future__ import annotations

import contextlib
import imaplib
import re
import smtplib
import socket
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from peerd.protocols.imap.states import ALLOWED
from peerd.services.imap.handlers import HANDLERS
from tests.harness.daemons import ModuleNodes
from tests.nodes import Node, idling, make_pair, make_single, running
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


SERVED = {"imap": {"login_failure_delay": "100ms", "max_literal": "1M", "idle_timeout": "30m"}}


# The module's node (``shared_node``, tests/conftest.py) starts with this config.
pytestmark = pytest.mark.node(overrides=SERVED)


@pytest.fixture
def served(shared_node: Node) -> Node:
    """The module's node with one fresh account, alice (earlier tests'
    accounts deleted). A test that stops the node uses ``own_served``."""
    shared_node.add_account("alice")
    return shared_node


@pytest.fixture
def own_served(tmp_path: Path) -> Iterator[Node]:
    """Like ``served``, on a node of this test's own."""
    node = make_single(tmp_path, overrides=SERVED)
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
    data: list[Any]  # imaplib's answers differ in type from command to command
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
    # RFC 7162 3.2.4: with CONDSTORE on, UID is in every FETCH response too.
    # (The message is \Recent here: this session selected INBOX first, RFC 3501 2.3.2.)
    told = b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent) MODSEQ (3))"
    assert b"e OK" in replies and told in replies
    changed = replies.split(b"e OK")[1]
    assert told + b"\r\nf OK" in changed


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
        # The idling session is the first told of it: \Recent (RFC 3501 7.3.2).
        assert stream.readline() == b"* 1 RECENT\r\n"
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
    """Send ``lines`` pipelined, then LOGOUT; every line the server sent until it answers."""
    sock = socket.create_connection(("127.0.0.1", node.ports["imap"]), timeout=20)
    stream = sock.makefile("rb")
    out = [stream.readline()]
    sock.sendall(b"".join(lines) + b"z LOGOUT\r\n")
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


def test_catenate_urls_are_held_to_max_literal_across_a_multiappend(served: Node) -> None:
    # A CATENATE URL of a few octets names a whole stored message: five of
    # them in one MULTIAPPEND build five messages, each under [imap]
    # max_literal (1M here) and together over it. The command is refused
    # like literals over the cap (NO [TOOBIG]), all or nothing, before the
    # daemon holds them all (300 URLs of a 2 MB message held 600 MB).
    stored = b"Subject: big\r\n\r\n" + b"x" * 998 * 300 + b"\r\n"
    five = b' CATENATE (URL "/INBOX/;UID=1")' * 5
    replies = raw(
        served,
        [
            b"a LOGIN alice secret\r\n",
            b"b APPEND INBOX {%d+}\r\n%b\r\n" % (len(stored), stored),
            b"c APPEND INBOX" + five + b"\r\n",
            b"d APPEND INBOX" + five[: len(five) * 3 // 5] + b"\r\n",
            b"e STATUS INBOX (MESSAGES)\r\n",
        ],
    )
    text = b"".join(replies)
    assert b"b OK [APPENDUID " in text, text[-500:]
    assert b"c NO [TOOBIG]" in text and b"d OK [APPENDUID " in text, text[-500:]
    assert b"* STATUS INBOX (MESSAGES 4)" in text


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


def test_authenticate_plain_and_referral_for_the_partners_account(
    shared_pair: tuple[Node, Node],
) -> None:
    alpha, beta = shared_pair
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


def _exists(node: Node, account: str) -> bool:
    import urllib.error

    try:
        node.call("GET", f"/v1/accounts/{account}")
    except urllib.error.HTTPError as exc:
        exc.close()
        return False
    return True


def test_switchover_closes_the_accounts_sessions(shared_pair: tuple[Node, Node]) -> None:
    alpha, _ = shared_pair
    alpha.add_account("sally")
    sock, stream = idling(alpha, "sally")
    alpha.call("POST", "/v1/switchover", {"accounts": ["sally"]})
    rest = stream.read()  # the server ends the session
    assert b"* BYE [UNAVAILABLE]" in rest
    sock.close()
    client = connect(alpha, login=False)
    with pytest.raises(imaplib.IMAP4.error, match="REFERRAL"):
        client.login("sally", "secret")
    client.logout()


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
                b"h SORT RETURN (BOGUS) (DATE) US-ASCII ALL\r\n",  # RFC 5267 3
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
    assert b"h BAD unknown SORT return option BOGUS" in text
    assert b"i BAD QRESYNC is not enabled" in text
    assert b"* STATUS INBOX (MESSAGES 1 SIZE " in text and b" DELETED 0 UNSEEN 1)" in text
    assert b"k BAD message sequence number out of range" in text
    assert b"l BAD ENABLE is not allowed now (selected)" in text


# The two limits of one session the next two tests reach: one node for both
# (a session of the one test stays far from the other's limit).
LIMITS = {"imap": {"max_line": 1024, "commands_per_second": 5}}


def test_overlong_line_ends_the_session_with_a_reason(module_nodes: ModuleNodes) -> None:
    node = module_nodes.single(LIMITS)
    sock = socket.create_connection(("127.0.0.1", node.ports["imap"]), timeout=20)
    stream = sock.makefile("rb")
    stream.readline()
    sock.sendall(b"a NOOP " + b"x" * 2000 + b"\r\n")
    assert stream.readline().startswith(b"* BYE [TOOBIG] line too long")
    assert stream.readline() == b""  # closed: the stream cannot be resynchronised
    sock.close()


def test_command_rate_is_refused_with_limit_then_cut_off(module_nodes: ModuleNodes) -> None:
    node = module_nodes.single(LIMITS)
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


# -- commands with no other client test ---------------------------------------------


def plain(n: int, extra: str = "") -> bytes:
    return f"Subject: plain {n}\r\nMessage-ID: <plain{n}@t>\r\n{extra}\r\nbody {n}\r\n".encode()


def fill(c: imaplib.IMAP4, count: int, mailbox: str = "INBOX") -> None:
    for n in range(count):
        assert c.append(mailbox, None, None, plain(n))[0] == "OK"


def flags_of(node: Node, mailbox: str = "INBOX") -> dict[int, set[str]]:
    return {m["uid"]: set(m["flags"]) for m in node.mailbox("alice", mailbox)["messages"]}


def test_examine_is_read_only(served: Node) -> None:
    c = connect(served)
    try:
        fill(c, 2)
        c.select("INBOX")
        assert c.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
        typ, data = c.select("INBOX", readonly=True)  # EXAMINE
        assert typ == "OK" and data == [b"2"]
        assert c.response("READ-ONLY")[1] == [b""]
        # RFC 3501 6.3.2: no change to the mailbox is permitted.
        for refused in (
            c.store("2", "+FLAGS", "(\\Flagged)"),
            c.uid("STORE", "2", "+FLAGS", "(\\Flagged)"),
            c.expunge(),
            c.uid("EXPUNGE", "1:*"),
            c.uid("MOVE", "1", "INBOX"),
        ):
            assert refused == ("NO", [b"[CANNOT] mailbox is read-only (EXAMINE)"])
        # A non-PEEK fetch does not set \Seen in a read-only mailbox (RFC 3501 6.4.5).
        typ, fetched_data = c.fetch("2", "(BODY[TEXT])")
        assert typ == "OK" and b"FLAGS" not in cast(bytes, fetched_data[-1])
        # CLOSE after EXAMINE expunges nothing (RFC 3501 6.4.2).
        assert c.close()[0] == "OK"
        assert flags_of(served) == {1: {"\\Deleted"}, 2: set()}
    finally:
        c.logout()


def test_check_reports_changes_and_unselect_expunges_nothing(served: Node) -> None:
    c = connect(served)
    try:
        fill(c, 2)
        assert c.select("INBOX")[1] == [b"2"]
        c.response("EXISTS")  # imaplib's select() leaves it there
        deliver(served, 7)
        # RFC 3501 6.4.1: CHECK is a checkpoint; like NOOP it may report changes.
        assert c.check()[0] == "OK"
        assert c.response("EXISTS")[1] == [b"3"]
        assert c.store("1:2", "+FLAGS", "(\\Deleted)")[0] == "OK"
        # RFC 3691 2: UNSELECT leaves the selected state without expunging.
        assert c.unselect()[0] == "OK"
        # (imaplib would refuse FETCH itself now: send it past imaplib.)
        c.send(b"u1 FETCH 1 (FLAGS)\r\n")
        assert c.readline() == b"u1 BAD FETCH is not allowed now (authenticated)\r\n"
        assert c.select("INBOX")[1] == [b"3"]
        assert flags_of(served) == {1: {"\\Deleted"}, 2: {"\\Deleted"}, 3: set()}
    finally:
        c.logout()


def test_uid_store_and_uid_expunge_touch_only_the_given_uids(served: Node) -> None:
    c = connect(served)
    try:
        fill(c, 5)
        c.select("INBOX")
        # Expunge UID 1 so that UIDs (2..5) and sequence numbers (1..4) differ.
        c.store("1", "+FLAGS", "(\\Deleted)")
        c.expunge()
        typ, data = c.uid("STORE", "3:4", "+FLAGS", "(\\Flagged)")
        # RFC 3501 6.4.8: the FETCH responses carry sequence numbers and the UIDs.
        assert typ == "OK" and data == [
            b"2 (UID 3 FLAGS (\\Flagged \\Recent))",
            b"3 (UID 4 FLAGS (\\Flagged \\Recent))",
        ]
        assert c.uid("STORE", "3,4,5", "+FLAGS.SILENT", "(\\Deleted)")[1] == [None]
        # RFC 4315 2.1: only the \Deleted messages among the given UIDs go.
        assert c.uid("EXPUNGE", "3:4")[0] == "OK"
        # UID 3 at number 2, then UID 4, which moved up to 2 (RFC 3501 7.4.1).
        assert c.response("EXPUNGE")[1] == [b"2", b"2"]
        assert flags_of(served) == {2: set(), 5: {"\\Deleted"}}
        assert c.uid("SEARCH", "ALL")[1] == [b"2 5"]
    finally:
        c.logout()


def test_plain_copy_and_move_report_copyuid(served: Node) -> None:
    c = connect(served)
    try:
        fill(c, 4)
        assert c.create("Archive")[0] == "OK"
        status = c.status("Archive", "(UIDVALIDITY)")[1][0]
        archive_validity = status.split()[-1].rstrip(b")").decode()
        c.select("INBOX")
        c.store("1", "+FLAGS", "(\\Deleted)")
        c.expunge()  # sequence 1..3 are now UIDs 2..4
        # RFC 4315 3: COPYUID <destination uidvalidity> <source UIDs> <new UIDs>.
        typ, data = c.copy("1:2", "Archive")
        assert (typ, data) == (
            "OK",
            [f"[COPYUID {archive_validity} 2,3 1,2] COPY completed".encode()],
        )
        c.response("COPYUID")  # imaplib keeps the tagged code too: drop it
        assert c.copy("1", "Nowhere") == ("NO", [b"[TRYCREATE] no such mailbox"])
        # RFC 6851 4.3: MOVE sends COPYUID in an untagged OK, then EXPUNGE.
        typ, data = c._simple_command("MOVE", "3", "Archive")
        assert typ == "OK" and data == [b"MOVE completed"]
        assert c.response("COPYUID")[1] == [f"{archive_validity} 4 3".encode()]
        assert c.response("EXPUNGE")[1] == [b"3"]
        assert [m["uid"] for m in served.mailbox("alice")["messages"]] == [2, 3]
        assert [m["uid"] for m in served.mailbox("alice", "Archive")["messages"]] == [1, 2, 3]
        c.select("Archive")
        typ, data = c.fetch("1:3", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        got = [p[1].strip() for p in data if isinstance(p, tuple)]
        assert got == [b"Subject: plain 1", b"Subject: plain 2", b"Subject: plain 3"]
    finally:
        c.logout()


def test_list_extended_and_list_status(served: Node) -> None:
    c = connect(served)
    try:
        caps = c.capabilities
        assert "LIST-EXTENDED" in caps and "LIST-STATUS" in caps
        for name in ("Work", "Work/Old", "Work/New", "Trash", "Lists/Python"):
            assert c.create(name)[0] == "OK"
        fill(c, 2, "Work/New")
        for name in ("Work/New", "Lists/Python", "Gone"):  # Gone: subscribed, does not exist
            assert c.subscribe(name)[0] == "OK"
        c.delete("Lists/Python")
        c.delete("Lists")

        def listing(*args: str) -> list[bytes]:
            typ, data = c._simple_command("LIST", *args)
            assert typ == "OK", data
            return sorted(cast("list[bytes]", c.untagged_responses.pop("LIST", [])))

        # RFC 5258 3.1 SUBSCRIBED: subscribed names, existing or not.
        assert listing("(SUBSCRIBED)", '""', "*") == [
            b'(\\HasNoChildren \\Subscribed) "/" INBOX',
            b'(\\HasNoChildren \\Subscribed) "/" Work/New',
            b'(\\NonExistent \\HasNoChildren \\Subscribed) "/" Gone',
            b'(\\NonExistent \\HasNoChildren \\Subscribed) "/" Lists/Python',
        ]
        # RECURSIVEMATCH: a parent matching the pattern is listed for its
        # subscribed children, with CHILDINFO (RFC 5258 3.5 and example 5.8).
        assert listing("(SUBSCRIBED RECURSIVEMATCH)", '""', "%") == [
            b'(\\HasChildren) "/" Work ("CHILDINFO" ("SUBSCRIBED"))',
            b'(\\HasNoChildren \\Subscribed) "/" INBOX',
            b'(\\NonExistent \\HasNoChildren \\Subscribed) "/" Gone',
            b'(\\NonExistent \\HasNoChildren) "/" Lists ("CHILDINFO" ("SUBSCRIBED"))',
        ]
        with pytest.raises(imaplib.IMAP4.error, match="RECURSIVEMATCH needs another"):
            c._simple_command("LIST", "(RECURSIVEMATCH)", '""', "*")
        # Several patterns at once; SPECIAL-USE selection (RFC 6154 5.1).
        assert listing('""', "(Trash Work/%)") == [
            b'(\\HasNoChildren \\Subscribed) "/" Work/New',
            b'(\\HasNoChildren \\Trash) "/" Trash',
            b'(\\HasNoChildren) "/" Work/Old',
        ]
        assert listing("(SPECIAL-USE)", '""', "*") == [b'(\\HasNoChildren \\Trash) "/" Trash']
        # RFC 5819: RETURN (STATUS ...) adds a STATUS for each listed mailbox.
        listing('""', "Work/%", "RETURN", "(STATUS (MESSAGES UIDNEXT))")
        assert sorted(c.untagged_responses.pop("STATUS")) == [
            b"Work/New (MESSAGES 2 UIDNEXT 3)",
            b"Work/Old (MESSAGES 0 UIDNEXT 1)",
        ]
    finally:
        c.logout()


# -- FETCH items on the wire ----------------------------------------------------------

NESTED = (
    b"From: =?ISO-8859-1?Q?Andr=E9_Pirard?= <andre@example.test>\r\n"
    b'To: "Alice" <alice@example.test>, bob@example.test\r\n'
    b"Cc: carol@example.test\r\n"
    b"Subject: =?UTF-8?Q?caf=C3=A9?= and\r\n =?UTF-8?B?w7xiZXI=?=\r\n"
    b"Date: Mon, 02 Mar 2026 09:30:00 +0100\r\n"
    b"Message-ID: <m1@t>\r\nIn-Reply-To: <parent@t>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
    b"--outer\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nHello outer body\r\n"
    b"--outer\r\nContent-Type: message/rfc822\r\n\r\n"
    b"From: inner@example.test\r\nSubject: inner subject\r\nMessage-ID: <inner@t>\r\n"
    b"Content-Type: text/plain\r\n\r\ninner body text 0123456789\r\n"
    b"--outer--\r\n"
)
NESTED_HEADER, _, NESTED_TEXT = NESTED.partition(b"\r\n\r\n")
INNER = NESTED.split(b"message/rfc822\r\n\r\n")[1].split(b"\r\n--outer--")[0]


def fetched(data: list[Any]) -> dict[bytes, bytes]:
    """imaplib's FETCH answer for one message: each literal by the item that named it."""
    out: dict[bytes, bytes] = {}
    for part in data:
        if isinstance(part, tuple):
            out[part[0].rsplit(b" ", 2)[-2].lstrip(b"(")] = part[1]
    return out


def test_fetch_rfc822_items_body_and_partial_sections(served: Node) -> None:
    c = connect(served)
    try:
        assert c.append("INBOX", None, None, NESTED)[0] == "OK"
        c.select("INBOX")
        typ, data = c.fetch("1", "(RFC822.SIZE RFC822.HEADER)")
        assert fetched(data) == {b"RFC822.HEADER": NESTED_HEADER + b"\r\n\r\n"}
        first = cast(tuple[bytes, bytes], data[0])[0]
        assert first.startswith(b"1 (RFC822.SIZE %d RFC822.HEADER" % len(NESTED))
        assert flags_of(served) == {1: set()}  # RFC822.HEADER is a peek (RFC 3501 6.4.5)
        typ, data = c.fetch("1", "(RFC822.TEXT)")
        assert fetched(data) == {b"RFC822.TEXT": NESTED_TEXT}
        # RFC822.TEXT sets \Seen, and says so (\Recent: this session selected it first).
        assert data[-1] == b" FLAGS (\\Seen \\Recent))"
        c.store("1", "-FLAGS", "(\\Seen)")
        typ, data = c.fetch("1", "(RFC822)")
        assert fetched(data) == {b"RFC822": NESTED} and flags_of(served) == {1: {"\\Seen"}}

        # BODY: the non-extensible structure (RFC 3501 7.4.2): no extension
        # data, not even the multipart's boundary; a message/rfc822 part has the
        # envelope, body and line count of the message inside.
        inner_envelope = (
            b'(NIL "inner subject" ((NIL NIL "inner" "example.test")) '
            b'((NIL NIL "inner" "example.test")) ((NIL NIL "inner" "example.test")) '
            b'NIL NIL NIL NIL "<inner@t>")'
        )
        typ, data = c.fetch("1", "(BODY)")
        assert data == [
            b'1 (BODY (("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 16 1)'
            b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" %d '
            % len(INNER)
            + inner_envelope
            + b' ("TEXT" "PLAIN" NIL NIL NIL "7BIT" 26 1) 6) "MIXED"))'
        ]

        # BODY[section]<partial> inside the message/rfc822 part (RFC 3501 6.4.5).
        typ, data = c.fetch(
            "1",
            "(BODY.PEEK[2]<5.10> BODY.PEEK[2.HEADER] BODY.PEEK[2.TEXT]<6.4> "
            "BODY.PEEK[2.1] BODY.PEEK[2.MIME] BODY.PEEK[1]<100.10>)",
        )
        assert typ == "OK"
        assert fetched(data) == {
            b"BODY[2]<5>": INNER[5:15],
            b"BODY[2.HEADER]": INNER.split(b"\r\n\r\n")[0] + b"\r\n\r\n",
            b"BODY[2.TEXT]<6>": b"body",
            b"BODY[2.1]": b"inner body text 0123456789",
            b"BODY[2.MIME]": b"Content-Type: message/rfc822\r\n\r\n",
            b"BODY[1]<100>": b"",  # past the end: an empty string, not an error
        }
    finally:
        c.logout()


def test_envelope_keeps_encoded_words_and_unfolds(served: Node) -> None:
    c = connect(served)
    try:
        assert c.append("INBOX", None, None, NESTED)[0] == "OK"
        c.select("INBOX")
        data = c.fetch("1", "(ENVELOPE)")[1]
        # RFC 3501 7.4.2: fields as in the header (RFC 2047 words not decoded,
        # folding removed); sender and reply-to default to from.
        andre = b'(("=?ISO-8859-1?Q?Andr=E9_Pirard?=" NIL "andre" "example.test"))'
        assert data == [
            b'1 (ENVELOPE ("Mon, 02 Mar 2026 09:30:00 +0100" '
            b'"=?UTF-8?Q?caf=C3=A9?= and =?UTF-8?B?w7xiZXI=?=" '
            + andre
            + b" "
            + andre
            + b" "
            + andre
            + b' (("Alice" NIL "alice" "example.test")(NIL NIL "bob" "example.test")) '
            b'((NIL NIL "carol" "example.test")) NIL "<parent@t>" "<m1@t>"))'
        ]
        # And SEARCH decodes them (RFC 3501 6.4.4 with CHARSET).
        c.literal = "É AND Ü".encode()  # type: ignore[assignment]  # bytes, as imaplib sends it
        assert c.search("UTF-8", "SUBJECT")[1] == [b"1"]
        c.literal = "André".encode()  # type: ignore[assignment]
        assert c.search("UTF-8", "FROM")[1] == [b"1"]
    finally:
        c.logout()


# -- SEARCH keys on the wire ----------------------------------------------------------


def searchable(n: int, date: str, headers: str, body: str) -> bytes:
    return (
        f"From: sender{n}@example.test\r\nSubject: search {n}\r\nDate: {date}\r\n"
        f"Message-ID: <s{n}@t>\r\n{headers}\r\n{body}"
    ).encode()


def test_search_keys(served: Node) -> None:
    c = connect(served)
    try:
        c.append("INBOX", None, None, plain(0))  # UID 1, expunged below
        messages = [
            # (flags, internal date, message)
            (
                "(\\Flagged)",
                '"05-Jan-2026 12:00:00 +0000"',
                searchable(
                    1,
                    "Sun, 04 Jan 2026 18:00:00 +0000",
                    "To: alice@example.test\r\nCc: Carol <carol@example.test>\r\n"
                    "Subject2: =?UTF-8?Q?caf=C3=A9?=\r\n",
                    "plain ascii body\r\n",
                ),
            ),
            (
                "(\\Answered \\Draft)",
                '"10-Feb-2026 12:00:00 +0000"',
                searchable(
                    2,
                    "Mon, 09 Feb 2026 08:00:00 +0000",
                    "To: bob@example.test\r\nBcc: dave@example.test\r\nX-Tracker: ticket-42\r\n",
                    "z" * 6000 + "\r\n",
                ),
            ),
            (
                "(\\Deleted)",
                '"20-Mar-2026 12:00:00 +0000"',
                searchable(
                    3,
                    "Fri, 20 Mar 2026 12:00:00 +0000",
                    "To: erin@example.test\r\nMIME-Version: 1.0\r\n"
                    "Content-Type: text/plain; charset=utf-8\r\n"
                    "Content-Transfer-Encoding: quoted-printable\r\n",
                    "Viele Gr=C3=BC=C3=9Fe aus K=C3=B6ln\r\n",
                ),
            ),
        ]
        for flags, when, message in messages:
            assert c.append("INBOX", flags, when, message)[0] == "OK"
        c.select("INBOX")
        c.store("1", "+FLAGS", "(\\Deleted)")
        assert c.uid("EXPUNGE", "1")[0] == "OK"  # now UIDs 2, 3, 4 are numbers 1, 2, 3
        c.store("2", "+FLAGS", "($Later)")
        modseq = int(
            cast(bytes, c.fetch("2", "(MODSEQ)")[1][0]).split(b"MODSEQ (")[1].split(b")")[0]
        )

        def search(*criteria: str, charset: str | None = None, literal: str | None = None) -> str:
            if literal is not None:
                c.literal = literal.encode()  # type: ignore[assignment]  # sent as a literal after the criteria
            typ, data = c.search(charset, *criteria)
            assert typ == "OK", data
            return str(data[0].decode())

        def uid_search(*criteria: str) -> str:
            typ, data = c.uid("SEARCH", *criteria)
            assert typ == "OK", data
            return str(data[0].decode())

        assert search("ALL") == "1 2 3"
        assert search("2:*") == "2 3"
        assert search("UID", "3:4") == "2 3" and uid_search("UID", "3:4") == "3 4"
        assert uid_search("1:2") == "2 3"  # a sequence set is numbers even in UID SEARCH
        assert search("FLAGGED") == "1" and search("UNFLAGGED") == "2 3"
        assert search("DELETED") == "3" and search("UNDELETED") == "1 2"
        assert search("ANSWERED") == "2" and search("UNANSWERED") == "1 3"
        assert search("DRAFT") == "2" and search("UNDRAFT") == "1 3"
        assert search("TO", "bob") == "2" and search("TO", "alice@example.test") == "1"
        assert search("CC", "carol") == "1" and search("BCC", "dave") == "2"
        assert search("HEADER", "X-Tracker", "ticket-42") == "2"
        assert search("HEADER", "X-Tracker", '""') == "2"  # the field is there at all
        assert search("TEXT", "ticket-42") == "2"  # in a header
        assert search("TEXT", '"plain ascii"') == "1"  # in a body
        # Internal dates (RFC 3501 6.4.4: the date, not the time).
        assert search("SINCE", "10-Feb-2026") == "2 3"
        assert search("BEFORE", "10-Feb-2026") == "1"
        assert search("ON", "10-Feb-2026") == "2" and search("ON", "09-Feb-2026") == ""
        # Date: headers.
        assert search("SENTSINCE", "09-Feb-2026") == "2 3"
        assert search("SENTBEFORE", "09-Feb-2026") == "1"
        assert search("SENTON", "09-Feb-2026") == "2"
        assert search("SMALLER", "1000") == "1 3" and search("LARGER", "5000") == "2"
        assert search("MODSEQ", str(modseq)) == f"2 (MODSEQ {modseq})"  # RFC 7162 3.1.5
        assert search("MODSEQ", str(modseq + 1)) == ""
        assert search("NOT", "DELETED") == "1 2"
        assert search("OR", "TO", "bob", "CC", "carol") == "1 2"
        assert search("NOT", "OR", "FLAGGED", "DELETED") == "2"
        assert search("OR", "SMALLER", "1000", "KEYWORD", "$Later", "NOT", "1") == "2 3"
        # CHARSET UTF-8 with terms beyond ASCII (RFC 3501 6.4.4), matched after
        # decoding: RFC 2047 words in headers, quoted-printable in the body.
        assert search("HEADER", "Subject2", charset="UTF-8", literal="CAFÉ") == "1"
        assert search("BODY", charset="UTF-8", literal="grüße aus köln") == "3"
        assert search("TEXT", charset="UTF-8", literal="Köln") == "3"
        assert search("TEXT", charset="UTF-8", literal="café") == "1"
        assert search("TO", "erin", "BODY", charset="UTF-8", literal="grüße") == "3"
        # RFC 3501 6.4.4: an unsupported charset is NO [BADCHARSET (the ones we take)].
        typ, data = c.search("KOI8-R", "TEXT", "x")
        assert (typ, data[0][:27]) == ("NO", b"[BADCHARSET (UTF-8 US-ASCII")
    finally:
        c.logout()


# -- malformed input: unbalanced literals ----------------------------------------------


class Wire:
    """A raw IMAP connection: send bytes, read replies line by line."""

    def __init__(self, node: Node, timeout: float = 20) -> None:
        self.sock = socket.create_connection(("127.0.0.1", node.ports["imap"]), timeout=timeout)
        self.stream = self.sock.makefile("rb")
        assert self.stream.readline().startswith(b"* OK")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        return bytes(self.stream.readline())

    def replies(self, tag: bytes) -> list[bytes]:
        """The lines up to and with the tagged reply for ``tag``."""
        out = [self.line()]
        while not out[-1].startswith(tag + b" "):
            assert out[-1], f"connection closed before {tag!r} was answered"
            out.append(self.line())
        return out

    def tagged(self, tag: bytes) -> bytes:
        """Read until the tagged reply for ``tag``; return it."""
        return self.replies(tag)[-1]

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


def test_unbalanced_literals_get_a_clear_error_and_the_daemon_keeps_serving(
    own_served: Node,
) -> None:
    served = own_served  # it stops the node
    first = Wire(served)
    first.send(b"a LOGIN alice secret\r\n")
    assert first.tagged(b"a").startswith(b"a OK")
    # {10} announced, 5 octets and a new command sent: the literal takes 10
    # octets, and the rest of the "command" cannot follow a literal.
    first.send(b"b APPEND INBOX {10}\r\n")
    assert first.line() == b"+ Ready for literal data\r\n"
    first.send(b"hello" + b"c NOOP\r\n")
    assert first.line() == (
        b"b BAD text follows a {10} literal without a space: were fewer than 10 octets sent?\r\n"
    )
    # The same with a non-synchronizing literal (RFC 7888): no "+" to wait for.
    first.send(b"d APPEND INBOX {20+}\r\nshort\r\ne NOOP\r\n")
    first.send(b"f NOOP\r\n")
    assert first.line() == (
        b"d BAD text follows a {20} literal without a space: were fewer than 20 octets sent?\r\n"
    )
    # The session is in step again.
    first.send(b"g NOOP\r\n")
    assert first.line() == b"g OK NOOP completed\r\n"

    # Clients that vanish in the middle of a literal: after login, and before.
    second = Wire(served)
    second.send(b"a LOGIN alice secret\r\nb APPEND INBOX {100}\r\n")
    assert second.tagged(b"a").startswith(b"a OK")
    assert second.line() == b"+ Ready for literal data\r\n"
    second.send(b"From: x\r\n\r\nonly part")
    second.close()
    third = Wire(served)
    third.send(b"a LOGIN {5}\r\n")
    assert third.line() == b"+ Ready for literal data\r\n"
    third.send(b"ali")
    third.close()

    # Nothing was stored from any of them, and the daemon serves new clients.
    c = connect(served)
    try:
        assert c.status("INBOX", "(MESSAGES)")[1] == [b"INBOX (MESSAGES 0)"]
        assert c.append("INBOX", None, None, plain(1))[0] == "OK"
    finally:
        c.logout()
    first.send(b"h STATUS INBOX (MESSAGES)\r\n")
    assert first.line() == b"* STATUS INBOX (MESSAGES 1)\r\n"
    # A clean stop with a session still open; no session ended in a traceback.
    assert served.stop() == 0
    first.close()
    log = (served.workdir / "alpha.log").read_text()
    assert "Traceback" not in log and "session failed" not in log, log[-3000:]


# -- IDLE woken by replication -----------------------------------------------------------


def test_idle_on_the_new_owner_is_woken_by_the_mail_the_old_owner_hands_back(
    tmp_path: Path,
) -> None:
    """The replication that reaches a session: a login on the replica is
    referred, so the session is on the owner, and the change arrives from the
    partner. After a failover the returned node hands over the mail it took and
    never replicated (issue 4's no-loss rule); beta's IDLE sees it at once."""
    alpha, beta = make_pair(tmp_path)
    with running(alpha, beta):
        alpha.add_account("alice")
        deliver(alpha, 1)
        wait_until(lambda: _count(beta) == 1, 15, "the first message on beta")
        # alpha takes mail beta never sees, then dies; beta takes over.
        beta.stop()
        deliver(alpha, 2)
        deliver(alpha, 3)
        alpha.kill9()
        beta.start()
        assert [t["account"] for t in beta.call("POST", "/v1/failover", {})["taken"]] == ["alice"]

        idle = Wire(beta, timeout=60)  # bounds each read while waiting for the hand-over
        idle.send(b"a LOGIN alice secret\r\nb SELECT INBOX\r\n")
        assert idle.tagged(b"a").startswith(b"a OK")
        selected = idle.replies(b"b")
        assert b"* 1 EXISTS\r\n" in selected and selected[-1].startswith(b"b OK")
        idle.send(b"c IDLE\r\n")
        assert idle.line() == b"+ idling\r\n"

        alpha.start()  # learns it lost alice, and hands messages 2 and 3 to beta
        pushed: list[bytes] = []
        while not pushed or pushed[-1] != b"* 3 EXISTS\r\n":
            line = idle.line()
            assert line.startswith(b"* ") and line.endswith((b" EXISTS\r\n", b" RECENT\r\n")), line
            if line.endswith(b" EXISTS\r\n"):
                pushed.append(line)
        idle.send(b"DONE\r\n")
        # The mail handed over is new here: \Recent to the idling session.
        while (line := idle.line()).endswith(b" RECENT\r\n"):
            pass
        assert line == b"c OK IDLE terminated\r\n"
        idle.send(b"d FETCH 2:3 (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])\r\n")
        lines = idle.replies(b"d")
        assert sorted(line for line in lines if line.startswith(b"Message-ID")) == [
            b"Message-ID: <2@t>\r\n",
            b"Message-ID: <3@t>\r\n",
        ]
        idle.close()


def _count(node: Node) -> int:
    try:
        return len(node.mailbox("alice")["messages"])
    except urllib.error.HTTPError as exc:
        exc.close()
        return 0


class Conversation:
    """One IMAP connection, a command at a time: every line up to the tagged reply."""

    def __init__(self, node: Node) -> None:
        self.sock = socket.create_connection(("127.0.0.1", node.ports["imap"]), timeout=20)
        self.stream = self.sock.makefile("rb")
        self.stream.readline()

    def __call__(self, tag: str, command: str) -> list[bytes]:
        """The untagged lines of a command that must succeed."""
        *lines, done = self.reply(tag, command)
        assert done.startswith(tag.encode() + b" OK"), done
        return lines

    def reply(self, tag: str, command: str) -> list[bytes]:
        """Every line of a command's answer, the tagged one last."""
        self.sock.sendall(f"{tag} {command}\r\n".encode())
        lines = []
        while not (line := self.stream.readline()).startswith(tag.encode() + b" "):
            assert line, "the server closed the connection"
            lines.append(line)
        return [*lines, line]

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


@contextlib.contextmanager
def two_clients(node: Node, messages: int) -> Iterator[tuple[Conversation, imaplib.IMAP4]]:
    """``messages`` delivered; a raw conversation (not logged in) and a logged-in
    imaplib client beside it, both closed at the end."""
    for n in range(1, messages + 1):
        deliver(node, n)
    talk = Conversation(node)
    other = connect(node)
    try:
        yield talk, other
    finally:
        other.logout()
        talk.close()


def test_esearch_min_max_all_count(served: Node) -> None:
    for n in range(1, 6):
        deliver(served, n)
    talk = Conversation(served)
    try:
        (caps,) = talk("a", "CAPABILITY")
        assert b" ESEARCH " in caps and b" QRESYNC " in caps
        talk("b", "LOGIN alice secret")
        talk("c", "SELECT INBOX")
        assert talk("d", "SEARCH RETURN (MIN MAX COUNT) ALL") == [
            b'* ESEARCH (TAG "d") MIN 1 MAX 5 COUNT 5\r\n'
        ]
        # RFC 4731 3.1: RETURN () is ALL; UID SEARCH says UID.
        assert talk("e", "UID SEARCH RETURN () 2:4") == [b'* ESEARCH (TAG "e") UID ALL 2:4\r\n']
        assert talk("f", "SEARCH RETURN (ALL) 1,3,4,5") == [b'* ESEARCH (TAG "f") ALL 1,3:5\r\n']
        # No match: only COUNT, as 0.
        assert talk("g", "SEARCH RETURN (MIN COUNT) DELETED") == [
            b'* ESEARCH (TAG "g") COUNT 0\r\n'
        ]
        assert talk("h", "SEARCH RETURN (MIN) DELETED") == [b'* ESEARCH (TAG "h")\r\n']
    finally:
        talk.close()


def _uid_flags_rest(line: bytes) -> tuple[int, int, set[bytes], bytes]:
    """(sequence number, UID, flags, the rest) of ``* n FETCH (UID u FLAGS (...) rest)``."""
    found = re.fullmatch(rb"\* (\d+) FETCH \(UID (\d+) FLAGS \(([^)]*)\) (.*)\)\r\n", line)
    assert found is not None, line
    return int(found[1]), int(found[2]), set(found[3].split()), found[4]


def test_a_fetch_answered_again_follows_flags_expunges_and_numbers(served: Node) -> None:
    # The groups of responses the server rendered for a FETCH are served again
    # to the same FETCH only for the same messages under the same numbers:
    # what another session or this one changed since is what is answered.
    for n in range(1, 8):
        deliver(served, n)
    talk, other = Conversation(served), connect(served)
    command = "FETCH 1:* (UID FLAGS ENVELOPE BODYSTRUCTURE)"
    try:
        talk("a", "LOGIN alice secret")
        talk("b", "EXAMINE INBOX")
        first = talk("c", command)
        assert len(first) == 7 and talk("d", command) == first
        assert talk("d2", "UID " + command) == first
        rest = {uid: tail for _, uid, _, tail in map(_uid_flags_rest, first)}
        other.select("INBOX")
        other.store("3", "+FLAGS", "(\\Flagged)")
        other.store("1", "+FLAGS", "(\\Deleted)")
        other.expunge()
        talk("e", "NOOP")  # told of the expunge and the flags now
        for tag in ("f", "g"):
            now = [_uid_flags_rest(line) for line in talk(tag, command)]
            assert [(seq, uid) for seq, uid, _, _ in now] == [(n, n + 1) for n in range(1, 7)]
            assert {uid for _, uid, flags, _ in now if b"\\Flagged" in flags} == {3}
            assert all(tail == rest[uid] for _, uid, _, tail in now)
        # A page, then the whole again after this session's own change.
        assert [
            _uid_flags_rest(line)[:2] for line in talk("h", "FETCH 2:3 (UID FLAGS ENVELOPE)")
        ] == [(2, 3), (3, 4)]
        talk("i", "SELECT INBOX")
        talk("j", "STORE 2 +FLAGS.SILENT (\\Seen)")
        now = [_uid_flags_rest(line) for line in talk("k", command)]
        assert [uid for _, uid, flags, _ in now if b"\\Seen" in flags] == [3]
    finally:
        other.logout()
        talk.close()


def _code(lines: list[bytes], name: bytes) -> int:
    (line,) = [x for x in lines if b"[" + name + b" " in x]
    return int(line.split(b"[" + name + b" ")[1].split(b"]")[0])


def test_qresync_select_vanished_and_changes_since(served: Node) -> None:
    with two_clients(served, 6) as (talk, client):
        talk("a", "LOGIN alice secret")
        selected = talk("b", "SELECT INBOX")
        validity, since = _code(selected, b"UIDVALIDITY"), _code(selected, b"HIGHESTMODSEQ")
        talk("c", "UNSELECT")
        # Another client changes the mailbox: 2 seen, 4 and 5 expunged.
        client.select("INBOX")
        client.store("2", "+FLAGS", "(\\Seen)")
        client.store("4:5", "+FLAGS", "(\\Deleted)")
        client.expunge()

        assert talk("d", "ENABLE QRESYNC CONDSTORE") == [b"* ENABLED QRESYNC CONDSTORE\r\n"]
        lines = talk("e", f"SELECT INBOX (QRESYNC ({validity} {since} 1:6))")
        assert b"* VANISHED (EARLIER) 4:5\r\n" in lines
        fetches = [x for x in lines if b" FETCH " in x]
        assert len(fetches) == 1 and fetches[0].startswith(
            b"* 2 FETCH (UID 2 FLAGS (\\Seen) MODSEQ ("
        )
        # Known UIDs narrow the VANISHED list.
        lines = talk("f", f"SELECT INBOX (QRESYNC ({validity} {since} 1:4))")
        assert lines[0] == b"* OK [CLOSED] Previous mailbox closed\r\n"  # RFC 7162 3.2.11
        assert b"* VANISHED (EARLIER) 4\r\n" in lines
        # UID FETCH ... (CHANGEDSINCE m VANISHED), RFC 7162 3.2.6.
        lines = talk("g", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {since} VANISHED)")
        assert lines[0] == b"* VANISHED (EARLIER) 4:5\r\n"
        assert [x.split(b" (")[0] for x in lines[1:]] == [b"* 2 FETCH"]
        # A UIDVALIDITY that does not match: a plain SELECT.
        lines = talk("h", f"SELECT INBOX (QRESYNC ({validity + 1} {since}))")
        assert not [x for x in lines if b"VANISHED" in x or b"FETCH" in x]
        # With QRESYNC on, expunges are told as VANISHED, in UIDs (RFC 7162 3.2.10).
        client.store("1", "+FLAGS", "(\\Deleted)")
        client.expunge()
        assert b"* VANISHED 1\r\n" in talk("i", "NOOP")


def test_vanished_and_qresync_need_enable_qresync(served: Node) -> None:
    deliver(served, 1)
    text = b"".join(
        raw(
            served,
            [
                b"a LOGIN alice secret\r\n",
                b"b ENABLE CONDSTORE\r\n",
                b"c SELECT INBOX (QRESYNC (1 1))\r\n",
                b"d SELECT INBOX\r\n",
                b"e UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)\r\n",
                b"f STORE 1 +FLAGS (\\Deleted)\r\n",
                b"g EXPUNGE\r\n",
            ],
        )
    )
    assert b"* ENABLED CONDSTORE\r\n" in text
    assert b"c BAD QRESYNC is not enabled: ENABLE QRESYNC first" in text
    assert b"e BAD VANISHED needs ENABLE QRESYNC first" in text
    assert b"* 1 EXPUNGE\r\n" in text and b"VANISHED" not in text.replace(b"VANISHED needs", b"")


def test_fetch_of_bytes_gone_says_which_kind_and_serves_the_rest(served: Node) -> None:
    spool = served.workdir / "var" / served.name / "spool"
    with two_clients(served, 3) as (talk, other):
        first, second, _ = [m["guid"] for m in served.mailbox("alice")["messages"]]
        talk("a", "LOGIN alice secret")
        talk("b", "SELECT INBOX")
        # Another session expunges message 2; this one may not be told yet
        # (no EXPUNGE during FETCH), and the sweep has removed its bytes.
        other.select("INBOX")
        other.store("2", "+FLAGS", "(\\Deleted)")
        other.expunge()
        (spool / second[:2] / second).unlink()
        lines = talk.reply("c", "FETCH 1:3 (BODY.PEEK[])")
        assert [x.split(b" (")[0] for x in lines[:-1] if b" FETCH " in x] == [
            b"* 1 FETCH",
            b"* 3 FETCH",
        ]
        assert lines[-1] == b"c NO [EXPUNGEISSUED] FETCH: some messages were expunged\r\n"
        # A live message whose bytes are gone is a server fault, named as such;
        # and now (a UID FETCH) the expunge held back during FETCH is told.
        (spool / first[:2] / first).unlink()
        lines = talk.reply("d", "UID FETCH 1 (BODY.PEEK[])")
        assert b"* 2 EXPUNGE\r\n" in lines
        assert lines[-1] == b"d NO [SERVERBUG] UID FETCH: the data of UID 1 cannot be read\r\n"


def test_an_expunge_held_back_during_fetch_is_told_at_the_next_noop(served: Node) -> None:
    # RFC 3501 7.4.1: no EXPUNGE during FETCH, STORE or SEARCH; nothing of
    # the change is told then (no MODSEQ beyond the unreported expunge), and
    # all of it at the next NOOP.
    with two_clients(served, 3) as (talk, other):
        talk("a", "LOGIN alice secret")
        talk("b", "ENABLE CONDSTORE")
        talk("c", "SELECT INBOX")
        other.select("INBOX")
        other.store("2", "+FLAGS", "(\\Deleted)")
        other.expunge()
        other.store("2", "+FLAGS", "(\\Flagged)")  # was message 3
        held = talk("d", "FETCH 1:3 (FLAGS)")
        assert not [x for x in held if b"EXPUNGE" in x or b"Flagged" in x]
        told = talk("e", "NOOP")
        assert b"* 2 EXPUNGE\r\n" in told
        assert [x for x in told if b"FETCH" in x and b"\\Flagged" in x]


def test_qresync_details(served: Node) -> None:
    for n in range(1, 4):
        deliver(served, n)
    talk = Conversation(served)
    try:
        talk("a", "LOGIN alice secret")
        talk("b", "SELECT INBOX")
        # RFC 7162 3.2.11: CLOSED for any client of a server that offers QRESYNC.
        assert talk("c", "SELECT INBOX")[0] == b"* OK [CLOSED] Previous mailbox closed\r\n"
        talk("d", "UNSELECT")
        talk("e", "ENABLE QRESYNC")
        # '*' and '$' are not allowed in the QRESYNC sets; nothing is selected then.
        refused = talk.reply("f", "SELECT INBOX (QRESYNC (1 1 1:*))")
        assert refused == [b"f BAD QRESYNC sets take neither '*' nor '$' (RFC 7162 7)\r\n"]
        assert talk.reply("g", "FETCH 1 FLAGS")[-1].startswith(b"g BAD FETCH is not allowed now")
        talk("h", "SELECT INBOX")
        # With CONDSTORE on, a STORE's FETCH carries UID and MODSEQ (RFC 7162 3.2.4).
        (stored,) = talk("i", "STORE 1 +FLAGS (\\Deleted)")
        assert stored.startswith(b"* 1 FETCH (UID 1 FLAGS (\\Deleted) MODSEQ (")
        # EXPUNGE's OK carries the new HIGHESTMODSEQ (RFC 7162 3.2.7), after VANISHED.
        *told, done = talk.reply("j", "EXPUNGE")
        assert told[0] == b"* VANISHED 1\r\n" and not [x for x in told if b"EXPUNGE" in x]
        assert done.startswith(b"j OK [HIGHESTMODSEQ ")
    finally:
        talk.close()


def test_every_command_a_state_allows_has_a_handler() -> None:
    # The connection loop knows no command: a command class the state table
    # allows but no handler answers would fail at run time, not here.
    allowed = set().union(*ALLOWED.values())
    assert allowed == set(HANDLERS)
