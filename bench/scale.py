"""Routing lookups across pairs through one PostgreSQL directory (issue 13, first part).

    .venv/bin/python -m bench.scale [--pairs 3] [--accounts 800] [--rate 1000,250] [--warm 4] [--ttl 120]

Starts a real PostgreSQL server (the tests' harness), creates the directory
database on it, and starts ``--pairs`` pairs (two real daemons each, on
loopback, ``[routing] directory_url`` set, ``directory_cache_ttl`` =
``--ttl``: long enough that a warm entry stays warm for the whole run; the
hit rate at a given TTL depends on the traffic, not on peerd). Each pair's
alpha creates ``--accounts`` accounts over its API; the bench waits until
the directory has every row (the write-through). Then, through pair one's
alpha, ``GET /v1/route/{account}`` (the JSON lookup; nginx's and the
socketmap's go through the same cache), each phase open loop at each
``--rate`` for ``--warm`` seconds (each request starts at its scheduled time
and its latency counts from then, so a node that cannot keep up shows), and
one request at a time (each lookup's own latency):

- **cold**: accounts of the other pairs, each looked up once: every lookup
  misses the cache and asks the directory;
- **warm**: 200 accounts of the other pairs already looked up: every lookup
  is a cache hit;
- **local**: 200 of pair one's own accounts (the local store, no directory),
  the baseline: what the node's control API costs anyway.

Also the directory's lookup statement alone (from the bench process), the
cache hits and misses each phase caused (from ``/v1/pairs``), and the load
average: the figures come from a shared 2-core host.

The rest of issue 13's figures are in the benches beside this one:
:mod:`bench.curves` (cost against accounts and messages on one node),
:mod:`bench.idle` (10,000 idle IMAP sessions) and :mod:`bench.model` (a
100-pair site computed from them); docs/scale.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from sqlalchemy import create_engine

from engine.passwords import hash_password
from peerd.directory import queries
from tests.harness.postgres import PgServer, require_pg
from tests.nodes import TOKEN, Node, make_pair, running
from tests.procs import wait_until

__all__ = ["main"]

HOT = 200
COLD_ALONE = 300


def _pair(workdir: Path, name: str, directory: str, ttl: float) -> tuple[Node, Node]:
    routing = {"directory_url": directory, "pair": name, "directory_cache_ttl": f"{ttl}s"}
    return make_pair(workdir, {"alpha": {"routing": routing}, "beta": {"routing": routing}})


async def _create(node: Node, names: list[str], password_hash: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        gate = asyncio.Semaphore(8)

        async def one(name: str) -> None:
            async with gate:
                body = {"name": name, "password_hash": password_hash}
                async with session.post(f"{node.api}/v1/accounts", json=body) as answer:
                    if answer.status != 201:
                        raise RuntimeError(f"{name}: {answer.status} {await answer.text()}")

        await asyncio.gather(*(one(n) for n in names))


def _rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM directory_accounts").fetchone()
        return int(row[0]) if row else 0


async def _lookups(
    node: Node, names: list[str], rate: float | None
) -> tuple[list[float], float, int]:
    """Latencies (ms), the rate achieved, and the answers that were not 200.

    With ``rate``: open loop, each request started at its scheduled time and
    its latency counted from then (a node that falls behind shows). Without:
    one request at a time, the latency of each alone.
    """
    headers = {"Authorization": f"Bearer {TOKEN}"}
    latencies: list[float] = []
    bad = 0
    # The control API takes 32 connections per client address ([http]).
    connector = aiohttp.TCPConnector(limit=24 if rate else 1)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:

        async def one(name: str, due: float) -> None:
            nonlocal bad
            async with session.get(f"{node.api}/v1/route/{name}") as answer:
                await answer.read()
                if answer.status != 200:
                    bad += 1
            latencies.append((time.perf_counter() - due) * 1000)

        tasks = []
        start = time.perf_counter()
        for i, name in enumerate(names):
            if rate is None:
                await one(name, time.perf_counter())
                continue
            due = start + i / rate
            pause = due - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            tasks.append(asyncio.create_task(one(name, due)))
        await asyncio.gather(*tasks)
        took = time.perf_counter() - start
    return latencies, len(names) / took, bad


def _cycle(names: list[str], count: int) -> list[str]:
    return [names[i % len(names)] for i in range(count)]


def _cache(node: Node) -> dict[str, Any]:
    cache: dict[str, Any] = node.call("GET", "/v1/pairs")["cache"]
    return cache


def _line(what: str, latencies: list[float], achieved: float, bad: int) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"{what:<52} n={len(ordered):>5}  {achieved:7.0f}/s  p50 {statistics.median(ordered):7.2f} ms"
        f"  p99 {p99:7.2f} ms  max {ordered[-1]:7.2f} ms  not-200 {bad}"
    )


def _direct(url: str, names: list[str]) -> tuple[list[float], float, int]:
    """The directory's lookup statement alone, from this process, one at a time."""
    engine = create_engine(url)
    latencies = []
    try:
        with engine.connect() as conn:
            start = time.perf_counter()
            for name in names:
                began = time.perf_counter()
                found = queries.lookup(conn, name)
                conn.rollback()
                latencies.append((time.perf_counter() - began) * 1000)
                assert found is not None
            took = time.perf_counter() - start
    finally:
        engine.dispose()
    return latencies, len(names) / took, 0


def run(pairs: int, accounts: int, rates: list[float], warm: float, ttl: float) -> None:
    server = PgServer(require_pg()).start()
    try:
        url = server.create_database()
        dsn = server.dsn(url.rpartition("/")[2])
        with tempfile.TemporaryDirectory(prefix="peerd-scale-") as tmp:
            names = [f"p{n + 1}" for n in range(pairs)]
            nodes = [_pair(Path(tmp) / name, name, url, ttl) for name in names]
            with running(*(n for pair in nodes for n in pair)):
                print(f"{pairs} pairs ({pairs * 2} daemons) on loopback, one PostgreSQL directory")
                hashed = hash_password("bench")
                owned = {name: [f"u{i}.{name}" for i in range(accounts)] for name in names}
                started = time.perf_counter()
                for (alpha, _), name in zip(nodes, names, strict=True):
                    asyncio.run(_create(alpha, owned[name], hashed))
                wait_until(lambda: _rows(dsn) == pairs * accounts, 120, "every row written")
                print(
                    f"created {pairs * accounts} accounts, all in the directory after"
                    f" {time.perf_counter() - started:.1f} s"
                )
                entry = nodes[0][0]
                others = [a for name in names[1:] for a in owned[name]]
                random.Random(13).shuffle(others)
                # Cold keys: each looked up once (open loop), or once (one at
                # a time); the warm ones come from the first set, already read.
                alone = others[-COLD_ALONE:]
                others = others[:-COLD_ALONE]
                hot = others[:HOT]
                local = owned[names[0]][:HOT]

                def phase(label: str, lookups: list[str], at: float | None) -> None:
                    before = _cache(entry)
                    figures = asyncio.run(_lookups(entry, lookups, at))
                    after = _cache(entry)
                    hits = after["hits"] - before["hits"]
                    misses = after["misses"] - before["misses"]
                    shown = f"{label}, {'open loop' if at else 'one at a time'}"
                    print(_line(shown, *figures) + f"  cache hits {hits} misses {misses}")

                print(f"through {entry.name} of {names[0]}, directory cache TTL {ttl} s")
                print(_line("the directory's statement alone", *_direct(url, alone)))
                share = len(others) // len(rates)
                for n, at in enumerate(rates):
                    cold = others[n * share : (n + 1) * share][: int(at * warm)]
                    phase(f"cold: other pairs' accounts @{at:.0f}/s", cold, at)
                phase("cold: other pairs' accounts", alone, None)
                for at in rates:
                    asyncio.run(_lookups(entry, hot, None))  # (read again: all fresh)
                    phase(
                        f"warm: {HOT} of other pairs' @{at:.0f}/s", _cycle(hot, int(at * warm)), at
                    )
                asyncio.run(_lookups(entry, hot, None))
                phase(f"warm: {HOT} accounts of other pairs", _cycle(hot, 500), None)
                for at in rates:
                    phase(
                        f"local: {HOT} of {names[0]}'s @{at:.0f}/s",
                        _cycle(local, int(at * warm)),
                        at,
                    )
                phase(f"local: {HOT} of {names[0]}'s accounts", _cycle(local, 500), None)
                load = os.getloadavg()
                print(f"load average during the run: {load[0]:.1f} {load[1]:.1f} (2 cores, shared)")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--accounts", type=int, default=800, help="accounts per pair")
    parser.add_argument(
        "--rate", default="1000,250", help="open-loop lookups per second (a comma list)"
    )
    parser.add_argument("--warm", type=float, default=4.0, help="seconds of warm lookups")
    parser.add_argument(
        "--ttl", type=float, default=120.0, help="[routing] directory_cache_ttl of the nodes"
    )
    args = parser.parse_args()
    rates = [float(r) for r in args.rate.split(",")]
    run(args.pairs, args.accounts, rates, args.warm, args.ttl)


if __name__ == "__main__":
    main()
