"""Shared mailboxes (RFC 4314 rights, the Other Users namespace) on the wire, with
imaplib against real daemons: every right of the table refuses a user without it
and lets one with it; a shared mailbox is served by the partner after a
failover; an account rename keeps the shares given to it."""

from __future__ import annotations

import imaplib
import re
import smtplib
import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.procs import wait_until
from tests.nodes import Node, make_pair, make_single, peerctl, running

for _name in ("MYRIGHTS", "GETACL", "SETACL", "DELETEACL", "GETQUOTAROOT", "GETQUOTA"):
    imaplib.Commands[_name] = ("AUTH", "SELECTED")
imaplib.Commands.setdefault("MOVE", ("SELECTED",))

MESSAGE = b"From: carol@example.test\r\nSubject: shared\r\n\r\nhello\r\n"
OTHER = "Other Users/alice/"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    node = make_single(tmp_path_factory.mktemp("acl"))
    node.start()
    for account in ("alice", "bob"):
        node.add_account(account)
    try:
        yield node
    finally:
        node.stop()


def connect(node: Node, account: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=30)
    client.login(account, "secret")
    return client


def line(client: imaplib.IMAP4, name: str, *args: str) -> tuple[str, str]:
    """The tagged status and text (with its response code) of one command."""
    try:
        typ, data = client._simple_command(name, *args)
    except client.error as exc:
        return "BAD", str(exc)
    finally:
        # A read-only SELECT is what these tests expect; imaplib would raise on it.
        client.untagged_responses.pop("READ-ONLY", None)
    if name in ("SELECT", "EXAMINE") and typ == "OK":
        client.state = "SELECTED"  # imaplib only notes it in its own select()
    text = data[-1] if data and isinstance(data[-1], bytes) else b""
    return typ, text.decode(errors="replace")


def untagged(client: imaplib.IMAP4, name: str, *args: str, answer: str) -> list[bytes]:
    client.untagged_responses.clear()
    typ, _ = line(client, name, *args)
    assert typ == "OK", (name, args)
    return [u for u in client.untagged_responses.get(answer, []) if isinstance(u, bytes)]


def q(name: str) -> str:
    return '"' + name + '"'


def share(owner: imaplib.IMAP4, box: str, rights: str, identifier: str = "bob") -> None:
    assert line(owner, "SETACL", q(box), identifier, rights)[0] == "OK"


def fresh_box(owner: imaplib.IMAP4, box: str, messages: int = 1) -> None:
    assert owner.create(q(box))[0] == "OK"
    for _ in range(messages):
        assert owner.append(q(box), "", None, MESSAGE)[0] == "OK"


# --- one test per right: refused without it, done with it -----------------------------

Action = Callable[[imaplib.IMAP4, str], tuple[str, str]]


def _select_then(cmd: str, *args: str) -> Action:
    def act(bob: imaplib.IMAP4, box: str) -> tuple[str, str]:
        typ, text = line(bob, "SELECT", q(OTHER + box))
        if typ != "OK":
            return typ, text
        return line(bob, cmd, *args)

    return act


def _select(bob: imaplib.IMAP4, box: str) -> tuple[str, str]:
    return line(bob, "SELECT", q(OTHER + box))


def _examine(bob: imaplib.IMAP4, box: str) -> tuple[str, str]:
    return line(bob, "EXAMINE", q(OTHER + box))


def _status(bob: imaplib.IMAP4, box: str) -> tuple[str, str]:
    return line(bob, "STATUS", q(OTHER + box), "(MESSAGES)")


def _append(bob: imaplib.IMAP4, box: str) -> tuple[str, str]:
    try:
        typ, data = bob.append(q(OTHER + box), "", None, MESSAGE)
    except bob.error as exc:
        return "BAD", str(exc)
    return typ, (data[-1] or b"").decode()


def _copy_into(bob: imaplib.IMAP4, box: str) -> tuple[str, str]:
    assert bob.select("INBOX")[0] == "OK"
    return line(bob, "COPY", "1", q(OTHER + box))


def _move_out(bob: imaplib.IMAP4, box: str) -> tuple[str, str]:
    typ, text = line(bob, "SELECT", q(OTHER + box))
    assert typ == "OK", text
    return line(bob, "MOVE", "1", "INBOX")


def _create_under(bob: imaplib.IMAP4, box: str) -> tuple[str, str]:
    return line(bob, "CREATE", q(OTHER + box + "/sub"))


def _delete(bob: imaplib.IMAP4, box: str) -> tuple[str, str]:
    return line(bob, "DELETE", q(OTHER + box))


def _getacl(bob: imaplib.IMAP4, box: str) -> tuple[str, str]:
    return line(bob, "GETACL", q(OTHER + box))


def _setacl(bob: imaplib.IMAP4, box: str) -> tuple[str, str]:
    return line(bob, "SETACL", q(OTHER + box), "anyone", "l")


def _list(bob: imaplib.IMAP4, box: str) -> tuple[str, str]:
    """OK if LIST shows the mailbox, NO otherwise (LIST itself never fails)."""
    typ, data = bob.list('""', q(OTHER + "*"))
    assert typ == "OK"
    listed = any(q(OTHER + box).encode() in d for d in data if isinstance(d, bytes))
    return ("OK", "listed") if listed else ("NO", "not listed")


# (right, rights held besides it, the action, the code a refusal carries)
CASES: list[tuple[str, str, Action, str]] = [
    ("l", "r", _list, ""),
    ("r", "l", _select, "NOPERM"),
    ("r", "l", _examine, "NOPERM"),
    ("r", "l", _status, "NOPERM"),
    ("s", "lr", _select_then("STORE", "1", "+FLAGS", "(\\Seen)"), "NOPERM"),
    ("w", "lr", _select_then("STORE", "1", "+FLAGS", "(\\Flagged)"), "NOPERM"),
    ("t", "lr", _select_then("STORE", "1", "+FLAGS", "(\\Deleted)"), "NOPERM"),
    ("i", "lr", _append, "NOPERM"),
    ("i", "lr", _copy_into, "NOPERM"),
    ("te", "lri", _move_out, "NOPERM"),
    ("e", "lrt", _select_then("EXPUNGE"), "NOPERM"),
    ("k", "lr", _create_under, "NOPERM"),
    ("x", "lr", _delete, "NOPERM"),
    ("a", "lr", _getacl, "NOPERM"),
    ("a", "lr", _setacl, "NOPERM"),
]


@pytest.mark.parametrize(
    ("right", "base", "action", "code"),
    CASES,
    ids=[f"{i}-{right}" for i, (right, _, _, _) in enumerate(CASES)],
)
def test_each_right_refuses_without_it_and_allows_with_it(
    served: Node, right: str, base: str, action: Action, code: str
) -> None:
    box = f"R{CASES.index((right, base, action, code))}"
    alice, bob = connect(served, "alice"), connect(served, "bob")
    try:
        assert bob.append("INBOX", "", None, MESSAGE)[0] == "OK"
        fresh_box(alice, box)
        share(alice, box, base)
        typ, text = action(bob, box)
        assert typ == "NO", (right, text)
        if code:
            assert f"[{code}]" in text
        share(alice, box, "+" + right)
        bob.logout()
        bob = connect(served, "bob")
        typ, text = action(bob, box)
        assert typ == "OK", (right, text)
    finally:
        alice.logout()
        bob.logout()


def test_store_deleted_then_expunge_removes_the_message_from_the_owners_mailbox(
    served: Node,
) -> None:
    alice, bob = connect(served, "alice"), connect(served, "bob")
    try:
        fresh_box(alice, "Team", messages=2)
        share(alice, "Team", "lrte")
        assert bob.select(q(OTHER + "Team"))[0] == "OK"
        assert bob.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert bob.expunge()[0] == "OK"
        # The owner sees the change: it was written to its account.
        typ, data = alice.status("Team", "(MESSAGES)")
        assert typ == "OK" and b"MESSAGES 1" in data[0]
        records = served.records("alice", "Team")
        assert len(records) == 1
    finally:
        alice.logout()
        bob.logout()


def test_without_lookup_or_read_a_shared_mailbox_does_not_seem_to_exist(served: Node) -> None:
    alice, bob = connect(served, "alice"), connect(served, "bob")
    try:
        fresh_box(alice, "Hidden")
        share(alice, "Hidden", "i")
        typ, text = line(bob, "SELECT", q(OTHER + "Hidden"))
        assert typ == "NO" and "[NONEXISTENT]" in text
        typ, text = line(bob, "GETACL", q(OTHER + "Hidden"))
        assert typ == "NO" and "[NONEXISTENT]" in text
        # A mailbox nobody shared looks just the same.
        typ, text = line(bob, "SELECT", q(OTHER + "NoSuchBox"))
        assert typ == "NO" and "[NONEXISTENT]" in text
        # And what bob may not list is not listed.
        typ, data = bob.list('""', q(OTHER + "*"))
        assert not any(b"Hidden" in d for d in data if isinstance(d, bytes))
    finally:
        alice.logout()
        bob.logout()


def test_namespace_list_and_myrights_show_the_other_users_namespace(served: Node) -> None:
    alice, bob = connect(served, "alice"), connect(served, "bob")
    try:
        fresh_box(alice, "Projects/Plan")
        share(alice, "Projects/Plan", "lr")
        typ, data = bob.namespace()
        assert typ == "OK" and data[0] == b'(("" "/")) (("Other Users/" "/")) NIL'
        typ, data = bob.list('""', q("Other Users/%"))
        assert typ == "OK"
        assert b'(\\Noselect \\HasChildren) "/" "Other Users/alice"' in data
        typ, data = bob.list('""', q(OTHER + "Projects/*"))
        assert b'(\\HasNoChildren) "/" "Other Users/alice/Projects/Plan"' in data
        rights = untagged(bob, "MYRIGHTS", q(OTHER + "Projects/Plan"), answer="MYRIGHTS")
        assert rights == [b'"Other Users/alice/Projects/Plan" lr']
        # The owner keeps every right, and sees bob's in the ACL.
        acl = untagged(alice, "GETACL", "Projects/Plan", answer="ACL")
        assert acl == [b"Projects/Plan alice lrswipkxteacd bob lr"]
        # A user cannot make a mailbox of its own inside the namespace.
        assert line(bob, "CREATE", q("Other Users"))[0] == "NO"
        assert line(bob, "CREATE", q("Other Users/bob2/x"))[0] == "NO"
    finally:
        alice.logout()
        bob.logout()


def test_fetch_without_s_does_not_set_seen(served: Node) -> None:
    alice, bob = connect(served, "alice"), connect(served, "bob")
    try:
        fresh_box(alice, "Unread")
        share(alice, "Unread", "lrw")
        assert bob.select(q(OTHER + "Unread"))[0] == "OK"
        assert bob.fetch("1", "(BODY[])")[0] == "OK"
        flags = served.records("alice", "Unread")[0]["flags"]
        assert "\\Seen" not in flags
        share(alice, "Unread", "+s")
        assert bob.select(q(OTHER + "Unread"))[0] == "OK"
        assert bob.fetch("1", "(BODY[])")[0] == "OK"
        assert "\\Seen" in served.records("alice", "Unread")[0]["flags"]
    finally:
        alice.logout()
        bob.logout()


def test_append_into_a_shared_mailbox_is_the_owners_message(served: Node) -> None:
    alice, bob = connect(served, "alice"), connect(served, "bob")
    try:
        fresh_box(alice, "Drop", messages=0)
        share(alice, "Drop", "lri")
        assert bob.append(q(OTHER + "Drop"), "(\\Flagged \\Seen)", None, MESSAGE)[0] == "OK"
        records = served.records("alice", "Drop")
        assert len(records) == 1
        # Without "s" and "w" the flags are left out, without an error (RFC 4314 4).
        assert "\\Flagged" not in records[0]["flags"] and "\\Seen" not in records[0]["flags"]
    finally:
        alice.logout()
        bob.logout()


def test_an_idle_reader_of_a_shared_mailbox_hears_the_owners_new_mail(served: Node) -> None:
    """The owner's change reaches a session of another account that has the
    mailbox selected (not only the owner's own sessions), in IDLE and after."""
    alice = connect(served, "alice")
    fresh_box(alice, "Watched", messages=1)
    share(alice, "Watched", "lr")
    sock = socket.create_connection(("127.0.0.1", served.ports["imap"]), timeout=30)
    try:
        sock.sendall(
            b'a LOGIN bob secret\r\nb SELECT "' + OTHER.encode() + b'Watched"\r\nc IDLE\r\n'
        )
        seen = b""
        while b"\r\n+ " not in seen:
            chunk = sock.recv(4096)
            assert chunk, seen
            seen += chunk
        assert b"* 1 EXISTS" in seen
        assert alice.append(q("Watched"), "", None, MESSAGE)[0] == "OK"
        seen = b""
        while b"* 2 EXISTS" not in seen:
            chunk = sock.recv(4096)
            assert chunk, seen
            seen += chunk
        sock.sendall(b"DONE\r\nd UNSELECT\r\n")
        while b"d OK" not in seen:
            chunk = sock.recv(4096)
            assert chunk, seen
            seen += chunk
    finally:
        sock.close()
        alice.logout()


def test_a_rename_keeps_the_shares_given_to_the_account(served: Node) -> None:
    served.add_account("carol")
    alice = connect(served, "alice")
    try:
        fresh_box(alice, "ForCarol")
        share(alice, "ForCarol", "lr", identifier="carol")
    finally:
        alice.logout()
    served.call("POST", "/v1/accounts/carol/rename", {"new_name": "caroline"})
    caroline = connect(served, "caroline")
    alice = connect(served, "alice")
    try:
        assert caroline.select(q(OTHER + "ForCarol"), readonly=True)[0] == "OK"
        acl = untagged(alice, "GETACL", "ForCarol", answer="ACL")
        assert acl == [b"ForCarol alice lrswipkxteacd caroline lr"]
    finally:
        caroline.logout()
        alice.logout()


# --- QUOTA MESSAGE (RFC 9208 5.2) ------------------------------------------------------


def lmtp_to(node: Node, account: str) -> tuple[int, str]:
    """One delivery: its reply code and text (the refusal's, or 250)."""
    with node.lmtp() as client:
        client.ehlo("test")
        try:
            client.sendmail("sender@example.test", [account], MESSAGE)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            return code, text.decode()
        except smtplib.SMTPDataError as exc:
            error = exc.smtp_error
            return exc.smtp_code, error.decode() if isinstance(error, bytes) else error
    return 250, "delivered"


def test_quota_message_limit_is_shown_and_enforced(served: Node) -> None:
    served.add_account("mona")
    # peerctl sets the message limit beside the storage limit.
    done = peerctl(served, "account", "quota", "mona", "10M", "--messages", "2")
    assert done.returncode == 0, done.stderr
    assert "at most 2 messages" in done.stdout
    mona = connect(served, "mona")
    try:
        assert "QUOTA=RES-MESSAGE" in mona.capabilities
        assert mona.append("INBOX", "", None, MESSAGE)[0] == "OK"
        quota = untagged(mona, "GETQUOTAROOT", "INBOX", answer="QUOTA")
        assert quota == [b'"" (STORAGE 1 10240 MESSAGE 1 2)']
        assert lmtp_to(served, "mona")[0] == 250
        # Two messages: the limit. APPEND, COPY and LMTP are refused.
        typ, text = line(mona, "APPEND", "INBOX", f"{{{len(MESSAGE)}+}}\r\n{MESSAGE.decode()}")
        assert typ == "NO" and "[OVERQUOTA]" in text, text
        assert mona.select("INBOX")[0] == "OK"
        typ, text = line(mona, "COPY", "1", "INBOX")
        assert typ == "NO" and "[OVERQUOTA]" in text, text
        code, text = lmtp_to(served, "mona")
        assert code == 452 and text.startswith("4.2.2"), (code, text)
        assert untagged(mona, "GETQUOTA", '""', answer="QUOTA") == [
            b'"" (STORAGE 1 10240 MESSAGE 2 2)'
        ]
        # One expunged: room for one more.
        assert mona.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert mona.expunge()[0] == "OK"
        assert lmtp_to(served, "mona")[0] == 250
        # SETQUOTA stays an administrator's: NO [NOPERM].
        typ, text = line(mona, "SETQUOTA", '""', "(MESSAGE 100)")
        assert typ == "NO" and "[NOPERM]" in text
    finally:
        mona.logout()
    # The API leaves the message limit alone when a request does not name it.
    answer = served.call("PUT", "/v1/accounts/mona/quota", {"quota_limit": "20M"})
    assert answer["message_limit"] == 2
    answer = served.call("PUT", "/v1/accounts/mona/quota", {"message_limit": None})
    assert answer["message_limit"] is None


# --- two nodes: which node serves a shared mailbox -------------------------------------


def beta_acl(node: Node, box: str) -> str:
    with sqlite3.connect(f"file:{node.db_path}?mode=ro", uri=True) as db:
        rows = [r[0] for r in db.execute("SELECT acl FROM mailboxes WHERE name = ?", (box,))]
    return "".join(rows)


def message_limit(node: Node, account: str) -> object:
    with sqlite3.connect(f"file:{node.db_path}?mode=ro", uri=True) as db:
        rows = list(db.execute("SELECT message_limit FROM accounts WHERE name = ?", (account,)))
    return rows[0][0] if rows else "missing"


def test_a_shared_mailbox_is_served_by_the_owner_of_its_account(tmp_path: Path) -> None:
    alpha, beta = make_pair(tmp_path)
    with running(alpha, beta):
        for account in ("alice", "bob", "carol"):
            alpha.add_account(account)
        beta.add_account("dave")  # owned by beta
        alice = connect(alpha, "alice")
        try:
            fresh_box(alice, "Team")
            for who in ("bob", "carol", "dave"):
                share(alice, "Team", "lri", identifier=who)
        finally:
            alice.logout()
        # A message limit replicates like the storage limit.
        alpha.call("PUT", "/v1/accounts/alice/quota", {"quota_limit": None, "message_limit": 50})
        # carol is renamed; the share follows her name, on both nodes.
        alpha.call("POST", "/v1/accounts/carol/rename", {"new_name": "carla"})
        wait_until(
            lambda: (
                '"carla": "lri"' in beta_acl(beta, "Team")
                and '"carol"' not in beta_acl(beta, "Team")
            ),
            30,
            "the renamed share on beta",
        )
        wait_until(lambda: message_limit(beta, "alice") == 50, 30, "the message limit on beta")
        # dave's account is beta's, alice's is alpha's: beta does not serve
        # alice's mailbox, and says who does.
        dave = connect(beta, "dave")
        try:
            typ, text = line(dave, "SELECT", q(OTHER + "Team"))
            assert typ == "NO" and "[UNAVAILABLE]" in text and "alpha" in text
            typ, data = dave.list('""', q("Other Users/*"))
            assert typ == "OK" and data == [None]
        finally:
            dave.logout()
        alpha.replicate("alice")
        alpha.replicate("carla")
        alpha.kill9()
        beta.call("POST", "/v1/failover", {})
        # beta owns alice, bob and carla now: it serves the shared mailbox.
        for who in ("bob", "carla"):
            client = connect(beta, who)
            try:
                typ, data = client.list('""', q("Other Users/*"))
                listed = b" ".join(d for d in data if isinstance(d, bytes))
                assert b'"Other Users/alice/Team"' in listed, data
                assert client.select(q(OTHER + "Team"), readonly=True)[0] == "OK"
                typ, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                first = data[0]
                assert typ == "OK" and isinstance(first, tuple) and b"Subject: shared" in first[1]
                assert client.append(q(OTHER + "Team"), "", None, MESSAGE)[0] == "OK"
            finally:
                client.logout()
        # The appends were alice's writes on beta.
        assert len(beta.records("alice", "Team")) == 3
        assert re.search(r'"dave": "lri"', beta_acl(beta, "Team"))


def test_list_status_counts_own_and_readable_shared_mailboxes(served: Node) -> None:
    """LIST ... RETURN (STATUS ...) (RFC 5819), read a batch at a time per
    owner: a STATUS for each listed mailbox the user may read (own ones, and
    shared ones with ``r``), with the counts STATUS gives alone; none for a
    shared mailbox with ``l`` only."""
    alice, bob = connect(served, "alice"), connect(served, "bob")
    try:
        fresh_box(alice, "ls-read", messages=2)
        fresh_box(alice, "ls-look", messages=1)
        share(alice, "ls-read", "lr")
        share(alice, "ls-look", "l")
        fresh_box(bob, "ls-own", messages=3)
        answers = untagged(
            bob,
            "LIST",
            '""',
            '"*"',
            "RETURN",
            "(STATUS (MESSAGES UNSEEN))",
            answer="STATUS",
        )
        by_name = {a.rsplit(b" (", 1)[0]: a.rsplit(b" (", 1)[1] for a in answers}
        assert by_name[b"ls-own"] == b"MESSAGES 3 UNSEEN 3)"
        assert by_name[q(OTHER + "ls-read").encode()] == b"MESSAGES 2 UNSEEN 2)"
        assert q(OTHER + "ls-look").encode() not in by_name
        for name, counts in by_name.items():  # the same counts as STATUS alone
            alone = untagged(bob, "STATUS", name.decode(), "(MESSAGES UNSEEN)", answer="STATUS")
            assert alone == [name + b" (" + counts]
    finally:
        for client in (alice, bob):
            client.logout()
