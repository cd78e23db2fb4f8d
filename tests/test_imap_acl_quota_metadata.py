"""ACL (RFC 4314), QUOTA (RFC 9208) and METADATA (RFC 5464) on the wire, with imaplib
against real daemons; the last test shows ACLs and METADATA replicated to the
partner and served by it after a failover."""

from __future__ import annotations

import imaplib
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.harness.procs import wait_until
from tests.nodes import Node, make_pair, running

QUOTA = 100_000

# imaplib knows some of these commands only in some states, others not at all.
for _name in ("GETMETADATA", "SETMETADATA", "LISTRIGHTS", "MYRIGHTS", "GETACL", "SETACL"):
    imaplib.Commands[_name] = ("AUTH", "SELECTED")
for _name in ("DELETEACL", "GETQUOTA", "GETQUOTAROOT", "SETQUOTA"):
    imaplib.Commands[_name] = ("AUTH", "SELECTED")


# The module's node (``shared_node``, tests/conftest.py) starts with this config.
pytestmark = pytest.mark.node(overrides={"imap": {"login_failure_delay": "100ms"}})


@pytest.fixture
def served(shared_node: Node) -> Node:
    """The module's node with two fresh accounts, alice (a quota) and free
    (earlier tests' accounts deleted)."""
    shared_node.add_account("alice", quota_limit=QUOTA)
    shared_node.add_account("free")
    return shared_node


def connect(node: Node, account: str = "alice") -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=30)
    client.login(account, "secret")
    return client


def run(client: imaplib.IMAP4, name: str, *args: str) -> tuple[str, bytes, list[Any]]:
    """One command: its tagged status, the tagged line's text, and the
    untagged responses named like the command's answer."""
    answer = {"GETACL": "ACL", "GETQUOTAROOT": "QUOTAROOT", "GETQUOTA": "QUOTA"}
    answer |= {"GETMETADATA": "METADATA", "LISTRIGHTS": "LISTRIGHTS", "MYRIGHTS": "MYRIGHTS"}
    client.untagged_responses.clear()
    try:
        typ, data = client.xatom(name, *args)
    except client.error as exc:  # BAD
        return "BAD", str(exc).encode(), []
    untagged = client.untagged_responses.get(answer.get(name, name), [])
    # imaplib files the tagged line's [METADATA LONGENTRIES n] under METADATA too.
    untagged = [u for u in untagged if not (isinstance(u, bytes) and u.startswith(b"LONG"))]
    return typ, data[0] if data and isinstance(data[0], bytes) else b"", list(untagged)


def status_line(client: imaplib.IMAP4, name: str, *args: str) -> tuple[str, bytes]:
    """The tagged status and the whole tagged text (response code included)."""
    typ, text, _ = run(client, name, *args)
    return typ, text


def message(size: int) -> bytes:
    head = b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: q\r\n\r\n"
    return head + b"x" * (size - len(head) - 2) + b"\r\n"


# --- capabilities ---------------------------------------------------------------------------


def test_acl_quota_and_metadata_are_advertised(served: Node) -> None:
    c = connect(served)
    try:
        caps = set(c.capabilities)
        assert {"ACL", "RIGHTS=TEXK", "QUOTA", "QUOTA=RES-STORAGE", "METADATA"} <= caps
        # Users may not set quotas: no QUOTASET (RFC 9208 3.1).
        assert "QUOTASET" not in caps
    finally:
        c.logout()


# --- ACL ------------------------------------------------------------------------------------


def test_myrights_getacl_and_listrights_show_the_owner_with_every_right(served: Node) -> None:
    c = connect(served)
    try:
        typ, _, mine = run(c, "MYRIGHTS", "INBOX")
        assert typ == "OK" and mine == [b"INBOX lrswipkxteacd"]
        typ, _, acl = run(c, "GETACL", "INBOX")
        assert typ == "OK" and acl == [b"INBOX alice lrswipkxteacd"]
        typ, _, rights = run(c, "LISTRIGHTS", "INBOX", "alice")
        assert typ == "OK" and rights == [b"INBOX alice lrswipkxteacd"]
        typ, _, rights = run(c, "LISTRIGHTS", "INBOX", "bob")
        assert typ == "OK" and rights == [b'INBOX bob "" l r s w i p k x t e a c d']
        # Also when a mailbox is selected (RFC 4314 3).
        c.select("INBOX")
        assert run(c, "MYRIGHTS", "INBOX")[0] == "OK"
        for command in ("MYRIGHTS", "GETACL"):
            typ, text = status_line(c, command, "Nowhere")
            assert typ == "NO" and b"[NONEXISTENT]" in text
        typ, text = status_line(c, "LISTRIGHTS", "Nowhere", "bob")
        assert typ == "NO" and b"[NONEXISTENT]" in text
    finally:
        c.logout()


def test_setacl_and_deleteacl_change_the_stored_acl(served: Node) -> None:
    c = connect(served)
    try:
        assert c.create("Team")[0] == "OK"
        assert status_line(c, "SETACL", "Team", "bob", "lr")[0] == "OK"
        assert run(c, "GETACL", "Team")[2] == [b"Team alice lrswipkxteacd bob lr"]
        assert status_line(c, "SETACL", "Team", "bob", "+wc")[0] == "OK"
        # c is the obsolete RFC 2086 right: k and x (RFC 4314 2.1.1).
        assert run(c, "GETACL", "Team")[2] == [b"Team alice lrswipkxteacd bob lrwkxc"]
        assert status_line(c, "SETACL", "Team", "bob", "-rk")[0] == "OK"
        assert run(c, "GETACL", "Team")[2] == [b"Team alice lrswipkxteacd bob lwx"]
        assert status_line(c, "SETACL", "Team", "anyone", "l")[0] == "OK"
        assert status_line(c, "DELETEACL", "Team", "bob")[0] == "OK"
        assert run(c, "GETACL", "Team")[2] == [b"Team alice lrswipkxteacd anyone l"]
        # Taking every right away removes the identifier (RFC 4314 3.1).
        assert status_line(c, "SETACL", "Team", "anyone", "-l")[0] == "OK"
        assert run(c, "GETACL", "Team")[2] == [b"Team alice lrswipkxteacd"]
        # The owner always holds every right.
        for args in (("SETACL", "Team", "alice", "lr"), ("DELETEACL", "Team", "alice")):
            typ, text = status_line(c, *args)
            assert typ == "NO" and b"[CANNOT]" in text
        assert run(c, "MYRIGHTS", "Team")[2] == [b"Team lrswipkxteacd"]
        # An unknown right is BAD (RFC 4314 3.1); a missing mailbox NO.
        assert status_line(c, "SETACL", "Team", "bob", "lz")[0] == "BAD"
        typ, text = status_line(c, "SETACL", "Nowhere", "bob", "lr")
        assert typ == "NO" and b"[NONEXISTENT]" in text
        # At most 100 identifiers: the same limit the sync channel keeps.
        for n in range(99):
            assert status_line(c, "SETACL", "Team", f"user{n}", "lr")[0] == "OK"
        typ, text = status_line(c, "SETACL", "Team", "one-too-many", "lr")
        assert typ == "NO" and b"[LIMIT]" in text
        assert len(run(c, "GETACL", "Team")[2][0].split()) == 1 + 2 * 100
        # A rename keeps the ACL (it belongs to the mailbox).
        assert c.rename("Team", "Crew")[0] == "OK"
        assert b" user7 lr" in run(c, "GETACL", "Crew")[2][0]
    finally:
        c.logout()


# --- QUOTA ----------------------------------------------------------------------------------


def test_getquotaroot_and_getquota_report_the_accounts_storage(served: Node) -> None:
    c = connect(served)
    try:
        typ, _, roots = run(c, "GETQUOTAROOT", "INBOX")
        assert typ == "OK" and roots == [b'INBOX ""']
        assert c.untagged_responses.get("QUOTA") == [b'"" (STORAGE 0 97)']
        assert c.append("INBOX", None, None, message(3000))[0] == "OK"
        typ, _, quota = run(c, "GETQUOTA", '""')
        assert typ == "OK" and quota == [b'"" (STORAGE 3 97)']
        typ, text = status_line(c, "GETQUOTA", "elsewhere")
        assert typ == "NO" and b"[NONEXISTENT]" in text
        typ, text = status_line(c, "GETQUOTAROOT", "Nowhere")
        assert typ == "NO" and b"[NONEXISTENT]" in text
        # Only an administrator sets quotas (RFC 9208 4.1.3).
        typ, text = status_line(c, "SETQUOTA", '""', "(STORAGE 1000)")
        assert typ == "NO" and b"[NOPERM]" in text
        assert status_line(c, "SETQUOTA", '""', "(STORAGE)")[0] == "BAD"
    finally:
        c.logout()
    # No limit, no quota root.
    free = connect(served, "free")
    try:
        assert run(free, "GETQUOTAROOT", "INBOX")[2] == [b"INBOX"]
        assert "QUOTA" not in free.untagged_responses
        typ, text = status_line(free, "GETQUOTA", '""')
        assert typ == "NO" and b"[NONEXISTENT]" in text
    finally:
        free.logout()


def test_append_and_copy_over_quota_say_overquota(served: Node) -> None:
    c = connect(served)
    try:
        assert c.append("INBOX", None, None, message(60_000))[0] == "OK"
        typ, data = c.append("INBOX", None, None, message(50_000))
        assert typ == "NO" and b"[OVERQUOTA]" in data[0]
        assert c.create("Copies")[0] == "OK"
        c.select("INBOX")
        typ, data = c.copy("1", "Copies")
        assert typ == "NO" and b"[OVERQUOTA]" in data[0]
        assert c.select("Copies")[1] == [b"0"]
    finally:
        c.logout()


# --- METADATA -------------------------------------------------------------------------------


def test_setmetadata_and_getmetadata_on_mailboxes_and_the_server(served: Node) -> None:
    c = connect(served)
    try:
        ok = status_line(
            c, "SETMETADATA", "INBOX", '(/private/comment "mine" /Shared/Comment "ours")'
        )
        assert ok[0] == "OK"
        typ, _, values = run(c, "GETMETADATA", "INBOX", "/private/comment")
        assert typ == "OK" and values == [b'INBOX (/private/comment "mine")']
        # Entry names are case-insensitive; an entry without a value is NIL.
        _, _, values = run(c, "GETMETADATA", "INBOX", "(/SHARED/comment /private/none)")
        assert values == [b'INBOX (/shared/comment "ours" /private/none NIL)']
        # The server's entries: mailbox "" (RFC 5464 3.1).
        assert status_line(c, "SETMETADATA", '""', '(/shared/vendor/x/a "1")')[0] == "OK"
        _, _, values = run(c, "GETMETADATA", '""', "/shared/vendor/x/a")
        assert values == [b'"" (/shared/vendor/x/a "1")']
        assert run(c, "GETMETADATA", "INBOX", "/shared/vendor/x/a")[2] == [
            b"INBOX (/shared/vendor/x/a NIL)"
        ]
        # NIL removes.
        assert status_line(c, "SETMETADATA", "INBOX", "(/private/comment NIL)")[0] == "OK"
        assert run(c, "GETMETADATA", "INBOX", "/private/comment")[2] == [
            b"INBOX (/private/comment NIL)"
        ]
        # Works in the selected state too; a missing mailbox is NO.
        c.select("INBOX")
        assert run(c, "GETMETADATA", "INBOX", "/shared/comment")[0] == "OK"
        for args in (
            ("GETMETADATA", "Nowhere", "/shared/comment"),
            ("SETMETADATA", "Nowhere", '(/shared/comment "x")'),
        ):
            typ, text = status_line(c, *args)
            assert typ == "NO" and b"[NONEXISTENT]" in text
    finally:
        c.logout()


def test_getmetadata_depth_and_maxsize(served: Node) -> None:
    c = connect(served)
    try:
        values = '(/private/v/a "1" /private/v/a/b "22" /private/v/a/b/c "333" /private/v/d "4444")'
        assert status_line(c, "SETMETADATA", "INBOX", values)[0] == "OK"
        _, _, got = run(c, "GETMETADATA", "(DEPTH 1)", "INBOX", "/private/v")
        assert got == [b'INBOX (/private/v NIL /private/v/a "1" /private/v/d "4444")']
        _, _, got = run(c, "GETMETADATA", "(DEPTH infinity)", "INBOX", "/private/v/a")
        assert got == [b'INBOX (/private/v/a "1" /private/v/a/b "22" /private/v/a/b/c "333")']
        # MAXSIZE leaves out longer values and says how long the longest was.
        typ, text, got = run(c, "GETMETADATA", "(MAXSIZE 2 DEPTH infinity)", "INBOX", "/private/v")
        assert typ == "OK" and b"[METADATA LONGENTRIES 4]" in text
        assert got == [b'INBOX (/private/v NIL /private/v/a "1" /private/v/a/b "22")']
        # Options after the mailbox, as some clients send them.
        _, _, got = run(c, "GETMETADATA", "INBOX", "(DEPTH 1)", "/private/v/a")
        assert got == [b'INBOX (/private/v/a "1" /private/v/a/b "22")']
    finally:
        c.logout()


@pytest.mark.parametrize(
    "args",
    [
        ("SETMETADATA", "INBOX", '(/comment "x")'),  # neither /private nor /shared
        ("SETMETADATA", "INBOX", '(/private "x")'),  # the prefix alone holds no value
        ("SETMETADATA", "INBOX", '(/private/a* "x")'),
        ("SETMETADATA", "INBOX", '(/private//a "x")'),
        ("SETMETADATA", "INBOX", '(/private/a/ "x")'),
        ("SETMETADATA", "INBOX", "(/private/a)"),
        ("GETMETADATA", "INBOX", "/private/%"),
        ("GETMETADATA", "(DEPTH 2)", "INBOX", "/private/a"),
        ("GETMETADATA", "(MAXSIZE x)", "INBOX", "/private/a"),
    ],
)
def test_bad_metadata_commands_are_bad(served: Node, args: tuple[str, ...]) -> None:
    c = connect(served)
    try:
        assert status_line(c, *args)[0] == "BAD"
    finally:
        c.logout()


def raw_command(node: Node, line: bytes) -> bytes:
    """Log in and send one raw command line; the tagged answer."""
    with socket.create_connection(("127.0.0.1", node.ports["imap"]), timeout=30) as sock:
        stream = sock.makefile("rb")
        stream.readline()
        sock.sendall(b"l LOGIN alice secret\r\n" + line)
        answer = b""
        while not answer.startswith(b"t "):
            answer = stream.readline()
        return answer


def test_setmetadata_refuses_values_and_entries_past_the_limits(served: Node) -> None:
    big = b"v" * 65537
    answer = raw_command(
        served, b"t SETMETADATA INBOX (/private/big {%d+}\r\n%b)\r\n" % (len(big), big)
    )
    assert answer.startswith(b"t NO [METADATA MAXSIZE 65536]")
    # 65536 octets is allowed.
    answer = raw_command(
        served, b"t SETMETADATA INBOX (/private/big {65536+}\r\n%b)\r\n" % big[:65536]
    )
    assert answer.startswith(b"t OK")
    c = connect(served)
    try:
        many = " ".join(f'/private/n/{n} "v"' for n in range(999))
        assert status_line(c, "SETMETADATA", "INBOX", f"({many})")[0] == "OK"
        typ, text = status_line(c, "SETMETADATA", '""', '(/private/one "1" /private/two "2")')
        assert typ == "NO" and b"[METADATA TOOMANY]" in text
        # All or nothing: neither was set.
        assert run(c, "GETMETADATA", '""', "/private/one")[2] == [b'"" (/private/one NIL)']
        # Replacing a value does not add an entry.
        assert status_line(c, "SETMETADATA", "INBOX", '(/private/n/1 "w")')[0] == "OK"
    finally:
        c.logout()


def test_rename_keeps_and_delete_drops_a_mailboxs_metadata(served: Node) -> None:
    c = connect(served)
    try:
        assert c.create("Notes")[0] == "OK"
        assert status_line(c, "SETMETADATA", "Notes", '(/private/comment "n")')[0] == "OK"
        assert c.rename("Notes", "Memo")[0] == "OK"
        assert run(c, "GETMETADATA", "Memo", "/private/comment")[2] == [
            b'Memo (/private/comment "n")'
        ]
        assert c.delete("Memo")[0] == "OK"
        assert c.create("Memo")[0] == "OK"
        assert run(c, "GETMETADATA", "Memo", "/private/comment")[2] == [
            b"Memo (/private/comment NIL)"
        ]
    finally:
        c.logout()


# --- replication and failover ---------------------------------------------------------------


def beta_rows(node: Node) -> tuple[list[tuple[str, bytes]], list[str]]:
    with sqlite3.connect(f"file:{node.db_path}?mode=ro", uri=True) as db:
        notes = list(db.execute("SELECT entry, value FROM annotations ORDER BY entry"))
        acls = [row[0] for row in db.execute("SELECT acl FROM mailboxes WHERE name = 'Team'")]
    return notes, acls


def test_acl_and_metadata_replicate_and_are_served_after_failover(tmp_path: Path) -> None:
    alpha, beta = make_pair(tmp_path)
    with running(alpha, beta):
        alpha.add_account("alice")
        c = connect(alpha)
        try:
            assert c.create("Team")[0] == "OK"
            assert status_line(c, "SETACL", "Team", "bob", "lrs")[0] == "OK"
            assert status_line(c, "SETMETADATA", "Team", '(/shared/comment "team box")')[0] == "OK"
            assert status_line(c, "SETMETADATA", '""', '(/private/vendor/x "y")')[0] == "OK"
        finally:
            c.logout()
        # The rolling replicator brings both over.
        wait_until(
            lambda: (
                beta_rows(beta)[0]
                == [("/private/vendor/x", b"y"), ("/shared/comment", b"team box")]
                and '"bob": "lrs"' in "".join(beta_rows(beta)[1])
            ),
            20,
            "the ACL and the METADATA on beta",
        )
        alpha.replicate("alice")
        alpha.kill9()
        beta.call("POST", "/v1/failover", {})
        c = connect(beta)
        try:
            assert run(c, "GETACL", "Team")[2] == [b"Team alice lrswipkxteacd bob lrs"]
            assert run(c, "GETMETADATA", "Team", "/shared/comment")[2] == [
                b'Team (/shared/comment "team box")'
            ]
            assert run(c, "GETMETADATA", '""', "/private/vendor/x")[2] == [
                b'"" (/private/vendor/x "y")'
            ]
            # beta owns the account now: changes are accepted there.
            assert status_line(c, "SETACL", "Team", "bob", "-s")[0] == "OK"
            assert run(c, "GETACL", "Team")[2] == [b"Team alice lrswipkxteacd bob lr"]
        finally:
            c.logout()
