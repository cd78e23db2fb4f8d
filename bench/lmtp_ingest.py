"""LMTP ingest: messages/s and MB/s into one real peerd node, durability on.

    .venv/bin/python -m bench.lmtp_ingest [--messages 3000] [--connections 4]
        [--workers 1] [--flush filesystem|file]

Starts a node (SQLite, fsync on, replication off) in a temp dir, creates one
account per connection, delivers the benchmark mix over concurrent LMTP
connections, and prints the rate next to the machine's ceiling measured in
the same run: write+fsync of the same files, one by one, from Python.
"""

from __future__ import annotations

import argparse
import smtplib
import tempfile
import threading
import time
from pathlib import Path

from bench.workload import ceiling, messages
from tests.nodes import make_single


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--flush", default="filesystem")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="peerd-bench-") as tmp:
        workdir = Path(tmp)
        node = make_single(
            workdir,
            overrides={"lmtp": {"workers": args.workers}, "node": {"spool_flush": args.flush}},
        )
        node.start()
        try:
            per = args.messages // args.connections
            payloads = [
                messages(per, f"user{c}@example.test", base=c * per)
                for c in range(args.connections)
            ]
            for c in range(args.connections):
                node.add_account(f"user{c}")
            total_bytes = sum(len(p) for batch in payloads for p in batch)
            failures: list[str] = []

            def run(c: int) -> None:
                with smtplib.LMTP("127.0.0.1", node.ports["lmtp"]) as lmtp:
                    for data in payloads[c]:
                        refused = lmtp.sendmail(
                            "bench@example.test", [f"user{c}@example.test"], data
                        )
                        if refused:
                            failures.append(str(refused))

            threads = [threading.Thread(target=run, args=(c,)) for c in range(args.connections)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - started
            status = node.call("GET", "/v1/status")
        finally:
            node.stop()
        count = per * args.connections
        if failures:
            raise SystemExit(f"{len(failures)} deliveries failed: {failures[:3]}")
        rate, mbs = count / seconds, total_bytes / seconds / 1e6
        ceil_rate, ceil_mbs = ceiling([p for batch in payloads for p in batch], str(workdir))
        print(
            f"messages          {count} ({total_bytes / 1e6:.1f} MB) over {args.connections} LMTP connections"
        )
        print(f"peerd LMTP        {rate:8.0f} msgs/s  {mbs:6.1f} MB/s  (fsync on, group commit)")
        print(
            f"ceiling           {ceil_rate:8.0f} msgs/s  {ceil_mbs:6.1f} MB/s  (write+fsync per file, Python)"
        )
        print(f"ratio             {rate / ceil_rate:8.2f} of the ceiling")
        store = status["store"]
        print(
            f"group commit      {store['writes']} writes in {store['batches']} commits (largest {store['largest_batch']})"
        )


if __name__ == "__main__":
    main()
