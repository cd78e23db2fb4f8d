"""Integrity figures (issue 15): the scrub's rate and cost, and rebuilding a node.

    .venv/bin/python -m bench.integrity [--scrub 4000] [--ingest 1200] [--connections 20]
        [--rebuild 10000] [--accounts 100]

1. **scrub rate**: a real node with ``--scrub`` messages of the benchmark mix
   loaded; ``POST /v1/scrub`` at full speed (``rate: 0``), once with the
   spool's pages dropped from the page cache first (``POSIX_FADV_DONTNEED``
   on every file: what a weekly scrub meets) and once warm. files/s and MB/s
   as the daemon reports them.
2. **its cost to LMTP**: ``--ingest`` messages over ``--connections``
   pipelined LMTP connections (as Postfix delivers), timed alone, then while
   scrubs run back to back at the default pace (``[scrub] rate`` = 20 MiB/s)
   and at full speed; ingest msgs/s each (the three take turns, twice; the
   mean), and what the scrub read meanwhile.
3. **rebuild**: a pair with ``--rebuild`` messages over ``--accounts``
   accounts on alpha (home beta for half of them), in sync; beta's database
   is put out of use and ``peerd rebuild --from-partner`` times the rebuild
   (seconds, msgs/s, MB/s), checked afterwards against alpha (same records).

Stores are loaded through the engine before the daemons start (so setting
up takes seconds); every figure is measured through the running daemons.
:func:`main` prints them; :func:`scrub_figures` and :func:`rebuild_figures`
return them (``bench/faults.py`` calls them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.lmtp_ingest import run_pipelining
from bench.load import load
from bench.workload import messages
from tests.nodes import Node, make_pair, make_single, running
from tests.procs import wait_until

__all__ = ["main", "rebuild_figures", "scrub_figures"]

DEFAULT_RATE = 20 << 20
ROUNDS = 2


def _drop_cache(spool: Path) -> int:
    """Ask the kernel to drop the spool files' clean pages; how many files."""
    n = 0
    for directory in spool.iterdir():
        if not directory.is_dir() or directory.name == "tmp":
            continue
        for entry in os.scandir(directory):
            fd = os.open(entry.path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            n += 1
    return n


def _ingest(node: Node, count: int, connections: int, base: int) -> float:
    """Deliver ``count`` messages over ``connections``; msgs/s."""
    rcpts = [f"in{c}@example.test" for c in range(connections)]
    per = count // connections
    payloads = [messages(per, rcpts[c], base=base + c * per) for c in range(connections)]
    failures, seconds = run_pipelining(node.ports["lmtp"], payloads, rcpts)
    if failures:
        raise RuntimeError(f"{len(failures)} deliveries failed: {failures[:3]}")
    return per * connections / seconds


def _scrubbing(node: Node, rate: int, stop: threading.Event, results: list[dict[str, Any]]) -> None:
    while not stop.is_set():
        results.append(node.call("POST", "/v1/scrub", {"rate": rate}))


def scrub_figures(workdir: Path, count: int, ingest: int, connections: int) -> dict[str, Any]:
    """Scrub rate (cold and warm) and ingest with and without a scrub running."""
    workdir.mkdir(parents=True, exist_ok=True)
    node = make_single(workdir, overrides={"scrub": {"enabled": False}})
    payloads = messages(count, "bulk@example.test")
    load(node, "bulk", payloads)
    total = sum(len(p) for p in payloads)
    out: dict[str, Any] = {"messages": count, "bytes": total}
    with running(node):
        _drop_cache(node.workdir / "var" / node.name / "spool")
        cold = node.call("POST", "/v1/scrub", {"rate": 0})
        warm = node.call("POST", "/v1/scrub", {"rate": 0})
        assert cold["damaged"] == [] and warm["files"] == count
        out["cold"] = (cold["files_per_second"], cold["mb_per_second"])
        out["warm"] = (warm["files_per_second"], warm["mb_per_second"])
        for c in range(connections):
            node.add_account(f"in{c}")
        _ingest(node, connections * 10, connections, base=1_000_000)  # warm up
        base = 2_000_000
        # The conditions take turns, ROUNDS times, so a change in the
        # machine's load (it is shared) hits them alike; the mean is shown.
        rates: dict[str, list[float]] = {}
        reads: dict[str, list[float]] = {}
        for _ in range(ROUNDS):
            for label, rate in (
                ("ingest_alone", None),
                ("ingest_scrub_paced", DEFAULT_RATE),
                ("ingest_scrub_full", 0),
            ):
                base += ingest
                stop = threading.Event()
                runs: list[dict[str, Any]] = []
                thread = None
                if rate is not None:
                    thread = threading.Thread(target=_scrubbing, args=(node, rate, stop, runs))
                    thread.start()
                    time.sleep(0.5)
                rates.setdefault(label, []).append(_ingest(node, ingest, connections, base))
                stop.set()
                if thread is not None:
                    thread.join()
                    seconds = max(sum(r["seconds"] for r in runs), 1e-9)
                    reads.setdefault(label, []).append(sum(r["bytes"] for r in runs) / seconds)
        for label, values in rates.items():
            out[label] = sum(values) / len(values)
        for label, values in reads.items():
            out[label + "_read_mb_s"] = sum(values) / len(values) / 1e6
    return out


def rebuild_figures(workdir: Path, count: int, accounts: int) -> dict[str, Any]:
    """Time ``peerd rebuild --from-partner`` of a node holding ``count`` messages."""
    workdir.mkdir(parents=True, exist_ok=True)
    alpha, beta = make_pair(workdir)
    per = count // accounts
    total = 0
    for a in range(accounts):
        payloads = messages(per, f"r{a}@example.test", base=a * per)
        total += sum(len(p) for p in payloads)
        load(alpha, f"r{a}", payloads)
    with running(alpha, beta):
        started = time.perf_counter()
        answer = alpha.call("POST", "/v1/replicate", {"all": True})
        assert not answer["errors"], answer["errors"][:3]
        initial = time.perf_counter() - started
        # Half the accounts live on beta: it has accounts of its own to lose.
        for a in range(0, accounts, 2):
            alpha.call("POST", f"/v1/accounts/r{a}/move", {"to": "beta"})
        alpha.call("POST", "/v1/switchover", {"accounts": [f"r{a}" for a in range(0, accounts, 2)]})
        beta.stop()
        started = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-m", "peerd", "rebuild", "--from-partner", "-c", str(beta.config)],
            capture_output=True,
            text=True,
            cwd=beta.workdir,
            timeout=3600,
        )
        seconds = time.perf_counter() - started
        if run.returncode != 0:
            raise RuntimeError(f"rebuild failed:\n{run.stdout}\n{run.stderr}")
        beta.start()
        for a in range(accounts):
            name = f"r{a}"
            mine = [m["guid"] for m in alpha.mailbox(name)["messages"]]

            def caught_up(name: str = name, mine: list[str] = mine) -> bool:
                return [m["guid"] for m in beta.mailbox(name)["messages"]] == mine

            wait_until(
                caught_up,
                60,
                f"{name} equal on beta",
            )
    return {
        "messages": per * accounts,
        "accounts": accounts,
        "bytes": total,
        "initial_sync_seconds": initial,
        "rebuild_seconds": seconds,
        "output": run.stdout.strip().splitlines(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scrub", type=int, default=4000, help="messages in the scrubbed store")
    parser.add_argument("--ingest", type=int, default=1200, help="messages per ingest run")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--rebuild", type=int, default=10_000, help="messages to rebuild")
    parser.add_argument("--accounts", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="peerd-bench-") as tmp:
        figures = scrub_figures(Path(tmp) / "scrub", args.scrub, args.ingest, args.connections)
    mb = figures["bytes"] / 1e6
    print(f"scrub of {figures['messages']} messages ({mb:.0f} MB, the benchmark mix), full speed:")
    print(
        f"  cold (page cache dropped): {figures['cold'][0]:.0f} files/s, {figures['cold'][1]:.1f} MB/s"
    )
    print(
        f"  warm:                      {figures['warm'][0]:.0f} files/s, {figures['warm'][1]:.1f} MB/s"
    )
    alone = figures["ingest_alone"]
    print(f"LMTP ingest, {args.connections} pipelined connections, {args.ingest} messages per run:")
    print(f"  alone:                       {alone:.0f} msgs/s")
    for label, name in (
        ("ingest_scrub_paced", "scrub at 20 MiB/s"),
        ("ingest_scrub_full", "scrub at full speed"),
    ):
        rate = figures[label]
        print(
            f"  with a {name:<19} {rate:.0f} msgs/s ({100 * (rate / alone - 1):+.0f}%), "
            f"the scrub reading {figures[label + '_read_mb_s']:.1f} MB/s"
        )
    with tempfile.TemporaryDirectory(prefix="peerd-bench-") as tmp:
        rebuilt = rebuild_figures(Path(tmp) / "rebuild", args.rebuild, args.accounts)
    mb = rebuilt["bytes"] / 1e6
    seconds = rebuilt["rebuild_seconds"]
    print(
        f"rebuild from the partner: {rebuilt['messages']} messages ({mb:.0f} MB) in "
        f"{rebuilt['accounts']} accounts: {seconds:.1f} s ({rebuilt['messages'] / seconds:.0f} msgs/s, "
        f"{mb / seconds:.1f} MB/s; the first full sync to the empty partner took "
        f"{rebuilt['initial_sync_seconds']:.1f} s)"
    )
    for line in rebuilt["output"]:
        print(f"  | {line}")


if __name__ == "__main__":
    main()
