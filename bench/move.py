"""Moving an account of 10,000 messages between pairs (issue 13).

    .venv/bin/python -m bench.move [--messages 10000] [--rate 20] [--grace 5]

Starts a real PostgreSQL server (the tests' harness) for the routing
directory and two pairs (four real daemons, SQLite stores) on loopback. The
account's INBOX is loaded into pair one's alpha directly through the engine
before it starts (the benchmark mix, ``bench.workload``: delivering 10,000
messages would take minutes and is not what is measured). While mail is
delivered to the account at ``--rate`` messages a second over LMTP (each to
whichever node accepts it, as an MTA that retries would), ``POST
/v1/accounts/big/transfer`` moves it to pair two; the bench polls the move
until pair two serves it, then until the source's copy is deleted
(``[routing] transfer_grace`` = ``--grace``). It prints:

- the total time from the request until pair two serves the account, and
  each step's time as the bench saw it;
- writes held: the node's own figure (from marking the account until the
  local flip), and the longest gap between two acknowledged deliveries
  around the cut-over as a client saw it (it includes the client's retry
  pause and the new lookup);
- bytes on the wire (the copy's requests and answers, zlib on) / the
  mailbox's bytes;
- whether every acknowledged message is on pair two exactly once.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import smtplib
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.load import load
from bench.workload import messages
from tests.harness.clients import audit_store
from tests.harness.postgres import PgServer, require_pg
from tests.nodes import Node, make_pair, running
from tests.procs import wait_until

__all__ = ["main"]

ACCOUNT = "big"


def _pair(workdir: Path, name: str, directory: str, grace: float) -> tuple[Node, Node]:
    routing = {
        "directory_url": directory,
        "pair": name,
        "directory_cache_ttl": "1s",
        "directory_heartbeat": "1s",
        "transfer_grace": f"{grace}s",
    }
    return make_pair(workdir, {"alpha": {"routing": routing}, "beta": {"routing": routing}})


class Mail(threading.Thread):
    """Deliveries at ``rate`` a second, each to the first node that accepts."""

    def __init__(self, nodes: tuple[Node, ...], rate: float) -> None:
        super().__init__(daemon=True)
        self.nodes = nodes
        self.rate = rate
        self.acked: list[tuple[float, str]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            while not self.stopping.is_set():
                # A new number at each try: a lost answer may have stored one.
                subject = f"during-{n}"
                n += 1
                if self._deliver(f"Subject: {subject}\r\n\r\n{subject}\r\n".encode()):
                    self.acked.append((time.monotonic(), subject))
                    break
                time.sleep(0.05)
            time.sleep(max(0.0, 1 / self.rate - (time.monotonic() - started)))

    def _deliver(self, body: bytes) -> bool:
        for node in self.nodes:
            try:
                with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=10) as lmtp:
                    lmtp.sendmail("s@example.test", [f"{ACCOUNT}@example.test"], body)
                    return True
            except (smtplib.SMTPException, OSError):
                continue
        return False


def _move(node: Node) -> dict[str, Any]:
    found: dict[str, Any] = node.call("GET", f"/v1/accounts/{ACCOUNT}/transfer")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=20.0, help="deliveries a second meanwhile")
    parser.add_argument("--grace", type=float, default=5.0, help="[routing] transfer_grace, s")
    args = parser.parse_args()
    pg = PgServer(require_pg()).start()
    try:
        with tempfile.TemporaryDirectory(prefix="peerd-bench-move-") as tmp:
            run(Path(tmp), pg, args.messages, args.rate, args.grace)
    finally:
        pg.stop()


def run(workdir: Path, pg: PgServer, count: int, rate: float, grace: float) -> None:
    url = pg.create_database()
    one = _pair(workdir / "one", "one", url, grace)
    two = _pair(workdir / "two", "two", url, grace)
    payloads = messages(count, f"{ACCOUNT}@example.test")
    print(
        f"{count} messages, {sum(len(p) for p in payloads) / 1e6:.1f} MB, loading pair one's alpha"
    )
    load(one[0], ACCOUNT, payloads)
    with running(*one, *two):
        wait_until(
            lambda: two[0].call("GET", f"/v1/route/{ACCOUNT}")["pair"] == "one",
            60,
            "the account in the directory",
        )
        mail = Mail((*one, *two), rate)
        mail.start()
        time.sleep(3)
        load_before = os.getloadavg()
        started = time.monotonic()
        one[0].call("POST", f"/v1/accounts/{ACCOUNT}/transfer", {"to_pair": "two"})
        steps: dict[str, float] = {}
        move = _move(one[0])
        while move["step"] not in ("flipped", "done"):
            steps.setdefault(move["step"], time.monotonic() - started)
            time.sleep(0.05)
            move = _move(one[0])
        served = time.monotonic() - started
        flipped_at = time.monotonic()
        time.sleep(3)
        mail.stopping.set()
        mail.join(30)
        while move["step"] != "done":
            time.sleep(0.2)
            move = _move(one[0])
        deleted = time.monotonic() - started
        load_after = os.getloadavg()
        times = [t for t, _ in mail.acked]
        gaps = [(b - a, b) for a, b in itertools.pairwise(times)]
        around = [g for g, at in gaps if abs(at - flipped_at) < 10]
        target = two[0]
        subjects = collections.Counter(audit_store(target.db_url, target.workdir_data, ACCOUNT))
        acked = {s for _, s in mail.acked}
        lost = acked - set(subjects)
        doubled = [s for s, n in subjects.items() if n > 1 and s.startswith("during-")]
        held_line = next(
            (line for line in one[0].log.read_text().splitlines() if "writes held" in line), ""
        )
    wire, mailbox = int(move["bytes_sent"]), int(move["mailbox_bytes"])
    print("move of one account between pairs (2 pairs, 4 daemons, one PostgreSQL directory)")
    print(f"  steps seen at          {', '.join(f'{k} {v:.2f} s' for k, v in steps.items())}")
    print(f"  total, until pair two serves it   {served:8.2f} s")
    print(f"  until the source's copy is gone   {deleted:8.2f} s (grace {grace:g} s)")
    print(f"  writes held (the node's figure)   {float(move['writes_held']):8.3f} s")
    print(f"  the source's log: {held_line.partition('peerd.directory.transfer: ')[2]}")
    print(f"  longest gap between acks near the cut-over, client side {max(around or [0]):.3f} s")
    print(
        f"  bytes on the wire {wire:,} / mailbox bytes {mailbox:,} = "
        f"{wire / mailbox if mailbox else 0:.3f} ({move['messages']:,} messages)"
    )
    print(
        f"  deliveries meanwhile: {len(acked)} acknowledged at {rate:g}/s, "
        f"lost {len(lost)}, doubled {len(doubled)}"
    )
    print(
        f"  load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (2 cores, shared)"
    )


if __name__ == "__main__":
    main()
