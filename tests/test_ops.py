"""Operations: scheduled/manual reconcile, /metrics, JSON logs, and the API fuzzed by schemathesis."""

from __future__ import annotations

import json
import shutil
import smtplib
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from engine import accounts, mailbox, messages
from engine.store import Store
from tests.nodes import TOKEN, Node, make_pair, make_single


def deliver(node: Node, rcpt: str, subject: str) -> None:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"]) as lmtp:
        lmtp.sendmail(
            "s@example.test",
            [rcpt],
            f"Subject: {subject}\r\nMessage-ID: <{subject}@t>\r\n\r\nx\r\n".encode(),
        )


def test_reconcile_repairs_drift_and_reports(tmp_path: Path) -> None:
    alpha, beta = make_pair(tmp_path, {"alpha": {"sync": {"sync_log": False}}})
    try:
        alpha.start()
        beta.start()
        alpha.add_account("rec")
        for i in range(3):
            deliver(alpha, "rec@example.test", f"r{i}")
        first = alpha.call("POST", "/v1/reconcile", {})
        assert first["accounts_checked"] == 1 and first["messages_uploaded"] == 3
        store = Store(f"sqlite:///{beta.db_path}", tmp_path / "var" / "beta", owner=False)
        try:

            def drift(s: Any) -> None:
                acct = accounts.get_account(s, "rec")
                messages.expunge(s, acct, mailbox.get_mailbox(s, acct, "INBOX"), [2])

            store.write_sync(drift)
        finally:
            store.close()
        second = alpha.call("POST", "/v1/reconcile", {"account": "rec"})
        assert second["mailboxes_repaired"] == 1 and second["failures"] == []
        assert len(beta.mailbox("rec")["messages"]) == 3
        status = alpha.call("GET", "/v1/status")["reconcile"]
        assert status["last"]["accounts_checked"] == 1 and status["next_run"]
        with urllib.request.urlopen(f"{alpha.api}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert 'peerd_accounts_owned{node="alpha"} 1' in text
        assert "peerd_sync_log_depth" in text and "peerd_reconcile_last" in text
        assert "peerd_lmtp_delivered_total 3" in text
    finally:
        alpha.stop()
        beta.stop()


def test_json_logs(tmp_path: Path) -> None:
    node = make_single(tmp_path, overrides={"log": {"format": "json"}})
    node.start()
    node.stop()
    lines = [
        json.loads(line)
        for line in (tmp_path / "alpha.log").read_text().splitlines()
        if line.strip()
    ]
    assert any(entry["msg"] == "node alpha ready" for entry in lines)
    assert all({"ts", "level", "logger", "msg"} <= set(entry) for entry in lines)


def test_every_protected_route_refuses_without_a_token(node: Node) -> None:
    with urllib.request.urlopen(f"{node.api}/v1/openapi.json", timeout=10) as response:
        document = json.loads(response.read())
    checked = 0
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            if operation.get("security") == []:
                continue
            url = node.api + path.replace("{name}", "x").replace("{account}", "x").replace(
                "{mailbox}", "INBOX"
            )
            request = urllib.request.Request(
                url, method=method.upper(), data=b"{}" if method != "get" else None
            )
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(request, timeout=10)
            info.value.close()
            assert info.value.code == 401, (method, path)
            checked += 1
    assert checked >= 8


def test_api_fuzzed_by_schemathesis(tmp_path: Path) -> None:
    schemathesis = shutil.which("schemathesis") or str(
        Path(__file__).parents[1] / ".venv/bin/schemathesis"
    )
    alpha, beta = make_pair(tmp_path)
    try:
        alpha.start()
        beta.start()
        alpha.add_account("fuzz")
        result = subprocess.run(
            [
                schemathesis,
                "run",
                f"{alpha.api}/v1/openapi.json",
                "--header",
                f"Authorization: Bearer {TOKEN}",
                "--checks",
                "not_a_server_error,ignored_auth",
                "--max-examples",
                "15",
                "--request-timeout",
                "60",
                "--phases",
                "examples,coverage,fuzzing",
                # A fixed seed keeps CI reproducible; run without it by hand to
                # explore further (that is how the quota overflow was found).
                "--seed",
                "20261124",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    finally:
        alpha.stop()
        beta.stop()
