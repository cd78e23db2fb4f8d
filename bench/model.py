"""A model of a many-pair site, computed from this repository's measurements (issue 13).

    .venv/bin/python -m bench.model [--results bench/results] [--curves FILE] [--idle FILE]
        [--replicate-all FILE] [--replication FILE] [--pairs 100]
        [--accounts 1000000] [--logins-per-hour 6] [--messages-per-day 40] ...

Reads the JSON that ``bench.curves``, ``bench.idle``, ``bench.replicate_all``
and ``bench.replication`` write with ``--json`` (each flag repeatable: the
runs of ``bench/results/``, all read with ``--results bench/results``, or
any others; a figure can also be given as an
argument: ``--delivery-rate``, ``--kib-per-session``, ...; it says where each
figure came from), measures one scrypt hash itself (or takes
``--scrypt-ms``), and prints, for
``--pairs`` pairs holding ``--accounts`` accounts:

1. **the directory's load**: lookups a second over the site (IMAP/POP3
   logins through the proxies, and one socketmap lookup per delivered
   message), how many of them reach the directory with each node's cache of
   ``--ttl`` seconds, and the hit rate;
2. **one node failing**: what its partner takes (accounts, sessions that log
   in again, their memory and hashing time, the delivery rate it must carry
   alone) and how long other pairs route to the dead node;
3. **its failback** after ``--outage-hours``: the mail to copy back and the
   time, with and without the node's store (rebuilt from the partner).

The assumptions are printed with the results and stated in docs/scale.md:
lookups come in bursts of ``--burst`` lookups of one account on one node
(a client opening its connections, a message's recipients), the bursts
spread evenly over the accounts and over the nodes answering them (an even
spread gives the directory the most misses for a given total: the miss rate
of one account, ``b / (1 + b T)`` for ``b`` bursts a second, is concave in
``b``, so any skew lowers the total), each cache entry lives ``T`` from the
query that filled it, and bursts arrive as a Poisson process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from engine.passwords import hash_password

__all__ = ["main", "model"]

# Measured by benches that write no JSON (docs/benchmarks.md); each one is
# also a flag:
DIRECTORY_QUERY_MS = 1.15  # the directory's lookup statement alone, p50 (bench.scale)
FAILBACK_HELD_S = 0.35  # writes held during a failback (bench.faults, median)
MEAN_MESSAGE_BYTES = 32_300  # the benchmark mix (bench.workload): 10,000 messages = 323 MB
# Used only when no --replication JSON is given (bench.replication, the lowest run):
BULK_MSGS_PER_S = 1700.0
BULK_MB_PER_S = 55.0


def scrypt_ms() -> float:
    """One login's password hash on this host (the best of three), in ms."""
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        hash_password("model")
        best = min(best, time.perf_counter() - began)
    return best * 1000


def _load(paths: list[Path] | None, key: str) -> list[Any]:
    """The ``key`` part of each bench JSON file (a list's items each)."""
    found: list[Any] = []
    for path in paths or []:
        part = json.loads(path.read_text())[key]
        found += part if isinstance(part, list) else [part]
    return found


def _from_curves(paths: list[Path] | None) -> dict[str, float]:
    """From ``bench.curves --json`` files: the lowest delivery rate of any
    point, the in-sync ``replicate --all`` per account at the most accounts,
    and the first pass onto an empty partner per message at the most messages."""
    runs = _load(paths, "curves")
    points = [f for run in runs for f in run["accounts"] + run["messages"]]
    if not points:
        return {}
    figures = {"delivery_rate": min(f["deliveries_per_s"] for f in points)}
    by_accounts = [f for run in runs for f in run["accounts"]]
    if by_accounts:
        largest = max(by_accounts, key=lambda f: f["accounts"])
        figures["steady_s_per_account"] = largest["replicate_all_s"] / largest["accounts"]
    by_messages = [
        f for run in runs for f in run["messages"] if f.get("partner", "empty") == "empty"
    ]
    if by_messages:
        largest = max(by_messages, key=lambda f: f["messages"])
        figures["pass1_s_per_message"] = largest["replicate_all_pass1_s"] / largest["messages"]
    return figures


def _from_idle(paths: list[Path] | None) -> dict[str, float]:
    """From ``bench.idle --json`` files: the highest of each figure."""
    runs = _load(paths, "idle")
    if not runs:
        return {}
    return {
        "kib_per_session": max(r["kib_per_session"] for r in runs),
        "wake_us": max(r["cpu_us_per_wake"] for r in runs),
        "wake_p99_ms": max(r["wake_p99_ms"] for r in runs),
        "wake_p99_ms_lowest": min(r["wake_p99_ms"] for r in runs),
        "idle_load_lowest": min(r["load"][0] for r in runs),
        "idle_load_highest": max(r["load"][0] for r in runs),
    }


def _from_replicate_all(paths: list[Path] | None) -> dict[str, float]:
    """From ``bench.replicate_all --json`` files: the first pass onto an empty
    partner per account of five mailboxes, as the CPU seconds of both daemons
    (the median run; the pass is one request after another between them, so
    on a quiet host its time is about that: 0.9-1.0 s against 1.0-1.1 s of
    CPU for 1,000 accounts), and the wall-clock seconds beside it."""
    runs = _load(paths, "replicate_all")
    if not runs:
        return {}
    return {
        "pass1_s_per_account": statistics.median(
            sum(r["first_pass_cpu_s"].values()) / r["accounts"] for r in runs
        ),
        "pass1_wall_s_per_account": statistics.median(
            r["first_pass_s"] / r["accounts"] for r in runs
        ),
    }


def _from_replication(paths: list[Path] | None) -> dict[str, float]:
    """From ``bench.replication --json`` files: bulk sync, the lowest run."""
    runs = _load(paths, "replication")
    if not runs:
        return {}
    return {
        "bulk_msgs_per_s": min(r["bulk_msgs_per_s"] for r in runs),
        "bulk_mb_per_s": min(r["bulk_mb_per_s"] for r in runs),
    }


def model(a: argparse.Namespace, hash_ms: float) -> dict[str, Any]:
    nodes = 2 * a.pairs
    per_pair = a.accounts / a.pairs
    per_node = per_pair / 2
    # 1. the directory
    logins = a.accounts * a.logins_per_hour / 3600
    deliveries = a.accounts * a.messages_per_day / 86400
    lookups = logins + deliveries
    remote = lookups * (1 - 1 / a.pairs)  # a node answers its own pair's accounts locally
    rate_per_key = lookups / (nodes * a.accounts)  # one account, one node
    # Bursts of a.burst lookups of one account on one node (a client's
    # connections, a message's recipients), Poisson between bursts: the first
    # of a burst misses unless an entry younger than T is there.
    bursts = rate_per_key / a.burst
    misses_per_key = bursts / (1 + bursts * a.ttl)
    hit = 1 - misses_per_key / rate_per_key
    queries = remote * (1 - hit)
    serial_capacity = 1000 / a.directory_query_ms
    heartbeats = nodes / a.heartbeat
    cached = nodes and min(a.accounts, lookups / nodes * a.ttl)
    # 2. one node fails: its partner takes its accounts
    sessions = per_node * a.sessions_per_account
    relogin_cpu_s = sessions * hash_ms / 1000
    # 3. failback after the outage
    away_msgs = per_node * a.messages_per_day * a.outage_hours / 24
    away_bytes = away_msgs * a.message_bytes
    copy_s = max(away_msgs / a.bulk_msgs_per_s, away_bytes / (a.bulk_mb_per_s * 1e6))
    compare_s = per_node * a.steady_s_per_account
    rebuild_bytes = per_node * a.mailbox_mb * 1e6
    rebuild_msgs = rebuild_bytes / a.message_bytes
    rebuild_copy_s = max(rebuild_msgs / a.bulk_msgs_per_s, rebuild_bytes / (a.bulk_mb_per_s * 1e6))
    rebuild_accounts_s = per_node * a.pass1_s_per_account  # accounts and mailboxes created
    return {
        "site": {
            "pairs": a.pairs,
            "nodes": nodes,
            "accounts": a.accounts,
            "accounts_per_node": per_node,
        },
        "directory": {
            "lookups_per_s": round(lookups, 1),
            "from_logins": round(logins, 1),
            "from_deliveries": round(deliveries, 1),
            "per_node_per_s": round(lookups / nodes, 2),
            "not_local_per_s": round(remote, 1),
            "cache_hit_rate": round(hit, 4),
            "directory_queries_per_s": round(queries, 1),
            "one_connection_capacity_per_s": round(serial_capacity),
            "directory_busy_cores": round(queries * a.directory_query_ms / 1000, 2),
            "heartbeat_writes_per_s": round(heartbeats, 1),
            "cache_entries_per_node": round(cached),
        },
        "failover": {
            "accounts_moved": per_node,
            "directory_rows_written": per_node,
            "stale_routing_s": a.ttl,
            "sessions_logging_in_again": round(sessions),
            "their_memory_mib": round(sessions * a.kib_per_session / 1024, 1),
            "relogin_hash_cpu_s": round(relogin_cpu_s, 1),
            "relogin_s_on_cores": round(relogin_cpu_s / a.cores, 1),
            "survivor_sessions": round(2 * sessions),
            "survivor_session_memory_mib": round(2 * sessions * a.kib_per_session / 1024, 1),
            "wake_all_cpu_s": round(2 * sessions * a.wake_us / 1e6, 2),
            "wake_p99_ms_at_10000": a.wake_p99_ms,
            "pair_deliveries_per_s": round(deliveries / a.pairs, 2),
            "delivery_capacity_per_s": a.delivery_rate,
        },
        "failback": {
            "outage_hours": a.outage_hours,
            "messages_to_copy": round(away_msgs),
            "bytes_to_copy": round(away_bytes),
            "copy_s": round(copy_s, 1),
            "compare_s": round(compare_s, 1),
            "writes_held_s": a.failback_held,
            "rebuild_bytes": round(rebuild_bytes),
            "rebuild_messages": round(rebuild_msgs),
            "rebuild_accounts_s": round(rebuild_accounts_s, 1),
            "rebuild_hours": round((rebuild_copy_s + rebuild_accounts_s) / 3600, 2),
        },
    }


def _p99(a: argparse.Namespace, highest: float) -> str:
    """The wake-up p99 of the idle runs read: their range and load, if several."""
    m = a.measured
    if "wake_p99_ms_lowest" not in m or m["wake_p99_ms_lowest"] == highest:
        return f"{highest} ms"
    return (
        f"{m['wake_p99_ms_lowest']}-{highest} ms"
        f" at load {m['idle_load_lowest']}-{m['idle_load_highest']}"
    )


def _print(r: dict[str, Any], a: argparse.Namespace, hash_ms: float) -> None:
    s, d, f, b = r["site"], r["directory"], r["failover"], r["failback"]
    print(
        f"site: {s['pairs']} pairs ({s['nodes']} nodes), {s['accounts']:,} accounts,"
        f" {s['accounts_per_node']:,.0f} owned per node"
    )
    print(
        f"assumed: {a.logins_per_hour} logins/h and {a.messages_per_day} messages/day per account,"
        f" {a.sessions_per_account} idle IMAP sessions per account, cache TTL {a.ttl} s,"
        f" lookups in bursts of {a.burst} on one node, bursts spread evenly over accounts"
        f" and nodes (Poisson)"
    )
    print(
        "measured: "
        + "; ".join(f"{key} {getattr(a, key):.6g} ({where})" for key, where in a.sources.items())
        + f"; scrypt {hash_ms:.0f} ms"
    )
    print(
        f"1 directory: {d['lookups_per_s']:,} lookups/s ({d['from_logins']:,} logins,"
        f" {d['from_deliveries']:,} deliveries), {d['per_node_per_s']} per node;"
        f" cache hit rate {d['cache_hit_rate']:.2%}; {d['directory_queries_per_s']:,} queries/s"
        f" reach the directory (one connection in series: {d['one_connection_capacity_per_s']:,}/s"
        f" at {a.directory_query_ms} ms; ~{d['directory_busy_cores']} cores busy if a query's"
        f" time were all CPU); heartbeats {d['heartbeat_writes_per_s']} writes/s;"
        f" ~{d['cache_entries_per_node']:,} entries per node's cache"
    )
    print(
        f"2 failover of one node: {f['accounts_moved']:,.0f} accounts to its partner"
        f" ({f['directory_rows_written']:,.0f} directory rows), other pairs route to the dead node"
        f" for at most {f['stale_routing_s']} s; {f['sessions_logging_in_again']:,} sessions log in"
        f" again: {f['their_memory_mib']} MiB, {f['relogin_hash_cpu_s']} s of scrypt"
        f" ({hash_ms:.0f} ms each) = {f['relogin_s_on_cores']} s on {a.cores} cores;"
        f" the survivor then holds {f['survivor_sessions']:,} idle sessions"
        f" ({f['survivor_session_memory_mib']} MiB), a message to every account wakes them"
        f" in {f['wake_all_cpu_s']} s of CPU (p99 {_p99(a, f['wake_p99_ms_at_10000'])},"
        f" measured at 10,000 sessions);"
        f" the pair's {f['pair_deliveries_per_s']} deliveries/s on one node"
        f" (measured capacity {f['delivery_capacity_per_s']}/s)"
    )
    print(
        f"3 failback after {b['outage_hours']} h: {b['messages_to_copy']:,} messages,"
        f" {b['bytes_to_copy'] / 1e6:,.0f} MB back to the returning node: {b['copy_s']} s of copy"
        f" + {b['compare_s']} s of per-mailbox compare; writes held {b['writes_held_s']} s;"
        f" a node rebuilt from scratch instead: {b['rebuild_bytes'] / 1e9:,.0f} GB"
        f" ({b['rebuild_messages']:,} messages at {a.bulk_msgs_per_s:,.0f} msgs/s,"
        f" {a.bulk_mb_per_s} MB/s; its {s['accounts_per_node']:,.0f} accounts' mailboxes"
        f" created in {b['rebuild_accounts_s']} s), {b['rebuild_hours']} h"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    for name, bench in (
        ("curves", "bench.curves"),
        ("idle", "bench.idle"),
        ("replicate-all", "bench.replicate_all"),
        ("replication", "bench.replication"),
    ):
        parser.add_argument(
            f"--{name}", type=Path, action="append", help=f"{bench} --json output (repeatable)"
        )
    parser.add_argument(
        "--results",
        type=Path,
        action="append",
        help="a directory of such files (bench/results): each read as what its top key says",
    )
    parser.add_argument("--json", type=Path, help="also write the model here")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--logins-per-hour", type=float, default=6.0)
    parser.add_argument("--messages-per-day", type=float, default=40.0)
    parser.add_argument("--sessions-per-account", type=float, default=1.0)
    parser.add_argument(
        "--burst", type=float, default=3.0, help="lookups of one account on one node at once"
    )
    parser.add_argument("--ttl", type=float, default=2.0, help="[routing] directory_cache_ttl")
    parser.add_argument(
        "--heartbeat", type=float, default=5.0, help="[routing] directory_heartbeat"
    )
    parser.add_argument("--outage-hours", type=float, default=4.0)
    parser.add_argument("--mailbox-mb", type=float, default=200.0, help="mail per account")
    parser.add_argument("--message-bytes", type=float, default=MEAN_MESSAGE_BYTES)
    parser.add_argument("--cores", type=int, default=2, help="cores of a node")
    parser.add_argument("--directory-query-ms", type=float, default=DIRECTORY_QUERY_MS)
    parser.add_argument("--bulk-msgs-per-s", type=float, help="bulk sync to an empty partner")
    parser.add_argument("--bulk-mb-per-s", type=float, help="the same, MB/s")
    parser.add_argument(
        "--pass1-s-per-account", type=float, help="replicate --all onto an empty partner"
    )
    parser.add_argument("--wake-p99-ms", type=float, help="IDLE wake-up p99, 10,000 sessions")
    parser.add_argument("--failback-held", type=float, default=FAILBACK_HELD_S)
    parser.add_argument("--delivery-rate", type=float, help="deliveries/s one node takes")
    parser.add_argument("--steady-s-per-account", type=float, help="replicate --all, in sync")
    parser.add_argument("--kib-per-session", type=float, help="memory per idle IMAP session")
    parser.add_argument(
        "--scrypt-ms", type=float, help="one login's hash (default: measured here, now)"
    )
    parser.add_argument("--wake-us", type=float, help="daemon CPU per woken IDLE session")
    args = parser.parse_args()
    for folder in args.results or []:
        for path in sorted(folder.glob("*.json")):
            key = next(iter(json.loads(path.read_text())))
            if key in ("curves", "idle", "replicate_all", "replication"):
                setattr(args, key, [*(getattr(args, key) or []), path])
    measured = {
        **_from_curves(args.curves),
        **_from_idle(args.idle),
        **_from_replicate_all(args.replicate_all),
        **_from_replication(args.replication),
    }
    defaults = {"bulk_msgs_per_s": BULK_MSGS_PER_S, "bulk_mb_per_s": BULK_MB_PER_S}
    sources: dict[str, str] = {}
    for key in (
        "delivery_rate",
        "steady_s_per_account",
        "pass1_s_per_account",
        "kib_per_session",
        "wake_us",
        "wake_p99_ms",
        "bulk_msgs_per_s",
        "bulk_mb_per_s",
    ):
        if getattr(args, key) is not None:
            sources[key] = "flag"
        elif key in measured:
            setattr(args, key, measured[key])
            sources[key] = "json"
        elif key in defaults:
            setattr(args, key, defaults[key])
            sources[key] = "default"
        else:
            raise SystemExit(f"--{key.replace('_', '-')} or a JSON file that gives it")
    hash_ms = args.scrypt_ms if args.scrypt_ms is not None else scrypt_ms()
    args.sources = sources
    args.measured = measured
    result = model(args, hash_ms)
    result["inputs"] = {
        k: [str(p) for p in v] if isinstance(v, list) else v
        for k, v in vars(args).items()
        if k not in ("sources", "measured")
    }
    result["inputs"]["scrypt_ms"] = round(hash_ms, 1)
    result["sources"] = sources
    result["measured_also"] = {
        k: v for k, v in measured.items() if k not in sources
    }  # read but not used: shown for the record
    _print(result, args, hash_ms)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
