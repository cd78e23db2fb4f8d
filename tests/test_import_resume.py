"""``peerctl import-imap`` resumes by its cursors on either node of a pair,
against a real Dovecot: the cursors travel with the account through
replication, a switchover, a failover, the old owner's return, a failback
and a reconcile. "Resumes by cursor" is proven by the importer's counters:
a rerun that fell back to matching by Message-ID/date/size reports every
message it found as ``matched``; one that resumed reports 0 and copies only
the old server's new UIDs."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import importcursors
from engine.compare import Push
from engine.errors import SyncProtocolError
from engine.syncwire import decode_account_state, decode_push, encode_push
from tests.harness.dovecot import Dovecot, require_dovecot
from tests.harness.procs import wait_until
from tests.nodes import Node, make_pair, peerctl, running
from tests.test_import_imap import PW, _date, _message, _old


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[Dovecot]:
    require_dovecot()
    server = Dovecot(tmp_path, {"alice": PW}).start()
    try:
        yield server
    finally:
        server.stop()


def _add(server: Dovecot, first: int, count: int) -> None:
    """Messages ``first``..``first + count - 1`` in the old INBOX (new UIDs there)."""
    imap = _old(server)
    for n in range(first, first + count):
        status, _ = imap.append(
            "INBOX", "(\\Seen)" if n % 2 else "()", _date(n), _message("INBOX", n)
        )
        assert status == "OK"
    imap.logout()


def _import(node: Node, server: Dovecot, tmp_path: Path) -> dict[str, Any]:
    secret = tmp_path / "old-password"
    secret.write_text(PW + "\n")
    done = peerctl(
        node,
        "--json",
        "import-imap",
        "--host",
        "127.0.0.1",
        "--port",
        str(server.port),
        "--password-file",
        str(secret),
        "--user",
        "alice",
        "--account",
        "alice",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _once_each(node: Node, count: int) -> None:
    """``node``'s INBOX holds exactly ``count`` messages, none twice."""
    guids = Counter(r["guid"] for r in node.records("alice"))
    assert len(guids) == count and set(guids.values()) == {1}, guids.most_common(3)


def _cursor(node: Node) -> tuple[int | None, int]:
    state = node.call("GET", "/v1/accounts/alice/import")
    inbox = next(m for m in state["mailboxes"] if m["mailbox"] == "INBOX")
    return inbox["uidvalidity"], int(inbox["last_uid"])


def test_a_rerun_after_a_switchover_resumes_by_cursor_on_the_new_owner(
    pair: tuple[Node, Node], dovecot: Dovecot, tmp_path: Path
) -> None:
    alpha, beta = pair
    alpha.add_account("alice")
    _add(dovecot, 0, 20)
    first = _import(alpha, dovecot, tmp_path)
    assert (first["copied"], first["matched"]) == (20, 0), first
    validity, last = _cursor(alpha)
    assert last == 20
    # Replicated: beta holds alpha's cursor, not only the mail.
    wait_until(lambda: _cursor(beta) == (validity, 20), 30, "the cursor on beta")

    alpha.call("POST", "/v1/switchover", {"accounts": ["alice"]})
    _add(dovecot, 20, 5)
    again = _import(beta, dovecot, tmp_path)
    # Only the five new UIDs were fetched and posted; nothing was matched
    # by key (which would have listed the twenty old ones as "already here").
    assert (again["copied"], again["matched"]) == (5, 0), again
    assert _cursor(beta) == (validity, 25)
    _once_each(beta, 25)
    wait_until(lambda: _cursor(alpha) == (validity, 25), 30, "the moved cursor back on alpha")

    # A replica whose cursors were lost gets them back from a reconcile
    # (the account digests cover them).
    alpha.stop()
    with sqlite3.connect(alpha.db_path, timeout=30) as db:
        assert db.execute("DELETE FROM import_cursors").rowcount == 1
    alpha.start()
    beta.call("POST", "/v1/reconcile", {})
    wait_until(lambda: _cursor(alpha) == (validity, 25), 30, "the cursor reconciled")


def test_cursors_survive_a_failover_the_return_and_a_failback(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    alpha, beta = make_pair(tmp_path)
    with running(alpha, beta):
        alpha.add_account("alice")
        _add(dovecot, 0, 10)
        assert _import(alpha, dovecot, tmp_path)["copied"] == 10
        validity, _ = _cursor(alpha)
        wait_until(lambda: _cursor(beta) == (validity, 10), 30, "the cursor on beta")

        # alpha copies five more that beta never sees (its cursor says 15),
        # then dies; beta takes the account over with a cursor at 10.
        beta.stop()
        _add(dovecot, 10, 5)
        assert _import(alpha, dovecot, tmp_path)["copied"] == 5
        assert _cursor(alpha) == (validity, 15)
        alpha.kill9()
        beta.start()
        beta.call("POST", "/v1/failover", {})
        assert _cursor(beta) == (validity, 10)

        # alpha returns: beta keeps the five messages only alpha had (the
        # no-loss repair) and alpha's cursor with them, so a rerun on beta
        # copies none of them a second time.
        alpha.start()
        wait_until(lambda: _cursor(beta) == (validity, 15), 30, "alpha's cursor kept by beta")
        _once_each(beta, 15)
        rerun = _import(beta, dovecot, tmp_path)
        assert (rerun["copied"], rerun["matched"]) == (0, 0), rerun
        _once_each(beta, 15)

        # Failback: alpha owns it again and resumes from the same cursor.
        alpha.call("POST", "/v1/failback", {})
        _add(dovecot, 15, 3)
        home = _import(alpha, dovecot, tmp_path)
        assert (home["copied"], home["matched"]) == (3, 0), home
        _once_each(alpha, 18)


def test_merge_keeps_the_higher_cursor_and_the_owners_on_a_new_uidvalidity() -> None:
    owner = [("a1", 7, 10), ("b2", 7, 3), ("c3", 9, 1)]
    replica = [("a1", 7, 15), ("b2", 8, 40), ("d4", 5, 2)]
    assert importcursors.merge(owner, replica) == (
        ("a1", 7, 15),  # moved further on the replica: kept
        ("b2", 7, 3),  # the old mailbox was rebuilt: the owner's import goes on
        ("c3", 9, 1),
        ("d4", 5, 2),  # only the replica had it
    )


def test_the_wire_form_of_cursors_and_a_partner_without_them() -> None:
    push = Push("alice", import_cursors=(("a1", 7, 15),))
    decoded = decode_push(json.loads(json.dumps(encode_push(push))))
    assert decoded.import_cursors == (("a1", 7, 15),)
    # A node that predates them sends neither part: unchanged, and none.
    assert decode_push({"account": "alice"}).import_cursors is None
    assert decode_account_state({"name": "alice", "exists": True}).import_cursors == ()
    for bad in ([["a1", 0, 1]], [["a1", 7]], [["A!", 7, 1]], [["a1", 7, 1], ["a1", 8, 2]]):
        with pytest.raises(SyncProtocolError):
            decode_push({"account": "alice", "import_cursors": bad})
