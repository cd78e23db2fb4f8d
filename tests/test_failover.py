"""Failover, return and failback with two real daemons killed and restarted for real (issue 4)."""

from __future__ import annotations

import base64
import json
import poplib
import smtplib
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from engine.store import Store
from ownership import table as ownership_table
from peerd.services.lmtp.front import RCPT_CACHE_SECONDS
from tests.harness.daemons import ModuleNodes
from tests.nodes import Node, idling, make_pair, peerctl, running
from tests.procs import wait_until


def deliver(node: Node, rcpt: str, subject: str) -> tuple[int, bytes]:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30) as lmtp:
        lmtp.docmd("LHLO", "t")
        lmtp.mail("s@example.test")
        code, text = lmtp.rcpt(rcpt)
        if code != 250:
            return code, text
        return lmtp.data(
            f"Subject: {subject}\r\nMessage-ID: <{subject}@t>\r\n\r\nbody\r\n".encode()
        )


def guids(node: Node, account: str) -> list[str]:
    try:
        return [m["guid"] for m in node.mailbox(account)["messages"]]
    except urllib.error.HTTPError as exc:  # not there yet
        exc.close()
        return []


def owner(node: Node, account: str) -> dict[str, Any]:
    return dict(node.call("GET", f"/v1/owner/{account}"))


def api_error(call: Any) -> int:
    try:
        call()
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


def test_failover_return_and_failback_lose_nothing(pair: tuple[Node, Node]) -> None:
    alpha, beta = pair
    alpha.add_account("alice")
    beta.add_account("bob")
    assert deliver(alpha, "alice@example.test", "a1")[0] == 250
    wait_until(lambda: guids(beta, "alice") == guids(alpha, "alice") != [], 10, "alice on beta")
    wait_until(lambda: _has(alpha, "bob"), 10, "bob on alpha")

    # Refused while the partner answers.
    assert api_error(lambda: beta.call("POST", "/v1/failover", {})) == 409

    # alpha accepts mail beta never sees, then dies.
    beta.stop()
    for i in range(2):
        assert deliver(alpha, "alice@example.test", f"unreplicated{i}")[0] == 250
    alpha_only = set(guids(alpha, "alice"))
    alpha.kill9()
    beta.start()

    result = beta.call("POST", "/v1/failover", {})
    assert [r["account"] for r in result["taken"]] == ["alice"]
    assert owner(beta, "alice")["epoch"] == 2 and owner(beta, "alice")["state"] == "failed_over"
    # A second failover in a row takes nothing more and raises no epoch.
    assert beta.call("POST", "/v1/failover", {})["taken"] == []
    assert owner(beta, "alice")["epoch"] == 2
    assert deliver(beta, "alice@example.test", "on-beta")[0] == 250
    route = beta.call("GET", "/v1/route/alice")
    assert route["owner"] == "beta" and route["lmtp"] == f"127.0.0.1:{beta.ports['lmtp']}"

    # alpha returns: it learns the higher epoch before serving, refuses
    # alice's mail, and hands over what it accepted and never replicated.
    alpha.start()
    assert owner(alpha, "alice")["owner"] == "beta"
    code, text = deliver(alpha, "alice@example.test", "refused")
    assert code == 451 and b"beta" in text
    wait_until(lambda: alpha_only <= set(guids(beta, "alice")), 20, "alpha's mail handed to beta")
    wait_until(
        lambda: set(guids(alpha, "alice")) == set(guids(beta, "alice")),
        20,
        "alpha is a replica again",
    )
    assert len(guids(beta, "alice")) == 4
    assert beta.call("GET", "/v1/status")["counters"].get("conflicts_repaired", 0) >= 2

    # Failback: alice goes home at a higher epoch, nothing lost.
    result = alpha.call("POST", "/v1/failback", {})
    assert [r["account"] for r in result["partner"]["moved"]] == ["alice"]
    assert owner(alpha, "alice")["owner"] == "alpha" and owner(alpha, "alice")["epoch"] == 3
    assert owner(beta, "alice")["owner"] == "alpha"
    assert deliver(alpha, "alice@example.test", "home")[0] == 250
    assert deliver(beta, "alice@example.test", "not-here")[0] == 451
    wait_until(lambda: len(guids(beta, "alice")) == 5, 10, "replicated home")
    assert owner(alpha, "bob")["owner"] == "beta"  # bob never moved


def _has(node: Node, account: str) -> bool:
    try:
        node.call("GET", f"/v1/accounts/{account}")
    except urllib.error.HTTPError:
        return False
    return True


def test_switchover_moves_accounts_both_ways(shared_pair: tuple[Node, Node]) -> None:
    alpha, beta = shared_pair
    for name in ("carol", "dave"):
        alpha.add_account(name)
        deliver(alpha, f"{name}@example.test", f"{name}-1")
    result = alpha.call("POST", "/v1/switchover", {"accounts": ["carol"]})
    assert [r["account"] for r in result["moved"]] == ["carol"]
    assert owner(alpha, "carol")["owner"] == "beta" == owner(beta, "carol")["owner"]
    assert guids(beta, "carol") == guids(alpha, "carol") != []
    assert deliver(alpha, "carol@example.test", "old-owner")[0] == 451
    assert deliver(beta, "carol@example.test", "new-owner")[0] == 250
    # Asked on the node that does not own it, it is forwarded to the owner.
    result = alpha.call("POST", "/v1/switchover", {"accounts": ["carol"]})
    assert [r["account"] for r in result["forwarded"]["moved"]] == ["carol"]
    assert owner(alpha, "carol")["owner"] == "alpha"
    wait_until(lambda: len(guids(alpha, "carol")) == 2, 10, "carol back with her mail")
    moved = alpha.call("POST", "/v1/accounts/dave/move", {"to": "beta"})
    assert moved["home"] == "beta"
    wait_until(lambda: owner(beta, "dave")["home"] == "beta", 10, "home replicated")


@pytest.mark.parametrize("workers", [1, 0], ids=["worker", "in-daemon"])
def test_the_old_owner_refuses_at_the_next_rcpt(module_nodes: ModuleNodes, workers: int) -> None:
    # The LMTP front skips the recipient check for a recipient it accepted
    # in the last RCPT_CACHE_SECONDS; a switchover must wipe that "yes",
    # in a worker process (a frame over its pipe) and in the daemon alike.
    # (The module's pair has one worker, the default; the other is shared
    # with no test.)
    alpha, _ = module_nodes.pair(None if workers else {"alpha": {"lmtp": {"workers": 0}}})
    status = alpha.call("GET", "/v1/status")
    assert (len(status["lmtp"]["workers"]) == 1) if workers else ("lmtp" not in status)
    alpha.add_account("cleo")
    assert deliver(alpha, "cleo@example.test", "warm")[0] == 250
    started = time.monotonic()
    alpha.call("POST", "/v1/switchover", {"accounts": ["cleo"]})
    with smtplib.LMTP("127.0.0.1", alpha.ports["lmtp"], timeout=30) as lmtp:
        lmtp.docmd("LHLO", "t")
        lmtp.mail("s@example.test")
        code, text = lmtp.rcpt("cleo@example.test")
    elapsed = time.monotonic() - started
    # Past the window the cache would have expired anyway: nothing shown.
    assert elapsed < RCPT_CACHE_SECONDS, f"the switchover took {elapsed:.2f} s"
    assert code == 451 and b"beta" in text, (code, text)


def test_a_forced_failover_ends_the_old_owners_sessions(pair: tuple[Node, Node]) -> None:
    # alpha is up and learns of the new owner from beta's rows, not from a
    # command of its own: its open IMAP and POP3 sessions for alice end too.
    alpha, beta = pair
    alpha.add_account("alice")
    # beta fails over what it holds: alice first reaches it by replication.
    wait_until(lambda: _has(beta, "alice"), 15, "alice on beta")
    imap, stream = idling(alpha)
    pop = poplib.POP3("127.0.0.1", alpha.ports["pop3"], timeout=20)
    try:
        pop.user("alice")
        pop.pass_("secret")
        beta.call("POST", "/v1/failover", {"force": True})
        assert b"* BYE [UNAVAILABLE]" in stream.read()  # read until alpha closes
        assert pop.file.readline().startswith(b"-ERR [SYS/TEMP] alice moved")
        assert pop.file.readline() == b""
    finally:
        pop.close()
        stream.close()
        imap.close()


def problem_of(call: Any) -> tuple[int, dict[str, Any]]:
    """(status, problem+json body) of a refused control-API call."""
    try:
        call()
    except urllib.error.HTTPError as exc:
        with exc:
            assert exc.headers["Content-Type"].startswith("application/problem+json")
            return exc.code, json.loads(exc.read())
    raise AssertionError("the call was not refused")


def test_failback_waits_until_the_returned_node_has_handed_over(tmp_path: Path) -> None:
    # No rolling replication on either node: a change stays in its node's
    # sync log until someone syncs it, so "not caught up" holds still.
    quiet = {"sync": {"sync_log": False}}
    alpha, beta = make_pair(tmp_path, {"alpha": quiet, "beta": quiet})
    with running(alpha, beta):
        alpha.add_account("alice")
        alpha.add_account("amy")
        assert deliver(alpha, "alice@example.test", "a1")[0] == 250
        alpha.call("POST", "/v1/replicate", {"all": True})
        alpha.call("POST", "/v1/switchover", {"accounts": ["alice", "amy"]})
        assert owner(alpha, "alice")["owner"] == "beta" and owner(alpha, "alice")["home"] == "alpha"

        # beta, the owner now, takes mail it has not replicated to alpha yet:
        # that does not refuse (beta's switchover drains it). A change alpha
        # holds and never handed over does.
        assert deliver(beta, "alice@example.test", "b1")[0] == 250
        alpha.call("POST", "/v1/synclog", {"account": "amy"})
        status, body = problem_of(lambda: alpha.call("POST", "/v1/failback", {}))
        assert status == 409 and body["code"] == "not_caught_up"
        assert "amy: 1 change(s) here not yet handed to beta" in body["detail"]
        assert "alice" not in body["detail"]
        assert [(p["account"], p["node"]) for p in body["pending"]] == [("amy", "alpha")]
        # Refused means untouched: both still say beta, at the same epoch.
        assert owner(alpha, "alice")["epoch"] == owner(beta, "alice")["epoch"] == 2
        assert owner(beta, "alice")["owner"] == "beta"
        cli = peerctl(alpha, "failback")
        assert cli.returncode == 1 and "not_caught_up" not in cli.stdout
        # (a progress line comes first when the command ran over 2 s)
        assert cli.stderr.splitlines()[-1].startswith(
            "peerctl: NotCaughtUp: alpha has not caught up with beta"
        )

        # Handing over: alpha (its rolling worker on now) hands amy's row to
        # beta. beta's own rows (alice's b1, amy's) are still pending there:
        # the failback goes ahead, beta syncs them while holding the writes.
        alpha.stop()
        alpha.config.write_text(
            alpha.config.read_text().replace("sync_log = false", "sync_log = true")
        )
        alpha.start()
        wait_until(
            lambda: alpha.call("GET", "/v1/status")["sync_log_depth"] == 0, 15, "amy handed over"
        )
        pending = beta.call("GET", "/v1/synclog")["pending"]
        assert "alice" in [p["account"] for p in pending]
        result = alpha.call("POST", "/v1/failback", {})
        assert sorted(r["account"] for r in result["partner"]["moved"]) == ["alice", "amy"]
        assert 0 < result["writes_held"] <= result["seconds"]
        assert owner(alpha, "alice")["owner"] == "alpha" == owner(beta, "alice")["owner"]
        assert owner(alpha, "alice")["epoch"] == 3
        assert len(guids(alpha, "alice")) == 2
        assert deliver(alpha, "alice@example.test", "home")[0] == 250


def test_a_node_whose_partner_is_down_at_start_serves_only_its_own(tmp_path: Path) -> None:
    alpha, beta = make_pair(tmp_path)
    with running(alpha, beta):
        alpha.add_account("alice")
        beta.add_account("bob")
        wait_until(lambda: _has(alpha, "bob") and _has(beta, "alice"), 15, "accounts replicated")
    # Both stopped; alpha comes back alone.
    alpha.start()
    try:
        status = alpha.call("GET", "/v1/status")
        assert status["startup"].startswith("partner unreachable at start")
        assert (
            "serving only the accounts this node owned at its last known epoch"
            in (status["startup"])
        )
        log = (tmp_path / "alpha.log").read_text()
        assert "partner unreachable at start" in log
        assert deliver(alpha, "alice@example.test", "while-alone")[0] == 250
        code, text = deliver(alpha, "bob@example.test", "not-mine")
        assert code == 451 and b"beta" in text
        client = poplib.POP3("127.0.0.1", alpha.ports["pop3"], timeout=20)
        try:
            client.user("bob")
            with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\].*beta"):
                client.pass_("secret")
            client.user("alice")
            assert client.pass_("secret").startswith(b"+OK")
            assert client.stat()[0] == 1
        finally:
            client.close()
        # beta returns: what alpha took alone reaches it, and alpha, which
        # kept trying, exchanges ownership with it and says so.
        beta.start()
        wait_until(lambda: len(guids(beta, "alice")) == 1, 20, "alpha's mail on beta")
        wait_until(
            lambda: "exchanged when it answered" in alpha.call("GET", "/v1/status")["startup"],
            20,
            "alpha's late ownership exchange",
        )
    finally:
        alpha.stop()
        beta.stop()


def test_pop3_login_for_the_partners_account_names_the_owner(
    shared_pair: tuple[Node, Node],
) -> None:
    alpha, beta = shared_pair
    beta.add_account("bob")
    wait_until(lambda: _has(alpha, "bob"), 15, "bob on alpha")
    client = poplib.POP3("127.0.0.1", alpha.ports["pop3"], timeout=20)
    try:
        client.user("bob")
        with pytest.raises(poplib.error_proto) as refused:
            client.pass_("secret")
        assert refused.value.args[0] == b"-ERR [SYS/TEMP] bob is served by beta"
        # The same through AUTH PLAIN (RFC 5034), and nothing is opened.
        plain = base64.b64encode(b"\0bob\0secret").decode()
        with pytest.raises(poplib.error_proto, match=r"SYS/TEMP.*served by beta"):
            client._shortcmd(f"AUTH PLAIN {plain}")  # type: ignore[attr-defined]  # no public AUTH
        with pytest.raises(poplib.error_proto):
            client.stat()
    finally:
        client.close()
    # A wrong password is an authentication failure, not a referral.
    other = poplib.POP3("127.0.0.1", alpha.ports["pop3"], timeout=20)
    try:
        other.user("bob")
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            other.pass_("wrong")
    finally:
        other.close()
    # On the owner it works.
    owner_side = poplib.POP3("127.0.0.1", beta.ports["pop3"], timeout=20)
    try:
        owner_side.user("bob")
        assert owner_side.pass_("secret").startswith(b"+OK")
    finally:
        owner_side.close()


def test_split_brain_at_equal_epochs_resolved_as_the_runbook_says(tmp_path: Path) -> None:
    """Both nodes own alice at epoch 2 and both took mail; docs/failover.md's
    procedure makes beta keep it, and no message is lost."""
    alpha, beta = make_pair(tmp_path)
    with running(alpha, beta):
        alpha.add_account("alice")
        assert deliver(alpha, "alice@example.test", "before")[0] == 250
        wait_until(lambda: len(guids(beta, "alice")) == 1, 15, "alice on beta")
    # Cut apart: alpha raises its epoch alone (a home move it could not
    # send), beta fails over alone. Both now own alice at epoch 2.
    alpha.start()
    alpha.call("POST", "/v1/accounts/alice/move", {"to": "alpha"})
    assert deliver(alpha, "alice@example.test", "on-alpha")[0] == 250
    alpha.stop()
    beta.start()
    beta.call("POST", "/v1/failover", {})
    assert deliver(beta, "alice@example.test", "on-beta")[0] == 250
    alpha.start()
    try:
        assert (owner(alpha, "alice")["owner"], owner(alpha, "alice")["epoch"]) == ("alpha", 2)
        assert (owner(beta, "alice")["owner"], owner(beta, "alice")["epoch"]) == ("beta", 2)
        # The runbook's wrong step 1: a switchover is refused by the fence
        # at equal epochs (and would hand the account away if it were not).
        status, body = problem_of(
            lambda: beta.call("POST", "/v1/switchover", {"accounts": ["alice"]})
        )
        assert (status, body["title"], body["code"]) == (409, "SyncRefused", "sync_refused")
        assert (
            body["detail"] == "alpha owns alice at epoch 2; refusing changes from beta at epoch 2"
        )
        assert owner(beta, "alice")["state"] == "failed_over"  # unmarked, unchanged

        # Step 1: on the node that keeps it, a home move raises the epoch.
        beta.call("POST", "/v1/accounts/alice/move", {"to": "alpha"})
        assert (owner(alpha, "alice")["owner"], owner(alpha, "alice")["epoch"]) == ("beta", 3)
        # Step 2: sync from the keeper; the replica's mail is copied in.
        # (The rolling workers may have got there first: the repair is
        # counted either way.)
        assert beta.replicate("alice")["errors"] == []
        wait_until(lambda: len(guids(beta, "alice")) == 3, 15, "alpha's mail copied to beta")
        everything = set(guids(beta, "alice"))
        assert beta.call("GET", "/v1/status")["counters"]["conflicts_repaired"] >= 1
        wait_until(lambda: set(guids(alpha, "alice")) == everything, 15, "alpha a replica")
        code, _ = deliver(alpha, "alice@example.test", "refused")
        assert code == 451
        # Step 3: failback when wanted (alice's home is alpha).
        wait_until(lambda: alpha.call("GET", "/v1/status")["sync_log_depth"] == 0, 15, "drained")
        alpha.call("POST", "/v1/failback", {})
        assert owner(beta, "alice")["owner"] == "alpha" and owner(beta, "alice")["epoch"] == 4
        assert set(guids(alpha, "alice")) == everything
    finally:
        alpha.stop()
        beta.stop()


def test_a_switchover_cut_short_by_a_crash_does_not_fence_for_ever(tmp_path: Path) -> None:
    alpha, beta = make_pair(tmp_path)
    with running(alpha, beta):
        alpha.add_account("alice")
    # What a crash between "moving" and the flip leaves behind, written
    # into alpha's stopped database directly.
    store = Store(f"sqlite:///{alpha.db_path}", tmp_path / "var" / "alpha", owner=False)
    try:
        store.write_sync(lambda s: ownership_table.mark_moving(s, ["alice"], "alpha"))
        moving = store.read_sync(lambda s: ownership_table.get(s, "alice"))
        assert moving is not None and moving.state == "moving"
    finally:
        store.close()
    with running(alpha, beta):
        row = owner(alpha, "alice")
        assert (row["owner"], row["epoch"], row["state"]) == ("alpha", 1, "normal")
        assert row["reason"] == "switchover interrupted by a restart"
        assert "left moving by an interrupted switchover" in (tmp_path / "alpha.log").read_text()
        assert deliver(alpha, "alice@example.test", "after-restart")[0] == 250


def test_a_returning_node_logs_one_summary_line_not_one_per_account(tmp_path: Path) -> None:
    alpha, beta = make_pair(tmp_path)
    names = [f"user{i:02d}" for i in range(12)]
    with running(alpha, beta):
        for name in names:
            alpha.add_account(name)
        wait_until(lambda: all(_has(beta, name) for name in names), 20, "accounts on beta")
        alpha.stop()
        assert len(beta.call("POST", "/v1/failover", {})["taken"]) == len(names)
        alpha.start()
        wait_until(lambda: owner(alpha, "user00")["owner"] == "beta", 20, "alpha learns")
        log = (alpha.workdir / "alpha.log").read_text()
    warnings = [line for line in log.splitlines() if " WARNING " in line]
    summary = [line for line in warnings if "owned by the partner now" in line]
    assert len(summary) == 1, warnings
    assert "12 account(s)" in summary[0] and "user00" in summary[0], summary
    assert "and 2 more" in summary[0], summary
    per_account = [line for line in warnings if any(f" {n} " in line for n in names[10:])]
    assert per_account == [], per_account
