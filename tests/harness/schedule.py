"""The order test modules run in: the longest first.

How this works: ``pytest -n 3`` runs with ``--dist loadfile``: pytest-xdist
queues whole modules (a module's shared nodes start once, on one worker) and
gives the next one to whichever worker is about to run out. Fed the longest
modules first, the workers end close together (longest processing time
first: the last modules handed out are the short ones). A long module
handed out late would run alone at the end while the other workers idle.

The seconds per module are :data:`SECONDS_FILE`'s, written by a whole run
with ``PEERD_TEST_DURATIONS=FILE`` (:class:`Recorder`: the setup, call and
teardown times of each module's tests, summed). A module it does not name
yet (a new one) counts as :data:`UNKNOWN` seconds; a stale figure only
costs balance, never a test.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Final, TypeVar

import pytest

__all__ = ["SECONDS_FILE", "UNKNOWN", "Recorder", "longest_first", "module_seconds"]

SECONDS_FILE: Final = Path(__file__).resolve().parent.parent / "module_seconds.json"
# A module not in the file yet: about the median module's time.
UNKNOWN: Final = 3.0

T = TypeVar("T")


def module_seconds(path: Path = SECONDS_FILE) -> dict[str, float]:
    """Each module's seconds (``tests/x.py`` -> seconds), or none if the file is missing."""
    try:
        return {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
    except FileNotFoundError:
        return {}


def longest_first(groups: Sequence[tuple[str, T]], seconds: dict[str, float]) -> list[T]:
    """The groups' values, ordered by their module's seconds, longest first
    (modules of equal seconds keep their order)."""
    ranked = sorted(
        enumerate(groups), key=lambda pair: (-seconds.get(pair[1][0], UNKNOWN), pair[0])
    )
    return [value for _, (_, value) in ranked]


class Recorder:
    """A pytest plugin (on the controlling process): each module's test
    time, summed, written to ``path`` at the session's end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        module = report.nodeid.split("::", 1)[0]
        self.seconds[module] = self.seconds.get(module, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        ordered = sorted(self.seconds.items(), key=lambda item: (-item[1], item[0]))
        text = json.dumps({module: round(s, 1) for module, s in ordered}, indent=1)
        self.path.write_text(text + "\n")
