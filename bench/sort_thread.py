"""SORT and THREAD over stored sort records, in pure Python (issue 10).

    .venv/bin/python -m bench.sort_thread [--messages 10000] [--repeat 7]

Builds the header of each message of a mailing-list-like mailbox (threads of
1 to 12 messages with References chains, "Re:"/"Fwd:"/"[list]" subjects,
some parents missing, UTF-8 encoded words, dates out of arrival order),
then prints the median time of: building the records (the cost at
delivery, per message), loading all of them from their stored bytes, SORT by
ARRIVAL, DATE, SUBJECT, FROM, (REVERSE DATE SUBJECT), DISPLAYFROM, THREAD
ORDEREDSUBJECT and THREAD REFERENCES (each with the response rendered).
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import random
import statistics
import time
from collections.abc import Callable

from peerd.protocols.imap.sort import SortItem, build_record, loads_many, parse_criteria, sort
from peerd.protocols.imap.thread import Algorithm, thread, thread_response

WORDS = [
    "plans",
    "release",
    "meeting",
    "budget",
    "draft",
    "review",
    "patch",
    "question",
    "lunch",
    "report",
]


def headers(count: int, seed: int = 5256) -> list[bytes]:
    rng = random.Random(seed)
    out: list[bytes] = []
    threads: list[tuple[str, list[str]]] = []  # (subject, message ids so far)
    for n in range(count):
        if threads and rng.random() < 0.7:
            subject, ids = rng.choice(threads[-300:])
            parent_chain = ids[: rng.randint(1, len(ids))]
            if rng.random() < 0.1:
                parent_chain = parent_chain[1:]  # the thread's start is not here
            prefix = rng.choice(["Re: ", "RE: ", "Re: [list] ", "Fwd: ", "Re[2]: "])
            refs = " ".join(f"<{i}>" for i in parent_chain)
            extra = f"References: {refs}\r\nIn-Reply-To: <{parent_chain[-1]}>\r\n" if refs else ""
            ids.append(f"m{n}@bench.test")
            shown = prefix + subject
        else:
            subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5)))
            if rng.random() < 0.1:
                subject = "caf\u00e9 " + subject
            threads.append((subject, [f"m{n}@bench.test"]))
            extra = ""
            shown = subject
        if not shown.isascii():
            shown = "=?utf-8?b?" + base64.b64encode(shown.encode()).decode() + "?="
        when = 1_700_000_000 + n * 60 + rng.randint(-3600, 3600)
        sender = rng.randint(0, 300)
        out.append(
            (
                f"From: =?utf-8?q?Sender_{sender}?= <sender{sender}@bench.test>\r\n"
                f"To: list{sender % 7}@bench.test\r\n"
                f"Subject: {shown}\r\n"
                f"Date: {email.utils.formatdate(when)}\r\n"
                f"Message-ID: <m{n}@bench.test>\r\n"
                f"{extra}\r\n"
            ).encode()
        )
    return out


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median wall-clock and CPU milliseconds of ``fn`` (after one warm-up run).
    CPU time is the steadier figure on a shared machine."""
    fn()
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000


def show(name: str, figures: tuple[float, float], note: str = "") -> None:
    wall, cpu = figures
    print(f"{name:<30} {wall:8.1f} ms wall {cpu:8.1f} ms CPU  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    raw = headers(args.messages)
    figures = timed(lambda: [build_record(h) for h in raw], 3)
    show("build records", figures, f"({figures[1] * 1000 / len(raw):.1f} us CPU per message)")
    blobs = [build_record(h).dumps() for h in raw]
    print(f"stored size: {sum(map(len, blobs)) / len(blobs):.1f} bytes per record (JSON)")
    show("load records", timed(lambda: loads_many(blobs), args.repeat))
    records = loads_many(blobs)
    items = [
        SortItem(i + 1, 1_700_000_000 + i * 60, 3000 + (i * 7919) % 50000, r)
        for i, r in enumerate(records)
    ]
    for keys in (
        ["ARRIVAL"],
        ["DATE"],
        ["SUBJECT"],
        ["FROM"],
        ["REVERSE", "DATE", "SUBJECT"],
        ["DISPLAYFROM"],
    ):
        criteria = parse_criteria(keys)
        show(f"SORT ({' '.join(keys)})", timed(lambda c=criteria: sort(items, c), args.repeat))  # type: ignore[misc]
    for algorithm in Algorithm:
        figures = timed(lambda a=algorithm: thread_response(items, a), args.repeat)  # type: ignore[misc]
        show(f"THREAD {algorithm.value}", figures, "(response rendered)")
    threads = thread(items, Algorithm.REFERENCES)
    print(f"{len(threads)} REFERENCES threads for {len(items)} messages")


if __name__ == "__main__":
    main()
