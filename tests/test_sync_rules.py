"""Sync-channel rules with two real daemons: a request over the receiver's
``sync_max_request`` is refused with a clear error and changes nothing (and the
change waits in the sender's log until it fits); an account deleted on its owner
is deleted on the partner, and a replica refuses to delete it."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import smtplib
import urllib.error
import zlib
from pathlib import Path
from typing import Any

from tests.nodes import Node, make_pair, make_single, peerctl, running
from tests.procs import wait_until

LIMIT = 64 << 10
AUTH = "Basic " + base64.b64encode(b"repl:repl-secret").decode()


def deliver(node: Node, account: str, data: bytes) -> tuple[int, bytes]:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30) as lmtp:
        lmtp.docmd("LHLO", "t")
        lmtp.mail("s@example.test")
        code, text = lmtp.rcpt(f"{account}@example.test")
        if code != 250:
            return code, text
        return lmtp.data(data)


def message(subject: str, body: bytes = b"hello\r\n") -> bytes:
    return f"Subject: {subject}\r\nMessage-ID: <{subject}@t>\r\n\r\n".encode() + body


def guids(node: Node, account: str) -> list[str]:
    try:
        return [m["guid"] for m in node.mailbox(account)["messages"]]
    except urllib.error.HTTPError as exc:
        exc.close()
        return []


def sync_post(
    node: Node, path: str, body: bytes, headers: dict[str, str] | None = None, chunked: bool = False
) -> tuple[int, str, Any]:
    """(status, content type, decoded body) of a raw request to the sync listener."""
    conn = http.client.HTTPConnection("127.0.0.1", node.ports["sync"], timeout=30)
    try:
        send = {"Authorization": AUTH, "Content-Type": "application/json", **(headers or {})}
        if chunked:
            conn.request(
                "POST", f"/sync/v1/{path}", body=iter([body]), headers=send, encode_chunked=True
            )
        else:
            conn.request("POST", f"/sync/v1/{path}", body=body, headers=send)
        response = conn.getresponse()
        raw = response.read()
        ctype = response.headers.get("Content-Type", "")
        return (
            response.status,
            ctype,
            json.loads(raw) if ctype.startswith("application/json") else raw,
        )
    finally:
        conn.close()


def spool_files(node: Node) -> set[str]:
    root = node.workdir / "var" / node.name / "spool"
    return {p.name for p in root.rglob("*") if p.is_file()}


def test_an_oversized_sync_request_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    # beta accepts requests up to 64 KiB; alpha sends uncompressed, so a
    # 200 KB message makes an UPLOAD over the limit.
    alpha, beta = make_pair(
        tmp_path,
        {
            "alpha": {"sync": {"sync_compress": False}},
            # (beta's own entry limits stay below it, or it refuses to start)
            "beta": {
                "sync": {"sync_max_request": "64K"},
                "imap": {"max_literal": "32K"},
                "lmtp": {"max_message_size": "32K"},
            },
        },
    )
    with running(alpha, beta):
        alpha.add_account("big")
        assert deliver(alpha, "big", message("small"))[0] == 250
        wait_until(lambda: len(guids(beta, "big")) == 1, 15, "the small message on beta")
        before_box = beta.mailbox("big")
        before_spool = spool_files(beta)

        large = message("large", os.urandom(150_000).hex().encode()[:200_000] + b"\r\n")
        assert deliver(alpha, "big", large)[0] == 250
        guid = hashlib.sha1(large).hexdigest()

        def refused() -> bool:
            return "exceeds 65536" in alpha.call("GET", "/v1/status")["replication"]["last_error"]

        wait_until(refused, 15, "alpha's sync refused for its size")
        error = alpha.call("GET", "/v1/status")["replication"]["last_error"]
        assert error.startswith("big: partner answered 400 to ") and "request of " in error
        # The change waits in alpha's log; beta has neither the record nor the bytes.
        assert alpha.call("GET", "/v1/status?account=big")["sync_log_depth"] >= 1
        assert beta.mailbox("big") == before_box
        assert spool_files(beta) == before_spool and guid not in spool_files(beta)
        report = alpha.call("POST", "/v1/replicate", {"account": "big"})
        assert report["reports"] == []
        assert (
            report["errors"][0]["error"] == "partner_rejected"
        )  # a 4xx from the partner: it refuses this data
        assert "exceeds 65536" in report["errors"][0]["detail"]

        # Straight to the listener: too long by Content-Length, too long once
        # inflated, too long without a length (chunked). Each a JSON error.
        too_long = json.dumps({"guids": ["0" * 40] * 2000}).encode()
        status, ctype, body = sync_post(beta, "reserve", too_long)
        assert (status, body["error"]) == (400, "sync_protocol_error"), body
        assert body["detail"] == f"request of {len(too_long)} bytes exceeds {LIMIT}"
        bomb = zlib.compress(b"{" + b" " * (LIMIT * 4) + b"}")
        status, _, body = sync_post(beta, "hello", bomb, {"X-Sync-Encoding": "zlib"})
        assert (status, body["error"]) == (400, "sync_protocol_error"), body
        assert body["detail"] == f"body larger than {LIMIT} bytes once decompressed"
        status, ctype, body = sync_post(beta, "upload", b"x" * (LIMIT * 2), chunked=True)
        assert status in (400, 413) and ctype.startswith("application/json"), (status, body)
        assert body["error"] == "sync_protocol_error" and str(LIMIT) in body["detail"]
        assert beta.mailbox("big") == before_box and spool_files(beta) == before_spool
        assert beta.call("GET", "/v1/status")["counters"].get("sync_applied", 0) >= 1

    # With a larger limit the waiting change goes through: nothing was lost.
    beta.config.write_text(beta.config.read_text().replace('"64K"', '"1M"'))
    with running(alpha, beta):
        wait_until(lambda: guid in guids(beta, "big"), 20, "the large message on beta")
        assert guids(beta, "big") == guids(alpha, "big")


def test_an_account_deleted_on_its_owner_is_deleted_on_the_partner(
    pair: tuple[Node, Node],
) -> None:
    alpha, beta = pair
    alpha.add_account("gone")
    alpha.add_account("stays")
    for account in ("gone", "stays"):
        assert deliver(alpha, account, message(f"{account}-1"))[0] == 250
    wait_until(lambda: guids(beta, "gone") and guids(beta, "stays"), 15, "replicated")

    # The replica refuses: only the owner deletes.
    try:
        beta.call("DELETE", "/v1/accounts/gone")
        raise AssertionError("a replica deleted an account")
    except urllib.error.HTTPError as exc:
        with exc:
            assert exc.code == 409 and json.loads(exc.read())["code"] == "not_owner"
    assert guids(beta, "gone") and guids(alpha, "gone")

    # The answer comes once beta has taken the deletion.
    assert json.loads(peerctl_ok(alpha, "--json", "account", "del", "gone")) == {
        "deleted": "gone",
        "replicated": True,
    }
    for node in (alpha, beta):
        for path in ("/v1/accounts/gone", "/v1/owner/gone", "/v1/route/gone"):
            assert status_of(node, path) == 404, (node.name, path)
    assert deliver(beta, "gone", message("after"))[0] == 550
    assert [a["name"] for a in beta.call("GET", "/v1/accounts")["accounts"]] == ["stays"]
    assert beta.call("GET", "/v1/status")["owned"] == {"alpha": 1}
    assert len(guids(beta, "stays")) == 1

    # Created again, it starts empty on both: nothing of the old one returns.
    alpha.add_account("gone")
    assert deliver(alpha, "gone", message("reborn"))[0] == 250
    reborn = [hashlib.sha1(message("reborn")).hexdigest()]
    wait_until(lambda: guids(beta, "gone") == reborn, 15, "the new account on beta")
    assert guids(alpha, "gone") == reborn

    # Deleted while beta is down: alpha says the partner does not have it
    # yet, and refuses to make the account again until it has (beta's old
    # copy would be merged into the new one).
    beta.stop()
    assert peerctl_ok(alpha, "account", "del", "gone") == (
        "deleted gone (the partner has not taken the deletion yet; it will when it answers)\n"
    )
    assert status_of(alpha, "/v1/accounts/gone") == 404
    assert alpha.call("GET", "/v1/status")["owned"] == {"alpha": 1}
    try:
        alpha.add_account("gone")
        raise AssertionError("re-created before the deletion replicated")
    except urllib.error.HTTPError as exc:
        with exc:
            problem = json.loads(exc.read())
        assert exc.code == 409 and "has not taken the deletion" in problem["detail"]
    beta.start()
    wait_until(lambda: status_of(beta, "/v1/accounts/gone") == 404, 20, "deletion on beta")
    wait_until(lambda: alpha.call("GET", "/v1/status")["sync_log_depth"] == 0, 20, "acked")
    alpha.add_account("gone")
    assert alpha.call("GET", "/v1/owner/gone")["owner"] == "alpha"
    wait_until(lambda: status_of(beta, "/v1/accounts/gone") == 200, 15, "third one on beta")
    assert guids(beta, "gone") == []


def peerctl_ok(node: Node, *args: str) -> str:
    result = peerctl(node, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def status_of(node: Node, path: str) -> int:
    try:
        node.call("GET", path)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    return 200


def test_a_malformed_or_oversized_batch_request_is_refused_whole(tmp_path: Path) -> None:
    """``batch_user_some``/``batch_apply``: accounts not a list, more than the
    receiver's MAX_BATCH, or an item that is not an object get a 400 that says
    so, before anything is read or applied; the listener goes on serving."""
    # One node: the requests go straight to its sync listener (a node with no
    # partner takes sync logins too).
    beta = make_single(tmp_path, "beta")
    with running(beta):
        before = beta.call("GET", "/v1/accounts")
        item = {"account": "x", "ownership": "not a row"}
        bodies = {
            "not a list": {"accounts": {"x": 1}},
            "too many": {"accounts": [{"account": f"u{i}"} for i in range(1001)]},
            "not an object": {"accounts": ["x"]},
            "bad ownership": {"accounts": [item]},
        }
        for path in ("batch_user_some", "batch_apply"):
            for why, body in bodies.items():
                status, ctype, answer = sync_post(beta, path, json.dumps(body).encode())
                assert status == 400, (path, why, status, answer)
                assert ctype.startswith("application/json"), (path, why)
                assert answer["error"] == "sync_protocol_error", (path, why, answer)
                if why == "too many":  # refused for its length, before any item is read
                    assert "at most 1000" in answer["detail"], answer
        assert beta.call("GET", "/v1/accounts") == before
        assert beta.healthy()
