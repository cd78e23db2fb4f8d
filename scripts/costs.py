"""Sum a cost log written by a test run with ``PEERD_TEST_COSTLOG=FILE``.

    PEERD_TEST_COSTLOG=/tmp/costs.jsonl .venv/bin/pytest -q
    .venv/bin/python scripts/costs.py /tmp/costs.jsonl

Prints, for each kind of process the daemon launcher forked (``peerd run``,
``peerd.cli status``...), how many ran and their CPU seconds; then the
pytest processes' own CPU and everything else they reaped (PostgreSQL,
nginx, Postfix, clients); then the test files whose forked processes used
the most CPU.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    kinds: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    files: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    forked = 0.0
    children = 0.0
    with open(path) as lines:
        for line in lines:
            row = json.loads(line)
            cpu = row["user"] + row["sys"]
            if row["kind"] == "pytest children":
                children += cpu
                continue
            name = "peerd.cli" if row["kind"].startswith("peerd.cli") else row["kind"]
            for table, key in ((kinds, name), (files, row["test"].split("::")[0])):
                table[key][0] += 1
                table[key][1] += cpu
                table[key][2] += row["wall"]
            if row["kind"] != "pytest":
                forked += cpu
    print(f"{'kind':<28}{'runs':>7}{'CPU s':>9}{'CPU/run':>9}{'wall/run':>9}")
    for key, (n, cpu, wall) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
        print(f"{key:<28}{n:>7}{cpu:>9.1f}{cpu / n:>9.3f}{wall / n:>9.2f}")
    print(f"{'other children of pytest':<28}{'':>7}{children - forked:>9.1f}")
    print("\ntest files by the CPU of what the launcher forked for them:")
    for key, (n, cpu, _) in sorted(files.items(), key=lambda kv: -kv[1][1])[:25]:
        print(f"{key:<60}{n:>5}{cpu:>8.1f}")


if __name__ == "__main__":
    main(sys.argv[1])
