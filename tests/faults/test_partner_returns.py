"""The partner is shown reachable once anything reached it (issue 15, item 7).

Two real daemons. beta stops answering (SIGSTOP: its sockets stay open, its
answers do not come) while alpha has mail to send: alpha's rolling worker
marks the partner unreachable and backs off. Then ``sync_shutdown_file``
keeps the worker from trying again at all (it used to be six failures and
an 8 s pause the reconcile had to beat: 11 s of waiting, and a race). beta
answers again (SIGCONT) and a reconcile (``peerctl reconcile``, the code the
schedule runs) syncs everything; the worker never tries. ``status`` must
not go on saying ``reachable NO``.
"""

from __future__ import annotations

import os
import signal
import smtplib
from pathlib import Path
from typing import Any

from tests.nodes import make_pair, peerctl, running
from tests.procs import wait_until


def replication(status: dict[str, Any]) -> dict[str, Any]:
    return dict(status["replication"])


def test_a_reconcile_that_reaches_the_partner_marks_it_reachable(tmp_path: Path) -> None:
    stop_file = tmp_path / "rolling.stop"
    alpha, beta = make_pair(
        tmp_path,
        {
            "alpha": {
                "sync": {
                    "sync_reconnect_maxwait": "60s",
                    "sync_timeout": "500ms",
                    "sync_shutdown_file": str(stop_file),
                }
            }
        },
    )
    with running(alpha, beta):
        alpha.add_account("alice")
        wait_until(lambda: beta.call("GET", "/v1/owner/alice") is not None, 30, "alice on beta")
        assert beta.pid is not None
        os.kill(beta.pid, signal.SIGSTOP)
        data = b"Subject: while away\r\nMessage-ID: <away@returns>\r\n\r\nhi\r\n"
        with smtplib.LMTP("127.0.0.1", alpha.port("lmtp"), timeout=30) as lmtp:
            assert lmtp.sendmail("s@example.test", ["alice@example.test"], data) == {}
        try:
            wait_until(
                lambda: replication(alpha.call("GET", "/v1/status"))["failures"] >= 1,
                30,
                "a failed try",
            )
            assert replication(alpha.call("GET", "/v1/status"))["reachable"] is False
            # From here the worker starts no sync of its own: only the
            # reconcile below can reach beta.
            stop_file.touch()
            wait_until(
                lambda: replication(alpha.call("GET", "/v1/status"))["rolling"] == "stopped",
                30,
                "rolling replication stopped",
            )
            assert replication(alpha.call("GET", "/v1/status"))["reachable"] is False
        finally:
            os.kill(beta.pid, signal.SIGCONT)
        run = peerctl(alpha, "reconcile", "--all")
        assert run.returncode == 0, run.stdout + run.stderr
        seen = replication(alpha.call("GET", "/v1/status"))
        assert seen["sync_log_depth"] == 0  # the reconcile sent it all
        assert seen["reachable"] is True, seen
        shown = peerctl(alpha, "status")
        assert "reachable yes" in shown.stdout, shown.stdout
        assert len(beta.records("alice")) == 1
