"""IMAP on the wire: LSUB and LIST-EXTENDED subscriptions (issue 10 item 11)
and the extensions MULTIAPPEND, SEARCHRES, ESORT, BINARY, CATENATE.

Every expected answer is built from the RFC named in the test against a
real node, through raw sockets (:class:`~tests.test_imap_compliance.Wire`)
or imaplib.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from tests.conftest import LoneNode
from tests.test_imap_compliance import Wire

NodeFactory = Callable[..., LoneNode]


pytestmark = pytest.mark.node(partner="beta")  # a lone node, as ``lone_node`` starts


@pytest.fixture
def node(shared_node: LoneNode) -> LoneNode:
    """The module's node (``shared_node``) with one fresh account, user."""
    shared_node.add_account("user")
    return shared_node


def ok(lines: list[bytes]) -> list[bytes]:
    assert lines[-1].split()[1] == b"OK", lines
    return lines[:-1]


# -- item 11: LSUB "%" and RECURSIVEMATCH's CHILDINFO --------------------------------


def test_lsub_percent_and_recursivematch_childinfo(node: LoneNode) -> None:
    wire = Wire(node)
    for name in ("Fruit/Apple", "Fruit/Banana", "Vegetable/Broccoli", "Tofu"):
        ok(wire.cmd(f"CREATE {name}"))
    for name in ("Fruit/Banana", "Vegetable", "Vegetable/Broccoli", "Tofu"):
        ok(wire.cmd(f"SUBSCRIBE {name}"))
    # RFC 3501 6.3.9: "%" stops at Fruit, which is not subscribed but has a
    # subscribed child: it is listed, flagged \Noselect.
    assert ok(wire.cmd('LSUB "" "%"')) == [
        b'* LSUB (\\Noselect \\HasChildren) "/" Fruit\r\n',
        b'* LSUB (\\HasNoChildren) "/" INBOX\r\n',
        b'* LSUB (\\HasNoChildren) "/" Tofu\r\n',
        b'* LSUB (\\HasChildren) "/" Vegetable\r\n',
    ]
    # With "*" the child itself is listed, and the parent is not.
    assert ok(wire.cmd('LSUB "" "*"')) == [
        b'* LSUB (\\HasNoChildren) "/" Fruit/Banana\r\n',
        b'* LSUB (\\HasNoChildren) "/" INBOX\r\n',
        b'* LSUB (\\HasNoChildren) "/" Tofu\r\n',
        b'* LSUB (\\HasChildren) "/" Vegetable\r\n',
        b'* LSUB (\\HasNoChildren) "/" Vegetable/Broccoli\r\n',
    ]
    # RFC 5258 3.5 and its example 5.8.A1: CHILDINFO for a parent the pattern
    # matches whose subscribed child it does not, subscribed or not itself.
    assert ok(wire.cmd('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')) == [
        b'* LIST (\\HasChildren) "/" Fruit ("CHILDINFO" ("SUBSCRIBED"))\r\n',
        b'* LIST (\\HasNoChildren \\Subscribed) "/" INBOX\r\n',
        b'* LIST (\\HasNoChildren \\Subscribed) "/" Tofu\r\n',
        b'* LIST (\\HasChildren \\Subscribed) "/" Vegetable ("CHILDINFO" ("SUBSCRIBED"))\r\n',
    ]
    # With "*" every subscribed child is listed itself: no CHILDINFO, and an
    # unsubscribed parent is not listed (it matches no selection criterion).
    assert ok(wire.cmd('LIST (SUBSCRIBED RECURSIVEMATCH) "" "*"')) == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" Fruit/Banana\r\n',
        b'* LIST (\\HasNoChildren \\Subscribed) "/" INBOX\r\n',
        b'* LIST (\\HasNoChildren \\Subscribed) "/" Tofu\r\n',
        b'* LIST (\\HasChildren \\Subscribed) "/" Vegetable\r\n',
        b'* LIST (\\HasNoChildren \\Subscribed) "/" Vegetable/Broccoli\r\n',
    ]
    wire.close()


# -- MULTIAPPEND (RFC 3502) ---------------------------------------------------------

ONE = b"From: a@example.org\r\nSubject: one\r\n\r\nfirst body\r\n"
TWO = b"From: b@example.org\r\nSubject: two\r\n\r\nsecond body, longer\r\n"


def literal(data: bytes) -> str:
    return f"{{{len(data)}+}}\r\n" + data.decode()


def fetched(wire: Wire, seqs: str, item: str) -> list[bytes]:
    return [line for line in ok(wire.cmd(f"FETCH {seqs} ({item})")) if b" FETCH " in line]


def test_multiappend_adds_every_message_in_one_command(node: LoneNode) -> None:
    wire = Wire(node)
    assert "MULTIAPPEND" in ok(wire.cmd("CAPABILITY"))[0].decode().split()
    # RFC 3502 6.3.11: each message with its own flags and date-time.
    date = '"07-Feb-1994 21:52:25 -0800"'
    lines = wire.cmd(f"APPEND INBOX (\\Seen) {literal(ONE)} (\\Flagged) {date} {literal(TWO)}")
    assert lines[-1].split()[1] == b"OK", lines
    # RFC 4315 3: APPENDUID names the UIDs of all of them, in order.
    uidvalidity = ok(wire.cmd("STATUS INBOX (UIDVALIDITY MESSAGES)"))[0]
    assert b"MESSAGES 2" in uidvalidity
    validity = uidvalidity.split(b"UIDVALIDITY ")[1].split()[0].rstrip(b")")
    assert b"[APPENDUID " + validity + b" 1:2]" in lines[-1]
    wire.cmd("EXAMINE INBOX")
    assert fetched(wire, "1:2", "FLAGS") == [
        b"* 1 FETCH (FLAGS (\\Seen))\r\n",
        b"* 2 FETCH (FLAGS (\\Flagged))\r\n",
    ]
    assert b'INTERNALDATE " 8-Feb-1994 05:52:25 +0000"' in fetched(wire, "2", "INTERNALDATE")[0]
    body = ok(wire.cmd("FETCH 2 (BODY.PEEK[])"))
    assert b"".join(body[1:-1]).startswith(TWO), body
    wire.close()


def test_multiappend_is_all_or_nothing(node: LoneNode) -> None:
    # The account's quota holds the first message but not both: the second
    # one's failure takes the first back too (RFC 3502 6.3.11: "the server
    # MUST NOT append any of the messages" when one fails).
    node.add_account("small", quota_limit=len(ONE) + len(TWO) - 1)
    wire = Wire(node, "small")
    lines = wire.cmd(f"APPEND INBOX {literal(ONE)} {literal(TWO)}")
    assert lines[-1].split()[1] == b"NO", lines
    assert b"MESSAGES 0" in ok(wire.cmd("STATUS INBOX (MESSAGES)"))[0]
    # A syntax error in the second message refuses the whole command as well.
    lines = wire.cmd(f"APPEND INBOX {literal(ONE)} (\\Seen) NOTALITERAL")
    assert lines[-1].split()[1] == b"BAD", lines
    assert b"MESSAGES 0" in ok(wire.cmd("STATUS INBOX (MESSAGES)"))[0]
    # One alone fits.
    assert wire.cmd(f"APPEND INBOX {literal(ONE)}")[-1].split()[1] == b"OK"
    wire.close()


# -- SEARCHRES (RFC 5182) -----------------------------------------------------------


def numbers(lines: list[bytes], prefix: bytes = b"* SEARCH") -> list[int]:
    [line] = [line for line in lines if line.startswith(prefix)]
    return [int(n) for n in line[len(prefix) :].split()]


def fetch_uids(wire: Wire, command: str) -> list[tuple[int, int]]:
    out = []
    for line in ok(wire.cmd(command)):
        if b" FETCH " in line:
            out.append((int(line.split()[1]), int(line.split(b"UID ")[1].split()[0].rstrip(b")"))))
    return out


def test_searchres_saves_and_reuses_a_result(node: LoneNode) -> None:
    wire = Wire(node)
    assert "SEARCHRES" in ok(wire.cmd("CAPABILITY"))[0].decode().split()
    ok(wire.cmd("CREATE Other"))
    for _ in range(6):
        ok(wire.cmd(f"APPEND INBOX {literal(ONE)}"))
    ok(wire.cmd("SELECT INBOX"))
    ok(wire.cmd("STORE 1 +FLAGS (\\Deleted)"))
    ok(wire.cmd("EXPUNGE"))  # UIDs 2..6 are now messages 1..5
    ok(wire.cmd("STORE 2,4 +FLAGS (\\Flagged)"))
    # SAVE alone: no ESEARCH response (RFC 5182 2.1), the result is kept.
    assert ok(wire.cmd("SEARCH RETURN (SAVE) FLAGGED")) == []
    # "$" names the same messages in every command, as numbers or UIDs.
    assert fetch_uids(wire, "FETCH $ (UID)") == [(2, 3), (4, 5)]
    assert fetch_uids(wire, "UID FETCH $ (UID)") == [(2, 3), (4, 5)]
    assert numbers(ok(wire.cmd("SEARCH $"))) == [2, 4]
    assert numbers(ok(wire.cmd("UID SEARCH UID $"))) == [3, 5]
    assert numbers(ok(wire.cmd("SEARCH NOT $"))) == [1, 3, 5]
    stored = ok(wire.cmd("STORE $ +FLAGS.SILENT (\\Seen)"))
    assert numbers(ok(wire.cmd("SEARCH SEEN"))) == [2, 4], stored
    copied = wire.cmd("COPY $ Other")
    assert copied[-1].split()[1] == b"OK" and b" 3,5 1,2] " in copied[-1], copied
    # SAVE with other options: the ESEARCH answer comes, and MIN alone keeps
    # only the lowest (RFC 5182 2.4); with ALL or COUNT everything found.
    tag = b"t%d" % (wire.count + 1)
    assert ok(wire.cmd("SEARCH RETURN (SAVE MIN) FLAGGED")) == [
        b'* ESEARCH (TAG "' + tag + b'") MIN 2\r\n'
    ]
    assert fetch_uids(wire, "FETCH $ (UID)") == [(2, 3)]
    tag = b"t%d" % (wire.count + 1)
    assert ok(wire.cmd("SEARCH RETURN (MAX SAVE COUNT) FLAGGED")) == [
        b'* ESEARCH (TAG "' + tag + b'") MAX 4 COUNT 2\r\n'
    ]
    assert fetch_uids(wire, "FETCH $ (UID)") == [(2, 3), (4, 5)]
    # A saved message that is expunged drops out of "$".
    ok(wire.cmd("STORE 2 +FLAGS (\\Deleted)"))
    ok(wire.cmd("EXPUNGE"))
    assert numbers(ok(wire.cmd("UID SEARCH $"))) == [5]
    # A new SELECT starts with "$" empty.
    ok(wire.cmd("SELECT INBOX"))
    assert fetch_uids(wire, "FETCH $ (UID)") == []
    wire.close()


# -- ESORT (RFC 5267) ---------------------------------------------------------------


def subject(text: str) -> bytes:
    return f"From: a@example.org\r\nSubject: {text}\r\n\r\nbody\r\n".encode()


def test_esort_answers_sort_with_esearch(node: LoneNode) -> None:
    wire = Wire(node)
    assert "ESORT" in ok(wire.cmd("CAPABILITY"))[0].decode().split()
    for text in ("c", "d", "a", "b", "e"):
        ok(wire.cmd(f"APPEND INBOX {literal(subject(text))}"))
    ok(wire.cmd("SELECT INBOX"))
    # Sorted by subject the messages are 3 4 1 2 5. RFC 5267 3.2: MIN and MAX
    # are the first and last in sort order, ALL keeps that order (a range
    # only where the numbers ascend one by one), COUNT as in ESEARCH.
    tag = f"t{wire.count + 1}".encode()
    assert ok(wire.cmd("SORT RETURN (MIN MAX COUNT ALL) (SUBJECT) US-ASCII ALL")) == [
        b'* ESEARCH (TAG "' + tag + b'") MIN 3 MAX 5 ALL 3:4,1:2,5 COUNT 5\r\n'
    ]
    tag = f"t{wire.count + 1}".encode()
    assert ok(wire.cmd("UID SORT RETURN () (REVERSE SUBJECT) US-ASCII NOT SUBJECT d")) == [
        b'* ESEARCH (TAG "' + tag + b'") UID ALL 5,1,4,3\r\n'
    ]
    tag = f"t{wire.count + 1}".encode()
    assert ok(wire.cmd("SORT RETURN (MIN COUNT) (SUBJECT) US-ASCII SUBJECT zzz")) == [
        b'* ESEARCH (TAG "' + tag + b'") COUNT 0\r\n'
    ]
    # Without RETURN, SORT answers as before (RFC 5256 4).
    assert ok(wire.cmd("SORT (SUBJECT) US-ASCII ALL")) == [b"* SORT 3 4 1 2 5\r\n"]
    # With SEARCHRES, SAVE keeps the result; MIN alone keeps the first in order.
    assert ok(wire.cmd("SORT RETURN (SAVE MIN) (REVERSE SUBJECT) US-ASCII ALL"))[0].endswith(
        b" MIN 5\r\n"
    )
    assert numbers(ok(wire.cmd("SEARCH $"))) == [5]
    assert ok(wire.cmd("SORT RETURN (SAVE) (SUBJECT) US-ASCII SUBJECT b")) == []
    assert numbers(ok(wire.cmd("SEARCH $"))) == [4]
    wire.close()


# -- BINARY (RFC 3516) --------------------------------------------------------------

OCTETS = b"\x00\x01\x02binary\xff"
ENCODED = (
    b"From: a@example.org\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9 =3D ok=\r\n!\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(OCTETS).replace(b"\n", b"\r\n")
    + b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-unknown\r\n\r\nzzz\r\n"
    b"--b--\r\n"
)


def test_binary_fetch_undoes_the_transfer_encoding(node: LoneNode) -> None:
    wire = Wire(node)
    assert "BINARY" in ok(wire.cmd("CAPABILITY"))[0].decode().split()
    ok(wire.cmd(f"APPEND INBOX {literal(ENCODED)}"))
    ok(wire.cmd("SELECT INBOX"))
    text = "café = ok!".encode()
    # RFC 3516 4.1: the decoded octets, in a literal (no NUL) ...
    assert ok(wire.cmd("FETCH 1 (BINARY.PEEK[1])")) == [
        b"* 1 FETCH (BINARY[1] {%d}\r\n" % len(text),
        text + b")\r\n",
    ]
    # ... or a literal8 when they hold NUL (4.2); a partial counts decoded octets.
    assert ok(wire.cmd("FETCH 1 (BINARY.PEEK[2])")) == [
        b"* 1 FETCH (BINARY[2] ~{%d}\r\n" % len(OCTETS),
        OCTETS + b")\r\n",
    ]
    assert ok(wire.cmd("FETCH 1 (BINARY.PEEK[2]<1.3>)")) == [
        b"* 1 FETCH (BINARY[2]<1> {3}\r\n",
        b"\x01\x02b)\r\n",
    ]
    # BINARY.SIZE is the decoded size (4.2); a missing part is NIL.
    assert ok(wire.cmd("FETCH 1 (BINARY.SIZE[1] BINARY.SIZE[2] BINARY.SIZE[9])")) == [
        b"* 1 FETCH (BINARY.SIZE[1] %d BINARY.SIZE[2] %d BINARY.SIZE[9] NIL)\r\n"
        % (len(text), len(OCTETS))
    ]
    # An encoding the server cannot undo: NO [UNKNOWN-CTE] (4.3).
    refused = wire.cmd("FETCH 1 (BINARY.PEEK[3])")
    assert refused[-1].split()[1:3] == [b"NO", b"[UNKNOWN-CTE]"], refused
    # Only part numbers in a BINARY section (5).
    assert wire.cmd("FETCH 1 (BINARY[1.HEADER])")[-1].split()[1] == b"BAD"
    # BINARY without .PEEK sets \Seen, and says so.
    assert b"\\Seen" in ok(wire.cmd("FETCH 1 (BINARY[1])"))[-1]
    wire.close()


def send(wire: Wire, line: bytes) -> list[bytes]:
    """:meth:`Wire.cmd` with a command of bytes (8-bit literal data)."""
    wire.count += 1
    tag = b"t%d" % wire.count
    wire.sock.sendall(tag + b" " + line + b"\r\n")
    out = []
    while (reply := wire.stream.readline()) and not reply.startswith(tag + b" "):
        out.append(reply)
    out.append(reply)
    return out


def test_binary_append_takes_a_literal8(node: LoneNode) -> None:
    wire = Wire(node)
    # RFC 3516 4.4: APPEND with a literal8; 8-bit octets are kept as sent.
    message = "Subject: 8bit\r\n\r\ncafé\r\n".encode()
    appended = send(wire, b"APPEND INBOX ~{%d+}\r\n" % len(message) + message)
    assert appended[-1].split()[1] == b"OK", appended
    # The store keeps no NUL: such a message is refused as UNKNOWN-CTE.
    with_nul = b"Subject: nul\r\n\r\na\x00b\r\n"
    refused = send(wire, b"APPEND INBOX ~{%d+}\r\n" % len(with_nul) + with_nul)
    assert refused[-1].split()[1:3] == [b"NO", b"[UNKNOWN-CTE]"], refused
    ok(wire.cmd("EXAMINE INBOX"))
    assert b"".join(ok(wire.cmd("FETCH 1:* (BODY.PEEK[TEXT])"))[1:]) == "café\r\n)\r\n".encode()
    wire.close()


# -- CATENATE (RFC 4469) ------------------------------------------------------------

ORIGINAL = b"From: a@example.org\r\nSubject: orig\r\n\r\nhello body\r\n"


def body_of(wire: Wire, mailbox: str, seq: int) -> bytes:
    ok(wire.cmd(f"EXAMINE {mailbox}"))
    lines = ok(wire.cmd(f"FETCH {seq} (BODY.PEEK[])"))
    size = int(lines[0].rsplit(b"{", 1)[1].split(b"}")[0])
    return b"".join(lines[1:])[:size]


def test_catenate_builds_a_message_from_text_and_urls(node: LoneNode) -> None:
    wire = Wire(node)
    assert "CATENATE" in ok(wire.cmd("CAPABILITY"))[0].decode().split()
    ok(wire.cmd("CREATE Drafts"))
    ok(wire.cmd(f"APPEND INBOX {literal(ORIGINAL)}"))
    status = ok(wire.cmd("STATUS INBOX (UIDVALIDITY)"))[0]
    validity = int(status.split(b"UIDVALIDITY ")[1].split(b")")[0])
    head, tail = b"Subject: fwd\r\n\r\n", b"-- end\r\n"
    # RFC 4469 5: TEXT parts and the sections URLs name, in order.
    lines = wire.cmd(
        f"APPEND Drafts (\\Draft) CATENATE (TEXT {literal(head)} "
        f'URL "/INBOX;UIDVALIDITY={validity}/;UID=1/;SECTION=TEXT" TEXT {literal(tail)})'
    )
    assert lines[-1].split()[1] == b"OK" and b"[APPENDUID " in lines[-1], lines
    assert body_of(wire, "Drafts", 1) == head + b"hello body\r\n" + tail
    # An absolute URL of the same user, the whole message; a partial; and
    # with MULTIAPPEND, a plain literal then a CATENATE (RFC 4469 5, RFC 3502).
    lines = wire.cmd(
        f"APPEND Drafts {literal(ORIGINAL)} CATENATE "
        f'(URL "imap://user@127.0.0.1/INBOX/;UID=1" URL "/INBOX/;UID=1/;SECTION=TEXT/;PARTIAL=0.5")'
    )
    assert lines[-1].split()[1] == b"OK", lines
    assert body_of(wire, "Drafts", 2) == ORIGINAL
    assert body_of(wire, "Drafts", 3) == ORIGINAL + b"hello"
    # A URL that names nothing here: NO [BADURL url] (5.1), and nothing added.
    for url in (
        "/INBOX/;UID=9",
        f"/INBOX;UIDVALIDITY={validity + 1}/;UID=1",
        "/Nowhere/;UID=1",
        "imap://other@127.0.0.1/INBOX/;UID=1",
        ";UID=1",
        "/INBOX/;UID=1/;SECTION=7",
    ):
        refused = wire.cmd(f'APPEND Drafts CATENATE (TEXT {literal(head)} URL "{url}")')
        assert refused[-1].split()[1:3] == [b"NO", b"[BADURL"], (url, refused)
        assert url.encode() in refused[-1]
    assert b"MESSAGES 3" in ok(wire.cmd("STATUS Drafts (MESSAGES)"))[0]
    assert wire.cmd("APPEND Drafts CATENATE (TEXT)")[-1].split()[1] == b"BAD"
    wire.close()
