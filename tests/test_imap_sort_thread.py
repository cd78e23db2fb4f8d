"""LIST wildcards, SORT and THREAD against a real daemon with imaplib.

The SORT and THREAD mailboxes are built so that the answers are the ones RFC
5256 shows: ``* SORT 5 3 4 1 2`` for ``SORT (SUBJECT REVERSE DATE) UTF-8
ALL`` (section 4), the tree ``(2)(3 6 (4 23)(44 7 96))`` (section 4's
thread-list example) and empty ``* SORT`` / ``* THREAD`` answers when nothing
matches (the A284 and A286 examples).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import imaplib
import random
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from bench.load import load
from engine import parsed
from engine.spool import guid_of
from engine.store import Store
from peerd.pair.parsewalk import row_of
from tests.nodes import Node, make_single, running

# The module's node (``shared_node``, tests/conftest.py) starts with this config.
pytestmark = pytest.mark.node(overrides={"imap": {"login_failure_delay": "100ms"}})


@pytest.fixture
def served(shared_node: Node) -> Node:
    """The module's node with one fresh account, alice (earlier tests'
    accounts deleted)."""
    shared_node.add_account("alice")
    return shared_node


def connect(node: Node) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=30)
    client.login("alice", "secret")
    return client


def message(
    n: int, subject: str, date: str, *, sender: str = "bob@example.test", refs: str = ""
) -> bytes:
    header = (
        f"From: {sender}\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
        f"Date: {date}\r\nMessage-ID: <m{n}@t>\r\n"
    )
    if refs:
        header += f"References: {refs}\r\n"
    return f"{header}\r\nbody {n}\r\n".encode()


def day(n: int) -> str:
    return f"{n:02d} Jan 2026 10:00:00 +0000"


def numbers(data: list[bytes | None]) -> list[int]:
    text = b" ".join(x for x in data if x)
    return [int(x) for x in text.split()]


def test_sort_and_thread_are_advertised(served: Node) -> None:
    c = connect(served)
    try:
        caps = set(c.capabilities)
        assert {"SORT", "SORT=DISPLAY", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES"} <= caps
    finally:
        c.logout()


def test_sort_as_rfc_5256_shows_it(served: Node) -> None:
    c = connect(served)
    try:
        # One message appended and expunged first, so UIDs are sequence + 1.
        assert c.append("INBOX", None, None, message(0, "gone", day(1)))[0] == "OK"
        c.select("INBOX")
        c.store("1", "+FLAGS", "\\Deleted")
        c.expunge()
        mails = [
            message(1, "Cherry", day(20), sender="Zed <zed@example.test>"),
            message(2, "cherry", day(10), sender="<amy@example.test>"),
            message(3, "Re: banana", day(15)),
            message(4, "banana", day(12)),
            message(5, "Apple", day(1)),
        ]
        for raw in mails:
            assert c.append("INBOX", None, None, raw)[0] == "OK"
        c.select("INBOX")
        # RFC 5256 4, A283: subject, then the later date first.
        typ, data = c.sort("(SUBJECT REVERSE DATE)", "UTF-8", "ALL")
        assert typ == "OK" and numbers(data) == [5, 3, 4, 1, 2]
        typ, data = c.uid("SORT", "(SUBJECT REVERSE DATE)", "UTF-8", "ALL")
        assert typ == "OK" and numbers(data) == [6, 4, 5, 2, 3]
        # A search narrows what is sorted (A282 with SINCE; here a text key).
        typ, data = c.sort("(REVERSE DATE)", "UTF-8", "SUBJECT", "cherry")
        assert typ == "OK" and numbers(data) == [1, 2]
        # A284: nothing matches, an empty * SORT.
        typ, data = c.sort("(SUBJECT)", "US-ASCII", "TEXT", '"not in mailbox"')
        assert typ == "OK" and numbers(data) == []
        # RFC 5957: FROM sorts on the address's mailbox, DISPLAYFROM on the
        # display name when there is one ("Zed" after "amy@example.test").
        typ, data = c.sort("(FROM)", "UTF-8", "1:2")
        assert numbers(data) == [2, 1]  # amy < zed
        typ, data = c.sort("(DISPLAYFROM)", "UTF-8", "1:2")
        assert numbers(data) == [2, 1]
        typ, data = c.sort("(REVERSE DISPLAYFROM)", "UTF-8", "1:2")
        assert numbers(data) == [1, 2]
        typ, data = c.sort("(SIZE ARRIVAL)", "UTF-8", "ALL")
        assert typ == "OK" and sorted(numbers(data)) == [1, 2, 3, 4, 5]
        # An unknown key is BAD; a charset not offered NO [BADCHARSET]
        # (RFC 5256 3: the charset is required; here "ALL" stands in its place).
        with pytest.raises(imaplib.IMAP4.error):
            c.sort("(COLOUR)", "UTF-8", "ALL")
        typ, data = c.sort("(SUBJECT)", "ALL")
        assert typ == "NO" and data[0].startswith(b"[BADCHARSET")
    finally:
        c.logout()


def test_sorts_by_arrival_and_size_first_then_by_header_fields_in_one_session(
    served: Node,
) -> None:
    """ARRIVAL and SIZE sort without the messages' sort records, and keep
    nothing for the view; the header sorts that follow, and the sorts after a
    new message, answer from the records as if they had come first."""
    c = connect(served)
    try:

        def arrived(n: int) -> str:  # an internal date n minutes after a fixed one
            return imaplib.Time2Internaldate(1_767_225_600 + 60 * n)

        for n, raw in enumerate(
            (message(1, "a", day(20)), message(2, "bbbbbbbb", day(10)), message(3, "cccc", day(15)))
        ):
            assert c.append("INBOX", None, arrived(n), raw)[0] == "OK"
        c.select("INBOX")

        def order(criteria: str) -> list[int]:
            typ, data = c.sort(criteria, "UTF-8", "ALL")
            assert typ == "OK", data
            return numbers(data)

        assert order("(REVERSE ARRIVAL)") == [3, 2, 1]
        assert order("(SIZE)") == [1, 3, 2]
        assert order("(ARRIVAL)") == [1, 2, 3]
        assert order("(DATE)") == [2, 3, 1]
        assert order("(SUBJECT)") == [1, 2, 3]
        assert order("(REVERSE SIZE)") == [2, 3, 1]
        assert c.append("INBOX", None, arrived(3), message(4, "aaaaaaaaaaaa", day(5)))[0] == "OK"
        c.noop()
        assert order("(REVERSE ARRIVAL)") == [4, 3, 2, 1]
        assert order("(DATE)") == [4, 2, 3, 1]
        assert order("(SUBJECT)") == [1, 4, 2, 3]
        assert order("(ARRIVAL)") == [1, 2, 3, 4]
        assert order("(SIZE ARRIVAL)") == [1, 3, 2, 4]
        assert order("(REVERSE DATE)") == [1, 3, 2, 4]
    finally:
        c.logout()


def test_thread_references_builds_the_rfc_5256_tree(served: Node) -> None:
    """RFC 5256 4: ``(2)(3 6 (4 23)(44 7 96))`` among 96 messages."""
    parents = {6: [3], 4: [3, 6], 23: [3, 6, 4], 44: [3, 6], 7: [3, 6, 44], 96: [3, 6, 44, 7]}
    c = connect(served)
    try:
        for n in range(1, 97):
            if n == 2:
                subject = "tree two"
            elif n == 3:
                subject = "tree three"
            elif n in parents:
                subject = "Re: tree three"
            else:
                subject = f"other {n}"
            refs = " ".join(f"<m{p}@t>" for p in parents.get(n, []))
            raw = message(
                n, subject, f"{1 + n // 24:02d} Feb 2026 {n % 24:02d}:00:00 +0000", refs=refs
            )
            assert c.append("INBOX", None, None, raw)[0] == "OK"
        c.select("INBOX")
        typ, data = c.thread("REFERENCES", "UTF-8", "SUBJECT", "tree")
        assert typ == "OK" and data == [b"(2)(3 6 (4 23)(44 7 96))"]
        typ, data = c.uid("THREAD", "REFERENCES", "UTF-8", "SUBJECT", "tree")
        assert typ == "OK" and data == [b"(2)(3 6 (4 23)(44 7 96))"]  # UIDs = numbers here
        # A286: nothing matches, an empty * THREAD.
        typ, data = c.thread("REFERENCES", "US-ASCII", "TEXT", "gewp")
        assert typ == "OK" and data == [b""]
        with pytest.raises(imaplib.IMAP4.error):
            c.thread("BY-COLOUR", "UTF-8", "ALL")
    finally:
        c.logout()


def test_thread_orderedsubject_groups_by_base_subject(served: Node) -> None:
    c = connect(served)
    try:
        assert c.append("INBOX", None, None, message(0, "gone", day(1)))[0] == "OK"
        c.select("INBOX")
        c.store("1", "+FLAGS", "\\Deleted")
        c.expunge()
        mails = [
            message(1, "A", day(1)),
            message(2, "B", day(2)),
            message(3, "Re: A", day(3)),
            message(4, "Fwd: a", day(4)),
            message(5, "re: [fwd: B]", day(5)),
            message(6, "C", day(6)),
        ]
        for raw in mails:
            assert c.append("INBOX", None, None, raw)[0] == "OK"
        c.select("INBOX")
        # RFC 5256 3 ORDEREDSUBJECT: one thread per base subject, the first
        # message the parent of the others (several: each in parentheses).
        typ, data = c.thread("ORDEREDSUBJECT", "UTF-8", "ALL")
        assert typ == "OK" and data == [b"(1 (3)(4))(2 5)(6)"]
        typ, data = c.uid("THREAD", "ORDEREDSUBJECT", "UTF-8", "ALL")
        assert typ == "OK" and data == [b"(2 (4)(5))(3 6)(7)"]
    finally:
        c.logout()


def _health(node: Node) -> bool:
    with urllib.request.urlopen(f"{node.api}/v1/health", timeout=2) as response:
        return bool(response.status == 200)


def test_hostile_list_patterns_are_fast_or_refused_and_the_node_keeps_serving(
    served: Node,
) -> None:
    """Issue 9 item 1: a pattern a backtracking matcher takes minutes over."""
    c = connect(served)
    long_name = "a" * 999
    assert c.create(long_name)[0] == "OK"
    c.logout()
    sock = socket.create_connection(("127.0.0.1", served.ports["imap"]), timeout=30)
    stream = sock.makefile("rb")
    stream.readline()
    sock.sendall(b"l LOGIN alice secret\r\n")
    assert stream.readline().startswith(b"l OK")
    healthy: list[bool] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            healthy.append(_health(served))
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        started = time.monotonic()
        lines = []
        for i, pattern in enumerate([b"*a*a*a*b", b"%a%a%a%b", b"*a*a*a*a*a*a*a*a*a*a*b"] * 5):
            sock.sendall(b'p%d LIST "" "%s"\r\n' % (i, pattern))
            while not (line := stream.readline()).startswith(b"p%d " % i):
                lines.append(line)
            assert line.startswith(b"p%d OK" % i), line
        # No name ends in b: nothing listed, and fast.
        assert lines == []
        assert time.monotonic() - started < 5
        sock.sendall(b'h LIST "" "*a*a*a*a"\r\n')
        listed = stream.readline()
        assert listed.endswith(b'"/" ' + long_name.encode() + b"\r\n"), listed[:80]
        assert stream.readline().startswith(b"h OK")
        # Over the caps: NO [LIMIT] (RFC 5530), not work.
        sock.sendall(b'w LIST "" "' + b"%" * 30_000 + b'"\r\n')
        assert stream.readline().startswith(b"w NO [LIMIT]")
        sock.sendall(b'x LSUB "" "' + b"*a" * 100 + b'"\r\n')
        assert stream.readline().startswith(b"x NO [LIMIT]")
        sock.sendall(b'y LIST "" ("%" "' + b"%" * 30_000 + b'")\r\n')
        assert stream.readline().startswith(b"y NO [LIMIT]")
        sock.sendall(b"z LOGOUT\r\n")
    finally:
        stop.set()
        poller.join()
        sock.close()
    assert healthy and all(healthy)


def test_a_big_mailboxs_first_sort_reads_its_stored_keys_whole(tmp_path: Path) -> None:
    """Past 2,000 records a SORT's first run reads the mailbox's stored sort
    keys as aggregated rows, not by GUID (peerd.services.mailstore): on a
    fresh daemon (nothing cached) the answers are the orders the Date and
    Subject fields give, with expunged records (gaps in the UIDs) left out,
    and THREAD over the same keys puts each message alone."""
    count = 2_100
    rng = random.Random(5256)
    minutes = list(range(count))
    rng.shuffle(minutes)
    topics = list(range(count))
    rng.shuffle(topics)
    base = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    payloads = [
        (
            f"From: s{i}@example.test\r\nTo: bulk@example.test\r\n"
            f"Subject: topic {topics[i]:05d}\r\n"
            f"Date: {email.utils.format_datetime(base + dt.timedelta(minutes=minutes[i]))}\r\n"
            f"Message-ID: <m{i}@example.test>\r\n\r\nbody {i}\r\n"
        ).encode()
        for i in range(count)
    ]
    node = make_single(tmp_path)
    load(node, "bulk", payloads)  # UIDs 1..count in this order, before the daemon starts
    # The keys the parse walker would store (row_of: the walker's own rows),
    # stored now: its walk rides other commits, 0.5 s a batch.
    store = Store(f"sqlite:///{node.db_path}", node.workdir / "var" / node.name)
    try:
        store.write_sync(lambda s: parsed.put(s, [row_of(guid_of(p), p) for p in payloads]))
    finally:
        store.close()
    with running(node):
        client = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=60)
        try:
            client.login("bulk", "pw")
            client.select("INBOX")
            gone = {1, 700, 701, 2_100}
            client.uid("STORE", ",".join(map(str, sorted(gone))), "+FLAGS.SILENT", r"(\Deleted)")
            client.expunge()
            live = [uid for uid in range(1, count + 1) if uid not in gone]
            by_date = sorted(live, key=lambda uid: minutes[uid - 1])
            by_subject = sorted(live, key=lambda uid: topics[uid - 1], reverse=True)
            for criteria, expected in (("(DATE)", by_date), ("(REVERSE SUBJECT)", by_subject)):
                typ, data = client.uid("SORT", criteria, "UTF-8", "ALL")
                assert typ == "OK", data
                assert [int(n) for n in data[0].split()] == expected, criteria
            typ, data = client.uid("THREAD", "REFERENCES", "UTF-8", "ALL")
            assert typ == "OK"
            assert data[0] == b"".join(b"(%d)" % uid for uid in by_date)
        finally:
            client.logout()
