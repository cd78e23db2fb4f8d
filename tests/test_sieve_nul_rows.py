"""A Sieve script stored before PUTSCRIPT refused NUL (SQLite took it): the
row is still there after the upgrade. Delivery cannot compile it and keeps
the message (logged); the user must still be able to see it, fetch it,
replace it and delete it over ManageSieve, and the API's account operations
must still work for the account that holds it.

The rows are written straight into the node's SQLite database, as the old
release left them."""

from __future__ import annotations

import base64
import datetime as dt
import re
import shutil
import socket
import sqlite3
from pathlib import Path
from typing import BinaryIO

import pytest
from sqlalchemy.orm import Session

import migrations
from engine import accounts, sieve, syncwire
from engine.apply import apply_push
from engine.compare import compare
from engine.passwords import MIN_LN, hash_password
from engine.store import Store
from engine.syncstate import read_account_state
from tests.harness.daemons import ModuleNodes, Node, make_single, template_database
from tests.procs import free_port, wait_until

NUL_SCRIPT = 'require "fileinto";\r\nfileinto "Junk"; # a\x00b\r\n'
PW = hash_password("pw", MIN_LN)


@pytest.fixture
def node(module_nodes: ModuleNodes) -> Node:
    def make(workdir: Path) -> Node:
        return make_single(
            workdir,
            overrides={
                "managesieve": {"listen": f"127.0.0.1:{free_port()}", "login_failure_delay": "10ms"}
            },
        )

    (shared,) = module_nodes.get("nul", make)
    return shared


def old_row(node: Node, account: str, name: str, content: str, active: bool) -> None:
    """What the release before the NUL check stored for a PUTSCRIPT."""
    with sqlite3.connect(node.db_path, timeout=30, isolation_level=None) as db:
        (account_id,) = db.execute("SELECT id FROM accounts WHERE name = ?", (account,)).fetchone()
        db.execute(
            "INSERT INTO sieve_scripts (account_id, name, content, active, modseq, changed_at)"
            " VALUES (?, ?, ?, ?, 1, ?)",
            (account_id, name, content, active, dt.datetime.now(dt.UTC).replace(tzinfo=None)),
        )


def sieve_port(node: Node) -> int:
    text = node.config.read_text()
    section = text[text.index("[managesieve]") :]
    return int(section.split('listen = "127.0.0.1:', 1)[1].split('"', 1)[0])


class Sieve:
    """A ManageSieve client, just enough of one (RFC 5804)."""

    def __init__(self, node: Node, user: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", sieve_port(node)), timeout=20)
        self.reader: BinaryIO = self.sock.makefile("rb")
        self.answer()
        plain = base64.b64encode(f"\0{user}\0secret".encode()).decode()
        status, _ = self.command(f'AUTHENTICATE "PLAIN" "{plain}"')
        assert status.startswith("OK"), status

    def command(self, line: str, literal: bytes | None = None) -> tuple[str, bytes]:
        data = line.encode()
        if literal is not None:
            data += b" {%d+}\r\n" % len(literal) + literal
        self.sock.sendall(data + b"\r\n")
        return self.answer()

    def answer(self) -> tuple[str, bytes]:
        """The status line and what came before it (literals read whole)."""
        before = b""
        while line := self.reader.readline():
            literal = re.search(rb"\{(\d+)\}\r\n$", line)
            if literal:
                line += self.reader.read(int(literal.group(1)))
            if line.startswith((b"OK", b"NO", b"BYE")):
                return line.decode(errors="replace"), before
            before += line
        raise AssertionError("connection closed")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def test_managesieve_lists_gets_replaces_and_deletes_a_nul_script(node: Node) -> None:
    node.add_account("nora")
    old_row(node, "nora", "filters", NUL_SCRIPT, active=True)
    old_row(node, "nora", "spare", "keep;\x00", active=False)
    client = Sieve(node, "nora")
    try:
        status, listing = client.command("LISTSCRIPTS")
        assert status.startswith("OK") and listing == b'"filters" ACTIVE\r\n"spare"\r\n'
        status, body = client.command('GETSCRIPT "filters"')
        assert status.startswith("OK"), status
        assert NUL_SCRIPT.encode() in body
        # The broken one is deleted; the active one replaced in place.
        assert client.command('DELETESCRIPT "spare"')[0].startswith("OK")
        assert client.command('PUTSCRIPT "filters"', b"keep;\r\n")[0].startswith("OK")
        status, body = client.command('GETSCRIPT "filters"')
        assert status.startswith("OK") and body.endswith(b"keep;\r\n\r\n")
        assert client.command("LISTSCRIPTS")[1] == b'"filters" ACTIVE\r\n'
    finally:
        client.close()


def test_delivery_keeps_the_message_and_the_api_still_works(node: Node) -> None:
    node.add_account("nils")
    old_row(node, "nils", "filters", NUL_SCRIPT, active=True)
    start = node.log.stat().st_size
    with node.lmtp() as lmtp:
        assert (
            lmtp.sendmail("s@example.test", ["nils@example.test"], b"Subject: x\r\n\r\nb\r\n") == {}
        )
    # Not filed into Junk: the script does not compile, the message is kept.
    wait_until(lambda: len(node.records("nils")) == 1, 10, "the message in INBOX")
    with node.log.open("rb") as log:
        log.seek(start)
        said = log.read().decode(errors="replace")
    assert "nils" in said and "NUL" in said and "Traceback" not in said
    # The account's API: shown, its mailboxes listed, renamed (the script
    # follows), and deleted with it.
    assert node.call("GET", "/v1/accounts/nils")["name"] == "nils"
    assert [m["name"] for m in node.call("GET", "/v1/accounts/nils/mailboxes")["mailboxes"]] == [
        "INBOX"
    ]
    node.call("POST", "/v1/accounts/nils/rename", {"new_name": "nils2"})
    client = Sieve(node, "nils2")
    try:
        status, listing = client.command("LISTSCRIPTS")
        assert status.startswith("OK") and listing == b'"filters" ACTIVE\r\n'
        # Made inactive, then deleted: the way out when no replacement is wanted.
        assert client.command('SETACTIVE ""')[0].startswith("OK")
        assert client.command('DELETESCRIPT "filters"')[0].startswith("OK")
    finally:
        client.close()
    old_row(node, "nils2", "again", NUL_SCRIPT, active=False)
    node.call("DELETE", "/v1/accounts/nils2")
    assert node.db_row("SELECT count(*) FROM sieve_scripts WHERE name = 'again'") == (0,)


def test_a_nul_script_replicates_between_sqlite_nodes(tmp_path: Path) -> None:
    """Such a row is part of the account's state: it goes to a partner on
    SQLite through the sync protocol like any script (the decoder does not
    refuse it: the partner holds the same row, and the user replaces it on
    either node)."""
    stores = []
    for name in ("owner", "replica"):
        (tmp_path / name).mkdir()
        shutil.copyfile(template_database(), tmp_path / name / "peerd.db")
        url = f"sqlite:///{tmp_path / name / 'peerd.db'}"
        migrations.upgrade(url)
        stores.append(Store(url, tmp_path / name / "data"))
    owner, replica = stores
    try:
        for store in stores:
            store.write_sync(lambda s: accounts.create_account(s, "ola", password_hash=PW))

        def old(s: Session) -> None:  # as the release before the check wrote it
            account = accounts.get_account(s, "ola")
            sieve.put_script(s, account, "filters", NUL_SCRIPT, max_scripts=5)
            sieve.set_active(s, account, "filters")

        owner.write_sync(old)
        mine = owner.read_sync(lambda s: read_account_state(s, "ola"))
        theirs = replica.read_sync(lambda s: read_account_state(s, "ola"))
        _, push = compare(mine, {}, theirs, frozenset())
        wire = syncwire.decode_push(
            syncwire.decode_json(syncwire.encode_json(syncwire.encode_push(push)))
        )
        replica.write_sync(lambda s: apply_push(s, wire, lambda guid: True))
        after = replica.read_sync(lambda s: read_account_state(s, "ola"))
        assert after.sieve == (("filters", NUL_SCRIPT, True),)
    finally:
        for store in stores:
            store.close()
