"""contrib/: the Prometheus alert rules pass ``promtool check rules``, and
every metric the rules and the Grafana dashboard name is one a running pair's
``/metrics`` exposes (a renamed metric fails here, not silently on a
dashboard); the exposition itself passes ``promtool check metrics``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.nodes import make_pair, running

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
RULES = CONTRIB / "prometheus" / "peerd.rules.yml"
DASHBOARD = CONTRIB / "grafana" / "peerd.json"
METRIC = re.compile(r"\bpeerd_[a-z_]+\b")


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt install prometheus)")
    return promtool


def _named() -> set[str]:
    exprs = [t["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"]
             for t in panel["targets"]]  # fmt: skip
    exprs += re.findall(r"^\s*expr: (.*)$", RULES.read_text(), re.M)
    return {name for expr in exprs for name in METRIC.findall(expr)}


def test_the_alert_rules_pass_promtool() -> None:
    result = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 11 rules found" in result.stdout


def test_every_metric_named_in_contrib_is_exposed(tmp_path: Path) -> None:
    named = _named()
    assert {"peerd_replication_lag_seconds", "peerd_sync_fenced_total"} <= named
    hook = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    alpha, beta = make_pair(tmp_path)
    with alpha.config.open("a") as handle:
        handle.write(f'\n[[routing.hooks]]\nname = "front"\ncommand = {json.dumps(hook)}\n')
    with running(alpha, beta):
        alpha.add_account("amy")
        alpha.call("POST", "/v1/reconcile", {})
        alpha.call("POST", "/v1/switchover", {"accounts": ["amy"]})
        url = f"http://127.0.0.1:{alpha.ports['http']}/metrics"
        with urllib.request.urlopen(url, timeout=20) as answer:
            text = answer.read().decode()
    exposed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert named - exposed == set(), text

    promtool = shutil.which("promtool")
    if promtool is not None:
        lint = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr
