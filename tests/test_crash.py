"""``kill -9`` of a real daemon during LMTP deliveries, then restart.

The promise to the MTA: a 250 means the message is on disk. A message
committed just before the kill may be there without its 250; the MTA retries
it and duplicate suppression keeps one copy. Nothing is ever stored in part.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable
from functools import partial

from tests.conftest import Burst, LoneNode, burst_message
from tests.harness.procs import wait_until

NodeFactory = Callable[..., LoneNode]


def delivered(burst: Burst, count: int) -> bool:
    return len(burst.acked) >= count


def check_restarted(node: LoneNode, stored: list[str]) -> None:
    """After a restart: no temp file left, the API sees what the store holds."""
    assert list((node.workdir_data / "spool" / "tmp").iterdir()) == []
    records = node.records("jack")
    assert len(records) == len(stored)
    used = node.call("GET", "/v1/accounts/jack")["quota_used"]
    assert used == sum(r["size"] for r in records)


def test_kill_9_during_a_burst_loses_no_acknowledged_message(lone_node: NodeFactory) -> None:
    node = lone_node()
    node.add_account("jack")
    acked: set[str] = set()
    unknown: set[str] = set()
    for tag in ("r0", "r1"):  # twice: the second run starts from a crashed store
        burst = node.burst("jack", threads=4, per_thread=400, tag=tag)
        wait_until(partial(delivered, burst, 50), 60, "50 deliveries")
        node.kill9()
        burst.join()
        assert len(burst.acked) < 1600, "the kill came after the burst"
        acked |= set(burst.acked)
        unknown |= burst.unknown

        # The dead node's store, read directly: every record's spool file is
        # whole, checksums and quota agree with the records.
        stored = node.audit("jack")
        assert len(stored) == len(set(stored)), f"{tag}: a message stored twice"
        assert acked <= set(stored), f"{tag}: lost {sorted(acked - set(stored))}"
        assert set(stored) - acked <= unknown, f"{tag}: stored but never sent"

        node.start()
        check_restarted(node, stored)

    # The MTA retries everything it has no 250 for: each message ends up stored once.
    with node.lmtp() as client:
        for subject in sorted(unknown):
            assert (
                client.sendmail("s@example.test", ["jack@example.test"], burst_message(subject))
                == {}
            )
    final = node.audit("jack")
    assert sorted(final) == sorted(acked | unknown)


def test_retry_of_a_message_committed_without_its_250_is_suppressed(
    lone_node: NodeFactory,
) -> None:
    node = lone_node()
    node.add_account("jack")
    data = burst_message("lost-250")
    guid = hashlib.sha1(data).hexdigest()
    with socket.create_connection(("127.0.0.1", node.port("lmtp")), timeout=30) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        for line in (b"LHLO x", b"MAIL FROM:<s@example.test>", b"RCPT TO:<jack@example.test>"):
            sock.sendall(line + b"\r\n")
            while (reply := reader.readline())[3:4] == b"-":
                pass
            assert reply.startswith(b"250"), reply
        sock.sendall(b"DATA\r\n")
        assert reader.readline().startswith(b"354")
        sock.sendall(data + b".\r\n")
        # Committed; the daemon dies before the MTA reads the reply.
        wait_until(lambda: [r["guid"] for r in node.records("jack")] == [guid], 30, "the commit")
        node.kill9()
        reader.close()
    node.start()
    check_restarted(node, ["lost-250"])
    with node.lmtp() as client:
        client.ehlo("x")
        client.mail("s@example.test")
        client.rcpt("jack@example.test")
        code, text = client.data(data)
    assert code == 250 and b"duplicate" in text
    assert node.audit("jack") == ["lost-250"]
