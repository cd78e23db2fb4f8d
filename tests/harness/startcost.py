"""What a daemon start costs in CPU: ``python -m tests.harness.startcost``.

Starts ``--runs`` pairs (alpha and beta, as the tests make them), each daemon
until it serves ``/v1/health``, and prints the CPU seconds (user + system,
from ``/proc/PID/stat``) of each daemon and of its child processes (the LMTP
worker) at that moment; then, after ``--idle`` seconds of the pair doing
nothing, what each used meanwhile; then its whole life's CPU, read when it
has stopped (SIGTERM, as a test's teardown stops it) from the launcher's
cost log (``PEERD_TEST_COSTLOG``: ``wait4``, the worker it reaped included),
so the stop's share is the rest. ``--exec`` starts each daemon as a plain
``python -m peerd run`` (as from a shell) instead of forking it from the
harness's launcher (:mod:`tests.harness.zygote`); its whole life is then
not measured. Not a test: it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
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


def _lives(costlog: Path, seen: int) -> list[float]:
    """The CPU of the ``peerd run`` processes the cost log got since line ``seen``."""
    if not costlog.exists():
        return []
    rows = [json.loads(line) for line in costlog.read_text().splitlines()[seen:]]
    return [r["user"] + r["sys"] for r in rows if r["kind"] == "peerd run"]


def _span(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.2f}-{max(values):.2f} (median {statistics.median(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="pairs started, one after another")
    parser.add_argument("--idle", type=float, default=0.0, help="seconds idle before the stop")
    parser.add_argument("--exec", action="store_true", help="plain `python -m peerd run`")
    args = parser.parse_args()
    if args.exec:
        os.environ["PEERD_TEST_EXEC"] = "1"
    ready: list[float] = []
    idle: list[float] = []
    lives: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="startcost-") as tmp:
            costlog = Path(tmp) / "costs.jsonl"
            os.environ["PEERD_TEST_COSTLOG"] = str(costlog)  # read by the launcher
            for run in range(args.runs):
                pair = make_pair(Path(tmp) / f"run{run}")
                seen = len(costlog.read_text().splitlines()) if costlog.exists() else 0
                try:
                    for node in pair:
                        node.start()
                    at_ready = [measure(node) for node in pair]
                    if args.idle:
                        time.sleep(args.idle)
                    for node, (daemon, worker) in zip(pair, at_ready, strict=True):
                        now = sum(measure(node))
                        ready.append(daemon + worker)
                        idle.append(now - daemon - worker)
                        print(
                            f"run {run} {node.name}: ready: daemon {daemon:.2f} s, workers "
                            f"{worker:.2f} s; {args.idle:g} s idle: {idle[-1]:.2f} s"
                        )
                finally:
                    for node in pair:
                        node.stop()
                life = _lives(costlog, seen)
                lives += life
                if life:
                    print(
                        f"run {run}: whole lives (with the stop) "
                        + ", ".join(f"{c:.2f}" for c in life)
                    )
    finally:
        zygote.close()
    how = "exec" if args.exec else "forked by the harness"
    print(f"{len(ready)} daemon starts ({how}), CPU-s (daemon and its LMTP worker):")
    print(f"  to ready             {_span(ready)}")
    print(f"  {args.idle:g} s idle{'':<{12 - len(f'{args.idle:g}')}}{_span(idle)}")
    print(f"  whole life (+ stop)  {_span(lives)}")
    if lives and len(lives) == len(ready):
        stops = [c - r - i for c, r, i in zip(lives, ready, idle, strict=True)]
        print(f"  the stop             {_span(stops)}")


if __name__ == "__main__":
    main()
