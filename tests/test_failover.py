"""Failover, return and failback with two real daemons killed and restarted for real (issue 4)."""

from __future__ import annotations

import smtplib
import urllib.error
from typing import Any

from tests.nodes import Node
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


def test_switchover_moves_accounts_both_ways(pair: tuple[Node, Node]) -> None:
    alpha, beta = pair
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
