"""A replica-only backup channel ([sync.channels.NAME], Cyrus's
sync_log_channels): three real daemons, alpha and beta a pair, and a backup
node that takes every account's changes and never owns one."""

from __future__ import annotations

import smtplib
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.nodes import TOKEN, Node, make_pair, make_single, peerctl, running
from tests.procs import wait_until


def _deliver(node: Node, account: str, tag: str) -> None:
    data = f"Subject: {tag}\r\nMessage-ID: <{tag}@backup.test>\r\n\r\n{tag}\r\n".encode()
    with smtplib.LMTP("127.0.0.1", node.port("lmtp"), timeout=30) as lmtp:
        lmtp.sendmail("sender@example.test", [f"{account}@example.test"], data)


def _count(node: Node, account: str) -> int:
    try:
        return len(node.records(account))
    except urllib.error.HTTPError:
        return 0  # not there yet


def _channel(node: Node) -> dict[str, Any]:
    return dict(node.call("GET", "/v1/status")["channels"]["backup"])


def _backup_node(tmp_path: Path) -> tuple[Node, dict[str, Any]]:
    backup = make_single(tmp_path, "backup", {"node": {"role": "backup"}})
    channel = {"sync_host": "127.0.0.1", "sync_port": backup.port("sync")}
    return backup, channel


def _metrics(node: Node) -> str:
    request = urllib.request.Request(
        f"{node.api}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())


def test_both_nodes_feed_the_backup_and_replicate_n_catches_it_up(tmp_path: Path) -> None:
    backup, channel = _backup_node(tmp_path)
    stop_file = tmp_path / "rolling-stop"
    alpha, beta = make_pair(
        tmp_path,
        {
            "alpha": {
                "sync": {"channels": {"backup": channel}, "sync_shutdown_file": str(stop_file)}
            },
            "beta": {"sync": {"channels": {"backup": channel}}},
        },
    )
    with running(alpha, beta, backup):
        alpha.add_account("alice")
        beta.add_account("bob")
        _deliver(alpha, "alice", "a1")
        _deliver(beta, "bob", "b1")
        wait_until(lambda: _count(backup, "alice") == 1, 30, "alice's mail on the backup")
        wait_until(lambda: _count(backup, "bob") == 1, 30, "bob's mail on the backup")
        # The backup holds both and owns neither.
        owned = backup.call("GET", "/v1/status")["owned"]
        assert owned == {"alpha": 1, "beta": 1}, owned
        wait_until(lambda: _channel(alpha)["sync_log_depth"] == 0, 30, "channel idle")
        state = _channel(alpha)
        assert state["reachable"] is True and state["lag_seconds"] == 0
        assert state["target"] == f"127.0.0.1:{backup.port('sync')}"
        assert 'peerd_channel_lag_seconds{channel="backup"} 0' in _metrics(alpha)
        assert "backup channel backup (127.0.0.1:" in peerctl(alpha, "status", "--local").stdout

        # The backup goes away; alpha keeps its rows for it (and the partner
        # is not held back).
        backup.stop()
        _deliver(alpha, "alice", "a2")
        _deliver(alpha, "alice", "a3")
        wait_until(lambda: _count(beta, "alice") == 3, 30, "the partner goes on")
        wait_until(lambda: _channel(alpha)["reachable"] is False, 30, "backup unreachable")
        assert _channel(alpha)["sync_log_depth"] > 0
        assert "backup channel backup" in peerctl(alpha, "status", "--local").stdout
        # Rolling stopped by the shutdown file: only the manual push can
        # carry the mail now.
        stop_file.touch()
        wait_until(
            lambda: alpha.call("GET", "/v1/status")["replication"]["rolling"] == "stopped",
            10,
            "rolling stopped",
        )
        backup.start()
        time.sleep(1.0)
        assert _count(backup, "alice") == 1
        pushed = peerctl(alpha, "replicate", "-n", "backup", "-u", "alice")
        assert pushed.returncode == 0, pushed.stderr
        assert "alice: uploaded 2" in pushed.stdout
        assert _count(backup, "alice") == 3
        unknown = peerctl(alpha, "replicate", "-n", "offsite", "-u", "alice")
        assert unknown.returncode != 0 and "no backup channel 'offsite'" in unknown.stderr
        everything = peerctl(alpha, "replicate", "-n", "backup", "-A")
        assert everything.returncode == 0, everything.stderr
        rolling = peerctl(alpha, "replicate", "-r")
        assert rolling.returncode != 0 and "rolling replication is the daemon's" in rolling.stderr

        # A backup node refuses to own anything.
        for path in ("/v1/failover", "/v1/failback"):
            refused = peerctl(backup, "failover") if path == "/v1/failover" else None
            try:
                backup.call("POST", path, {})
            except urllib.error.HTTPError as exc:
                assert exc.code == 409
                assert b"backup node" in exc.read()
            else:
                raise AssertionError(f"{path} accepted on the backup")
            if refused is not None:
                assert refused.returncode != 0 and "backup node" in refused.stderr
        try:
            backup.add_account("carol")
        except urllib.error.HTTPError as exc:
            assert exc.code == 409
        else:
            raise AssertionError("an account was made on the backup")


def test_a_chain_alpha_beta_backup_carries_alphas_mail(tmp_path: Path) -> None:
    backup, channel = _backup_node(tmp_path)
    alpha, beta = make_pair(
        tmp_path,
        {"beta": {"sync": {"channels": {"backup": channel}, "sync_log_chain": True}}},
    )
    with running(alpha, beta, backup):
        alpha.add_account("alice")
        for i in range(3):
            _deliver(alpha, "alice", f"chain-{i}")
        # alpha has no channel: the mail reaches the backup through beta.
        wait_until(lambda: _count(backup, "alice") == 3, 30, "alice's mail on the backup")
        assert backup.call("GET", "/v1/status")["owned"] == {"alpha": 1}
        wait_until(lambda: _channel(beta)["sync_log_depth"] == 0, 30, "beta's channel idle")
