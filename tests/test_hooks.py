"""Proxy push hooks against real daemons: an HTTP hook (a small server this test runs
on 127.0.0.1) and a command hook on each node. Switchover, failback and failover
call every hook and report which acknowledged; a failing hook is retried in the
background with the routes as they are then, and shows in ``status``."""

from __future__ import annotations

import json
import smtplib
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.nodes import Node, make_pair, peerctl, running
from tests.procs import free_port, wait_until

# The command hook: appends what it got to a file; fails while FAIL exists.
HOOK_SCRIPT = """\
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
data = json.load(sys.stdin)
if out.with_suffix(".fail").exists():
    sys.stderr.write("told to fail")
    sys.exit(3)
with out.open("a") as handle:
    handle.write(json.dumps(data) + "\\n")
"""


class RouteSink:
    """An HTTP server on 127.0.0.1 that records each POST and answers ``status[path]``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.status: dict[str, int] = {}
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                code = sink.status.get(self.path, 200)
                if code == 200:
                    sink.posts.append((self.path, body))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def routes(self, path: str) -> list[dict[str, Any]]:
        return [r for p, body in self.posts if p == path for r in body["routes"]]


@pytest.fixture
def sink() -> Iterator[RouteSink]:
    server = RouteSink()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(10)


@pytest.fixture
def hooked(tmp_path: Path, sink: RouteSink) -> Iterator[tuple[Node, Node]]:
    script = tmp_path / "hook.py"
    script.write_text(HOOK_SCRIPT)
    alpha, beta = make_pair(tmp_path)
    for node in (alpha, beta):
        out = tmp_path / f"map-{node.name}.jsonl"
        with node.config.open("a") as handle:
            handle.write(
                "\n[[routing.hooks]]\n"
                'name = "web"\n'
                f"url = {json.dumps(sink.url('/' + node.name))}\n"
                'timeout = "2s"\n'
                "\n[[routing.hooks]]\n"
                'name = "map"\n'
                f"command = {json.dumps([sys.executable, str(script), str(out)])}\n"
            )
    with running(alpha, beta):
        yield alpha, beta


def map_routes(tmp_path: Path, node: Node) -> list[dict[str, Any]]:
    path = tmp_path / f"map-{node.name}.jsonl"
    if not path.exists():
        return []
    return [r for line in path.read_text().splitlines() for r in json.loads(line)["routes"]]


def acked(report: list[dict[str, Any]]) -> dict[str, bool]:
    return {h["hook"]: h["acknowledged"] for h in report}


def deliver(node: Node, account: str, subject: str) -> None:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30) as lmtp:
        assert (
            lmtp.sendmail(
                "s@example.test",
                [f"{account}@example.test"],
                f"Subject: {subject}\r\nMessage-ID: <{subject}@t>\r\n\r\nx\r\n".encode(),
            )
            == {}
        )


def count(node: Node, account: str) -> int:
    try:
        return len(node.mailbox(account)["messages"])
    except urllib.error.HTTPError as exc:  # not replicated yet
        exc.close()
        return -1


def test_switchover_failback_failover_call_every_hook(
    hooked: tuple[Node, Node], sink: RouteSink, tmp_path: Path
) -> None:
    alpha, beta = hooked
    alpha.add_account("alice")
    deliver(alpha, "alice", "a1")
    wait_until(lambda: count(beta, "alice") == 1, 15, "alice on beta")

    # Switchover on alpha: alpha's hooks get alice's new route (beta's addresses).
    result = alpha.call("POST", "/v1/switchover", {"accounts": ["alice"]})
    assert acked(result["hooks"]) == {"web": True, "map": True}
    expected = {
        "account": "alice",
        "owner": "beta",
        "epoch": 2,
        "state": "normal",
        "imap": f"127.0.0.1:{beta.ports['imap']}",
        "pop3": f"127.0.0.1:{beta.ports['pop3']}",
        "lmtp": f"127.0.0.1:{beta.ports['lmtp']}",
    }
    assert sink.routes("/alpha") == [expected] == map_routes(tmp_path, alpha)
    assert [body["node"] for _, body in sink.posts] == ["alpha"]

    # Failback on alpha: beta (the owner) runs the switchover and calls its
    # hooks; alpha calls its own. Both reports come back.
    result = alpha.call("POST", "/v1/failback", {})
    assert acked(result["partner"]["hooks"]) == {"web": True, "map": True}
    assert acked(result["hooks"]) == {"web": True, "map": True}
    home = {"account": "alice", "owner": "alpha", "epoch": 3}
    for routes in (sink.routes("/beta"), sink.routes("/alpha")[1:], map_routes(tmp_path, beta)):
        assert [{k: r[k] for k in home} for r in routes] == [home]
    assert sink.routes("/alpha")[-1]["lmtp"] == f"127.0.0.1:{alpha.ports['lmtp']}"

    # beta's HTTP hook now fails; alpha dies; failover on beta reports it.
    sink.status["/beta"] = 503
    alpha.kill9()
    answer = peerctl(beta, "failover")
    assert answer.returncode == 0, answer.stderr
    lines = answer.stdout.splitlines()
    assert "proxy hook web: FAILED HTTP 503 (retrying)" in lines
    assert "proxy hook map: acknowledged" in lines
    status = beta.call("GET", "/v1/status")["proxy_hooks"]
    assert status["web"]["ok"] is False and status["web"]["pending"] == 1
    assert status["web"]["failures"] >= 1 and status["web"]["last_error"] == "HTTP 503"
    assert status["map"] == {**status["map"], "ok": True, "pending": 0, "failures": 0}
    shown = peerctl(beta, "status").stdout
    assert "proxy hook web: FAILING, 1 account(s) waiting" in shown
    assert 'peerd_proxy_hook_ok{hook="web"} 0' in metrics(beta)

    # The proxy comes back: the background retry delivers the current route.
    sink.status["/beta"] = 200
    wait_until(
        lambda: beta.call("GET", "/v1/status")["proxy_hooks"]["web"]["ok"], 20, "hook retried"
    )
    assert beta.call("GET", "/v1/status")["proxy_hooks"]["web"]["pending"] == 0
    retried = sink.routes("/beta")[-1]
    assert (retried["account"], retried["owner"], retried["epoch"], retried["state"]) == (
        "alice",
        "beta",
        4,
        "failed_over",
    )


def test_a_failing_command_hook_is_retried_until_it_takes(
    hooked: tuple[Node, Node], tmp_path: Path
) -> None:
    alpha, beta = hooked
    alpha.add_account("dora")
    alpha.add_account("emil")
    fail = tmp_path / "map-alpha.fail"
    fail.write_text("")
    result = alpha.call("POST", "/v1/switchover", {"accounts": ["dora"]})
    assert result["hooks"] == [
        {"hook": "web", "acknowledged": True, "error": ""},
        {"hook": "map", "acknowledged": False, "error": "exit 3: told to fail"},
    ]
    # A second change while the first still waits: both are retried, each
    # with its route as the table has it at the retry.
    alpha.call("POST", "/v1/switchover", {"accounts": ["emil"]})
    state = alpha.call("GET", "/v1/status")["proxy_hooks"]["map"]
    assert state["ok"] is False and state["pending"] == 2 and state["failures"] >= 2
    # dora comes back to alpha before the hook recovers: the retry must say
    # alpha, not the beta of the failed call.
    beta.call("POST", "/v1/switchover", {"accounts": ["dora"]})
    fail.unlink()
    wait_until(
        lambda: alpha.call("GET", "/v1/status")["proxy_hooks"]["map"]["pending"] == 0,
        20,
        "command hook retried",
    )
    last = {r["account"]: (r["owner"], r["epoch"]) for r in map_routes(tmp_path, alpha)}
    assert last == {"dora": ("alpha", 3), "emil": ("beta", 2)}


def metrics(node: Node) -> str:
    with urllib.request.urlopen(f"{node.api}/metrics", timeout=10) as response:
        return str(response.read().decode())
