"""``peerctl status`` for people: durations as ``1h`` (not ``3600 s``),
times without microseconds, no Python ``None``/``False``, both nodes on one
screen; and a progress line for a command that runs longer than 2 s."""

from __future__ import annotations

import re
from collections.abc import Callable

from tests.nodes import Node, peerctl
from tests.procs import wait_until

LoneNode = Callable[..., Node]

PYTHONISMS = re.compile(r"\b(None|True|False)\b|\d\.\d{6}|\d s\b|T\d\d:\d\d:\d\d")


def test_status_shows_both_nodes_in_human_units(pair: tuple[Node, Node]) -> None:
    alpha, beta = pair
    alpha.add_account("alice")
    beta.add_account("bob")
    # The line below shows a last success: wait for alpha's first replication
    # round to end (a peerctl forked from the launcher starts in milliseconds).
    wait_until(
        lambda: alpha.call("GET", "/v1/status")["replication"]["last_success"],
        30,
        "alpha's first successful replication round",
    )
    shown = peerctl(alpha, "status")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert PYTHONISMS.search(text) is None, text
    blocks = text.split("\n\n")
    assert blocks[0].startswith("node alpha (partner beta)"), text
    assert blocks[1].startswith("node beta (partner alpha)"), text
    assert "spool sweep: every 1h, grace 1h, " in blocks[0]
    assert re.search(r"oldest (-|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\S+ ago\))", text)
    assert re.search(r"partner beta \(\S+\): reachable yes, last success \d{4}-\d\d-\d\d ", text)
    assert re.search(r", lag \d+(\.\d)?s\b", text), text
    local = peerctl(alpha, "status", "--local")
    assert local.returncode == 0 and "node beta" not in local.stdout
    one = peerctl(alpha, "status", "-u", "alice").stdout
    assert PYTHONISMS.search(one) is None and re.search(r"lag \d+(\.\d)?s$", one.splitlines()[1])

    # The partner down: this node's status still shows, and says so.
    assert beta.stop() == 0
    down = peerctl(alpha, "status")
    assert down.returncode == 0, down.stderr
    assert down.stdout.split("\n\n")[1].startswith("node beta: not answering (cannot reach ")


def test_a_command_longer_than_two_seconds_says_it_is_running(lone_node: LoneNode) -> None:
    node = lone_node()
    node.add_account("alice")
    with node.lmtp() as lmtp:
        body = b"x" * 4000
        lmtp.sendmail("me@example.test", ["alice@example.test"], b"Subject: big\r\n\r\n" + body)
    # 1 KiB/s over one 4 KB body: about four seconds.
    done = peerctl(node, "scrub", "--rate", "1K")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("scrubbed 1 file(s)")
    assert re.fullmatch(r"peerctl: scrub: still running after 2(\.\d)?s\n", done.stderr), (
        done.stderr
    )
    quick = peerctl(node, "scrub")
    assert quick.returncode == 0 and quick.stderr == ""
