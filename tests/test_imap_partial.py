"""PARTIAL (RFC 9394) on the wire: paged SEARCH, SORT and FETCH results.

The mailbox holds six messages with UIDs 1 2 4 5 6 7 (3 was expunged), so
positions, message numbers and UIDs differ and every answer shows which one
the server used. Each expected line is built from RFC 9394 3.1 (the PARTIAL
return option and ``PARTIAL (range results)``), 3.2 (the FETCH modifier) and
4 (``partial-range-first`` / ``partial-range-last``), and for SORT from RFC
5267 4.4 (positions in sort order), against a real node through a raw socket.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from tests.conftest import LoneNode
from tests.test_imap_compliance import Wire
from tests.test_imap_ext import literal, numbers, ok

NodeFactory = Callable[..., LoneNode]

# Appended in this order: UIDs 1-7; "gone" (UID 3) is expunged. Sorted by
# subject the rest are a b c d e f: UIDs 5 7 1 6 4 2.
SUBJECTS = ("c", "f", "gone", "e", "a", "d", "b")


@pytest.fixture
def wire(lone_node: NodeFactory) -> Wire:
    node = lone_node()
    node.add_account("user")
    wire = Wire(node)
    for text in SUBJECTS:
        message = f"From: a@example.org\r\nSubject: {text}\r\n\r\nbody\r\n".encode()
        ok(wire.cmd(f"APPEND INBOX {literal(message)}"))
    ok(wire.cmd("SELECT INBOX"))
    ok(wire.cmd("STORE 3 +FLAGS.SILENT (\\Deleted)"))
    ok(wire.cmd("EXPUNGE"))
    return wire


def esearch(wire: Wire, command: str) -> bytes:
    """The one ESEARCH line of ``command``, after ``(TAG "..")``."""
    tag = f"t{wire.count + 1}"
    [line] = ok(wire.cmd(command))
    prefix = f'* ESEARCH (TAG "{tag}") '.encode()
    assert line.startswith(prefix), line
    return line[len(prefix) :].rstrip(b"\r\n")


def fetched_uids(wire: Wire, command: str) -> list[int]:
    found = re.compile(rb"^\* \d+ FETCH \(.*\bUID (\d+)")
    return [int(m.group(1)) for line in ok(wire.cmd(command)) if (m := found.match(line))]


def test_partial_is_advertised_and_pages_search(wire: Wire) -> None:
    assert "PARTIAL" in ok(wire.cmd("CAPABILITY"))[0].decode().split()
    # Positions count from the lowest UID; results are a sequence set.
    assert esearch(wire, "UID SEARCH RETURN (PARTIAL 1:2) ALL") == b"UID PARTIAL (1:2 1:2)"
    assert esearch(wire, "UID SEARCH RETURN (PARTIAL 3:4) ALL") == b"UID PARTIAL (3:4 4:5)"
    # 5:3 is 3:5 (RFC 9394 4); negative positions count from the last.
    assert esearch(wire, "UID SEARCH RETURN (PARTIAL 5:3) ALL") == b"UID PARTIAL (3:5 4:6)"
    assert (
        esearch(wire, "UID SEARCH RETURN (PARTIAL -1:-2 COUNT) ALL")
        == b"UID PARTIAL (-1:-2 6:7) COUNT 6"
    )
    assert esearch(wire, "UID SEARCH RETURN (PARTIAL -5:-9) ALL") == b"UID PARTIAL (-5:-9 1:2)"
    # Message numbers without UID; a range past the end gives what exists, or NIL.
    assert esearch(wire, "SEARCH RETURN (PARTIAL 6:10) ALL") == b"PARTIAL (6:10 6)"
    assert esearch(wire, "SEARCH RETURN (PARTIAL 7:10) ALL") == b"PARTIAL (7:10 NIL)"
    # MIN, MAX and COUNT are of the whole result; with no match only PARTIAL NIL and COUNT.
    assert (
        esearch(wire, "UID SEARCH RETURN (MIN MAX PARTIAL 2:3) NOT SUBJECT c")
        == b"UID MIN 2 MAX 7 PARTIAL (2:3 4:5)"
    )
    assert (
        esearch(wire, "UID SEARCH RETURN (MIN PARTIAL 1:5 COUNT) SUBJECT zzz")
        == b"UID PARTIAL (1:5 NIL) COUNT 0"
    )
    # With SAVE (RFC 5182), "$" is what PARTIAL returned.
    assert esearch(wire, "UID SEARCH RETURN (SAVE PARTIAL -1:-2) ALL") == b"UID PARTIAL (-1:-2 6:7)"
    assert numbers(ok(wire.cmd("UID SEARCH UID $"))) == [6, 7]
    wire.close()


def test_partial_pages_a_sort_in_sort_order(wire: Wire) -> None:
    # Sorted by subject: UIDs 5 7 1 6 4 2, message numbers 4 6 1 5 3 2.
    assert (
        esearch(wire, "UID SORT RETURN (PARTIAL 2:4) (SUBJECT) US-ASCII ALL")
        == b"UID PARTIAL (2:4 7,1,6)"
    )
    assert (
        esearch(wire, "SORT RETURN (PARTIAL -1:-2 COUNT) (SUBJECT) US-ASCII ALL")
        == b"PARTIAL (-1:-2 3,2) COUNT 6"
    )
    assert (
        esearch(wire, "UID SORT RETURN (PARTIAL 1:3) (REVERSE SUBJECT) US-ASCII ALL")
        == b"UID PARTIAL (1:3 2,4,6)"
    )
    wire.close()


def test_partial_fetch_modifier_fetches_only_those_positions(wire: Wire) -> None:
    assert fetched_uids(wire, "UID FETCH 1:* (FLAGS) (PARTIAL -1:-2)") == [6, 7]
    assert fetched_uids(wire, "UID FETCH 1:* (FLAGS) (PARTIAL 2:3)") == [2, 4]
    assert fetched_uids(wire, "UID FETCH 2:6 (FLAGS) (PARTIAL 1:2)") == [2, 4]
    assert fetched_uids(wire, "FETCH 2:* (UID) (PARTIAL 1:2)") == [2, 4]
    assert fetched_uids(wire, "UID FETCH 1:* (FLAGS) (PARTIAL 7:9)") == []
    # With CHANGEDSINCE the positions are among the changed messages.
    [modseq] = re.findall(rb"HIGHESTMODSEQ (\d+)", b"".join(ok(wire.cmd("SELECT INBOX"))))
    ok(wire.cmd("UID STORE 1,5,7 +FLAGS.SILENT (\\Flagged)"))
    since = int(modseq)
    assert fetched_uids(wire, f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {since} PARTIAL -1:-2)") == [
        5,
        7,
    ]
    wire.close()


# Each is a syntax error: BAD, and the session goes on.
MALFORMED = (
    "SEARCH RETURN (PARTIAL 1:5 ALL) ALL",  # RFC 9394 3.1: not with ALL
    "SEARCH RETURN (PARTIAL 1:5 PARTIAL 6:9) ALL",
    "SEARCH RETURN (PARTIAL) ALL",
    "SEARCH RETURN (PARTIAL 0:5) ALL",  # RFC 9394 4: nz-number
    "SEARCH RETURN (PARTIAL 1:*) ALL",
    "SEARCH RETURN (PARTIAL -1:5) ALL",
    "SEARCH RETURN (PARTIAL 5) ALL",
    'SEARCH RETURN (PARTIAL "1:5") ALL',
    "SEARCH RETURN (PARTIAL 1:4294967296) ALL",
    "SORT RETURN (PARTIAL 1:2 ALL) (SUBJECT) US-ASCII ALL",
    "UID FETCH 1:* (FLAGS) (PARTIAL 1:5 PARTIAL 1:2)",
    "UID FETCH 1:* (FLAGS) (PARTIAL)",
)


def test_a_malformed_partial_is_bad(wire: Wire) -> None:
    answers = {command: wire.cmd(command)[-1].split()[1] for command in MALFORMED}
    assert answers == dict.fromkeys(MALFORMED, b"BAD")
    assert esearch(wire, "SEARCH RETURN (PARTIAL 1:1) ALL") == b"PARTIAL (1:1 1)"
    wire.close()
