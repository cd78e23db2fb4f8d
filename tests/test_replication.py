"""Replication between two real daemons on loopback (issue 3).

Changes "behind the owner's back" are made the way they happen for real: by
writing to the replica's own store (its database and spool) from another
process, which is what a local delivery or an IMAP client on the replica
would do. Partners are killed with SIGKILL and restarted for real.
"""

from __future__ import annotations

import base64
import json
import os
import smtplib
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import accounts, mailbox, messages
from engine.store import Store
from ownership import table as ownership_table
from tests.harness.daemons import ModuleNodes
from tests.nodes import Node, make_pair, make_single, running
from tests.procs import wait_until


def deliver(
    node: Node, rcpt: str, subject: str, body: bytes = b"hello\r\n", headers: bytes = b""
) -> None:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"]) as lmtp:
        head = f"Subject: {subject}\r\nMessage-ID: <{subject}@test>\r\n".encode() + headers
        message = head + b"\r\n" + body
        lmtp.sendmail("sender@example.test", [rcpt], message)


def boxes(node: Node, account: str) -> dict[str, Any]:
    from urllib.parse import quote

    listing = node.call("GET", f"/v1/accounts/{quote(account)}/mailboxes")
    return {
        m["uniqueid"]: (m["name"], m["last_uid"], m["checksum"], m["exists"])
        for m in listing["mailboxes"]
    }


def records(
    node: Node, account: str, name: str = "INBOX"
) -> list[tuple[int, str, tuple[str, ...]]]:
    box = node.mailbox(account, name)
    return [(m["uid"], m["guid"], tuple(m["flags"])) for m in box["messages"]]


def converged(a: Node, b: Node, account: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return boxes(a, account) == boxes(b, account)
        except urllib.error.HTTPError:
            return False

    return check


def open_store(node: Node) -> Store:
    """The node's own store, opened from this process (the daemon keeps running)."""
    return Store(f"sqlite:///{node.db_path}", node.workdir / "var" / node.name, owner=False)


def test_delivery_reaches_the_partner_and_replicate_v_prints_the_seed_steps(
    shared_pair: tuple[Node, Node],
) -> None:
    alpha, beta = shared_pair
    alpha.add_account("dpc22")
    for i in range(3):
        deliver(alpha, "dpc22@example.test", f"m{i}")
    wait_until(converged(alpha, beta, "dpc22"), 10, "beta to have dpc22's mail")
    assert [r[1] for r in records(alpha, "dpc22")] == [r[1] for r in records(beta, "dpc22")]
    report = alpha.replicate("dpc22")["reports"][0]
    assert report["steps"][:2] == ["MAILBOXES INBOX", "USER_SOME dpc22"]
    assert report["steps"][-1] == "ENDUSER"
    assert report["uploaded"] == 0 and report["records_compared"] == 0


# A pair with rolling replication off (``sync_log = false``), as in the
# seed's manual examples: nothing syncs but ``replicate``, so a test can
# look at exactly the steps one run takes.
MANUAL = {"alpha": {"sync": {"sync_log": False}}, "beta": {"sync": {"sync_log": False}}}


@pytest.fixture
def manual_pair(module_nodes: ModuleNodes) -> tuple[Node, Node]:
    """The module's ``MANUAL`` pair, for tests that replicate accounts of
    their own and never stop or kill a node (those take ``own_manual_pair``)."""
    return module_nodes.pair(MANUAL)


@pytest.fixture
def own_manual_pair(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    """A ``MANUAL`` pair of the test's own."""
    alpha, beta = make_pair(tmp_path, MANUAL)
    with running(alpha, beta):
        yield alpha, beta


def test_seed_example_replica_damage_is_undone(manual_pair: tuple[Node, Node]) -> None:
    """The seed's user.dpc22 session: on the replica, expunge UID 1 and set
    (hello world) on the last UID; replicate; the replica is back."""
    alpha, beta = manual_pair
    alpha.add_account("dpc22")
    for i in range(5):
        deliver(alpha, "dpc22@example.test", f"seed{i}")
    alpha.replicate("dpc22")
    assert converged(alpha, beta, "dpc22")(), "initial sync"
    before = records(beta, "dpc22")
    store = open_store(beta)
    try:

        def damage(s: Any) -> None:
            acct = accounts.get_account(s, "dpc22")
            box = mailbox.get_mailbox(s, acct, "INBOX")
            messages.expunge(s, acct, box, [1])
            messages.set_flags(s, acct, box, [5], ["hello", "world"], mode="add")

        store.write_sync(damage)
    finally:
        store.close()
    damaged = records(beta, "dpc22")
    assert damaged != before and 1 not in [r[0] for r in damaged]
    report = alpha.replicate("dpc22", mailboxes=["INBOX"])["reports"][0]
    steps = report["steps"]
    assert steps[0] == "MAILBOXES INBOX" and "SELECT INBOX" in steps and steps[-1] == "ENDUSER"
    assert any(s.startswith("SETFLAGS [") for s in steps)
    assert records(beta, "dpc22") == before == records(alpha, "dpc22")


def test_moved_messages_are_never_uploaded_again(manual_pair: tuple[Node, Node]) -> None:
    alpha, beta = manual_pair
    alpha.add_account("mover")
    for i in range(20):
        deliver(alpha, "mover@example.test", f"move{i}", b"x" * 5000 + b"\r\n")
    alpha.replicate("mover")
    assert converged(alpha, beta, "mover")(), "initial sync"
    store = open_store(alpha)
    try:

        def move(s: Any) -> None:
            acct = accounts.get_account(s, "mover")
            src = mailbox.get_mailbox(s, acct, "INBOX")
            dst = mailbox.create_mailbox(s, acct, "zzz")
            messages.move_messages(s, acct, src, dst, list(range(1, 11)))

        store.write_sync(move)
    finally:
        store.close()
    report = alpha.replicate("mover")["reports"][0]
    assert report["uploaded"] == 0, report["steps"]
    assert any(s.startswith("RESERVE [10 msgs]") for s in report["steps"]), report["steps"]
    assert "EXPUNGE [10 msgs]" in report["steps"]
    assert report["bytes_sent"] < 0.3 * 10 * 5000
    assert converged(alpha, beta, "mover")(), "move replicated"
    assert len(records(beta, "mover", "zzz")) == 10


def test_partner_killed_mid_upload_then_convergence(own_manual_pair: tuple[Node, Node]) -> None:
    """SIGKILL the replica while a sync's UPLOAD batches (8 MB each) are still
    arriving: the sync fails clearly, nothing half-applied remains, and the
    next sync after the restart converges."""
    import threading

    alpha, beta = own_manual_pair
    alpha.add_account("upl")
    # ~24 MB that does not compress: three UPLOAD batches or more. Attachments,
    # as big mail is: a text/plain body of 400 KB of base64 has both nodes'
    # full-text indexers put 24 MB of trigrams into FTS5, most of the test's CPU.
    attachment = b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
    for i in range(60):
        body = base64.encodebytes(os.urandom(300_000)).replace(b"\n", b"\r\n")
        deliver(alpha, "upl@example.test", f"upl{i}", body, attachment)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = alpha.replicate("upl")
        except urllib.error.HTTPError as exc:
            outcome["error"] = exc.code

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(
        lambda: (
            beta.call("GET", "/v1/status")["counters"].get("sync_bytes_received", 0) > 1_000_000
        ),
        30,
        "the first UPLOAD batch to reach beta",
        interval=0.005,
    )
    beta.kill9()
    thread.join(60)
    # The run says the partner went away; it does not claim the account synced.
    assert "result" in outcome, outcome
    assert outcome["result"]["reports"] == []
    (error,) = outcome["result"]["errors"]
    assert error["account"] == "upl" and error["detail"], error
    beta.start()
    # Nothing half-applied: the batch that arrived was never referenced by a record.
    if _has_account(beta, "upl"):
        assert beta.mailbox("upl")["messages"] == []
    alpha.replicate("upl")
    assert converged(alpha, beta, "upl")()
    assert [r[1] for r in records(beta, "upl")] == [r[1] for r in records(alpha, "upl")]
    assert len(records(beta, "upl")) == 60


def _has_account(node: Node, account: str) -> bool:
    try:
        node.call("GET", f"/v1/accounts/{account}")
    except urllib.error.HTTPError:
        return False
    return True


def test_partner_down_keeps_the_log_then_everything_flows(pair: tuple[Node, Node]) -> None:
    alpha, beta = pair
    alpha.add_account("bulk")
    big = b"y" * 200_000 + b"\r\n"
    for i in range(40):
        deliver(alpha, "bulk@example.test", f"bulk{i}", big if i % 4 == 0 else b"small\r\n")
    beta.kill9()
    for i in range(40, 60):
        deliver(alpha, "bulk@example.test", f"bulk{i}")
    status = alpha.call("GET", "/v1/status")["replication"]
    assert status["sync_log_depth"] >= 1
    beta.start()
    wait_until(converged(alpha, beta, "bulk"), 20, "convergence after the partner's restart")
    assert len(records(beta, "bulk")) == 60
    wait_until(
        lambda: alpha.call("GET", "/v1/status")["replication"]["sync_log_depth"] == 0,
        10,
        "log drained",
    )


def test_split_writes_on_both_sides_keep_every_message(pair: tuple[Node, Node]) -> None:
    alpha, beta = pair
    alpha.add_account("split")
    for i in range(3):
        deliver(alpha, "split@example.test", f"common{i}")
    wait_until(converged(alpha, beta, "split"), 10, "initial sync")
    beta.stop()
    # Beta, cut off, takes mail for the account (as after a failover).
    store = open_store(beta)
    try:

        def deliver_on_beta(s: Any) -> None:
            import datetime as dt

            acct = accounts.get_account(s, "split")
            box = mailbox.get_mailbox(s, acct, "INBOX")
            for i in range(2):
                data = f"Subject: beta-only {i}\r\n\r\nkept\r\n".encode()
                guid, _ = store.spool.put(data)
                messages.append(
                    s, acct, box, guid=guid, size=len(data), internaldate=dt.datetime.now(dt.UTC)
                )

        store.write_sync(deliver_on_beta)
    finally:
        store.close()
    for i in range(2):
        deliver(alpha, "split@example.test", f"alpha-only{i}")
    alpha_guids = {r[1] for r in records(alpha, "split")}
    beta.start()
    wait_until(converged(alpha, beta, "split"), 20, "convergence after the split")
    final_alpha = records(alpha, "split")
    final_beta = records(beta, "split")
    assert final_alpha == final_beta
    assert len(final_alpha) == 7  # 3 common + 2 from each side
    assert alpha_guids <= {r[1] for r in final_alpha}
    uids = [r[0] for r in final_alpha]
    assert len(uids) == len(set(uids))
    # UIDs 4 and 5 named different messages on the two sides: neither keeps them.
    assert not {4, 5} & set(uids)
    assert alpha.call("GET", "/v1/status")["counters"].get("conflicts_repaired", 0) >= 4


def test_rename_delete_seen_subscriptions_quota_acl_follow(shared_pair: tuple[Node, Node]) -> None:
    alpha, beta = shared_pair
    alpha.add_account("follow", quota_limit=10_000_000)
    deliver(alpha, "follow@example.test", "f1")
    wait_until(converged(alpha, beta, "follow"), 10, "initial sync")
    store = open_store(alpha)
    try:

        def change(s: Any) -> None:
            acct = accounts.get_account(s, "follow")
            mailbox.create_mailbox(s, acct, "Old")
            mailbox.create_mailbox(s, acct, "Gone")
            mailbox.subscribe(s, acct, "Old")
            box = mailbox.get_mailbox(s, acct, "INBOX")
            messages.set_flags(s, acct, box, [1], ["\\Seen"], mode="add")
            mailbox.set_acl(s, acct, "INBOX", {"follow": "lrswipkxtecda", "anyone": "lr"})
            accounts.set_quota(s, "follow", 5_000_000)

        store.write_sync(change)
        wait_until(converged(alpha, beta, "follow"), 10, "changes replicated")
        uniqueids = {v[0]: k for k, v in boxes(beta, "follow").items()}

        def rename(s: Any) -> None:
            acct = accounts.get_account(s, "follow")
            mailbox.rename_mailbox(s, acct, "Old", "New")
            mailbox.delete_mailbox(s, acct, "Gone")

        store.write_sync(rename)
    finally:
        store.close()
    wait_until(converged(alpha, beta, "follow"), 10, "rename replicated")
    after = {v[0]: k for k, v in boxes(beta, "follow").items()}
    assert after["New"] == uniqueids["Old"]  # renamed by uniqueid
    assert "Gone" not in after and "Old" not in after
    listing = beta.call("GET", "/v1/accounts/follow/mailboxes")
    assert "New" in listing["subscriptions"]
    inbox = next(m for m in listing["mailboxes"] if m["name"] == "INBOX")
    assert inbox["acl"] == {"follow": "lrswipkxtecda", "anyone": "lr"}
    assert records(beta, "follow")[0][2] == ("\\Seen",)
    assert beta.call("GET", "/v1/accounts/follow")["quota_limit"] == 5_000_000


def _sync_post(
    node: Node, path: str, body: bytes, auth: tuple[str, str] | None
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{node.ports['sync']}/sync/v1/{path}", data=body, method="POST"
    )
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_bad_sync_requests_are_refused_without_state_change(shared_pair: tuple[Node, Node]) -> None:
    alpha, beta = shared_pair
    alpha.add_account("fence")
    deliver(alpha, "fence@example.test", "f")
    wait_until(converged(alpha, beta, "fence"), 10, "initial sync")
    before = boxes(beta, "fence")
    good = ("repl", "repl-secret")
    status, body = _sync_post(beta, "hello", b"{}", ("repl", "wrong"))
    assert status == 401
    status, _ = _sync_post(beta, "hello", b"{}", None)
    assert status == 401
    stale = {
        "account": "fence",
        "ownership": {"owner": "alpha", "home": "alpha", "epoch": 0, "state": "normal"},
        "push": {"account": "fence", "deletes": list(before)},
    }
    # The account's epoch on beta is 1: epoch 0 is stale.
    status, body = _sync_post(beta, "apply", json.dumps(stale).encode(), good)
    assert status == 409 and body["ownership"]["epoch"] == 1
    # Claiming that beta itself owns it is refused too.
    mine = dict(stale, ownership={"owner": "beta", "home": "beta", "epoch": 5, "state": "normal"})
    status, _ = _sync_post(beta, "apply", json.dumps(mine).encode(), good)
    assert status == 409
    status, body = _sync_post(beta, "apply", b"{not json", good)
    assert status == 400 and body["error"] == "sync_protocol_error"
    bad_record = {
        "account": "fence",
        "ownership": {"owner": "alpha", "home": "alpha", "epoch": 1, "state": "normal"},
        "push": {
            "account": "fence",
            "mailboxes": [{"summary": {"uniqueid": "zz"}, "upserts": [[0, "nope"]]}],
        },
    }
    status, _ = _sync_post(beta, "apply", json.dumps(bad_record).encode(), good)
    assert status == 400
    status, _ = _sync_post(beta, "upload", b"0" * 40 + b" 5\nabcde", good)
    assert status == 400  # bytes that do not hash to their GUID
    assert boxes(beta, "fence") == before


def test_compression_gives_identical_results_and_saves_bytes(
    manual_pair: tuple[Node, Node], tmp_path: Path
) -> None:
    alpha, beta = manual_pair
    gamma = make_single(tmp_path, "gamma")
    with running(gamma):
        alpha.add_account("zip")
        for i in range(30):
            deliver(alpha, "zip@example.test", f"zip{i}", (b"compressible text line\r\n" * 200))
        plain = alpha.replicate("zip", compress=False)["reports"][0]
        packed = alpha.replicate("zip", compress=True, target=f"127.0.0.1:{gamma.ports['sync']}")[
            "reports"
        ][0]
        assert boxes(beta, "zip") == boxes(gamma, "zip") == boxes(alpha, "zip")
        assert records(beta, "zip") == records(gamma, "zip")
        assert packed["bytes_sent"] < plain["bytes_sent"] / 3


@pytest.mark.parametrize("mode", ["synchronous"])
def test_synchronous_mode_acknowledges_after_the_partner_has_it(tmp_path: Path, mode: str) -> None:
    alpha, beta = make_pair(
        tmp_path, {"alpha": {"sync": {"sync_mode": mode, "sync_repeat_interval": "30s"}}}
    )
    try:
        alpha.start()
        beta.start()
        alpha.add_account("sync1")
        time.sleep(0.2)
        alpha.replicate("sync1")
        deliver(alpha, "sync1@example.test", "now")
        # No waiting: the 250 came after beta had it.
        assert len(records(beta, "sync1")) == 1
        beta.kill9()
        started = time.monotonic()
        deliver(alpha, "sync1@example.test", "partner-down")
        assert time.monotonic() - started < 10
        assert alpha.call("GET", "/v1/status")["counters"].get("sync_synchronous_fallbacks", 0) >= 1
    finally:
        alpha.stop()
        beta.stop()


def test_rolling_deltas_carry_new_mail_and_a_stale_replica_falls_back_to_the_full_compare(
    shared_pair: tuple[Node, Node],
) -> None:
    """After one full sync, a delivery travels as one DELTA request; damage on
    the replica makes the next delta stale (412), and the full compare that
    follows undoes the damage as the seed's example wants."""
    alpha, beta = shared_pair
    alpha.add_account("fast")
    deliver(alpha, "fast@example.test", "first")
    wait_until(converged(alpha, beta, "fast"), 10, "the first (full) sync")
    counters = alpha.call("GET", "/v1/status")["counters"]
    deltas_before = counters.get("sync_deltas", 0)
    for i in range(5):
        deliver(alpha, "fast@example.test", f"next{i}")
        wait_until(converged(alpha, beta, "fast"), 10, f"delivery {i} on beta")
    # beta shows the last message as soon as it applied it; alpha counts the
    # delta when the answer is back, a moment later.
    wait_until(
        lambda: (
            alpha.call("GET", "/v1/status")["counters"].get("sync_deltas", 0) >= deltas_before + 5
        ),
        10,
        "five deltas counted",
    )
    assert records(beta, "fast") == records(alpha, "fast")
    # Behind the owner's back, on the replica: expunge UID 1.
    store = open_store(beta)
    try:

        def damage(s: Any) -> None:
            acct = accounts.get_account(s, "fast")
            messages.expunge(s, acct, mailbox.get_mailbox(s, acct, "INBOX"), [1])

        store.write_sync(damage)
    finally:
        store.close()
    fallbacks = counters.get("sync_delta_fallbacks", 0)
    deliver(alpha, "fast@example.test", "after-damage")
    wait_until(converged(alpha, beta, "fast"), 10, "the full compare to repair beta")
    assert records(beta, "fast") == records(alpha, "fast")
    assert 1 in [uid for uid, _, _ in records(beta, "fast")]
    after = alpha.call("GET", "/v1/status")["counters"]
    assert after.get("sync_delta_fallbacks", 0) == fallbacks + 1


def test_status_of_one_account_shows_its_own_syncs(shared_pair: tuple[Node, Node]) -> None:
    alpha, beta = shared_pair
    alpha.add_account("synced")
    alpha.add_account("quiet")
    wait_until(converged(alpha, beta, "quiet"), 10, "the accounts on beta")

    def settled() -> bool:  # the account's creation synced, nothing of it left to send
        status = alpha.call("GET", "/v1/status?account=quiet")
        return bool(status["syncs"] >= 1 and status["sync_log_depth"] == 0)

    wait_until(settled, 10, "quiet's creation synced")
    before = alpha.call("GET", "/v1/status?account=quiet")
    deliver(alpha, "synced@example.test", "one")
    wait_until(converged(alpha, beta, "synced"), 10, "the delivery on beta")
    wait_until(
        lambda: alpha.call("GET", "/v1/status?account=synced")["syncs"] >= 2,
        10,
        "the account's own sync count",
    )
    synced = alpha.call("GET", "/v1/status?account=synced")
    assert synced["account"] == "synced" and synced["last_success"] is not None
    assert synced["sync_log_depth"] == 0 and synced["last_error"] == ""
    quiet = alpha.call("GET", "/v1/status?account=quiet")
    assert quiet["syncs"] == before["syncs"]  # the other account's syncs are not its own


def test_rolling_backs_off_while_the_partner_is_down(pair: tuple[Node, Node]) -> None:
    """Partner down: rows stay, retries back off (here up to sync_reconnect_maxwait
    = 1 s) instead of hammering it every sync_repeat_interval (200 ms)."""
    alpha, beta = pair
    alpha.add_account("patient")
    wait_until(converged(alpha, beta, "patient"), 10, "the account on beta")
    beta.stop()
    before = alpha.call("GET", "/v1/status")["replication"]["failures"]
    deliver(alpha, "patient@example.test", "while-down")
    time.sleep(2.5)  # the interval under test: how many attempts fit in it
    status = alpha.call("GET", "/v1/status")["replication"]
    attempts = status["failures"] - before
    # Tries at 0, 0.25, 0.75, 1.75 s (pauses 0.25, 0.5, 1, 1 ...): 4 in 2.5 s;
    # without back-off, one per 200 ms interval: ~12.
    assert 2 <= attempts <= 6, attempts
    assert status["reachable"] is False and status["last_error"]
    assert status["sync_log_depth"] >= 1  # the change waits in the log
    beta.start()
    wait_until(converged(alpha, beta, "patient"), 20, "everything flows once beta is back")


def test_one_failing_account_does_not_stall_the_others(pair: tuple[Node, Node]) -> None:
    """On the replica another account holds the uniqueid of stuck's INBOX, so
    every push of stuck fails there; fine's mail goes on replicating at once."""
    alpha, beta = pair
    alpha.add_account("fine")
    wait_until(converged(alpha, beta, "fine"), 10, "fine on beta")
    # stuck exists only on alpha for now: beta must not see it before the trap is set.
    beta.stop()
    alpha.add_account("stuck")
    inbox = next(
        m["uniqueid"]
        for m in alpha.call("GET", "/v1/accounts/stuck/mailboxes")["mailboxes"]
        if m["name"] == "INBOX"
    )
    store = open_store(beta)
    try:

        def trap(s: Any) -> None:
            other = accounts.create_account(s, "squatter", password_hash="x", create_inbox=False)
            mailbox.create_mailbox(s, other, "INBOX", uniqueid=inbox)

        store.write_sync(trap)
    finally:
        store.close()
    beta.start()
    deliver(alpha, "stuck@example.test", "never-arrives")
    wait_until(
        lambda: bool(alpha.call("GET", "/v1/status?account=stuck")["last_error"]),
        20,
        "stuck's sync to fail",
    )
    for i in range(3):
        deliver(alpha, "fine@example.test", f"fine{i}")
        wait_until(converged(alpha, beta, "fine"), 10, f"fine's message {i} on beta")
    stuck = alpha.call("GET", "/v1/status?account=stuck")
    assert stuck["sync_log_depth"] >= 1 and stuck["failures"] >= 1
    assert "belongs to another account" in stuck["last_error"], stuck["last_error"]


def modseqs(node: Node, account: str) -> tuple[int, list[tuple[int, int]]]:
    """INBOX's HIGHESTMODSEQ and (uid, modseq) of each live record, from the store."""
    store = open_store(node)
    try:

        def read(s: Any) -> tuple[int, list[tuple[int, int]]]:
            box = mailbox.get_mailbox(s, accounts.get_account(s, account), "INBOX")
            live = messages.live_records(s, box)
            return box.highestmodseq, sorted((r.uid, r.modseq) for r in live)

        return store.read_sync(read)
    finally:
        store.close()


def test_split_brain_flag_churn_converges_modseqs_exactly(pair: tuple[Node, Node]) -> None:
    """Issue 15 item 3: the replica, cut off, changes flags back and forth
    (content as before, modseqs higher); after the merge both nodes hold the
    same per-record modseqs and HIGHESTMODSEQ, and it has not gone back."""
    alpha, beta = pair
    alpha.add_account("churn")
    for i in range(3):
        deliver(alpha, "churn@example.test", f"common{i}")
    wait_until(converged(alpha, beta, "churn"), 10, "initial sync")
    beta.stop()
    store = open_store(beta)
    try:

        def churn(s: Any) -> None:
            acct = accounts.get_account(s, "churn")
            box = mailbox.get_mailbox(s, acct, "INBOX")
            for _ in range(6):
                messages.set_flags(s, acct, box, [1, 2], ["\\Flagged"], mode="add")
                messages.set_flags(s, acct, box, [1, 2], ["\\Flagged"], mode="remove")

        store.write_sync(churn)
    finally:
        store.close()
    beta_seen, _ = modseqs(beta, "churn")
    deliver(alpha, "churn@example.test", "alpha-only")
    assert modseqs(alpha, "churn")[0] < beta_seen
    beta.start()
    wait_until(converged(alpha, beta, "churn"), 20, "convergence after the split")
    wait_until(
        lambda: alpha.call("GET", "/v1/status")["replication"]["sync_log_depth"] == 0,
        10,
        "log drained",
    )
    on_alpha, on_beta = modseqs(alpha, "churn"), modseqs(beta, "churn")
    assert on_alpha == on_beta
    assert on_alpha[0] >= beta_seen  # RFC 7162 3.1: never back for beta's clients
    assert len(on_alpha[1]) == 4


def test_account_add_owned_by_the_partner_is_created_there(shared_pair: tuple[Node, Node]) -> None:
    """Issue 15 item 6: ``account add USER --owner PARTNER`` on alpha makes the
    account on beta, its owner (not a row in limbo on alpha): beta delivers to
    it, replicates it to alpha, and ``replicate`` there is not refused."""
    alpha, beta = shared_pair
    made = alpha.add_account("elsewhere", owner="beta")
    assert made["owner"] == "beta" and made["forwarded_to"] == "beta"
    assert beta.call("GET", "/v1/accounts/elsewhere")["owner"] == "beta"
    deliver(beta, "elsewhere@example.test", "on its owner")
    wait_until(converged(beta, alpha, "elsewhere"), 10, "alpha to get the account")
    assert alpha.call("GET", "/v1/accounts/elsewhere")["owner"] == "beta"
    report = beta.replicate("elsewhere")["reports"][0]
    assert report["account"] == "elsewhere"
    assert len(records(alpha, "elsewhere")) == 1


def rcpt_reply(node: Node, rcpt: str) -> tuple[int, bytes]:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"]) as lmtp:
        lmtp.ehlo("test")
        lmtp.mail("sender@example.test")
        return lmtp.rcpt(rcpt)


def test_unknown_recipient_asks_the_partner_before_550(pair: tuple[Node, Node]) -> None:
    """Issue 15 item 5: an account beta has and alpha does not yet (created
    there, its sync not run: here its log rows are dropped so it cannot
    arrive) gets a 451 on alpha, not a permanent 550; a recipient neither
    knows is 550; with beta down alpha cannot tell, so 451 again."""
    alpha, beta = pair
    store = open_store(beta)
    try:

        def create_unsynced(s: Any) -> None:
            from sqlalchemy import delete

            from engine.models import SyncLogRow

            accounts.create_account(s, "newcomer", password="pw")
            ownership_table.create(s, "newcomer", "beta")
            s.flush()
            s.execute(delete(SyncLogRow).where(SyncLogRow.account == "newcomer"))

        store.write_sync(create_unsynced)
    finally:
        store.close()
    assert not _has_account(alpha, "newcomer")
    code, text = rcpt_reply(alpha, "newcomer@example.test")
    assert code == 451, text
    assert rcpt_reply(beta, "newcomer@example.test")[0] == 250
    assert rcpt_reply(alpha, "nobody@example.test")[0] == 550
    beta.stop()
    code, text = rcpt_reply(alpha, "nobody@example.test")
    assert code == 451 and b"4.4.3" in text, text


def test_a_reset_on_the_sync_channel_logs_one_line_not_a_traceback(
    shared_pair: tuple[Node, Node],
) -> None:
    """Issue 15 item 7: a peer that resets the sync connection mid-request is
    one INFO line on the listener, not an ERROR with a traceback."""
    import socket
    import struct

    alpha, beta = shared_pair
    log_path = beta.workdir / f"{beta.name}.log"
    before = log_path.read_text(errors="replace")
    auth = base64.b64encode(b"repl:repl-secret").decode()
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", beta.ports["sync"]))
        sock.sendall(
            b"POST /sync/v1/upload HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Basic {auth}\r\n".encode()
            + b"Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
            + b"x" * 1000
        )
        time.sleep(0.2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST, with the body half sent

    def logged() -> bool:
        return "reset" in log_path.read_text(errors="replace")[len(before) :]

    wait_until(logged, 5, "the reset to be logged")
    new = log_path.read_text(errors="replace")[len(before) :]
    assert "Traceback" not in new and "ERROR" not in new, new[-2000:]
    alpha.add_account("after-reset")
    deliver(alpha, "after-reset@example.test", "still flows")
    wait_until(converged(alpha, beta, "after-reset"), 10, "sync after the resets")


def test_an_expunge_on_the_losing_side_comes_back_and_is_counted(
    pair: tuple[Node, Node],
) -> None:
    """Issue 15 item 7: a message the cut-off replica expunged, the owner still
    has: after the merge it is live on both, and the repair counts it."""
    alpha, beta = pair
    alpha.add_account("undone")
    for i in range(2):
        deliver(alpha, "undone@example.test", f"keep{i}")
    wait_until(converged(alpha, beta, "undone"), 10, "initial sync")
    beta.stop()
    store = open_store(beta)
    try:

        def expunge_one(s: Any) -> None:
            acct = accounts.get_account(s, "undone")
            messages.expunge(s, acct, mailbox.get_mailbox(s, acct, "INBOX"), [1])

        store.write_sync(expunge_one)
    finally:
        store.close()
    beta.start()
    report = alpha.replicate("undone")["reports"][0]
    counted = alpha.call("GET", "/v1/status")["counters"].get("messages_resurrected", 0)
    assert counted == 1 and report["resurrected"] in (0, 1)
    wait_until(converged(alpha, beta, "undone"), 10, "convergence")
    assert [r[0] for r in records(beta, "undone")] == [1, 2]
