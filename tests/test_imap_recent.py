"""\\Recent on the wire (issue 10 item 3; RFC 3501 2.3.2, 6.3.1, 6.3.10, 6.4.4, 7.3.2).

A message is \\Recent in the first session told of it, by a SELECT (never an
EXAMINE) or, while a session has the mailbox selected, by its next update;
no other session, then or later, sees it as \\Recent. The expected answers
are built from the RFC: SELECT's ``* n RECENT``, STATUS RECENT (the messages
no session claimed yet), SEARCH RECENT/NEW/OLD, FETCH FLAGS.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

import pytest

from tests.conftest import LoneNode
from tests.test_imap_compliance import PLAIN, Wire, append

NodeFactory = Callable[..., LoneNode]


@pytest.fixture
def node(lone_node: NodeFactory) -> LoneNode:
    node = lone_node()
    node.add_account("user")
    return node


def recent(lines: list[bytes]) -> list[int]:
    return [int(line.split()[1]) for line in lines if re.match(rb"\* \d+ RECENT\r\n", line)]


def searched(wire: Wire, key: str) -> list[int]:
    lines = wire.cmd(f"SEARCH {key}")
    assert lines[-1].split()[1] == b"OK", lines
    return [int(n) for n in lines[0].split()[2:]]


def flags(wire: Wire, seq: int) -> set[bytes]:
    lines = wire.cmd(f"FETCH {seq} (FLAGS)")
    found = re.search(rb"FLAGS \(([^)]*)\)", lines[0])
    assert found, lines
    return set(found.group(1).split())


def status_recent(wire: Wire, name: str = "INBOX") -> int:
    lines = wire.cmd(f"STATUS {name} (RECENT)")
    assert lines[-1].split()[1] == b"OK", lines
    return int(lines[0].split(b"RECENT ")[1].split(b")")[0])


def test_first_select_gets_recent(node: LoneNode) -> None:
    append(node, PLAIN, PLAIN)
    first, second, other = Wire(node), Wire(node), Wire(node)
    assert status_recent(other) == 2
    # EXAMINE does not claim (RFC 3501 6.3.2): nothing is \Recent to it, and
    # the messages stay recent for the next SELECT.
    assert recent(first.cmd("EXAMINE INBOX")) == [0]
    assert b"\\Recent" not in flags(first, 1)
    assert searched(first, "RECENT") == []
    assert status_recent(other) == 2
    opened = first.cmd("SELECT INBOX")
    assert recent(opened) == [2], opened
    assert b"\\Recent" in flags(first, 1) and b"\\Recent" in flags(first, 2)
    assert searched(first, "RECENT") == [1, 2]
    assert searched(first, "NEW") == [1, 2]
    assert searched(first, "OLD") == []
    first.cmd("STORE 1 +FLAGS (\\Seen)")
    assert searched(first, "NEW") == [2]  # NEW is RECENT UNSEEN (6.4.4)
    assert flags(first, 1) == {b"\\Seen", b"\\Recent"}
    assert status_recent(other) == 0
    # A second session selecting it now is not the first: nothing is recent.
    assert recent(second.cmd("SELECT INBOX")) == [0]
    assert searched(second, "RECENT") == []
    assert searched(second, "OLD") == [1, 2]
    assert flags(second, 2) == set()
    # Nor for the first session once it selects again.
    assert recent(first.cmd("SELECT INBOX")) == [0]
    assert searched(first, "OLD") == [1, 2]
    for wire in (first, second, other):
        wire.close()


def test_new_mail_is_recent_in_exactly_one_selected_session(node: LoneNode) -> None:
    # Six sessions have INBOX selected when a message arrives; all learn of it
    # at once (NOOP from six threads): exactly one is told it is \Recent.
    append(node, PLAIN)
    wires = [Wire(node) for _ in range(6)]
    for wire in wires:
        wire.cmd("SELECT INBOX")
    append(node, PLAIN)
    answers: dict[int, list[bytes]] = {}

    def noop(i: int) -> None:
        answers[i] = wires[i].cmd("NOOP")

    threads = [threading.Thread(target=noop, args=(i,)) for i in range(len(wires))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    told = sorted(recent(answers[i]) for i in range(len(wires)))
    # Each is told the new EXISTS and the RECENT count with it (7.3.2).
    assert all(b"* 2 EXISTS\r\n" in answers[i] for i in range(len(wires))), answers
    # Message 1 was claimed by the first SELECT; message 2 by one of them only.
    assert sum(1 for w in wires if b"\\Recent" in flags(w, 2)) == 1
    assert sum(1 for w in wires if b"\\Recent" in flags(w, 1)) == 1
    assert sorted(len(searched(w, "RECENT")) for w in wires) in (
        [0, 0, 0, 0, 0, 2],
        [0, 0, 0, 0, 1, 1],
    ), told
    for wire in wires:
        wire.close()


def test_copy_move_append_make_recent_for_next_select(node: LoneNode) -> None:
    append(node, PLAIN, PLAIN, PLAIN)
    wire, reader = Wire(node), Wire(node)
    wire.cmd("CREATE Dest")
    wire.cmd("SELECT INBOX")
    assert status_recent(reader, "Dest") == 0
    assert wire.cmd("COPY 1 Dest")[-1].split()[1] == b"OK"
    assert wire.cmd("MOVE 2 Dest")[-1].split()[1] == b"OK"
    assert status_recent(reader, "Dest") == 2
    assert recent(reader.cmd("SELECT Dest")) == [2]
    assert searched(reader, "RECENT") == [1, 2]
    # APPEND to the mailbox the appending session has selected: it is the
    # first told of the new message (in APPEND's own untagged answers).
    appended = wire.cmd(f"APPEND INBOX {{{len(PLAIN)}+}}\r\n" + PLAIN.decode())
    assert appended[-1].split()[1] == b"OK"
    assert b"* 3 EXISTS\r\n" in appended and recent(appended) == [3], appended
    assert searched(wire, "RECENT") == [1, 2, 3]
    assert b"\\Recent" in flags(wire, 3)
    # APPEND to a mailbox another session has selected: recent there.
    reader_append = Wire(node)
    reader_append.cmd(f"APPEND Dest {{{len(PLAIN)}+}}\r\n" + PLAIN.decode())
    assert recent(reader.cmd("NOOP")) == [3]
    assert searched(reader, "RECENT") == [1, 2, 3]
    for each in (wire, reader, reader_append):
        each.close()
