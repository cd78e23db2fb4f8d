"""Cyrus's sync options: the ones with a meaning here work on real daemons
(sync_shutdown_file, sync_batchsize, sync_timeout), the others are refused
with why and what to use."""

from __future__ import annotations

import datetime as dt
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from peerd.node.config import ConfigError, parse_config
from peerd.node.syncoptions import REFUSED_SYNC_OPTIONS
from tests.harness.clients import run_command
from tests.nodes import TOKEN, make_pair, peerctl, running, write_config
from tests.procs import wait_until


def _deliver(port: int, account: str, tag: str) -> None:
    import smtplib

    data = f"Subject: {tag}\r\nMessage-ID: <{tag}@syncopts>\r\n\r\n{tag}\r\n".encode()
    with smtplib.LMTP("127.0.0.1", port, timeout=30) as lmtp:
        lmtp.sendmail("sender@example.test", [f"{account}@example.test"], data)


@pytest.mark.parametrize("key", sorted(REFUSED_SYNC_OPTIONS))
def test_a_cyrus_option_without_meaning_is_refused_with_why(tmp_path: Path, key: str) -> None:
    path = tmp_path / "node.toml"
    write_config(path, {"node": {"name": "alpha"}, "sync": {key: "x"}})
    result = run_command("peerd", ["check-config", "-c", str(path)], tmp_path, timeout=60)
    assert result.returncode == 2, result
    # The table's message, whole: why, and what to use instead.
    assert f"[sync] {key} is a Cyrus option with no meaning in peerd" in result.stderr
    assert REFUSED_SYNC_OPTIONS[key] in result.stderr.replace("\n", " ")


def test_cyrus_options_with_a_meaning_load() -> None:
    config = parse_config(
        {
            "node": {"name": "alpha"},
            "sync": {
                "sync_batchsize": 3,
                "sync_shutdown_file": "/run/peerd/sync-stop",
                "sync_timeout": "5s",
            },
        }
    )
    assert config.sync.sync_batchsize == 3
    assert config.sync.sync_shutdown_file == Path("/run/peerd/sync-stop")
    assert config.sync.sync_timeout == dt.timedelta(seconds=5)
    for bad, message in (
        ({"sync_batchsize": 0}, "sync_batchsize must be >= 1"),
        ({"sync_timeout": 0}, "sync_timeout must be positive"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config({"node": {"name": "alpha"}, "sync": bad})


def _replication(node: Any) -> dict[str, Any]:
    return dict(node.call("GET", "/v1/status")["replication"])


def test_shutdown_file_stops_rolling_and_sighup_resumes_with_nothing_lost(
    tmp_path: Path,
) -> None:
    stop_file = tmp_path / "sync-stop"
    alpha, beta = make_pair(tmp_path, {"alpha": {"sync": {"sync_shutdown_file": str(stop_file)}}})
    with running(alpha, beta):
        alpha.add_account("alice")
        wait_until(lambda: beta.call("GET", "/v1/owner/alice") is not None, 30, "alice on beta")
        stop_file.touch()
        wait_until(lambda: _replication(alpha)["rolling"] == "stopped", 10, "rolling stopped")
        assert _replication(alpha)["shutdown_file"] == str(stop_file)
        for i in range(3):
            _deliver(alpha.port("lmtp"), "alice", f"held-{i}")
        # Three rolling intervals (200 ms in the tests' config); a worker that
        # ignored the file would have sent at once (a commit wakes it).
        time.sleep(0.6)  # nothing goes while the file is there
        assert beta.records("alice") == []
        assert alpha.call("GET", "/v1/status")["sync_log_depth"] > 0
        shown = peerctl(alpha, "status", "--local").stdout
        assert f"rolling replication: STOPPED by sync_shutdown_file {stop_file}" in shown
        request = urllib.request.Request(
            f"{alpha.api}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert "peerd_rolling_stopped 1" in response.read().decode()
        # Removing the file alone resumes nothing: the daemon is told by SIGHUP.
        stop_file.unlink()
        time.sleep(0.6)  # three intervals: a worker that looked again would resume
        assert beta.records("alice") == []
        assert alpha.pid is not None
        alpha.proc.send(signal.SIGHUP)  # type: ignore[union-attr]
        wait_until(lambda: len(beta.records("alice")) == 3, 30, "held mail on beta")
        assert _replication(alpha)["rolling"] == "running"
        # beta stores the records before alpha's acknowledgement lands: wait for it.
        wait_until(lambda: alpha.call("GET", "/v1/status")["sync_log_depth"] == 0, 10, "acked")
        # A restart with the file present starts stopped, and keeps the log.
        stop_file.touch()
        alpha.restart()
        wait_until(lambda: _replication(alpha)["rolling"] == "stopped", 10, "stopped after restart")
        _deliver(alpha.port("lmtp"), "alice", "after-restart")
        time.sleep(0.6)
        assert len(beta.records("alice")) == 3
        stop_file.unlink()
        alpha.restart()
        wait_until(lambda: len(beta.records("alice")) == 4, 30, "mail held over a restart")
    assert "sync_shutdown_file" in alpha.tail(400)


def test_batchsize_bounds_the_records_in_flight(tmp_path: Path) -> None:
    alpha, beta = make_pair(tmp_path, {"alpha": {"sync": {"sync_batchsize": 2}}})
    users = [f"user{i}" for i in range(6)]
    with running(alpha, beta):
        for user in users:
            alpha.add_account(user)
        wait_until(
            lambda: all(beta.call("GET", f"/v1/owner/{u}") is not None for u in users),
            30,
            "accounts on beta",
        )
        wait_until(lambda: alpha.call("GET", "/v1/status")["sync_log_depth"] == 0, 30, "idle")
        beta.stop()
        for user in users:
            _deliver(alpha.port("lmtp"), user, f"batch-{user}")
        assert alpha.call("GET", "/v1/status")["sync_log_depth"] >= len(users)
        beta.start()
        wait_until(lambda: alpha.call("GET", "/v1/status")["sync_log_depth"] == 0, 60, "synced")
        for user in users:
            assert len(beta.records(user)) == 1, user
        replication = _replication(alpha)
        assert replication["batchsize"] == 2
        # Six accounts waited with one record each: never more than two at once.
        assert replication["largest_batch"] == 2


@pytest.mark.parametrize(
    ("sync", "node", "message"),
    [
        ({"sync_log_chain": True}, {}, "sync_log_chain passes the partner's changes on"),
        ({"channels": {"off": {}}}, {}, r"\[sync.channels.off\] sync_host is required"),
        (
            {"channels": {"off": {"sync_host": "backup.example.org"}}},
            {},
            r"\[sync.channels.off\] sync_tls is required when sync_host is not on loopback",
        ),
        (
            {"channels": {"alpha": {"sync_host": "127.0.0.1"}}},
            {},
            "is a node of the pair; a channel is a third, backup node",
        ),
        ({"sync_host": "127.0.0.1"}, {"role": "backup"}, "a backup node has no partner"),
        ({}, {"role": "spare"}, 'role must be "pair" or "backup"'),
    ],
)
def test_backup_channel_mistakes_are_refused(
    sync: dict[str, Any], node: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"node": {"name": "alpha", **node}, "sync": sync})
    good = parse_config(
        {
            "node": {"name": "alpha"},
            "sync": {
                "sync_log_chain": True,
                "channels": {"off": {"sync_host": "backup.example.org", "sync_tls": True}},
            },
        }
    )
    assert good.sync.channels["off"].sync_port == 2005
