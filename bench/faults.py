"""Fault figures (issue 15): SIGKILL and partition trials, scrub, rebuild, failback under load.

    .venv/bin/python -m bench.faults [--trials 200] [--parts trials,scrub,rebuild,failback]
        [--scrub 4000] [--ingest 1200] [--connections 20] [--rebuild 10000] [--accounts 100]
        [--failback-trials 3] [--rate 50] [--seed 15]

Prints, each part on real daemons on loopback:

1. ``trials`` (:mod:`bench.trials`): ``--trials`` SIGKILL/partition trials on
   one pair (kill the owner, kill the replica, a partition, a split brain,
   in turn; partitions cut TCP links the bench puts between the nodes,
   :mod:`bench.partition`, so no root is needed): trials, acknowledged
   deliveries, lost (target 0), duplicated, divergent trials in records,
   flags and modseqs (target 0), bodies damaged and repaired by the scrub
   (target 100%), and the tracebacks in the daemons' logs.
2. ``scrub`` (:func:`bench.integrity.scrub_figures`): scrub rate (files/s,
   MB/s, cold and warm) and LMTP ingest alone and with a scrub running.
3. ``rebuild`` (:func:`bench.integrity.rebuild_figures`): time to rebuild a
   node of ``--rebuild`` messages from its partner.
4. ``failback`` (:func:`bench.failback.failback_figures`): failback under a
   continuous ``--rate`` msgs/s load (target <= 5 s, writes held <= 1 s).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.failback import failback_figures
from bench.integrity import rebuild_figures, scrub_figures
from bench.trials import KINDS, run_trials

PARTS = ("trials", "scrub", "rebuild", "failback")


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def print_trials(trials: int, seed: int) -> None:
    with tempfile.TemporaryDirectory(prefix="peerd-faults-") as tmp:
        t = run_trials(Path(tmp), trials, seed=seed)
    kinds = ", ".join(f"{t.by_kind[k]} {k}" for k in KINDS)
    print(f"fault trials: {t.trials} ({kinds}) in {t.seconds:.0f} s")
    for k in KINDS:
        if t.by_kind[k]:
            print(f"  {k:<13} {t.kind_seconds[k] / t.by_kind[k]:.1f} s a trial")
    print(f"  acknowledged deliveries:  {t.acknowledged} ({t.deferred} 4xx replies retried)")
    print(f"  lost:                     {t.lost} (target 0)")
    print(f"  duplicated:               {t.duplicated}")
    print(
        f"  divergent trials:         records {t.divergent_records}, flags "
        f"{t.divergent_flags}, modseqs {t.divergent_modseqs} (target 0); "
        f"not settled in 60 s: {t.unsettled}"
    )
    print(f"  flag changes made:        {t.flag_changes}")
    print(
        f"  damaged and repaired:     {t.repaired} of {t.damaged} "
        f"({_pct(t.repaired, t.damaged)}; target 100%)"
    )
    print(f"  connections the partitions broke: {t.links_broken}")
    logs = t.logs or {}
    print(
        f"  daemons' logs: {logs.get('tracebacks', 0)} tracebacks, "
        f"{logs.get('ConnectionResetError lines', 0)} lines naming ConnectionResetError, "
        f"{logs.get('error lines', 0)} ERROR lines"
    )
    for line in t.error_lines:
        print(f"  | {line}")
    for finding in t.failures[:20]:
        print(f"  ! {finding}")


def print_scrub(count: int, ingest: int, connections: int) -> None:
    with tempfile.TemporaryDirectory(prefix="peerd-faults-") as tmp:
        f = scrub_figures(Path(tmp) / "scrub", count, ingest, connections)
    mb = f["bytes"] / 1e6
    print(f"scrub of {f['messages']} messages ({mb:.0f} MB), full speed:")
    print(f"  cold (page cache dropped): {f['cold'][0]:.0f} files/s, {f['cold'][1]:.1f} MB/s")
    print(f"  warm:                      {f['warm'][0]:.0f} files/s, {f['warm'][1]:.1f} MB/s")
    alone = f["ingest_alone"]
    print(f"  LMTP ingest ({connections} pipelined connections) alone: {alone:.0f} msgs/s")
    for label, name in (
        ("ingest_scrub_paced", "scrub at 20 MiB/s"),
        ("ingest_scrub_full", "scrub at full speed"),
    ):
        rate = f[label]
        print(
            f"  with a {name:<19}: {rate:.0f} msgs/s ({100 * (rate / alone - 1):+.0f}%), "
            f"the scrub reading {f[label + '_read_mb_s']:.1f} MB/s"
        )


def print_rebuild(count: int, accounts: int) -> None:
    with tempfile.TemporaryDirectory(prefix="peerd-faults-") as tmp:
        r = rebuild_figures(Path(tmp) / "rebuild", count, accounts)
    mb = r["bytes"] / 1e6
    seconds = r["rebuild_seconds"]
    print(
        f"rebuild from the partner: {r['messages']} messages ({mb:.0f} MB) in "
        f"{r['accounts']} accounts: {seconds:.1f} s ({r['messages'] / seconds:.0f} msgs/s, "
        f"{mb / seconds:.1f} MB/s)"
    )
    for line in r["output"]:
        print(f"  | {line}")


def print_failback(trials: int, rate: float) -> None:
    figures = failback_figures(trials, rate)
    print(f"failback under a continuous {rate:g} msgs/s LMTP load, {trials} trial(s):")
    for n, f in enumerate(figures, 1):
        print(
            f"  trial {n}: failback {f['seconds']:.3f} s, writes held {f['writes_held']:.3f} s, "
            f"{f['acked']} acknowledged, {f['deferred']} 4xx, {f['lost']} lost"
        )
    seconds = statistics.median(f["seconds"] for f in figures)
    held = statistics.median(f["writes_held"] for f in figures)
    lost = sum(f["lost"] for f in figures)
    print(f"  median: failback {seconds:.3f} s (target <= 5 s), writes held {held:.3f} s (<= 1 s)")
    print(f"  acknowledged deliveries lost: {lost} (target 0)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=200, help="SIGKILL/partition trials")
    parser.add_argument("--parts", default=",".join(PARTS), help="which parts, comma-separated")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--scrub", type=int, default=4000, help="messages in the scrubbed store")
    parser.add_argument("--ingest", type=int, default=1200, help="messages per ingest run")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--rebuild", type=int, default=10_000, help="messages to rebuild")
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--failback-trials", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0, help="LMTP msgs/s during failback")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    for part in parts:
        started = time.monotonic()
        if part == "trials":
            print_trials(args.trials, args.seed)
        elif part == "scrub":
            print_scrub(args.scrub, args.ingest, args.connections)
        elif part == "rebuild":
            print_rebuild(args.rebuild, args.accounts)
        else:
            print_failback(args.failback_trials, args.rate)
        print(f"  ({part}: {time.monotonic() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
