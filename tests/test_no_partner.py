"""Commands that need a partner, on a node configured without one: each
says so in one line (peerctl: exit status 2, no traceback; the API: 409
``no_partner``). Before, their routes were not there at all and every one
answered a bare ``Not Found``, which read as if the account or the command
did not exist."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from peerd.control.routes import ROUTES
from tests.harness.clients import peerctl, run_command
from tests.harness.daemons import TOKEN, Node

SAYS = "has no partner configured ([sync] sync_host is not set)"

COMMANDS = [
    ["replicate", "-u", "solo"],
    ["replicate", "-A"],
    ["replicate", "-u", "solo", "-S", "127.0.0.1:1"],
    ["synclog", "-u", "solo"],
    ["owner", "solo"],
    ["failover"],
    ["switchover", "solo"],
    ["failback"],
    ["account", "move", "solo", "--to", "beta"],
    ["reconcile", "-u", "solo"],
    ["reconcile", "--all"],
]


@pytest.fixture
def solo(shared_node: Node) -> Node:
    shared_node.add_account("solo")
    return shared_node


@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: " ".join(args))
def test_peerctl_says_there_is_no_partner(solo: Node, args: list[str]) -> None:
    done = peerctl(solo, *args)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and SAYS in lines[0], done.stderr
    assert "Traceback" not in done.stderr and "Not Found" not in done.stderr


def test_every_partner_route_answers_409_no_partner(solo: Node) -> None:
    partner_routes = [route for route in ROUTES if route.partner]
    assert len(partner_routes) >= 7
    for route in partner_routes:
        path = route.path.replace("{account}", "solo").replace("{name}", "solo")
        data = b"{}" if route.method == "POST" else None
        request = urllib.request.Request(solo.api + path, data=data, method=route.method)
        request.add_header("Authorization", f"Bearer {TOKEN}")
        request.add_header("Content-Type", "application/json")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        body = json.loads(refused.value.read())
        refused.value.close()
        assert refused.value.code == 409, (route.path, body)
        assert body["code"] == "no_partner" and SAYS in body["detail"], (route.path, body)


def test_peerd_rebuild_says_it_needs_a_partner_with_exit_status_2(solo: Node) -> None:
    # A config without a partner is a config error, as for check-config (2);
    # 1 is for a rebuild that started and stopped.
    done = run_command(
        "peerd", ["rebuild", "--from-partner", "-c", str(solo.config)], solo.workdir, timeout=60
    )
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "a rebuild needs the partner" in lines[0], done.stderr
