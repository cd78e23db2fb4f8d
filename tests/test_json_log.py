"""``--log-format json``: a traceback stays inside its JSON line ("exc"), also
for an exception nothing caught, in the main thread or another, and for a
warning; stderr holds nothing but JSON objects, one per line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

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
