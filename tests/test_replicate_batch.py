"""``replicate --all`` in batches (peerd.replication.batch) between two real
daemons: a first pass onto an empty partner leaves every account identical
(mailboxes, records and flags, subscriptions, quotas, ACLs, Sieve,
METADATA); a fenced account in the middle of a batch is reported and the
others land; a partner killed mid-pass converges on the rerun; a partner
without the batch requests (an older release) is synced account by account.
On SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import sqlite3
import threading
import time
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import migrations
from engine import accounts, mailbox, messages, sieve
from engine import annotations as metadata
from engine.compare import MailboxPush, Push
from engine.models import Account
from engine.store import Store
from engine.syncstate import AccountState, MailboxSummary, RecordState, read_account_state
from engine.syncwire import encode_push
from ownership import table as ownership_table
from tests.harness.daemons import template_database
from tests.harness.postgres import PgServer
from tests.nodes import Node, make_pair, running

ROOT = Path(__file__).resolve().parent.parent

PLAIN = [f"m-{i:04d}" for i in range(430)]  # three batches of at most 200
RICH = ["m-0050-rich", "m-0199-rich", "m-0300-rich", "m-0301-rich"]  # inside batches


def _spool(node: Node) -> Path:
    return node.workdir / "var" / node.name


def _pair(tmp_path: Path, pg: PgServer | None) -> tuple[Node, Node, str, str]:
    """alpha (no rolling replication: only ``replicate --all`` syncs) and
    beta, not started, each with its database at the migrations' head: a
    fresh PostgreSQL one, or its SQLite file."""
    overrides: dict[str, dict[str, Any]] = {"alpha": {"sync": {"sync_log": False}}, "beta": {}}
    urls: dict[str, str] = {}
    if pg is not None:
        for name in ("alpha", "beta"):
            urls[name] = pg.create_database(template=pg.migrated_template())
            overrides[name]["database"] = {"url": urls[name]}
    alpha, beta = make_pair(tmp_path, overrides)
    if pg is None:
        for node in (alpha, beta):
            node.db_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(template_database(), node.db_path)
            urls[node.name] = node.db_url
    return alpha, beta, urls["alpha"], urls["beta"]


def fill(url: str, spool: Path, plain: list[str], rich: list[str]) -> None:
    """Accounts owned by alpha, written to its stopped store: ``plain`` ones
    with five empty mailboxes, ``rich`` ones with messages, flags, an
    expunged message, subscriptions, quotas, an ACL and (every other one)
    Sieve scripts and METADATA."""
    migrations.upgrade(url)
    store = Store(url, spool)
    try:
        for start in range(0, len(plain), 100):

            def many(s: Any, chunk: list[str] = plain[start : start + 100]) -> None:
                accounts.create_accounts(s, [(name, "$scrypt$x", None) for name in chunk])
                ownership_table.create_many(s, chunk, "alpha")
                for acct in s.scalars(select(Account).where(Account.name.in_(chunk))):
                    boxes = ("Sent", "Drafts", "Trash", "Archive")
                    uidvalidity = int(time.time())
                    mailbox.create_mailboxes(
                        s,
                        acct,
                        [(b, uuid.uuid4().hex, uidvalidity, "{}") for b in boxes],
                    )

            store.write_sync(many)
        for n, name in enumerate(rich):
            stored = []
            for i in range(6):
                body = f"From: a@example.test\r\nSubject: {name} {i}\r\n\r\nbody {i}\r\n".encode()
                guid, _ = store.spool.put(body)
                stored.append((guid, len(body)))

            def one(s: Any, name: str = name, n: int = n, stored: list[Any] = stored) -> None:
                acct = accounts.create_account(
                    s, name, password_hash=f"$scrypt${n}", quota_limit=10_000_000 + n
                )
                accounts.set_message_limit(s, name, 500 + n)
                ownership_table.create(s, name, "alpha")
                work = mailbox.create_mailbox(s, acct, "Work/Projects")
                inbox = mailbox.get_mailbox(s, acct, "INBOX")
                for i, (guid, size) in enumerate(stored):
                    messages.append(
                        s,
                        acct,
                        inbox if i % 2 else work,
                        guid=guid,
                        size=size,
                        flags=["\\Seen"] if i % 3 == 0 else [],
                        internaldate=dt.datetime(2026, 1, 1 + i, tzinfo=dt.UTC),
                    )
                messages.set_flags(s, acct, inbox, [1], ["\\Flagged", "$Label1"])
                messages.expunge(s, acct, work, [2])
                mailbox.subscribe(s, acct, "Work/Projects")
                mailbox.set_acl(s, acct, "Work/Projects", {name: "lrswipkxtecda", "bob": "lr"})
                if n % 2 == 0:
                    sieve.put_script(s, acct, "main", "keep;", max_scripts=5)
                    sieve.set_active(s, acct, "main")
                    metadata.set_entries(s, acct, "INBOX", [("/private/comment", b"hi")])

            store.write_sync(one)
    finally:
        store.close()


def snapshot(url: str, spool: Path) -> tuple[dict[str, Any], list[str]]:
    """Every account as replication makes it equal (all live records; the
    replica's ``sync_base`` bookkeeping left out) with its quota use, and
    the GUIDs whose bytes the spool lacks."""
    store = Store(url, spool)
    try:

        def read(s: Any) -> dict[str, Any]:
            out = {}
            for acct in s.scalars(select(Account)):
                state = read_account_state(s, acct.name, records_for={})
                boxes = tuple(
                    replace(m, summary=replace(m.summary, sync_base=0)) for m in state.mailboxes
                )
                out[acct.name] = (replace(state, mailboxes=boxes), acct.quota_used)
            return out

        states = store.read_sync(read)
        guids = {r.guid for st, _ in states.values() for m in st.mailboxes for r in m.records}
        return states, sorted(g for g in guids if not store.spool.has(g))
    finally:
        store.close()


def replicate_all(alpha: Node) -> dict[str, Any]:
    result: dict[str, Any] = alpha.call("POST", "/v1/replicate", {"all": True})
    return result


def assert_identical(alpha: Node, beta: Node, urls: tuple[str, str], *, but: str = "") -> None:
    theirs, lacking = snapshot(urls[1], _spool(beta))
    ours, _ = snapshot(urls[0], _spool(alpha))
    assert lacking == []
    assert sorted(n for n in theirs if n != but) == sorted(n for n in ours if n != but)
    for name, state in theirs.items():
        assert name == but or state == ours[name], name


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> PgServer | None:
    if request.param == "sqlite":
        return None
    server: PgServer = request.getfixturevalue("pg_server")
    return server


def test_first_pass_in_batches_leaves_both_sides_identical(
    tmp_path: Path, backend: PgServer | None
) -> None:
    alpha, beta, url_a, url_b = _pair(tmp_path, backend)
    fill(url_a, _spool(alpha), PLAIN, RICH)
    with running(alpha, beta):
        first = replicate_all(alpha)
        assert first["errors"] == []
        assert first["accounts"] == len(PLAIN) + len(RICH)
        # Batched: the account's state went in a request for many accounts.
        reports = {r["account"]: r for r in first["reports"]}
        assert sorted(reports) == sorted(PLAIN + RICH)
        assert all(
            any("batch_user_some" in line for line in r["requests"]) for r in reports.values()
        )
        assert reports["m-0300-rich"]["uploaded"] == 5  # six delivered, one expunged
        assert reports["m-0300-rich"]["mailboxes_created"] == 2
        assert_identical(alpha, beta, (url_a, url_b))
        again = replicate_all(alpha)
        assert (again["in_sync"], again["errors"]) == (len(PLAIN) + len(RICH), [])


def test_a_fenced_account_in_a_batch_is_reported_and_the_others_land(tmp_path: Path) -> None:
    alpha, beta, url_a, url_b = _pair(tmp_path, None)
    fill(url_a, _spool(alpha), PLAIN[:300], RICH[:2])
    fenced = "m-0105"
    store = Store(url_b, _spool(beta))
    try:  # beta holds it and owns it at the same epoch: alpha's pushes of it are refused

        def owned(s: Any) -> None:
            accounts.create_account(s, fenced, password_hash="$scrypt$b")
            ownership_table.create(s, fenced, "beta")

        store.write_sync(owned)
    finally:
        store.close()
    with running(alpha, beta):
        result = replicate_all(alpha)
        assert [(e["account"], e["error"]) for e in result["errors"]] == [(fenced, "sync_refused")]
        assert len(result["reports"]) == 300 + 2 - 1
        assert_identical(alpha, beta, (url_a, url_b), but=fenced)
        theirs, _ = snapshot(url_b, _spool(beta))
        assert theirs[fenced][0].password_hash == "$scrypt$b"  # beta's own, untouched


def _summary(uniqueid: str, name: str) -> MailboxSummary:
    return MailboxSummary(uniqueid, name, 1_700_000_000, 0, 1, "{}", 0, 0)


def _post_sync(beta: Node, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    token = base64.b64encode(b"repl:repl-secret").decode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{beta.ports['sync']}/sync/v1/{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())


def test_batch_apply_refuses_one_account_and_applies_the_others(tmp_path: Path) -> None:
    """The replica's side alone: three new accounts in one batch_apply, the
    middle one sent with an epoch below the one the replica knows."""
    _, beta, _, url_b = _pair(tmp_path, None)
    store = Store(url_b, _spool(beta))
    try:

        def known(s: Any) -> None:
            accounts.create_account(s, "n-2", password_hash="$scrypt$b")
            row = ownership_table.create(s, "n-2", "alpha")
            row.epoch = 7

        store.write_sync(known)
    finally:
        store.close()
    items = []
    for i in (1, 2, 3):
        name = f"n-{i}"
        push = Push(
            account=name,
            account_fields=("$scrypt$z", 1000 * i, None),
            create_account=True,
            mailboxes=(
                MailboxPush(_summary(f"{i:032x}", "INBOX"), create=True),
                MailboxPush(_summary(f"{i + 10:032x}", "Sent"), create=True),
            ),
            subscriptions=("INBOX",),
        )
        row = {"owner": "alpha", "home": "alpha", "epoch": 1, "state": "normal"}
        items.append({"account": name, "ownership": row, "push": encode_push(push)})
    with running(beta):
        status, answer = _post_sync(beta, "batch_apply", {"accounts": items})
    assert status == 200
    got = {a["account"]: a for a in answer["accounts"]}
    assert [a["account"] for a in answer["accounts"]] == ["n-1", "n-2", "n-3"]
    assert got["n-2"]["error"] == "sync_refused"
    assert got["n-2"]["ownership"]["epoch"] == 7
    for name in ("n-1", "n-3"):
        assert got[name]["mismatched"] == []
        assert [s["name"] for s in got[name]["summaries"]] == ["INBOX", "Sent"]
    states, _ = snapshot(url_b, _spool(beta))
    assert sorted(states) == ["n-1", "n-2", "n-3"]
    assert [m.summary.name for m in states["n-2"][0].mailboxes] == ["INBOX"]  # as it was
    state, used = states["n-3"]
    assert isinstance(state, AccountState)
    assert (state.quota_limit, state.subscriptions, used) == (3000, ("INBOX",), 0)
    assert [m.summary.name for m in state.mailboxes] == ["INBOX", "Sent"]


def _accounts_on(beta: Node) -> int:
    try:
        with sqlite3.connect(f"file:{beta.db_path}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT count(*) FROM accounts").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def test_partner_killed_mid_pass_then_a_rerun_converges(tmp_path: Path) -> None:
    alpha, beta, url_a, url_b = _pair(tmp_path, None)
    many = [f"k-{i:04d}" for i in range(1000)]
    fill(url_a, _spool(alpha), many, RICH[:2])
    with running(alpha, beta):
        outcome: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: outcome.update(replicate_all(alpha)))
        worker.start()
        deadline = time.monotonic() + 60
        while _accounts_on(beta) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        beta.kill9()
        worker.join(120)
        landed = len(outcome["reports"])
        assert outcome["errors"], "the pass ended before the partner was killed"
        assert landed < len(many) + 2
        assert {e["error"] for e in outcome["errors"]} <= {"partner_down"}
        beta.start()
        again = replicate_all(alpha)
        assert again["errors"] == []
        assert_identical(alpha, beta, (url_a, url_b))
        assert replicate_all(alpha)["in_sync"] == len(many) + 2


def test_a_partner_without_batch_requests_is_synced_account_by_account(tmp_path: Path) -> None:
    """beta runs this release with the batch requests taken out: what an
    older release answers them (404); alpha falls back to one account a time."""
    old = tmp_path / "old-release"
    for package in ("peerd", "engine", "ownership", "migrations"):
        shutil.copytree(ROOT / package, old / package, ignore=shutil.ignore_patterns("__pycache__"))
    server = old / "peerd" / "replication" / "server.py"
    text = server.read_text()
    lines = [line for line in text.splitlines() if '"/sync/v1/batch_' not in line]
    assert len(lines) == len(text.splitlines()) - 2
    server.write_text("\n".join(lines) + "\n")
    alpha, beta, url_a, url_b = _pair(tmp_path, None)
    beta.extra_env = {"PYTHONPATH": str(old)}
    fill(url_a, _spool(alpha), PLAIN[:40], RICH[:2])
    with running(alpha, beta):
        result = replicate_all(alpha)
        assert result["errors"] == []
        reports = result["reports"]
        assert len(reports) == 42
        assert all(not any("batch_" in line for line in r["requests"]) for r in reports)
        assert all(any("/user_some" in line for line in r["requests"]) for r in reports)
        assert_identical(alpha, beta, (url_a, url_b))


def test_records_and_flags_survive_the_batched_path(tmp_path: Path) -> None:
    """The rich accounts' records on beta carry the owner's UIDs, flags,
    internal dates and modseqs, and the expunged message is not there."""
    alpha, beta, url_a, url_b = _pair(tmp_path, None)
    fill(url_a, _spool(alpha), PLAIN[:10], RICH[:1])
    with running(alpha, beta):
        assert replicate_all(alpha)["errors"] == []
    states, _ = snapshot(url_b, _spool(beta))
    state = states[RICH[0]][0]
    boxes = {m.summary.name: m.records for m in state.mailboxes}
    inbox: tuple[RecordState, ...] = boxes["INBOX"]
    assert [r.uid for r in inbox] == [1, 2, 3]
    assert {"\\Flagged", "$Label1"} <= set(inbox[0].flags.split())
    assert [r.uid for r in boxes["Work/Projects"]] == [1, 3]
    assert state.subscriptions == ("INBOX", "Work/Projects")
