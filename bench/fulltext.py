"""SEARCH TEXT/BODY through the SQLite FTS5 trigram prototype (issue 11 item 3).

    .venv/bin/python -m bench.fulltext [--messages 10000] [--repeat 5]

The benchmark mix of ``bench.workload`` (the same messages ``bench.imap_fetch``
loads): extracts each message's searchable text (the cost at delivery),
builds the FTS5 table of ``engine.fulltext.SQLITE_DDL`` in a temporary file,
then prints the median time of BODY and TEXT for a rare word, a common word,
a 2-character string (the ``instr`` scan) and an absent word, next to the
unindexed path (extract and test every message). Timings are of the index
query alone, not of the join with ``messages`` a mailbox search adds.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable

from bench.workload import messages
from engine.fulltext import SQLITE_DDL, SQLITE_SHORT, extract, fold, matches, sqlite_match


def median_ms(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    fn()
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    raws = messages(args.messages, "bench@bench.test")
    cpu = time.process_time()
    docs = [extract(raw) for raw in raws]
    cpu = time.process_time() - cpu
    size = sum(map(len, raws))
    print(
        f"extract            {cpu * 1000:9.1f} ms CPU for {len(raws)} messages "
        f"({cpu * 1e6 / len(raws):.0f} us each, {size / cpu / 1e6:.0f} MB/s)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fulltext.db")
        db = sqlite3.connect(path)
        for statement in SQLITE_DDL:
            db.execute(statement)
        cpu = time.process_time()
        with db:
            db.executemany(
                "INSERT INTO fulltext_docs (id, guid, version) VALUES (?, ?, 1)",
                [(n, f"g{n}") for n in range(len(docs))],
            )
            db.executemany(
                "INSERT INTO fulltext (rowid, header, body) VALUES (?, ?, ?)",
                [(n, d.header, d.body) for n, d in enumerate(docs)],
            )
        cpu = time.process_time() - cpu
        text = sum(len(d.header) + len(d.body) for d in docs)
        print(
            f"index build        {cpu * 1000:9.1f} ms CPU; {text / 1e6:.1f} M characters of text, "
            f"database {os.path.getsize(path) / 1e6:.1f} MB"
        )
        words = sorted({w for d in docs[:200] for w in d.body.split() if len(w) > 5})
        counts = {w: sum(w in d.body for d in docs[:200]) for w in words}
        common = max(counts, key=counts.__getitem__)
        rare = min(counts, key=counts.__getitem__)
        for label, string in (
            (f"rare {rare!r}", rare),
            (f"common {common!r}", common),
            ("short 'qu'", "qu"),
            ("absent 'zyzzyvaqq'", "zyzzyvaqq"),
        ):
            for key in ("BODY", "TEXT"):
                match = sqlite_match(key, string)

                def query(match: str | None = match, key: str = key, string: str = string) -> int:
                    if match is None:
                        rows = db.execute(SQLITE_SHORT[key], {"needle": fold(string)})
                    else:
                        rows = db.execute(
                            "SELECT rowid FROM fulltext WHERE fulltext MATCH ?", (match,)
                        )
                    return len(rows.fetchall())

                hits = query()
                wall, cpu_ms = median_ms(query, args.repeat)
                print(f"{key} {label:<28} {hits:6d} hits {wall:8.1f} ms wall {cpu_ms:8.1f} ms CPU")
        cpu = time.process_time()
        unindexed = sum(matches(extract(raw), "TEXT", rare) for raw in raws)
        cpu = time.process_time() - cpu
        print(f"unindexed TEXT rare ({unindexed} hits): {cpu * 1000:.0f} ms CPU")
        db.close()


if __name__ == "__main__":
    main()
