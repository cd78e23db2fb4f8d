"""``peerctl`` as a real subprocess against a real pair: status -u, replicate, synclog,
owner, accounts, failover, switchover, failback and reconcile, text and ``--json``."""

from __future__ import annotations

import json
import smtplib
from functools import partial
from pathlib import Path
from typing import Any

from tests.nodes import Node, make_pair, peerctl, running
from tests.procs import wait_until


def ok(node: Node, *args: str) -> str:
    result = peerctl(node, *args)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def as_json(node: Node, *args: str) -> Any:
    return json.loads(ok(node, "--json", *args))


def deliver(node: Node, account: str, subject: str, body: bytes = b"body\r\n") -> None:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30) as lmtp:
        refused = lmtp.sendmail(
            "s@example.test",
            [f"{account}@example.test"],
            f"Subject: {subject}\r\nMessage-ID: <{subject}@t>\r\n\r\n".encode() + body,
        )
    assert refused == {}


def guids(node: Node, account: str) -> list[str]:
    return [m["guid"] for m in node.mailbox(account)["messages"]]


def test_status_u_replicate_synclog_owner_accounts_reconcile(tmp_path: Path) -> None:
    # alpha replicates only when told (no rolling worker, no default
    # compression): every change waits in its sync log until `replicate`.
    alpha, beta = make_pair(
        tmp_path, {"alpha": {"sync": {"sync_log": False, "sync_compress": False}}}
    )
    with running(alpha, beta):
        alpha.add_account("alice")
        alpha.add_account("zed")
        beta.add_account("carol")
        alpha.call("POST", "/v1/replicate", {"all": True})
        deliver(alpha, "alice", "one")
        deliver(alpha, "alice", "two")

        # status -u: the account's owner, what waits in the log, and the partner.
        text = ok(alpha, "status", "-u", "alice").splitlines()
        assert text[0] == "account alice on alpha: owner alpha (home alpha), epoch 1, normal"
        assert text[1].startswith("sync log depth ") and "lag " in text[1]
        assert not text[1].startswith("sync log depth 0 ")
        assert text[2].startswith(f"partner beta (127.0.0.1:{beta.ports['sync']}): reachable ")
        one = as_json(alpha, "status", "-u", "alice")
        assert one["account"] == "alice" and one["owner"] == "alpha" and one["epoch"] == 1
        assert one["sync_log_depth"] >= 1 and one["oldest_pending"] and one["lag_seconds"] > 0
        assert {"reachable", "last_success", "last_error"} <= set(one)
        missing = peerctl(alpha, "status", "-u", "nobody")
        assert missing.returncode == 1 and "nobody" in missing.stderr

        # replicate -u -m -v: the seed's steps, and the log is empty after.
        steps = ok(alpha, "replicate", "-u", "alice", "-m", "INBOX", "-v").splitlines()
        assert steps[:2] == ["MAILBOXES INBOX", "USER_SOME alice"]
        assert "UPLOAD [2 msgs]" in steps and steps[-1] == "ENDUSER"
        assert guids(beta, "alice") == guids(alpha, "alice")
        assert as_json(alpha, "status", "-u", "alice")["sync_log_depth"] == 0
        # -v -v adds one line per request; a second sync has nothing to send.
        again = ok(alpha, "replicate", "-u", "alice", "-v", "-v").splitlines()
        assert "UPLOAD [0 msgs]" not in again and again[-1].startswith("  POST /sync/v1/")
        assert any(line.startswith("  POST /sync/v1/user_some ") for line in again)
        summary = ok(alpha, "replicate", "-u", "alice")
        assert summary.startswith("alice: uploaded 0, expunged 0")

        # -z: the same compressible message to two accounts, with and without.
        text_body = b"all work and no play makes jack a dull boy\r\n" * 4000
        deliver(alpha, "alice", "plain", text_body)
        deliver(alpha, "zed", "squeezed", text_body)
        plain = as_json(alpha, "replicate", "-u", "alice")["reports"][0]
        squeezed = as_json(alpha, "replicate", "-u", "zed", "-z")["reports"][0]
        assert plain["uploaded"] == squeezed["uploaded"] == 1
        assert squeezed["bytes_sent"] * 10 < plain["bytes_sent"]
        assert guids(beta, "zed") == guids(alpha, "zed")

        # synclog queues rows (account-wide, or per mailbox) like cyr_synclog.
        assert ok(alpha, "synclog", "-u", "alice").strip() == "queued 1 sync log row(s) for alice"
        assert "queued 1 " in ok(alpha, "synclog", "-u", "zed", "-m", "INBOX")
        assert as_json(alpha, "status", "-u", "alice")["sync_log_depth"] == 1
        assert peerctl(alpha, "synclog", "-u", "nobody").returncode == 1
        # --all syncs every account alpha owns and empties the log.
        everything = ok(alpha, "replicate", "--all").splitlines()
        assert everything[-1].startswith("2 accounts in ")
        assert as_json(alpha, "status")["sync_log_depth"] == 0
        assert peerctl(alpha, "replicate").returncode == 2  # neither -u nor --all

        # owner and accounts --owner read the ownership table.
        owner = ok(alpha, "owner", "carol")
        assert owner.startswith("carol: owner beta (home beta), epoch 1, normal")
        assert as_json(beta, "owner", "alice")["owner"] == "alpha"
        listed = ok(alpha, "accounts", "--owner", "alpha").splitlines()
        assert [line.split()[:2] for line in listed[1:]] == [["alice", "alpha"], ["zed", "alpha"]]
        assert [a["name"] for a in as_json(beta, "accounts", "--owner", "beta")["accounts"]] == [
            "carol"
        ]
        assert peerctl(alpha, "owner", "nobody").returncode == 1

        # reconcile: one account, or all; both compare with the partner.
        single = ok(alpha, "reconcile", "-u", "alice")
        assert single.startswith("checked 1 account(s) in ")
        assert "0 mailbox(es) repaired" in single
        assert as_json(alpha, "reconcile", "--all")["accounts_checked"] == 2
        assert peerctl(alpha, "reconcile").returncode == 2
        assert peerctl(alpha, "reconcile", "-u", "nobody").returncode == 1
        assert as_json(alpha, "status")["reconcile"]["runs"] == 2  # nobody: refused first


def test_failover_switchover_failback_from_the_command_line(pair: tuple[Node, Node]) -> None:
    alpha, beta = pair
    alpha.add_account("alice")
    alpha.add_account("bob")
    beta.add_account("carol")
    for node, account in ((alpha, "alice"), (alpha, "bob"), (beta, "carol")):
        deliver(node, account, f"{account}-1")
    for node, account in ((beta, "alice"), (beta, "bob"), (alpha, "carol")):
        wait_until(partial(_count_is, node, account, 1), 15, f"{account} replicated")

    refused = peerctl(beta, "failover")
    assert refused.returncode == 1 and "PartnerReachable" in refused.stderr
    assert peerctl(alpha, "switchover").returncode == 2
    assert peerctl(alpha, "switchover", "alice", "--all-from", "alpha").returncode == 2
    unknown = peerctl(alpha, "switchover", "--all-from", "mars")
    assert unknown.returncode == 1 and "mars" in unknown.stderr
    assert peerctl(alpha, "switchover", "nobody").returncode == 1

    moved = ok(alpha, "switchover", "alice").splitlines()
    assert moved[0] == "alice: now owned by beta at epoch 2"
    assert moved[-1].startswith("done in ")
    # --all-from this node: everything alpha still owns (bob) goes to beta.
    moved = ok(alpha, "switchover", "--all-from", "alpha").splitlines()
    assert moved[0] == "bob: now owned by beta at epoch 2"
    assert as_json(alpha, "accounts", "--owner", "alpha")["accounts"] == []
    # --all-from the partner: forwarded to beta, which hands all three back.
    answer = as_json(alpha, "switchover", "--all-from", "beta")
    assert sorted(r["account"] for r in answer["forwarded"]["moved"]) == ["alice", "bob", "carol"]
    assert [r["owner"] for r in answer["forwarded"]["moved"]] == ["alpha"] * 3
    for account in ("alice", "bob", "carol"):
        assert as_json(beta, "owner", account)["owner"] == "alpha"
    deliver(alpha, "carol", "carol-on-alpha")

    # failback on beta brings carol home (its home is beta) once caught up.
    wait_until(lambda: _count(beta, "carol") == 2, 15, "carol's new mail on beta")
    wait_until(lambda: as_json(alpha, "status")["sync_log_depth"] == 0, 15, "alpha's log empty")
    back = ok(beta, "failback").splitlines()
    assert back[0] == "carol: home again, epoch 3", back
    assert ok(beta, "failback").strip() == "every account whose home is here is here"
    assert as_json(alpha, "owner", "carol")["owner"] == "beta"

    # failover --force while alpha answers: beta takes alice and bob, and
    # alpha learns it at once (it refuses their mail from then on).
    forced = ok(beta, "failover", "--force").splitlines()
    assert forced[0].startswith("took 2 account(s) in ")
    assert forced[0].endswith("(forced: the partner still answers)")
    assert "  alice: owner beta, epoch 4, failed_over" in forced
    assert "the partner took the new ownership rows" in forced
    row = as_json(alpha, "owner", "alice")
    assert (row["owner"], row["epoch"], row["state"]) == ("beta", 4, "failed_over")
    with smtplib.LMTP("127.0.0.1", alpha.ports["lmtp"], timeout=30) as lmtp:
        lmtp.docmd("LHLO", "t")
        lmtp.mail("s@example.test")
        code, text = lmtp.rcpt("alice@example.test")
    assert code == 451 and b"beta" in text
    deliver(beta, "alice", "alice-on-beta")
    wait_until(lambda: _count(alpha, "alice") == 2, 15, "beta's mail for alice on alpha")


def _count_is(node: Node, account: str, n: int) -> bool:
    return _count(node, account) == n


def _count(node: Node, account: str) -> int:
    try:
        return len(node.mailbox(account)["messages"])
    except Exception:
        return -1


def test_status_shows_the_startup_note_when_the_partner_was_down(tmp_path: Path) -> None:
    alpha, _ = make_pair(tmp_path)  # beta is never started
    alpha.start()
    try:
        text = ok(alpha, "status").splitlines()
        assert text[0] == "node alpha (partner beta)"
        (note,) = [line for line in text if line.startswith("startup: ")]
        assert "partner unreachable at start" in note
        assert "serving only the accounts this node owned" in note
        assert any(line.startswith("partner beta (") for line in text)
    finally:
        alpha.stop()
