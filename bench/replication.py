"""Replication figures with two real daemons on loopback (issue 3's table).

    .venv/bin/python -m bench.replication [--bulk 10000] [--rolling 2000] [--accounts 1000]
        [--json FILE] [--threads] [--py-spy FILE] [--bulk-only]

1. rolling lag: messages delivered over LMTP to alpha at 50/s over 20 users;
   for each, the time from its 250 until it is committed in beta's database
   (p50/p99/max)
2. bulk sync: N messages of the benchmark mix to an empty partner (msgs/s, MB/s),
   uncompressed (``sync_compress`` is off by default, as in Cyrus) and, for
   N/2 other messages, compressed (``replicate -z``)
3. no-op sync right after (ms, and the records compared: per-message work)
4. move 1,000 messages to a new folder, then sync: bytes on the wire / moved bytes, time
5. A accounts x 5 mailboxes, all in sync: ``replicate --all`` (s)
and the machine's ceiling in the same run (write+fsync of the bulk files).
Before 1 and 2 the bench waits until both nodes have parsed and indexed
every message they store (a node that has been running has), and prints
the wait; for 1 and 2 it prints each daemon's CPU per message (``/proc``).
``--py-spy FILE`` records alpha over the rolling part into FILE and beta
into FILE with the suffix ``.beta``, and the bulk sync likewise with the
suffixes ``.bulk`` and ``.bulk.beta`` (py-spy's "raw" format).
``--threads`` prints, for each part, each daemon's CPU per message by thread
(user+system, named by ``py-spy dump``): which thread the time went to, and
how much of it the kernel's. ``--bulk-only`` runs part 2's uncompressed
bulk sync and the ceiling only (a few minutes instead of ten).

On an ext4 without a journal (this project's machines) each file created
within a minute or so of thousands being deleted costs up to a millisecond
of kernel time more (``recently_deleted()`` in ``fs/ext4/ialloc.c``; see
``docs/benchmarks.md``): a run started right after the last one's cleanup
paid that on the replica's 4,000 new spool files in the bulk sync (beta's
CPU a message tripled) but not in the ceiling, measured minutes later. So
this script syncs after its cleanup and marks the time, and the bulk sync
starts no sooner than ``--inode-settle`` seconds after the last cleanup of
this bench or ``bench.lmtp_ingest`` (the wait is printed; other sessions'
deletions on a shared machine are not seen).

Bulk data is loaded into alpha's store directly (through the engine, before
alpha starts) so that setting up does not take minutes; every figure is then
measured through the running daemons.
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.lmtp_ingest import _MARK as LMTP_MARK
from bench.lmtp_ingest import cpu_seconds, per_thread, thread_cpu
from bench.load import load
from bench.replicate_all import spy, unspy
from bench.workload import ceiling, message, messages
from engine import accounts, mailbox
from engine.store import Store
from ownership import table as ownership_table
from tests.nodes import Node, make_pair
from tests.procs import wait_until

_MARK = Path(tempfile.gettempdir()) / "peerd-bench-replication-cleanup"


def inode_settle(seconds: float) -> float:
    """Wait until ``seconds`` have passed since this bench or
    ``bench.lmtp_ingest`` last deleted its files (module docstring); the
    seconds waited."""
    marks = [m.stat().st_mtime for m in (_MARK, LMTP_MARK) if m.exists()]
    wait = seconds - (time.time() - max(marks)) if marks else 0.0
    if wait > 0:
        time.sleep(wait)
    return max(wait, 0.0)


def roll_users(alpha: Node, beta: Node, users: int) -> None:
    """The rolling part's accounts, on alpha and (replicated) on beta: made
    before the part's CPU is counted (a password hash is 32 MiB of scrypt)."""
    for u in range(users):
        alpha.add_account(f"roll{u}")
    wait_until(lambda: _inbox_counts(beta, users) is not None, 30, "beta to have the accounts")


def rolling(alpha: Node, beta: Node, count: int, users: int, rate: float) -> list[float]:
    """Lag from each 250 until the message is committed in beta's database.

    Beta's SQLite file is polled read-only from this process (a query every
    millisecond costs beta nothing; polling its HTTP API did, and skewed the
    figure it measured).
    """
    expected = {f"roll{u}": 0 for u in range(users)}
    pending: dict[str, list[tuple[int, float]]] = {f"roll{u}": [] for u in range(users)}
    lags: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def poll() -> None:
        db = sqlite3.connect(f"file:{beta.db_path}?mode=ro", uri=True, timeout=5)
        try:
            while not done.is_set() or any(pending.values()):
                counts = _inbox_counts(beta, users, db) or {}
                now = time.perf_counter()
                with lock:
                    for user, items in pending.items():
                        while items and items[0][0] <= counts.get(user, 0):
                            lags.append(now - items.pop(0)[1])
                time.sleep(0.001)
        finally:
            db.close()

    poller = threading.Thread(target=poll)
    poller.start()
    with smtplib.LMTP("127.0.0.1", alpha.ports["lmtp"]) as client:
        started = time.perf_counter()
        for i in range(count):
            user = f"roll{i % users}"
            target = started + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            client.sendmail(
                "bench@example.test",
                [f"{user}@example.test"],
                message(100_000 + i, f"{user}@example.test"),
            )
            acked = time.perf_counter()
            with lock:
                expected[user] += 1
                pending[user].append((expected[user], acked))
    done.set()
    poller.join(120)
    return lags


_UNDONE = """
    SELECT
      (SELECT count(DISTINCT m.guid) FROM messages m WHERE m.expunged = 0
        AND NOT EXISTS (SELECT 1 FROM fulltext_docs d WHERE d.guid = m.guid)),
      (SELECT count(DISTINCT m.guid) FROM messages m WHERE m.expunged = 0
        AND NOT EXISTS (SELECT 1 FROM message_parsed p WHERE p.guid = m.guid))
"""


def settle(*nodes: Node, timeout: float = 600.0) -> float:
    """Wait until every node has indexed and parsed each message it stores;
    the seconds waited. A phase is not timed while a node still works off
    the last one's messages in the background (the bulk set loaded into
    alpha's store before it started, the partner indexing what it received):
    a node that has been running has done that work as mail came."""
    started = time.perf_counter()
    for node in nodes:
        db = sqlite3.connect(f"file:{node.db_path}?mode=ro", uri=True, timeout=5)
        # The full-text index's own file (engine.textindex.index_file).
        index = node.db_path.with_name(f"{node.db_path.stem}.fulltext{node.db_path.suffix}")
        db.execute("ATTACH DATABASE ? AS textindex", (f"file:{index}?mode=ro",))
        try:
            while db.execute(_UNDONE).fetchone() != (0, 0):
                if time.perf_counter() - started > timeout:
                    raise SystemExit(f"{node.name} did not catch up in {timeout:.0f} s")
                time.sleep(0.5)
        finally:
            db.close()
    return time.perf_counter() - started


_INBOX_COUNTS = """
    SELECT a.name, m."exists" FROM mailboxes m JOIN accounts a ON a.id = m.account_id
    WHERE m.name = 'INBOX' AND a.name LIKE 'roll%'
"""


def _inbox_counts(
    node: Node, users: int, db: sqlite3.Connection | None = None
) -> dict[str, int] | None:
    """INBOX message counts of the roll users in ``node``'s database (None: not all there)."""
    own = db is None
    conn = db or sqlite3.connect(f"file:{node.db_path}?mode=ro", uri=True, timeout=5)
    try:
        rows = dict(conn.execute(_INBOX_COUNTS).fetchall())
    except sqlite3.Error:
        return None
    finally:
        if own:
            conn.close()
    return rows if len(rows) >= users else None


def cpu_pair(
    alpha: Node, beta: Node, since: tuple[float, float] = (0.0, 0.0)
) -> tuple[float, float]:
    """Alpha's and beta's CPU seconds (all threads), less ``since``."""
    assert alpha.pid is not None and beta.pid is not None
    return cpu_seconds(alpha.pid) - since[0], cpu_seconds(beta.pid) - since[1]


Threads = dict[int, tuple[float, float]]


def threads_pair(alpha: Node, beta: Node) -> tuple[Threads, Threads]:
    """Each daemon's CPU (user, system) by thread id, now."""
    assert alpha.pid is not None and beta.pid is not None
    return thread_cpu(alpha.pid), thread_cpu(beta.pid)


def by_thread(
    alpha: Node, beta: Node, before: tuple[Threads, Threads]
) -> dict[str, dict[str, tuple[float, float]]]:
    """What each daemon's named threads used since ``before``."""
    assert alpha.pid is not None and beta.pid is not None
    after = threads_pair(alpha, beta)
    return {
        "alpha": per_thread(alpha.pid, before[0], after[0]),
        "beta": per_thread(beta.pid, before[1], after[1]),
    }


def print_threads(part: str, used: dict[str, dict[str, tuple[float, float]]], count: int) -> None:
    for node, threads in used.items():
        ranked = sorted(threads.items(), key=lambda item: -sum(item[1]))
        shares = ", ".join(
            f"{name} {1000 * user / count:.2f}+{1000 * system / count:.2f}"
            for name, (user, system) in ranked
            if user + system > 0
        )
        print(f"  {part} {node} threads: {shares} ms a message (user+system)")


def print_bulk(
    args: argparse.Namespace,
    report: dict[str, Any],
    seconds: float,
    total: int,
    cpu: tuple[float, float],
    used: dict[str, dict[str, tuple[float, float]]],
    ceil_rate: float | None = None,
) -> None:
    """Part 2's lines (``ceil_rate``: with the ceiling, as ``--bulk-only`` prints it)."""
    print(
        f"2 bulk sync       {args.bulk / seconds:.0f} msgs/s  {total / seconds / 1e6:.1f} MB/s  "
        f"({seconds:.2f} s; uploaded {report['uploaded']}, wire {report['bytes_sent'] / 1e6:.1f} MB out)"
    )
    print(
        f"  CPU per message alpha {cpu[0] / args.bulk * 1000:.2f} ms, "
        f"beta {cpu[1] / args.bulk * 1000:.2f} ms (the sync only)"
    )
    print_threads("bulk", used, args.bulk)
    if ceil_rate is not None:
        print(
            f"  ceiling         {ceil_rate:.0f} msgs/s (write+fsync per file, Python); "
            f"bulk = {args.bulk / seconds / ceil_rate:.2f} of it; load {os.getloadavg()[0]:.1f}"
        )
    if args.json and ceil_rate is not None:
        figures = {
            "bulk_messages": args.bulk,
            "bulk_s": round(seconds, 3),
            "bulk_msgs_per_s": round(args.bulk / seconds, 1),
            "ceiling_msgs_per_s": round(ceil_rate, 1),
            "bulk_cpu_ms": [round(c / args.bulk * 1000, 3) for c in cpu],
            "load": [round(x, 2) for x in os.getloadavg()],
        }
        args.json.write_text(json.dumps({"replication": figures}, indent=2) + "\n")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bulk", type=int, default=10_000)
    parser.add_argument("--rolling", type=int, default=2000)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--py-spy", dest="py_spy", type=Path, default=None)
    parser.add_argument("--threads", action="store_true", help="CPU per message by thread")
    parser.add_argument("--inode-settle", dest="inode_settle", type=float, default=65.0)
    parser.add_argument(
        "--bulk-only",
        dest="bulk_only",
        action="store_true",
        help="only the bulk sync (part 2, uncompressed) and the ceiling",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here (bench.model)")
    args = parser.parse_args()
    try:
        run(args)
    finally:
        os.sync()  # the freed inodes' table blocks written (module docstring)
        _MARK.touch()


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="peerd-bench-") as tmp:
        workdir = Path(tmp)
        alpha, beta = make_pair(workdir, {"alpha": {"sync": {"sync_log": False}}})
        payloads = messages(args.bulk, "bulk@example.test")
        total = sum(len(p) for p in payloads)
        zipped = messages(args.bulk // 2, "bulkz@example.test", base=args.bulk)
        zipped_total = sum(len(p) for p in zipped)
        load(alpha, "bulk", payloads)
        load(alpha, "bulkz", zipped)
        alpha.start(timeout=300)
        beta.start(timeout=300)
        try:
            # 2. bulk sync to the empty partner, uncompressed, then compressed
            waited = [settle(alpha, beta)]
            inodes_waited = inode_settle(args.inode_settle)
            spies = [spy(args.py_spy.with_suffix(".bulk") if args.py_spy else None, alpha.pid)]
            spies.append(
                spy(args.py_spy.with_suffix(".bulk.beta") if args.py_spy else None, beta.pid)
            )
            bulk_threads = threads_pair(alpha, beta)
            bulk_cpu = cpu_pair(alpha, beta)
            started = time.perf_counter()
            report = alpha.replicate("bulk", compress=False)["reports"][0]
            bulk_s = time.perf_counter() - started
            bulk_cpu = cpu_pair(alpha, beta, bulk_cpu)
            bulk_used = by_thread(alpha, beta, bulk_threads) if args.threads else {}
            for proc in spies:
                unspy(proc)
            if args.bulk_only:
                alpha.stop()
                beta.stop()
                ceil_rate = ceiling(payloads, str(workdir))[0]
                print_bulk(args, report, bulk_s, total, bulk_cpu, bulk_used, ceil_rate)
                return
            started = time.perf_counter()
            zreport = alpha.replicate("bulkz", compress=True)["reports"][0]
            zbulk_s = time.perf_counter() - started
            # 3. no-op sync
            noop: list[tuple[float, int]] = []
            for _ in range(5):
                started = time.perf_counter()
                again = alpha.replicate("bulk")["reports"][0]
                noop.append((time.perf_counter() - started, again["records_compared"]))
            # 4. move 1,000 messages to a new folder, then sync
            alpha.stop()
            store = Store(f"sqlite:///{alpha.db_path}", workdir / "var" / "alpha")
            moved_bytes = 0
            try:

                def move(s: Any) -> int:
                    from engine.messages import live_records, move_messages

                    acct = accounts.get_account(s, "bulk")
                    src = mailbox.get_mailbox(s, acct, "INBOX")
                    dst = mailbox.create_mailbox(s, acct, "Moved")
                    records = live_records(s, src)[:1000]
                    move_messages(s, acct, src, dst, [r.uid for r in records])
                    return sum(r.size for r in records)

                moved_bytes = store.write_sync(move)
            finally:
                store.close()
            alpha.start(timeout=300)
            started = time.perf_counter()
            moved = alpha.replicate("bulk")["reports"][0]
            move_s = time.perf_counter() - started
            wire = moved["bytes_sent"] + moved["bytes_received"]
            # 5. many accounts, all in sync
            alpha.stop()
            store = Store(f"sqlite:///{alpha.db_path}", workdir / "var" / "alpha")
            try:
                for start in range(0, args.accounts, 100):

                    def many(s: Any, start: int = start) -> None:
                        for a in range(start, min(args.accounts, start + 100)):
                            acct = accounts.create_account(
                                s, f"acct{a:04d}", password_hash="$scrypt$x"
                            )
                            ownership_table.create(s, acct.name, "alpha")
                            for name in ("Sent", "Drafts", "Trash", "Archive"):
                                mailbox.create_mailbox(s, acct, name)

                    store.write_sync(many)
            finally:
                store.close()
            alpha.start(timeout=300)
            first = alpha.call("POST", "/v1/replicate", {"all": True})
            started = time.perf_counter()
            steady = alpha.call("POST", "/v1/replicate", {"all": True})
            all_s = time.perf_counter() - started
            # 1. rolling lag (rolling replication on for this part)
            alpha.stop()
            text = alpha.config.read_text().replace("sync_log = false", "sync_log = true")
            alpha.config.write_text(text)
            alpha.start(timeout=300)
            roll_users(alpha, beta, args.users)
            waited.append(settle(alpha, beta))
            spies = [spy(args.py_spy, alpha.pid)]
            spies.append(spy(args.py_spy.with_suffix(".beta") if args.py_spy else None, beta.pid))
            roll_threads = threads_pair(alpha, beta)
            roll_cpu = cpu_pair(alpha, beta)
            lags = rolling(alpha, beta, args.rolling, args.users, args.rate)
            # Until both have parsed and indexed it all: the work each
            # message causes, not only what was done in time.
            settle(alpha, beta)
            roll_cpu = cpu_pair(alpha, beta, roll_cpu)
            roll_used = by_thread(alpha, beta, roll_threads) if args.threads else {}
            for proc in spies:
                unspy(proc)
        finally:
            alpha.stop()
            beta.stop()
        ceil_rate, ceil_mbs = ceiling(payloads, str(workdir))
        print(f"bulk set          {args.bulk} messages, {total / 1e6:.1f} MB")
        print(
            f"settled           {waited[0]:.1f} s before the bulk sync, {waited[1]:.1f} s before "
            "the rolling part (both nodes' index and parsed rows complete); "
            f"{inodes_waited:.0f} s more before the bulk sync (the last cleanup's inodes)"
        )
        print(
            f"1 rolling lag     {len(lags)} msgs at {args.rate:.0f}/s over {args.users} users: "
            f"p50 {pct(lags, 50) * 1000:.1f} ms  p99 {pct(lags, 99) * 1000:.1f} ms  max {max(lags) * 1000:.1f} ms"
        )
        print(
            f"  CPU per message alpha {roll_cpu[0] / args.rolling * 1000:.2f} ms, "
            f"beta {roll_cpu[1] / args.rolling * 1000:.2f} ms (delivery, sync, parse and index)"
        )
        print_threads("rolling", roll_used, args.rolling)
        print_bulk(args, report, bulk_s, total, bulk_cpu, bulk_used)
        print(
            f"  compressed (-z) {len(zipped) / zbulk_s:.0f} msgs/s  {zipped_total / zbulk_s / 1e6:.1f} MB/s  "
            f"({len(zipped)} msgs in {zbulk_s:.2f} s; wire {zreport['bytes_sent'] / 1e6:.1f} MB out = "
            f"{zreport['bytes_sent'] / zipped_total:.2f} of the bytes)"
        )
        print(
            f"  ceiling         {ceil_rate:.0f} msgs/s  {ceil_mbs:.1f} MB/s (write+fsync per file, Python); "
            f"bulk = {args.bulk / bulk_s / ceil_rate:.2f} of it"
        )
        best = min(noop)
        print(
            f"3 no-op sync      {best[0] * 1000:.1f} ms (median {statistics.median(t for t, _ in noop) * 1000:.1f} ms), "
            f"records compared {best[1]}"
        )
        print(
            f"4 move 1000       {move_s:.3f} s, wire {wire} bytes = {wire / moved_bytes * 100:.2f}% of "
            f"{moved_bytes / 1e6:.1f} MB moved (uploaded {moved['uploaded']})"
        )
        print(
            f"5 replicate --all {steady['accounts']} accounts x 5 mailboxes in sync: {all_s:.2f} s "
            f"(first pass {first['seconds']:.2f} s; errors {len(steady['errors'])})"
        )
        figures = {
            "bulk_messages": args.bulk,
            "bulk_bytes": total,
            "bulk_s": round(bulk_s, 3),
            "bulk_msgs_per_s": round(args.bulk / bulk_s, 1),
            "bulk_mb_per_s": round(total / bulk_s / 1e6, 2),
            "ceiling_msgs_per_s": round(ceil_rate, 1),
            "rolling_p50_ms": round(pct(lags, 50) * 1000, 1),
            "rolling_p99_ms": round(pct(lags, 99) * 1000, 1),
            "inode_settle_s": round(inodes_waited, 1),
            "rolling_cpu_ms": [round(c / args.rolling * 1000, 2) for c in roll_cpu],
            "bulk_cpu_ms": [round(c / args.bulk * 1000, 3) for c in bulk_cpu],
            "noop_ms": round(best[0] * 1000, 1),
            "replicate_all_accounts": steady["accounts"],
            "replicate_all_first_pass_s": round(float(first["seconds"]), 3),
            "replicate_all_in_sync_s": round(all_s, 3),
            "load": [round(x, 2) for x in os.getloadavg()],
        }
        if args.json:
            args.json.write_text(json.dumps({"replication": figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
