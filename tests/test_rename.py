"""Account rename (issue 11 item 2) with two real daemons: ``peerctl account
rename`` on the owner renames the account in one transaction, the partner
renames its replica (it is not deleted and copied: mailboxes keep their
uniqueids and UIDVALIDITY), Sieve scripts and vacation records follow, the old
name is refused everywhere (LMTP 550, login, routing), a rename made while
the partner is down converges when it returns without bringing the old name
back, one asked of the replica is done by the owner, and after a failover
the survivor serves the account under its new name."""

from __future__ import annotations

import imaplib
import json
import smtplib
import sqlite3
import time
import urllib.error
from pathlib import Path
from typing import Any

from tests.nodes import Node, make_pair, peerctl, running
from tests.procs import wait_until
from tests.test_sieve_service import (
    SCRIPT,
    Relay,
    create_folder,
    lmtp,
    module_relay,
    relay,
    sieve_overrides,
    unverified,
    upload,
)

__all__ = ["module_relay", "relay"]  # the fixtures, used by name


def rcpt(node: Node, address: str) -> int:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30) as client:
        client.ehlo()
        assert client.mail("s@example.test")[0] == 250
        code, _ = client.rcpt(address)
        return code


def deliver(node: Node, address: str, subject: str) -> None:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30) as client:
        client.ehlo()
        client.mail("s@example.test")
        assert client.rcpt(address)[0] == 250
        client.data(f"Subject: {subject}\r\nMessage-ID: <{subject}@t>\r\n\r\nbody\r\n".encode())


def login(node: Node, user: str, tls: bool = False) -> int:
    """How many messages INBOX shows to ``user``; -1 when the login is refused."""
    with imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=20) as client:
        if tls:
            client.starttls(ssl_context=unverified())
        try:
            client.login(user, "secret")
        except imaplib.IMAP4.error:
            return -1
        status, data = client.select("INBOX")
        assert status == "OK"
        return int(data[0] or 0)


def status_of(call: Any) -> int:
    try:
        call()
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    return 200


def mailboxes(node: Node, account: str) -> dict[str, tuple[str, int, int]]:
    """name -> (uniqueid, uidvalidity, exists); {} while the account is not there."""
    try:
        found = node.call("GET", f"/v1/accounts/{account}/mailboxes")["mailboxes"]
    except urllib.error.HTTPError as exc:
        exc.close()
        return {}
    return {m["name"]: (m["uniqueid"], m["uidvalidity"], m["exists"]) for m in found}


def acl_names(node: Node, account: str) -> set[str]:
    """Every identifier in the account's mailboxes' ACLs."""
    out: set[str] = set()
    for m in node.call("GET", f"/v1/accounts/{account}/mailboxes")["mailboxes"]:
        acl = json.loads(m["acl"]) if isinstance(m["acl"], str) else m["acl"]
        out.update(acl)
    return out


def scripts(node: Node, account: str) -> list[tuple[str, int]]:
    with sqlite3.connect(f"file:{node.db_path}?mode=ro", uri=True) as db:
        return list(
            db.execute(
                "SELECT s.name, s.active FROM sieve_scripts s JOIN accounts a"
                " ON a.id = s.account_id WHERE a.name = ?",
                (account,),
            )
        )


def vacations(node: Node, account: str) -> int:
    row = node.db_row(
        "SELECT count(*) FROM vacation_sent v JOIN accounts a ON a.id = v.account_id"
        " WHERE a.name = ?",
        account,
    )
    return int(row[0]) if row else 0


def renames_pending(node: Node) -> list[tuple[str, str]]:
    with sqlite3.connect(f"file:{node.db_path}?mode=ro", uri=True) as db:
        return list(db.execute("SELECT old, new FROM account_renames"))


def test_rename_replicates_and_survives_a_failover(tmp_path: Path, relay: Relay) -> None:
    alpha, beta = make_pair(
        tmp_path,
        {"alpha": sieve_overrides(tmp_path, relay), "beta": sieve_overrides(tmp_path, relay)},
    )
    with running(alpha, beta):
        alpha.add_account("alice")
        create_folder(alpha, "Projects")
        upload(alpha, SCRIPT)
        assert lmtp(alpha, "holiday plans", n=1) == {}
        assert lmtp(alpha, "project one") == {}
        wait_until(lambda: relay.to("carol@remote.test"), 10, "the vacation reply")
        alpha.replicate("alice")
        before = mailboxes(alpha, "alice")
        assert set(before) == {"INBOX", "Projects"}
        wait_until(lambda: mailboxes(beta, "alice") == before, 20, "alice on beta")
        assert vacations(beta, "alice") == 1

        out = peerctl(alpha, "account", "rename", "alice", "alice.smith").stdout
        assert "renamed alice to alice.smith (owner alpha)" in out

        # The owner: one name, the same mailboxes, the old name refused.
        assert mailboxes(alpha, "alice.smith") == before
        assert status_of(lambda: alpha.call("GET", "/v1/accounts/alice")) == 404
        assert rcpt(alpha, "alice@example.test") == 550
        assert rcpt(alpha, "alice.smith@example.test") == 250
        assert login(alpha, "alice", tls=True) == -1
        assert login(alpha, "alice.smith", tls=True) == 1
        assert alpha.call("GET", "/v1/route/alice.smith")["owner"] == "alpha"
        assert status_of(lambda: alpha.call("GET", "/v1/route/alice")) == 404
        assert scripts(alpha, "alice.smith") == [("main", 1)]
        # The owner's rights in its ACLs moved to the new name (RFC 4314 identifiers).
        assert acl_names(alpha, "alice.smith") == {"alice.smith"}

        # The partner renamed its replica in place and took the same epoch.
        wait_until(lambda: mailboxes(beta, "alice.smith") == before, 20, "renamed on beta")
        assert status_of(lambda: beta.call("GET", "/v1/accounts/alice")) == 404
        assert status_of(lambda: beta.call("GET", "/v1/owner/alice")) == 404
        assert beta.call("GET", "/v1/owner/alice.smith")["owner"] == "alpha"
        assert scripts(beta, "alice.smith") == [("main", 1)]
        assert acl_names(beta, "alice.smith") == {"alice.smith"}
        assert vacations(beta, "alice.smith") == 1
        wait_until(lambda: renames_pending(alpha) == [], 10, "the rename acknowledged")

        # One admin line in the mail log says who renamed what.
        log = alpha.log.read_text()
        assert (
            'admin account rename ok: via=cli rip=127.0.0.1 status=200 target="alice -> alice.smith"'
            in log
        )

        # Failover: beta serves the account under its new name only, with
        # alice's script and vacation record.
        alpha.replicate("alice.smith")
        alpha.kill9()
        taken = beta.call("POST", "/v1/failover", {})["taken"]
        assert [t["account"] for t in taken] == ["alice.smith"]
        # An unknown name while the partner cannot be asked is 451, as for
        # any account (it may just have been created there): never delivered.
        assert rcpt(beta, "alice@example.test") == 451
        assert lmtp(beta, "project two", rcpts=["alice.smith@example.test"]) == {}
        assert len(beta.mailbox("alice.smith", "Projects")["messages"]) == 2
        assert lmtp(beta, "holiday again", n=2, rcpts=["alice.smith@example.test"]) == {}
        assert len(relay.to("carol@remote.test")) == 1
        assert login(beta, "alice", tls=True) == -1
        assert login(beta, "alice.smith", tls=True) == 2

        # alpha returns as the replica of the new name; the old name stays gone.
        alpha.start()
        assert alpha.call("GET", "/v1/owner/alice.smith")["owner"] == "beta"
        assert status_of(lambda: alpha.call("GET", "/v1/owner/alice")) == 404
        assert rcpt(alpha, "alice.smith@example.test") == 451


def test_rename_while_the_partner_is_down_converges(tmp_path: Path) -> None:
    alpha, beta = make_pair(tmp_path)
    with running(alpha, beta):
        alpha.add_account("carol")
        deliver(alpha, "carol@example.test", "c1")
        before = mailboxes(alpha, "carol")
        wait_until(lambda: mailboxes(beta, "carol") == before, 20, "carol on beta")

        beta.stop()
        # The answer does not wait for a partner the sync client finds down
        # (it waited out DELETE_WAIT, 5 s, each time before).
        began = time.monotonic()
        answer = alpha.call("POST", "/v1/accounts/carol/rename", {"new_name": "caroline"})
        assert answer["replicated"] is False and time.monotonic() - began < 4, answer
        deliver(alpha, "caroline@example.test", "c2")
        # A second rename before the partner is back: it gets one rename.
        alpha.call("POST", "/v1/accounts/caroline/rename", {"new_name": "cara"})
        deliver(alpha, "cara@example.test", "c3")
        assert renames_pending(alpha) == [("carol", "cara"), ("caroline", "cara")]
        # The old names are not free until the partner has the rename.
        assert status_of(lambda: alpha.add_account("carol")) == 409
        uniqueid, uidvalidity, _ = before["INBOX"]

        beta.start()
        wait_until(
            lambda: mailboxes(beta, "cara") == {"INBOX": (uniqueid, uidvalidity, 3)},
            30,
            "beta renamed carol to cara and has the new mail",
        )
        wait_until(lambda: renames_pending(alpha) == [], 10, "the renames acknowledged")
        for node in (alpha, beta):
            for old in ("carol", "caroline"):
                assert status_of(lambda n=node, o=old: n.call("GET", f"/v1/accounts/{o}")) == 404
                assert status_of(lambda n=node, o=old: n.call("GET", f"/v1/owner/{o}")) == 404
        # Another exchange of ownership rows brings nothing back.
        beta.restart()
        assert status_of(lambda: alpha.call("GET", "/v1/owner/carol")) == 404
        assert status_of(lambda: beta.call("GET", "/v1/accounts/carol")) == 404
        assert mailboxes(alpha, "cara") == mailboxes(beta, "cara")
        # Now the old name is free again, as a new account.
        alpha.add_account("carol")
        assert mailboxes(alpha, "carol")["INBOX"][0] != uniqueid


def test_rename_asked_of_the_replica_is_done_by_the_owner(tmp_path: Path) -> None:
    alpha, beta = make_pair(tmp_path)
    with running(alpha, beta):
        beta.add_account("bob")
        deliver(beta, "bob@example.test", "b1")
        wait_until(lambda: mailboxes(alpha, "bob") != {}, 20, "bob on alpha")
        answer = alpha.call("POST", "/v1/accounts/bob/rename", {"new_name": "robert"})
        assert answer["forwarded_to"] == "beta" and answer["name"] == "robert"
        assert mailboxes(beta, "robert")["INBOX"][2] == 1
        wait_until(lambda: mailboxes(alpha, "robert") == mailboxes(beta, "robert"), 20, "on alpha")
        assert status_of(lambda: alpha.call("GET", "/v1/accounts/bob")) == 404
        assert rcpt(beta, "bob@example.test") == 550
        assert login(beta, "robert") == 1
        # A name that exists is refused; so is a rename onto itself.
        beta.add_account("dave")
        assert (
            status_of(lambda: beta.call("POST", "/v1/accounts/robert/rename", {"new_name": "dave"}))
            == 409
        )
        assert (
            status_of(lambda: beta.call("POST", "/v1/accounts/nobody/rename", {"new_name": "x"}))
            == 404
        )
