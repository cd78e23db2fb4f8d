"""The sync protocol's version rule (docs/protocol.md "Versions", docs/upgrading.md).

Every request and answer carries ``X-Sync-Protocol``; a node takes the
versions from ``PROTOCOL_OLDEST`` to ``PROTOCOL_VERSION`` and refuses the
others with ``sync_version``, naming the node to upgrade. The pair test runs
beta as a future release that speaks only version 2 (the real daemon with
the module's constants raised before it starts): alpha's changes wait in its
sync log with a clear error, and go through once beta runs this release.
(A pair one version apart replicates both ways: tests/test_user_parts.py.)
"""

from __future__ import annotations

import base64
import http.client
import json
import smtplib
import sys
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from engine import syncwire
from engine.errors import SyncProtocolError, SyncVersionMismatch
from tests.nodes import Node, make_pair, running
from tests.procs import Proc, wait_until

AUTH = "Basic " + base64.b64encode(b"repl:repl-secret").decode()

# The daemon as a release whose sync protocol is 3 and no longer reads 1 or 2.
FUTURE = """
import sys
import engine.syncwire as wire
wire.PROTOCOL_VERSION = 3
wire.PROTOCOL_OLDEST = 3
from peerd.app.main import main
sys.exit(main(["run", "-c", sys.argv[1]]))
"""


def test_a_message_without_the_header_is_version_1() -> None:
    assert syncwire.peer_protocol(None) == 1
    assert syncwire.peer_protocol(" 1 ") == 1


def test_a_newer_or_older_partner_is_refused_naming_the_node_to_upgrade(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(SyncVersionMismatch) as newer:
        syncwire.peer_protocol(str(syncwire.PROTOCOL_VERSION + 1), "alpha", "beta")
    assert newer.value.code == "sync_version"
    assert newer.value.message.endswith("upgrade alpha (docs/upgrading.md)")
    monkeypatch.setattr(syncwire, "PROTOCOL_VERSION", 3)
    monkeypatch.setattr(syncwire, "PROTOCOL_OLDEST", 2)
    assert syncwire.peer_protocol("2") == 2
    with pytest.raises(SyncVersionMismatch) as older:
        syncwire.peer_protocol("1", "alpha", "beta")
    assert older.value.message == (
        "beta speaks sync protocol 1, alpha speaks 2 to 3: upgrade beta (docs/upgrading.md)"
    )
    # No header at all is version 1: too old here too.
    with pytest.raises(SyncVersionMismatch):
        syncwire.peer_protocol(None, "alpha", "beta")


@pytest.mark.parametrize("value", ["", "one", "0", "-1", "1.5", "9999999"])
def test_a_malformed_version_is_a_protocol_error(value: str) -> None:
    with pytest.raises(SyncProtocolError) as caught:
        syncwire.peer_protocol(value)
    assert not isinstance(caught.value, SyncVersionMismatch)


def _post(node: Node, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any, str]:
    conn = http.client.HTTPConnection("127.0.0.1", node.ports["sync"], timeout=30)
    try:
        send = {"Authorization": AUTH, "Content-Type": "application/json", **headers}
        conn.request("POST", f"/sync/v1/{path}", body=body, headers=send)
        response = conn.getresponse()
        return (
            response.status,
            json.loads(response.read()),
            response.headers.get("X-Sync-Protocol", ""),
        )
    finally:
        conn.close()


def _deliver(node: Node, account: str, subject: str) -> None:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30) as lmtp:
        lmtp.sendmail(
            "s@example.test", [f"{account}@example.test"], f"Subject: {subject}\r\n\r\nx\r\n"
        )


def _count(node: Node, account: str) -> int:
    try:
        return len(node.mailbox(account)["messages"])
    except urllib.error.HTTPError as exc:
        exc.close()
        return -1


def test_the_listener_says_its_version_and_refuses_one_it_does_not_speak(tmp_path: Path) -> None:
    alpha, beta = make_pair(tmp_path)
    with running(alpha, beta):
        status, body, spoken = _post(beta, "hello", b"{}", {})
        assert (status, body["node"], spoken) == (200, "beta", "1")
        # Each answer is in the request's version: a node of an older release reads it.
        status, body, spoken = _post(beta, "hello", b"{}", {"X-Sync-Protocol": "1"})
        assert (status, spoken) == (200, "1")
        status, body, spoken = _post(beta, "hello", b"{}", {"X-Sync-Protocol": "2"})
        assert (status, spoken) == (200, "2")
        rows = json.dumps(
            {"rows": [{"account": "x", "owner": "alpha", "home": "alpha", "epoch": 9}]}
        ).encode()
        # A refusal says the newest version beta speaks.
        status, body, spoken = _post(beta, "ownership", rows, {"X-Sync-Protocol": "3"})
        assert (status, body["error"], spoken) == (400, "sync_version", "2"), body
        assert body["detail"] == (
            "alpha speaks sync protocol 3, beta speaks 1 to 2: upgrade beta (docs/upgrading.md)"
        )
        # Refused before anything was read: beta adopted no row.
        with pytest.raises(urllib.error.HTTPError) as missing:
            beta.call("GET", "/v1/owner/x")
        assert missing.value.code == 404
        missing.value.close()
        status, body, _ = _post(beta, "hello", b"{}", {"X-Sync-Protocol": "v1"})
        assert (status, body["error"]) == (400, "sync_protocol_error"), body


def test_a_mixed_version_pair_holds_changes_until_both_speak_one_version(tmp_path: Path) -> None:
    alpha, beta = make_pair(tmp_path)
    with running(alpha, beta):
        alpha.add_account("amy")
        _deliver(alpha, "amy", "before")
        wait_until(lambda: _count(beta, "amy") == 1, 20, "amy's first message on beta")
    future = Proc(
        [sys.executable, "-c", FUTURE, str(beta.config)], tmp_path / "beta-future.log", cwd=tmp_path
    )
    alpha.start(wait=False)
    beta.proc = future.start()
    try:
        alpha.wait_ready()
        beta.wait_ready()
        _deliver(alpha, "amy", "during")

        def refused() -> bool:
            error = str(alpha.call("GET", "/v1/status")["replication"]["last_error"])
            return "upgrade alpha" in error

        wait_until(refused, 20, "alpha's sync refused for its protocol version")
        error = alpha.call("GET", "/v1/status")["replication"]["last_error"]
        assert "beta speaks sync protocol 3, alpha speaks 1 to 2" in error, error
        assert alpha.call("GET", "/v1/status?account=amy")["sync_log_depth"] >= 1
        assert _count(beta, "amy") == 1
    finally:
        future.stop()
        alpha.stop()
    # beta upgraded to the same release as alpha: what waited goes through.
    with running(alpha, beta):
        wait_until(lambda: _count(beta, "amy") == 2, 30, "amy's second message on beta")
