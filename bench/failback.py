"""Failback under a continuous delivery load (issue 15, item 4).

    .venv/bin/python -m bench.faults --parts failback [--failback-trials 3] [--rate 50]

Each trial: a fresh pair (two real daemons, rolling replication), one
account whose home is alpha and whose owner is beta (a switchover moved it),
threads delivering to it over LMTP at ``--rate`` messages a second (a 4xx is
retried on the other node after 50 ms, as an MTA with two next hops does).
After 2 s of load, ``POST /v1/failback`` on alpha is timed from the client;
the load goes on 1 s more. Figures per trial: the failback's wall time, the
writes-held time the answer reports, the 4xx replies the load met, and the
acknowledged deliveries missing from alpha afterwards (must be 0).
:func:`failback_figures` returns them; ``bench/faults.py`` prints the medians.
"""

from __future__ import annotations

import tempfile
import time
import urllib.error
from collections import Counter
from pathlib import Path
from typing import Any

from tests.harness.clients import SteadyLoad
from tests.nodes import Node, make_pair, running
from tests.procs import wait_until

__all__ = ["failback_figures", "failback_trial"]


def _known(node: Node, account: str) -> bool:
    try:
        return bool(node.call("GET", f"/v1/owner/{account}"))
    except urllib.error.HTTPError as exc:
        exc.close()
        return False


def failback_trial(workdir: Path, rate: float) -> dict[str, Any]:
    """One failback under ``rate`` msgs/s; its figures."""
    alpha, beta = make_pair(workdir)
    with running(alpha, beta):
        alpha.add_account("alice")
        wait_until(lambda: _known(beta, "alice"), 15, "alice replicated to beta")
        alpha.call("POST", "/v1/switchover", {"accounts": ["alice"]})
        load = SteadyLoad(
            [beta.port("lmtp"), alpha.port("lmtp")], "alice", rate=rate, threads=4
        ).start()
        try:
            time.sleep(2.0)
            started = time.monotonic()
            result = alpha.call("POST", "/v1/failback", {})
            took = time.monotonic() - started
            time.sleep(1.0)
        finally:
            load.join()
        held = Counter(alpha.audit("alice"))
        lost = sum(1 for s in load.acked if not held[s])
        return {
            "seconds": took,
            "writes_held": float(result["writes_held"]),
            "acked": len(load.acked),
            "deferred": len(load.deferred),
            "lost": lost,
            "moved": [r["account"] for r in result["partner"]["moved"]],
        }


def failback_figures(trials: int = 3, rate: float = 50.0) -> list[dict[str, Any]]:
    """``trials`` failbacks under load, each on a fresh pair."""
    figures = []
    for n in range(trials):
        with tempfile.TemporaryDirectory(prefix=f"failback-{n}-") as tmp:
            figures.append(failback_trial(Path(tmp), rate))
    return figures
