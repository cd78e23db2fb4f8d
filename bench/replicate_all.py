"""``replicate --all`` of many accounts onto an empty partner (issue 16).

    .venv/bin/python -m bench.replicate_all [--accounts 1000] [--runs 1] [--json FILE]
        [--py-spy FILE]

Creates ``--accounts`` accounts of five mailboxes each (INBOX, Sent, Drafts,
Trash, Archive; no messages) in alpha's store through the engine, before
alpha starts, so the setting up takes seconds; starts alpha and an empty
beta, then times ``POST /v1/replicate {"all": true}`` twice: the first pass
(every account and mailbox created on beta) and the pass right after (all
in sync). ``--runs`` repeats the whole thing on fresh nodes; ``--json FILE`` writes
every run's figures (``bench.model`` reads them). ``--py-spy
FILE`` records alpha over the first pass into FILE and beta into FILE with
the suffix ``.beta`` (py-spy's "raw" format: collapsed stacks, one a line).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import migrations
from bench.lmtp_ingest import cpu_seconds
from engine import accounts, mailbox
from engine.store import Store
from ownership import table as ownership_table
from tests.nodes import Node, make_pair


def fill(alpha: Node, count: int) -> None:
    """``count`` accounts of five mailboxes each, owned by alpha, in its stopped store."""
    url = f"sqlite:///{alpha.db_path}"
    alpha.db_path.parent.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(url)
    store = Store(url, alpha.workdir / "var" / alpha.name)
    try:
        for start in range(0, count, 100):

            def many(s: Any, start: int = start) -> None:
                for a in range(start, min(count, start + 100)):
                    acct = accounts.create_account(s, f"acct{a:04d}", password_hash="$scrypt$x")
                    ownership_table.create(s, acct.name, alpha.name)
                    for name in ("Sent", "Drafts", "Trash", "Archive"):
                        mailbox.create_mailbox(s, acct, name)

            store.write_sync(many)
    finally:
        store.close()


def spy(output: Path | None, pid: int | None) -> subprocess.Popen[bytes] | None:
    if output is None or pid is None:
        return None
    exe = shutil.which("py-spy")
    if exe is None:
        raise SystemExit("--py-spy: py-spy is not on the PATH")
    argv = [exe, "record", "--pid", str(pid), "--format", "raw", "--output", str(output)]
    proc = subprocess.Popen([*argv, "--rate", "250", "--nonblocking"], stdout=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the timing starts
    return proc


def unspy(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        proc.wait(60)


def run(count: int, profile: Path | None) -> tuple[float, float, float, int, float, float]:
    """(first pass s as timed here, first pass s as the node reports, in-sync
    pass s, errors, alpha's and beta's CPU seconds over the first pass)."""
    with tempfile.TemporaryDirectory(prefix="peerd-bench-") as tmp:
        alpha, beta = make_pair(Path(tmp), {"alpha": {"sync": {"sync_log": False}}})
        fill(alpha, count)
        alpha.start(timeout=300)
        beta.start(timeout=300)
        try:
            spies = [
                spy(profile, alpha.pid),
                spy(profile.with_suffix(".beta") if profile else None, beta.pid),
            ]
            assert alpha.pid is not None and beta.pid is not None
            cpu = cpu_seconds(alpha.pid), cpu_seconds(beta.pid)
            started = time.perf_counter()
            first = alpha.call("POST", "/v1/replicate", {"all": True})
            first_s = time.perf_counter() - started
            used = cpu_seconds(alpha.pid) - cpu[0], cpu_seconds(beta.pid) - cpu[1]
            for proc in spies:
                unspy(proc)
            started = time.perf_counter()
            steady = alpha.call("POST", "/v1/replicate", {"all": True})
            steady_s = time.perf_counter() - started
        finally:
            alpha.stop()
            beta.stop()
        if first["accounts"] != count:
            raise SystemExit(f"first pass replicated {first['accounts']} accounts of {count}")
        errors = len(first["errors"] + steady["errors"])
        return first_s, float(first["seconds"]), steady_s, errors, used[0], used[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--py-spy", dest="py_spy", type=Path, default=None)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    for n in range(args.runs):
        first_s, reported, steady_s, errors, cpu_a, cpu_b = run(
            args.accounts, args.py_spy if n == 0 else None
        )
        print(
            f"replicate --all {args.accounts} accounts x 5 mailboxes: first pass onto an empty "
            f"partner {first_s:.2f} s (node says {reported:.2f} s; CPU alpha {cpu_a:.2f} s, "
            f"beta {cpu_b:.2f} s), in sync right after {steady_s:.2f} s, errors {errors};"
            f" load average {os.getloadavg()[0]:.2f}"
        )
        runs.append(
            {
                "accounts": args.accounts,
                "mailboxes_per_account": 5,
                "first_pass_s": round(first_s, 3),
                "first_pass_node_s": round(reported, 3),
                "first_pass_cpu_s": {"alpha": round(cpu_a, 2), "beta": round(cpu_b, 2)},
                "in_sync_s": round(steady_s, 3),
                "errors": errors,
                "load": [round(x, 2) for x in os.getloadavg()],
            }
        )
    if args.json:
        args.json.write_text(
            json.dumps({"replicate_all": runs, "cpus": os.cpu_count()}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
