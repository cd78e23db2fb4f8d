"""How cost grows with work on one node: accounts and messages (issue 13).

    .venv/bin/python -m bench.curves [--quick] [--accounts 1000,10000,100000]
        [--messages 10000,100000,1000000] [--json FILE]

Two curves, each point a fresh pair of real daemons on loopback:

- **accounts**: N accounts (``--accounts``), each with an INBOX of
  ``--per-account`` messages;
- **messages**: M messages (``--messages``) in ``--boxes`` accounts (M /
  boxes messages in each INBOX).

At each point:

1. **the store is generated directly**, not delivered (delivering a million
   messages would take hours here): alpha's stopped store is written in bulk
   through the engine's own APIs (``accounts.create_account`` and the
   ownership row per account; ``messages.add_appended`` into
   ``NewRecords``, one transaction per few thousand records, so the
   mailbox checksums, ``exists``, quota usage and GUID history are the
   engine's), the bodies (small, ~200 bytes, each distinct) written into
   the spool with ``Spool.put_many``; the store is then checked: ``peerd
   check-db --full`` (SQLite's integrity check) and the records, checksums,
   quota and spool files of three accounts read back and compared
   (``tests.harness.clients.audit_store``). With ``--partner copy`` the
   partner (beta) gets a copy of the same store (the database file copied, the spool hard-linked), so
   the pair starts with both sides holding the same mail, as after a
   completed sync, but with no sync base recorded.
2. the daemons start; ``replicate --all`` on alpha twice: **pass 1** is
   the first pass since the start, **pass 2** the one right after it. With
   ``--partner empty`` (the default) beta starts with an empty store, so
   pass 1 copies every account, mailbox and message (the figure of a new
   partner); with ``--partner copy`` it starts as described above, and up to
   ``--pass1-max`` accounts beta's copy has no sync base, so pass 1 compares
   every record (what a reconcile after a long absence costs when nothing
   differs); above it, beta's mailboxes get the base a completed sync leaves
   (``sync_base = highestmodseq``: comparing every record of 100,000
   accounts would take long, and per account it is the small points'
   figure), so pass 1 only confirms each mailbox. Pass 1 starts once alpha
   is idle (its full-text indexer and parse walker have gone through the
   generated messages, which delivery does message by message);
3. **SELECT**: ``SELECT INBOX`` of one account over IMAP, the best and
   median of five (login not timed);
4. **deliveries/s**: ``--deliver`` messages of the same kind over 10
   pipelined LMTP connections to 10 accounts picked at random.

Then the daemons stop, the point is printed (and written to ``--json``), and
everything the point wrote is deleted (the
temporary directory), before the next point. The load average is printed
with each point: the host is shared. ``--quick`` runs small sizes (a smoke
test of the bench itself).
"""

from __future__ import annotations

import argparse
import datetime as dt
import imaplib
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import select

import migrations
from bench.idle import PASSWORD, cheap_hash
from bench.lmtp_ingest import cpu_seconds, run_pipelining
from engine import accounts, parsed, synclog, textindex
from engine.fulltext import Searchable, extract
from engine.messages import NewRecords, add_appended
from engine.models import Account, Mailbox
from engine.spool import guid_of
from engine.store import Store
from ownership import table as ownership_table
from peerd.pair.parsewalk import row_of
from tests.harness.clients import audit_store
from tests.nodes import TOKEN, Node, make_pair

__all__ = ["main"]

_CHUNK = 5000
_BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def body(account: str, i: int) -> bytes:
    """A small message, distinct per (account, i)."""
    return (
        f"Subject: gen {i}\r\nFrom: gen@example.test\r\nTo: {account}@example.test\r\n"
        f"Message-ID: <g{i}.{account}@bench.test>\r\n\r\ngenerated message {i} of {account}\r\n"
    ).encode()


def generate(
    node: Node,
    names: list[str],
    per_account: int,
    *,
    derive: bool = True,
    make_body: Callable[[str, int], bytes] = body,
) -> dict[str, Any]:
    """Write ``names`` with ``per_account`` messages each into ``node``'s stopped store.

    About ``_CHUNK`` records per transaction: many accounts in one when they
    are small, one account's INBOX over several when it is big. With
    ``derive``, each transaction also stores what the daemon's two walkers
    would: the parse walker's row of each message (``parsewalk.row_of``)
    and its full-text (``engine.fulltext.extract`` into
    ``engine.textindex.put``, as the indexer does), so the daemon starts
    with nothing left to walk."""
    started = time.perf_counter()
    cpu_began = time.process_time()
    derive_cpu = 0.0
    node.db_path.parent.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(node.db_url)
    store = Store(node.db_url, node.workdir_data)
    hashed = cheap_hash(PASSWORD)
    total_bytes = 0
    # (account, first message, count) slices, grouped into transactions.
    slices = [
        (name, first, min(_CHUNK, per_account - first))
        for name in names
        for first in range(0, max(per_account, 1), _CHUNK)
    ]
    try:
        batch: list[tuple[str, int, int]] = []
        size = 0
        for item in [*slices, None]:
            if item is not None and (size + item[2] <= _CHUNK or not batch):
                batch.append(item)
                size += item[2]
                continue
            bodies = {(n, f): [make_body(n, f + i) for i in range(c)] for n, f, c in batch}
            total_bytes += sum(len(b) for group in bodies.values() for b in group)
            parsed_rows: list[parsed.Row] = []
            docs: list[tuple[str, Searchable]] = []
            if derive:  # the walkers' work, done here in bulk (CPU time counted)
                began = time.process_time()
                for group in bodies.values():
                    for data in group:
                        guid = guid_of(data)
                        parsed_rows.append(row_of(guid, data))
                        docs.append((guid, extract(data)))
                derive_cpu += time.process_time() - began
            dirs = store.spool.put_many(
                ((guid_of(b), b) for group in bodies.values() for b in group), verified=True
            )

            def fill(
                s: Any,
                batch: list[tuple[str, int, int]] = batch,
                bodies: Any = bodies,
                parsed_rows: list[parsed.Row] = parsed_rows,
                docs: list[tuple[str, Searchable]] = docs,
            ) -> None:
                new = [name for name, first, _ in batch if first == 0]
                # The engine's bulk provisioning (what account import uses).
                accounts.create_accounts(s, [(name, hashed, None) for name in new])
                ownership_table.create_many(s, new, node.name)
                wanted = [name for name, _, _ in batch]
                rows = s.execute(
                    select(Account, Mailbox)
                    .join(Mailbox, Mailbox.account_id == Account.id)
                    .where(Account.name.in_(wanted), Mailbox.name == "INBOX")
                ).all()
                boxes = {acct.name: (acct, box) for acct, box in rows}
                records = NewRecords(s)
                for name, first, _ in batch:
                    acct, box = boxes[name]
                    for i, data in enumerate(bodies[(name, first)]):
                        add_appended(
                            records,
                            acct,
                            box,
                            guid=guid_of(data),
                            size=len(data),
                            internaldate=_BASE + dt.timedelta(seconds=first + i),
                            enforce_quota=False,
                        )
                    synclog.record(s, acct.name, box.uniqueid, "append")
                records.write()
                parsed.put(s, parsed_rows)

            store.write_sync(fill, dirs=dirs)
            # The index has a file and a writer of its own (engine.store).
            store.index_write_sync(partial(textindex.put, docs=docs))
            if item is not None:
                batch, size = [item], item[2]
    finally:
        store.close()
    return {
        "generate_s": round(time.perf_counter() - started, 1),
        "generate_cpu_s": round(time.process_time() - cpu_began, 1),
        "derived": derive,
        "derive_cpu_s": round(derive_cpu, 1),
        "mail_bytes": total_bytes,
    }


def check(node: Node, names: list[str]) -> str:
    """``peerd check-db --full`` and three accounts read back; raises on damage."""
    done = subprocess.run(
        [sys.executable, "-m", "peerd", "check-db", "--full", "-c", str(node.config)],
        cwd=node.workdir,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"check-db: {done.stdout} {done.stderr}")
    for name in {names[0], names[len(names) // 2], names[-1]}:
        audit_store(node.db_url, node.workdir_data, name)
    return done.stdout.strip().splitlines()[-1]


def copy_store(source: Node, target: Node) -> None:
    """The partner gets the same store: the database copied, the spool hard-linked."""
    target.workdir_data.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(source.workdir_data), str(target.workdir_data)], check=True)
    for suffix in ("-wal", "-shm"):
        Path(f"{target.db_path}{suffix}").unlink(missing_ok=True)
    target.db_path.unlink()
    shutil.copyfile(source.db_path, target.db_path)


def replicate_all(node: Node) -> Any:
    """``POST /v1/replicate {"all": true}`` with no client timeout (it runs long)."""
    request = urllib.request.Request(
        node.api + "/v1/replicate",
        data=json.dumps({"all": True}).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=7200) as response:
        return json.loads(response.read())


def select_ms(node: Node, account: str) -> tuple[float, float]:
    """SELECT INBOX over IMAP: (best, median) of five, in ms."""
    client = imaplib.IMAP4("127.0.0.1", node.port("imap"))
    client.login(account, PASSWORD)
    times = []
    for _ in range(5):
        began = time.perf_counter()
        status, _ = client.select("INBOX", readonly=True)
        times.append((time.perf_counter() - began) * 1000)
        assert status == "OK"
        client.close()
    client.logout()
    return min(times), statistics.median(times)


def deliveries(node: Node, names: list[str], count: int) -> float:
    """Messages/s over 10 pipelined LMTP connections to 10 random accounts."""
    rng = random.Random(7)
    rcpts = [f"{rng.choice(names)}@example.test" for _ in range(10)]
    payloads = [
        [body(r.partition("@")[0], 10_000_000 + c * count + i) for i in range(count // 10)]
        for c, r in enumerate(rcpts)
    ]
    failures, seconds = run_pipelining(node.port("lmtp"), payloads, rcpts)
    if failures:
        raise RuntimeError(f"deliveries failed: {failures[:3]}")
    return sum(len(p) for p in payloads) / seconds


def settle(node: Node, limit: float = 1800) -> float:
    """Wait until ``node`` is idle (under 5% of a core over 2 s): on a
    generated store its full-text indexer and parse walker first go through
    every message (mail delivered is indexed as it arrives). Seconds waited."""
    assert node.pid is not None
    began = time.perf_counter()
    while time.perf_counter() - began < limit:
        used = cpu_seconds(node.pid)
        time.sleep(2.0)
        if cpu_seconds(node.pid) - used < 0.1:
            break
    return round(time.perf_counter() - began, 1)


def point(
    workdir: Path,
    n_accounts: int,
    per_account: int,
    deliver: int,
    pass1_max: int,
    partner: str,
    derive: bool = True,
) -> dict[str, Any]:
    names = [f"u{i:06d}" for i in range(n_accounts)]
    alpha, beta = make_pair(
        workdir,
        {
            "alpha": {"sync": {"sync_log": False}},
            "beta": {"sync": {"sync_log": False}},
        },
        template=False,
    )
    figures: dict[str, Any] = {
        "accounts": n_accounts,
        "messages": n_accounts * per_account,
        "per_mailbox": per_account,
    }
    figures.update(generate(alpha, names, per_account, derive=derive))
    figures["check"] = check(alpha, names)
    figures["partner"] = partner
    if partner == "copy":
        copy_store(alpha, beta)
    else:  # an empty partner: pass 1 copies every account, mailbox and message
        beta.db_path.parent.mkdir(parents=True, exist_ok=True)
        migrations.upgrade(beta.db_url)
    skip_pass1 = partner == "copy" and n_accounts > pass1_max
    if skip_pass1:
        # A pass with no base known compares every record of every mailbox:
        # at this many accounts it would take long, and per account it is
        # the figure of the smaller points. Beta gets what a completed sync
        # leaves instead: each mailbox's base at the owner's HIGHESTMODSEQ;
        # pass 1 is then the first pass since the daemons started.
        with sqlite3.connect(beta.db_path) as db:
            db.execute("UPDATE mailboxes SET sync_base = highestmodseq")
    alpha.start(wait=False)
    beta.start(wait=False)
    try:
        alpha.wait_ready(600)
        beta.wait_ready(600)
        cpu_before = cpu_seconds(alpha.pid) if alpha.pid is not None else 0.0
        figures["settle_s"] = settle(alpha)
        if alpha.pid is not None:
            figures["settle_cpu_s"] = round(cpu_seconds(alpha.pid) - cpu_before, 1)
        passes: list[float] = []
        loads: list[float] = []
        cpus: list[float] = []  # both daemons' CPU seconds for each pass
        pids = [p for p in (alpha.pid, beta.pid) if p is not None]
        for _ in range(2):
            began = time.perf_counter()
            cpu_began = sum(cpu_seconds(p) for p in pids)
            answer = replicate_all(alpha)
            passes.append(time.perf_counter() - began)
            cpus.append(round(sum(cpu_seconds(p) for p in pids) - cpu_began, 2))
            loads.append(round(os.getloadavg()[0], 2))
            if answer["errors"]:
                raise RuntimeError(f"replicate --all: {answer['errors'][:3]}")
        figures["replicate_all_loads"] = loads
        figures["replicate_all_cpu_s"] = cpus
        figures["pass1_bases_known"] = skip_pass1
        figures["replicate_all_pass1_s"] = round(passes[0], 3)
        figures["replicate_all_s"] = round(passes[1], 3)
        best, median = select_ms(alpha, names[len(names) // 2])
        figures["select_ms"] = round(best, 2)
        figures["select_median_ms"] = round(median, 2)
        figures["deliveries_per_s"] = round(deliveries(alpha, names, deliver), 1)
    finally:
        alpha.stop()
        beta.stop()
    figures["load"] = [round(x, 2) for x in os.getloadavg()]
    return figures


def _line(f: dict[str, Any]) -> str:
    how = (
        "onto an empty partner"
        if f["partner"] == "empty"
        else "bases known"
        if f["pass1_bases_known"]
        else "no base: every record compared"
    )
    pass1 = f"{f['replicate_all_pass1_s']:.2f} s, {how}"
    return (
        f"{f['accounts']:>7} accounts {f['messages']:>8} msgs ({f['per_mailbox']}/INBOX):"
        f" generated in {f['generate_s']} s ({f.get('generate_cpu_s', '?')} s CPU,"
        f" {'with' if f.get('derived') else 'without'} the walkers' rows);"
        f" the daemon idle after {f['settle_s']} s ({f.get('settle_cpu_s', '?')} s CPU);"
        f" deliveries {f['deliveries_per_s']:.0f}/s;"
        f" SELECT {f['select_ms']:.1f} ms (median {f['select_median_ms']:.1f});"
        f" replicate --all pass 1 {pass1}, in sync right after {f['replicate_all_s']:.2f} s"
        f" (CPU of both daemons {f.get('replicate_all_cpu_s', '?')} s)"
        f" (load {f['replicate_all_loads'][0]} / {f['replicate_all_loads'][1]});"
        f" load at the end {f['load'][0]}"
    )


def run(
    account_sizes: list[int],
    per_account: int,
    message_sizes: list[int],
    boxes: int,
    deliver: int,
    scratch: str | None,
    pass1_max: int,
    partner: str = "empty",
    derive: bool = True,
    json_path: Path | None = None,
) -> dict[str, Any]:
    results: dict[str, Any] = {"accounts": [], "messages": []}
    plan = [("accounts", n, per_account) for n in account_sizes]
    plan += [("messages", boxes, max(1, m // boxes)) for m in message_sizes]
    print(
        f"the store of each point is generated directly through the engine (not delivered),"
        f" checked (check-db --full, 3 accounts audited), the partner {partner};"
        f" free disk before: {shutil.disk_usage(scratch or tempfile.gettempdir()).free / 1e9:.1f} GB",
        flush=True,
    )
    results["cpus"] = os.cpu_count()
    for curve, n_accounts, per in plan:
        tmp = Path(tempfile.mkdtemp(prefix="peerd-curves-", dir=scratch))
        try:
            figures = point(tmp, n_accounts, per, deliver, pass1_max, partner, derive)
            # Printed and saved before the point's files go: removing a
            # million files takes minutes, and a failure there must not
            # lose what the point measured.
            results[curve].append(figures)
            print(f"{curve:<8} " + _line(figures), flush=True)
            if json_path is not None:
                json_path.write_text(json.dumps({"curves": results}, indent=2) + "\n")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if tmp.exists():
                print(f"could not remove all of {tmp}: remove it by hand", flush=True)
    return results


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--accounts", default="1000,10000,100000")
    parser.add_argument("--per-account", type=int, default=5, help="messages per account")
    parser.add_argument("--messages", default="10000,100000,1000000")
    parser.add_argument("--boxes", type=int, default=100, help="accounts of the messages curve")
    parser.add_argument("--deliver", type=int, default=1000, help="messages timed per point")
    parser.add_argument("--scratch", help="where the points are written (default: the temp dir)")
    parser.add_argument(
        "--pass1-max",
        type=int,
        default=1000,
        help="above this many accounts, pass 1 starts with the sync bases known",
    )
    parser.add_argument(
        "--partner",
        choices=("empty", "copy"),
        default="empty",
        help="beta starts empty (pass 1 copies everything) or with a copy of alpha's store",
    )
    parser.add_argument(
        "--walkers",
        choices=("generator", "daemon"),
        default="generator",
        help="the parsed rows and full-text index written by the generator, or left to the daemon",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.accounts, args.messages, args.deliver = "200,1000", "2000,10000", 200
    results = run(
        _sizes(args.accounts),
        args.per_account,
        _sizes(args.messages),
        args.boxes,
        args.deliver,
        args.scratch,
        args.pass1_max,
        args.partner,
        args.walkers == "generator",
        args.json,
    )
    if args.json:
        args.json.write_text(json.dumps({"curves": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
