"""What a daemon start costs in CPU: ``python -m tests.harness.startcost``.

Starts ``--runs`` pairs (alpha and beta, as the tests make them), each daemon
until it serves ``/v1/health``, and prints the CPU seconds (user + system,
from ``/proc/PID/stat``) of each daemon and of its child processes (the LMTP
worker) at that moment. ``--exec`` starts each daemon as a plain
``python -m peerd run`` (as from a shell) instead of forking it from the
harness's launcher (:mod:`tests.harness.zygote`). Not a test: it prints.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from tests.harness import zygote
from tests.harness.daemons import Node, make_pair

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def measure(node: Node) -> tuple[float, float]:
    """(daemon, its children) CPU seconds of a node that serves."""
    assert node.pid is not None
    return cpu_seconds(node.pid), sum(cpu_seconds(c) for c in children(node.pid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="pairs started, one after another")
    parser.add_argument("--exec", action="store_true", help="plain `python -m peerd run`")
    args = parser.parse_args()
    if args.exec:
        os.environ["PEERD_TEST_EXEC"] = "1"
    daemons: list[float] = []
    workers: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="startcost-") as tmp:
            for run in range(args.runs):
                pair = make_pair(Path(tmp) / f"run{run}")
                try:
                    for node in pair:
                        node.start()
                    for node in pair:
                        daemon, worker = measure(node)
                        daemons.append(daemon)
                        workers.append(worker)
                        print(
                            f"run {run} {node.name}: daemon {daemon:.2f} s, workers {worker:.2f} s"
                        )
                finally:
                    for node in pair:
                        node.stop()
    finally:
        zygote.close()
    total = [d + w for d, w in zip(daemons, workers, strict=True)]
    print(
        f"{len(total)} daemon starts ({'exec' if args.exec else 'forked by the harness'}): "
        f"daemon {min(daemons):.2f}-{max(daemons):.2f} s, workers {min(workers):.2f}-"
        f"{max(workers):.2f} s, total {min(total):.2f}-{max(total):.2f} "
        f"(median {statistics.median(total):.2f}) CPU-s"
    )


if __name__ == "__main__":
    main()
