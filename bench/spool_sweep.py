"""What a spool sweep costs, and how long it holds up the writes around it.

    .venv/bin/python -m bench.spool_sweep [--messages 50000] [--expunged 0.2]

A store (SQLite, as a node runs it) is filled with N messages of ~2 KB in one
account, a share of them is expunged, and every file is made to look older
than the grace. Then:

1. the condemning pass: every file listed and looked up (files/s);
2. the removing pass (grace 0, so everything condemned is due): the files
   unlinked (files/s), while a probe makes one tiny write every 5 ms and
   records how long each took. The removal runs in committer writes of its
   own (``REMOVE_SLICE`` files each), so the probe's longest wait is what a
   delivery arriving during a sweep waits at worst.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import migrations
from engine import accounts, mailbox
from engine.messages import append, expunge
from engine.spool import guid_of
from engine.store import Store
from engine.sweep import REMOVE_SLICE, Sweeper


def fill(store: Store, count: int) -> None:
    store.write_sync(lambda s: accounts.create_account(s, "alice", password="pw"))
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for start in range(0, count, 1000):
        chunk = [
            f"Subject: m{n}\r\nMessage-ID: <m{n}@bench>\r\n\r\n".encode() + b"x" * 2000
            for n in range(start, min(count, start + 1000))
        ]
        dirs = store.spool.put_many((guid_of(p), p) for p in chunk)

        def write(s: Any, chunk: list[bytes] = chunk, start: int = start) -> None:
            acct = accounts.get_account(s, "alice")
            box = mailbox.get_mailbox(s, acct, "INBOX")
            for i, data in enumerate(chunk):
                when = base + dt.timedelta(seconds=start + i)
                append(s, acct, box, guid=guid_of(data), size=len(data), internaldate=when)

        store.write_sync(write, dirs=dirs)


def expunge_share(store: Store, count: int, share: float) -> int:
    step = max(1, round(1 / share))
    uids = list(range(1, count + 1, step))

    def write(s: Any) -> None:
        acct = accounts.get_account(s, "alice")
        expunge(s, acct, mailbox.get_mailbox(s, acct, "INBOX"), uids)

    store.write_sync(write)
    return len(uids)


def age(store: Store) -> None:
    old = time.time() - 7200
    for directory in store.spool.directories():
        for entry in os.scandir(directory):
            os.utime(entry.path, (old, old))


async def removing_pass(store: Store, sweeper: Sweeper) -> tuple[Any, list[float]]:
    waits: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await store.write(lambda s: None)
            waits.append(time.perf_counter() - started)
            await asyncio.sleep(0.005)

    task = asyncio.create_task(probe())
    try:
        result = await sweeper.run()
    finally:
        done.set()
        await task
    return result, waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--expunged", type=float, default=0.2, help="share expunged (0-1)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="peerd-bench-sweep-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'peerd.db'}"
        migrations.upgrade(url)
        store = Store(url, Path(tmp) / "data")
        try:
            started = time.perf_counter()
            fill(store, args.messages)
            gone = expunge_share(store, args.messages, args.expunged)
            age(store)
            print(
                f"store: {args.messages} messages, {gone} expunged "
                f"(set up in {time.perf_counter() - started:.1f} s)"
            )
            sweeper = Sweeper(store, dt.timedelta(0))
            first = asyncio.run(sweeper.run())
            rate = first.files_checked / first.seconds
            print(
                f"condemning pass: {first.files_checked} files checked, {first.condemned} "
                f"condemned in {first.seconds:.2f} s ({rate:,.0f} files/s)"
            )
            second, waits = asyncio.run(removing_pass(store, sweeper))
            print(
                f"removing pass: {second.removed} files removed ({second.bytes_freed / 1e6:.1f} MB) "
                f"and {second.files_checked} checked again in {second.seconds:.2f} s"
            )
            waits.sort()
            p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))]
            print(
                f"a write during the removing pass ({len(waits)} probes, {REMOVE_SLICE} files "
                f"per committer write): median {statistics.median(waits) * 1000:.1f} ms, "
                f"p99 {p99 * 1000:.1f} ms, longest {waits[-1] * 1000:.1f} ms"
            )
            left = sum(len(os.listdir(d)) for d in store.spool.directories())
            assert left == args.messages - gone, (left, args.messages - gone)
        finally:
            store.close()
        # Later benchmarks pay for the deleted inodes for a while (see docs/benchmarks.md).
        os.sync()


if __name__ == "__main__":
    main()
