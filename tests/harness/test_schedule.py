"""The module order of a run (tests/harness/schedule.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from tests.harness.schedule import SECONDS_FILE, UNKNOWN, Recorder, longest_first, module_seconds


def test_longest_first_keeps_ties_and_places_unknown_modules_by_the_default() -> None:
    groups = [("a.py", 1), ("b.py", 2), ("c.py", 3), ("d.py", 4), ("e.py", 5)]
    seconds = {"a.py": 1.0, "b.py": 40.0, "d.py": 40.0, "e.py": UNKNOWN + 1}
    assert longest_first(groups, seconds) == [2, 4, 5, 3, 1]


def test_the_recorder_sums_each_modules_reports(tmp_path: Path) -> None:
    out = tmp_path / "seconds.json"
    recorder = Recorder(out)
    for nodeid, duration in (
        ("tests/a.py::t1", 1.0),
        ("tests/a.py::t1", 0.25),
        ("tests/b.py::t[x]", 5.0),
        ("tests/a.py::t2", 2.0),
    ):
        report = SimpleNamespace(nodeid=nodeid, duration=duration)
        recorder.pytest_runtest_logreport(cast(pytest.TestReport, report))
    recorder.pytest_sessionfinish()
    assert json.loads(out.read_text()) == {"tests/b.py": 5.0, "tests/a.py": 3.2}
    assert list(module_seconds(out)) == ["tests/b.py", "tests/a.py"]
    assert module_seconds(tmp_path / "missing.json") == {}


def test_the_checked_in_seconds_name_modules_that_exist() -> None:
    seconds: dict[str, Any] = module_seconds(SECONDS_FILE)
    root = SECONDS_FILE.parent.parent
    assert len(seconds) > 50
    missing = [name for name in seconds if not (root / name).is_file()]
    assert missing == [], "tests/module_seconds.json names removed modules: rerun it"
