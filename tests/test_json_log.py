"""``--log-format json``: a traceback stays inside its JSON line ("exc"), also
for an exception nothing caught, in the main thread or another, and for a
warning; stderr holds nothing but JSON objects, one per line.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.nodes import make_single
from tests.procs import Proc, wait_until

SCRIPT = textwrap.dedent(
    """
    import logging, threading, warnings
    from peerd.node.logs import setup_logging
    setup_logging({fmt!r}, "INFO", "alpha")
    logging.getLogger("peerd.test").info("started")
    warnings.warn("an old option")
    worker = threading.Thread(target=lambda: 1 / 0, name="worker")
    worker.start()
    worker.join()
    raise RuntimeError("boom at start")
    """
)


def _run(fmt: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT.format(fmt=fmt)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_stderr_line_is_json_with_the_traceback_inside() -> None:
    result = _run("json")
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert lines[0]["msg"] == "started"
    warned, thread, main = lines[1:]
    assert "an old option" in warned["msg"] and warned["level"] == "warning"
    assert thread["msg"] == "uncaught exception in thread worker: division by zero"
    assert "ZeroDivisionError" in thread["exc"] and "Traceback" in thread["exc"]
    assert main["level"] == "critical" and main["msg"] == "uncaught exception: boom at start"
    assert main["exc"].startswith("Traceback (most recent call last):\n")
    assert main["exc"].endswith("RuntimeError: boom at start")


def test_the_text_format_keeps_python_s_own_traceback() -> None:
    result = _run("text")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.rstrip().endswith("RuntimeError: boom at start")


def test_a_json_node_and_its_lmtp_workers_write_only_json(tmp_path: Path) -> None:
    """``peerd run --log-format json`` over a file that says text (the unit's
    way): the LMTP worker processes log JSON too, and a SIGHUP does not call
    the format a change that needs a restart."""
    node = make_single(tmp_path, overrides={"lmtp": {"workers": 1}, "log": {"format": "text"}})
    log = tmp_path / "alpha.log"
    node.proc = Proc(
        [sys.executable, "-m", "peerd", "run", "-c", str(node.config), "--log-format", "json"],
        log,
        cwd=tmp_path,
    ).start()
    try:
        node.wait_ready()
        node.add_account("amy")
        with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=20) as lmtp:
            lmtp.sendmail("s@example.test", ["amy@example.test"], b"Subject: x\r\n\r\n")
        os.kill(node.proc.pid, signal.SIGHUP)
        wait_until(lambda: "reloaded" in log.read_text(), 20, "the reload in the log")
    finally:
        node.stop()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(line["msg"].startswith("LMTP worker ") for line in lines), lines
    assert not any("only a restart applies them" in line["msg"] for line in lines), lines
