"""IMAP answers a compliance suite checks, on the wire (issue 10, items 1, 2, 4-10).

Each message is APPENDed to a real node and read back with imaplib; the
expected answers are built from RFC 3501 (6.4.5 part numbers, 7.4.2 ENVELOPE
and BODYSTRUCTURE) and RFC 5322 (unfolding, groups, comments).
"""

from __future__ import annotations

import imaplib
import socket
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import LoneNode

NodeFactory = Callable[..., LoneNode]

INNER = (
    b"From: inner@example.org\r\nSubject: inner\r\nContent-Type: multipart/alternative; "
    b'boundary="in"\r\n\r\n--in\r\nContent-Type: text/plain\r\n\r\ninner plain\r\n'
    b"--in\r\nContent-Type: text/html\r\n\r\n<p>inner html</p>\r\n--in--\r\n"
)
ATTACHED = (
    b"From: outer@example.org\r\nSubject: outer\r\nContent-Type: multipart/mixed; "
    b'boundary="out"\r\n\r\n--out\r\nContent-Type: message/rfc822\r\n\r\n'
    + INNER
    + b"\r\n--out\r\nContent-Type: text/plain\r\n\r\nouter text\r\n--out--\r\n"
)
TOP_LEVEL_RFC822 = (
    b"From: outer@example.org\r\nSubject: forward\r\nContent-Type: message/rfc822\r\n\r\n" + INNER
)
FOLDED = (
    b"From: a@example.org\r\nSubject: folded\r\nContent-Type: multipart/mixed;\r\n"
    b' boundary="foo\r\n bar"\r\n\r\n--foo bar\r\nContent-Type: text/plain\r\n\r\n'
    b"first\r\n--foo bar\r\nContent-Type: text/html\r\n\r\n<b>second</b>\r\n--foo bar--\r\n"
)
GROUPS = (
    b"From: a@example.org\r\nTo: group: g1@d1.org, g2@d2.org;, solo@d3.org\r\n"
    b"Cc: undisclosed-recipients:;\r\nSubject: groups\r\n\r\nbody\r\n"
)
COMMENTS = b"From: Someone <user-from (comment)@ (comment) domain.org>\r\nSubject: comments\r\n\r\nbody\r\n"


pytestmark = pytest.mark.node(partner="beta")  # a lone node, as ``lone_node`` starts


@pytest.fixture
def node(shared_node: LoneNode) -> LoneNode:
    """The module's node (``shared_node``) with one fresh account, user."""
    shared_node.add_account("user")
    return shared_node


@pytest.fixture
def mailbox(node: LoneNode) -> Iterator[imaplib.IMAP4]:
    client = imaplib.IMAP4("127.0.0.1", node.port("imap"))
    client.login("user", "secret")
    for message in (ATTACHED, TOP_LEVEL_RFC822, FOLDED, GROUPS, COMMENTS):
        assert client.append("INBOX", None, None, message)[0] == "OK"
    client.select("INBOX")
    yield client
    client.logout()


def fetch(client: imaplib.IMAP4, seq: int, item: str) -> bytes | None:
    status, data = client.fetch(str(seq), f"({item})")
    assert status == "OK", data
    first = data[0]
    if isinstance(first, tuple):
        return first[1]
    assert first is not None
    return None if first.rstrip().endswith(b"NIL)") else first


def test_message_rfc822_part_numbers(mailbox: imaplib.IMAP4) -> None:
    # RFC 3501 6.4.5: [1] of a multipart is its first part, whole.
    assert fetch(mailbox, 1, "BODY.PEEK[1]") == INNER
    assert fetch(mailbox, 1, "BODY.PEEK[1.HEADER]") == INNER.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert fetch(mailbox, 1, "BODY.PEEK[1.MIME]") == b"Content-Type: message/rfc822\r\n\r\n"
    assert fetch(mailbox, 1, "BODY.PEEK[1.TEXT]") == INNER.split(b"\r\n\r\n", 1)[1]
    assert fetch(mailbox, 1, "BODY.PEEK[1.1]") == b"inner plain"
    assert fetch(mailbox, 1, "BODY.PEEK[1.2]") == b"<p>inner html</p>"
    assert fetch(mailbox, 1, "BODY.PEEK[1.2.MIME]") == b"Content-Type: text/html\r\n\r\n"
    assert fetch(mailbox, 1, "BODY.PEEK[2]") == b"outer text"
    # A message that is message/rfc822 itself: part 1 is its body, the
    # attached message whole; 1.HEADER is the attached message's header.
    assert fetch(mailbox, 2, "BODY.PEEK[1]") == INNER
    assert fetch(mailbox, 2, "BODY.PEEK[1.HEADER]") == INNER.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert fetch(mailbox, 2, "BODY.PEEK[1.1]") == b"inner plain"


def test_folded_boundary_parameter(mailbox: imaplib.IMAP4) -> None:
    status, data = mailbox.fetch("3", "(BODYSTRUCTURE)")
    assert status == "OK"
    text = data[0]
    assert isinstance(text, bytes)
    assert b'"TEXT" "PLAIN"' in text and b'"TEXT" "HTML"' in text and b'"MIXED"' in text
    assert fetch(mailbox, 3, "BODY.PEEK[2]") == b"<b>second</b>"


def test_envelope_address_groups(mailbox: imaplib.IMAP4) -> None:
    status, data = mailbox.fetch("4", "(ENVELOPE)")
    assert status == "OK"
    text = data[0]
    assert isinstance(text, bytes)
    assert (
        b'((NIL NIL "group" NIL)(NIL NIL "g1" "d1.org")(NIL NIL "g2" "d2.org")(NIL NIL NIL NIL)'
        b'(NIL NIL "solo" "d3.org"))' in text
    )
    assert b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))' in text


def test_search_from_ignores_comments(mailbox: imaplib.IMAP4) -> None:
    status, data = mailbox.search(None, "FROM", "user-from@domain.org")
    assert status == "OK" and data[0] == b"5"
    status, data = mailbox.search(None, "FROM", "Someone")
    assert data[0] == b"5"


class Wire:
    """A raw IMAP connection: one command at a time, every line until its tag."""

    def __init__(self, node: LoneNode, user: str = "user") -> None:
        self.sock = socket.create_connection(("127.0.0.1", node.port("imap")), timeout=20)
        self.stream = self.sock.makefile("rb")
        self.stream.readline()
        self.count = 0
        assert self.cmd(f"LOGIN {user} secret")[-1].split()[1] == b"OK"

    def cmd(self, line: str) -> list[bytes]:
        self.count += 1
        tag = b"t%d" % self.count
        self.sock.sendall(tag + b" " + line.encode() + b"\r\n")
        out = []
        while (reply := self.stream.readline()) and not reply.startswith(tag + b" "):
            out.append(reply)
        assert reply, "connection closed"
        out.append(reply)
        return out

    def close(self) -> None:
        self.cmd("LOGOUT")
        self.sock.close()


def append(node: LoneNode, *messages: bytes, box: str = "INBOX") -> None:
    client = imaplib.IMAP4("127.0.0.1", node.port("imap"))
    client.login("user", "secret")
    for message in messages:
        assert client.append(box, None, None, message)[0] == "OK"
    client.logout()


PLAIN = b"From: a@example.org\r\nSubject: plain\r\n\r\nbody\r\n"


def highestmodseq(lines: list[bytes]) -> list[int]:
    return [int(line.split()[3].rstrip(b"]")) for line in lines if b"[HIGHESTMODSEQ " in line]


def test_first_condstore_command_tells_highestmodseq(node: LoneNode) -> None:
    # RFC 7162 3.1: the first CONDSTORE-enabling command in the selected state
    # is answered with an untagged OK [HIGHESTMODSEQ]; later ones are not.
    append(node, PLAIN, PLAIN)
    wire = Wire(node)
    opened = highestmodseq(wire.cmd("SELECT INBOX"))
    assert wire.cmd("STORE 1 +FLAGS (\\Flagged)")[-1].split()[1] == b"OK"
    first = wire.cmd("FETCH 1 (MODSEQ)")
    told = highestmodseq(first)
    assert len(told) == 1 and told[0] > opened[0], first
    assert first[0].startswith(b"* OK [HIGHESTMODSEQ ")
    assert highestmodseq(wire.cmd("FETCH 2 (MODSEQ)")) == []
    wire.close()
    # The same for SEARCH MODSEQ (RFC 7162 3.1.5) as the first such command.
    other = Wire(node)
    other.cmd("SELECT INBOX")
    assert highestmodseq(other.cmd("SEARCH MODSEQ 1")) == told
    other.close()


def test_search_with_modseq_returns_modseq(node: LoneNode) -> None:
    # RFC 7162 3.1.5 (SEARCH) and 3.1.10 / RFC 4731 3.2 (ESEARCH): a key with
    # MODSEQ makes the answer carry the highest mod-sequence returned.
    append(node, PLAIN, PLAIN, PLAIN)
    wire = Wire(node)
    wire.cmd("SELECT INBOX")
    wire.cmd("STORE 2 +FLAGS (\\Flagged)")
    fetched = wire.cmd("FETCH 1:3 (MODSEQ)")
    modseq = {
        int(line.split()[1]): int(line.split(b"MODSEQ (")[1].split(b")")[0])
        for line in fetched
        if line.startswith(b"* ") and b" FETCH " in line
    }
    top = max(modseq.values())
    assert modseq[2] == top
    assert wire.cmd("SEARCH MODSEQ 1")[0] == b"* SEARCH 1 2 3 (MODSEQ %d)\r\n" % top
    assert wire.cmd("SEARCH RETURN (ALL) MODSEQ 1")[0] == (
        b'* ESEARCH (TAG "t6") ALL 1:3 MODSEQ %d\r\n' % top
    )
    assert wire.cmd("SEARCH RETURN (MIN) MODSEQ 1")[0] == (
        b'* ESEARCH (TAG "t7") MIN 1 MODSEQ %d\r\n' % modseq[1]
    )
    assert wire.cmd(f"SEARCH RETURN (COUNT) MODSEQ {top}")[0] == (
        b'* ESEARCH (TAG "t8") COUNT 1 MODSEQ %d\r\n' % top
    )
    # Without MODSEQ in the key, no MODSEQ item.
    assert wire.cmd("SEARCH RETURN (MIN) ALL")[0] == b'* ESEARCH (TAG "t9") MIN 1\r\n'
    wire.close()


def test_create_with_trailing_separator(node: LoneNode) -> None:
    # RFC 3501 6.3.3: "CREATE name/" creates "name" (the separator says
    # children will follow; the server ignores it).
    wire = Wire(node)
    assert wire.cmd("CREATE parent/")[-1].split()[1] == b"OK"
    assert wire.cmd('LIST "" "parent*"')[:-1] == [b'* LIST (\\HasNoChildren) "/" parent\r\n']
    assert wire.cmd("CREATE parent/child/")[-1].split()[1] == b"OK"
    listed = wire.cmd('LIST "" "parent*"')[:-1]
    assert listed == [
        b'* LIST (\\HasChildren) "/" parent\r\n',
        b'* LIST (\\HasNoChildren) "/" parent/child\r\n',
    ]
    assert wire.cmd("SELECT parent/child")[-1].split()[1] == b"OK"
    # The name exists now: a second CREATE with the separator is refused as such.
    assert wire.cmd("CREATE parent/")[-1].split()[1:3] == [b"NO", b"[ALREADYEXISTS]"]
    wire.close()


def test_name_not_modified_utf7_is_no(node: LoneNode) -> None:
    # A mailbox name that is a valid astring but not modified UTF-7 (RFC 3501
    # 5.1.3) names no mailbox: the command is well formed, so NO, not BAD
    # (RFC 3501 7.1.2, 7.1.3); the connection goes on.
    wire = Wire(node)
    for command in (
        "SELECT &Jjo",
        "SELECT &Jjo!-",
        "EXAMINE &AGE-",
        "CREATE a&AGE-b",
        "STATUS &Jjo (MESSAGES)",
    ):
        assert wire.cmd(command)[-1].split()[1] == b"NO", command
    # A canonical name is fine, and control characters stay a syntax error.
    assert wire.cmd("CREATE &Jjo-")[-1].split()[1] == b"OK"
    assert wire.cmd('SELECT "a\x01b"')[-1].split()[1] == b"BAD"
    assert wire.cmd("SELECT &Jjo-")[-1].split()[1] == b"OK"
    wire.close()


def uidvalidity(wire: Wire, name: str) -> int:
    lines = wire.cmd(f"STATUS {name} (UIDVALIDITY)")
    assert lines[-1].split()[1] == b"OK", lines
    return int(lines[0].split(b"UIDVALIDITY ")[1].split(b")")[0])


def test_uidvalidity_never_repeats_for_a_name(node: LoneNode) -> None:
    # RFC 3501 2.3.1.1: a name deleted and created again, several times within
    # one second, gets a new and larger UIDVALIDITY each time; also when the
    # deleted mailbox held the account's highest one.
    wire = Wire(node)
    seen: list[int] = []
    for _ in range(4):
        assert wire.cmd("CREATE again")[-1].split()[1] == b"OK"
        seen.append(uidvalidity(wire, "again"))
        assert wire.cmd("DELETE again")[-1].split()[1] == b"OK"
    assert seen == sorted(set(seen)), seen
    # The next mailbox, of any name, is still above every one given out.
    assert wire.cmd("CREATE other")[-1].split()[1] == b"OK"
    assert uidvalidity(wire, "other") > seen[-1]
    wire.close()


def test_new_keyword_is_told_in_flags_before_fetch(node: LoneNode) -> None:
    # RFC 3501 7.2.6: the FLAGS a mailbox holds are told before a FETCH shows
    # one, to the session that STOREs a new keyword and to every other session
    # with the mailbox selected, with PERMANENTFLAGS (7.1).
    append(node, PLAIN, PLAIN)
    storer, watcher = Wire(node), Wire(node)
    opened = storer.cmd("SELECT INBOX")
    assert b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n" in opened
    watcher.cmd("SELECT INBOX")
    flags = b"\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1"
    told = [
        b"* FLAGS (" + flags + b")\r\n",
        b"* OK [PERMANENTFLAGS (" + flags + b" \\*)] Limited\r\n",
    ]
    stored = storer.cmd("STORE 2 +FLAGS ($Label1)")
    # (\Recent to the storer, which selected INBOX first: RFC 3501 2.3.2.)
    assert stored[:3] == [*told, b"* 2 FETCH (FLAGS ($Label1 \\Recent))\r\n"], stored
    seen = watcher.cmd("NOOP")
    assert seen[:3] == [*told, b"* 2 FETCH (UID 2 FLAGS ($Label1))\r\n"], seen
    # Told once: a known keyword on another message brings no FLAGS.
    assert storer.cmd("STORE 1 +FLAGS ($Label1)")[0] == (
        b"* 1 FETCH (FLAGS ($Label1 \\Recent))\r\n"
    )
    assert watcher.cmd("NOOP")[0] == b"* 1 FETCH (UID 1 FLAGS ($Label1))\r\n"
    # A later SELECT names the keyword in FLAGS and PERMANENTFLAGS.
    assert set(told) <= set(watcher.cmd("SELECT INBOX"))
    storer.close()
    watcher.close()


def test_new_keyword_from_another_append_is_told(node: LoneNode) -> None:
    # The same for a keyword another session's APPEND brings (RFC 3501 7.2.6).
    watcher = Wire(node)
    watcher.cmd("SELECT INBOX")
    client = imaplib.IMAP4("127.0.0.1", node.port("imap"))
    client.login("user", "secret")
    assert client.append("INBOX", "($Forwarded)", None, PLAIN)[0] == "OK"
    client.logout()
    seen = watcher.cmd("NOOP")
    assert seen[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded)\r\n", (
        seen
    )
    assert seen[1].startswith(b"* OK [PERMANENTFLAGS (")
    fetched = watcher.cmd("FETCH 1 (FLAGS)")
    # The watcher is the first told of it: \Recent (RFC 3501 2.3.2).
    assert fetched[0] == b"* 1 FETCH (FLAGS ($Forwarded \\Recent))\r\n"
    watcher.close()
