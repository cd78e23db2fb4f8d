"""Many IDLE sessions of one mailbox told of a change in one go, against a real
daemon (peerd/services/imap/wakeup.py): every session gets exactly the
untagged data its own state calls for (RFC 3501 7.4.1, RFC 7162 CONDSTORE
MODSEQ and QRESYNC VANISHED), sessions in the same state the same bytes,
\\Recent goes to one session, and a session's own later change does not leak
into the state the others share."""

from __future__ import annotations

import imaplib
import re
import socket
from collections.abc import Callable

from tests.nodes import Node

OPEN = {
    "plain": b"b SELECT INBOX\r\n",
    "condstore": b"b SELECT INBOX (CONDSTORE)\r\n",
    "qresync": b"x ENABLE QRESYNC\r\nb SELECT INBOX\r\n",
    "examine": b"b EXAMINE INBOX\r\n",
}
COUNT = {"plain": 12, "condstore": 6, "qresync": 4, "examine": 3}


class Idler:
    def __init__(self, node: Node, kind: str) -> None:
        self.kind = kind
        self.sock = socket.create_connection(("127.0.0.1", node.ports["imap"]), timeout=30)
        self.sock.sendall(b"a LOGIN alice secret\r\n" + OPEN[kind] + b"c IDLE\r\n")
        self.buffer = b""
        self.opening = self.until(b"\r\n+ ")

    def until(self, marker: bytes) -> bytes:
        """What arrived up to and including the line with ``marker``."""
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, (self.kind, self.buffer)
            self.buffer += chunk
        end = self.buffer.index(b"\r\n", self.buffer.index(marker) + len(marker) - 2) + 2
        told, self.buffer = self.buffer[:end], self.buffer[end:]
        return told


def _deliver(node: Node, subject: str) -> None:
    with node.lmtp() as lmtp:
        message = f"Subject: {subject}\r\n\r\nhello\r\n".encode()
        lmtp.sendmail("x@example.test", ["alice@example.test"], message)


def _modseq(data: bytes) -> int:
    found = re.search(rb"MODSEQ \((\d+)\)", data)
    assert found, data
    return int(found.group(1))


def test_idle_sessions_of_one_mailbox_get_their_exact_data_from_one_wakeup(
    lone_node: Callable[..., Node],
) -> None:
    node = lone_node({"imap": {"max_sessions_per_account": 40}})
    node.add_account("alice")
    _deliver(node, "one")
    _deliver(node, "two")
    actor = imaplib.IMAP4("127.0.0.1", node.ports["imap"])
    idlers: list[Idler] = []
    try:
        actor.login("alice", "secret")
        actor.select("INBOX")  # takes UIDs 1 and 2 as \Recent
        idlers = [Idler(node, kind) for kind, n in COUNT.items() for _ in range(n)]
        of = {kind: [i for i in idlers if i.kind == kind] for kind in COUNT}
        highest = re.search(rb"HIGHESTMODSEQ (\d+)", of["condstore"][0].opening)
        assert highest, of["condstore"][0].opening

        # New mail: EXISTS for everyone, \Recent for one session that may take it.
        _deliver(node, "three")
        told = {id(i): i.until(b" RECENT\r\n") for i in idlers}
        recent = [i for i in idlers if told[id(i)] == b"* 3 EXISTS\r\n* 1 RECENT\r\n"]
        assert len(recent) == 1 and recent[0].kind != "examine", [told[id(i)] for i in idlers]
        claimer = recent[0]
        others = [i for i in idlers if i is not claimer]
        assert {told[id(i)] for i in others} == {b"* 3 EXISTS\r\n* 0 RECENT\r\n"}

        # Another session's flag change: FETCH, with MODSEQ under CONDSTORE
        # and QRESYNC (which implies it), the same for every session of a kind.
        actor.store("1", "+FLAGS", "(\\Flagged)")
        flagged = {id(i): i.until(b" FETCH ") for i in idlers}
        for kind in ("plain", "examine"):
            assert {flagged[id(i)] for i in of[kind]} == {
                b"* 1 FETCH (UID 1 FLAGS (\\Flagged))\r\n"
            }
        with_modseq = {flagged[id(i)] for i in of["condstore"] + of["qresync"]}
        assert len(with_modseq) == 1, with_modseq
        line = with_modseq.pop()
        assert line.startswith(b"* 1 FETCH (UID 1 FLAGS (\\Flagged) MODSEQ (")
        assert _modseq(line) > int(highest.group(1))

        # A keyword not seen before: FLAGS and PERMANENTFLAGS first (RFC 3501 7.2.6).
        actor.store("2", "+FLAGS", "($Work)")
        keyword = {id(i): i.until(b" FETCH ") for i in idlers}
        for i in idlers:
            assert keyword[id(i)].startswith(b"* FLAGS (") and b"$Work" in keyword[id(i)]
            assert b"* 2 FETCH (UID 2 FLAGS ($Work)" in keyword[id(i)]
        assert len({keyword[id(i)] for i in of["plain"]}) == 1

        # An expunge by another session: EXPUNGE, or VANISHED once QRESYNC is on.
        actor.store("2", "+FLAGS.SILENT", "(\\Deleted)")
        actor.expunge()
        gone = {id(i): i.until(b"* 2 EXISTS") for i in idlers}
        for kind in COUNT:
            assert len({gone[id(i)] for i in of[kind]}) == 1, (
                kind,
                [gone[id(i)] for i in of[kind]],
            )
        assert b"* 2 EXPUNGE\r\n" in gone[id(of["plain"][0])]
        assert b"* VANISHED 2\r\n" in gone[id(of["qresync"][0])]
        assert b"EXPUNGE" not in gone[id(of["qresync"][0])]

        # One session changes a flag itself: the others, whose state it
        # shared, are still told of it.
        mover, watcher = others[0], others[1]
        mover.sock.sendall(b"DONE\r\nd STORE 2 +FLAGS (\\Answered)\r\n")
        assert b"d OK" in mover.until(b"d OK")
        assert b"* 2 FETCH (UID 3 FLAGS (\\Answered)" in watcher.until(b" FETCH ")

        # Each session's state is the mailbox as it is: UIDs 1 and 3, \Recent
        # on 3 for the claimer only.
        for i in (claimer, watcher, of["condstore"][-1], of["examine"][0]):
            i.sock.sendall(b"DONE\r\ne FETCH 1:* (UID FLAGS)\r\n")
            state = i.until(b"e OK")
            assert b"* 1 FETCH (UID 1 FLAGS (\\Flagged)" in state, state
            fetched = re.search(rb"\* 2 FETCH \(UID 3 FLAGS \(([^)]*)\)", state)
            assert fetched, state
            assert ("\\Recent" in fetched.group(1).decode()) == (i is claimer), state
            assert b"* 3 FETCH" not in state
    finally:
        actor.logout()
        for i in idlers:
            i.sock.close()
