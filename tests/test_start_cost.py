"""What a process pays before it does anything: peerctl is a client of the
control API (urllib and the config), and the tests start it often, as an admin
does. SQLAlchemy and aiohttp at its start cost about 0.4 s of CPU each time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness.daemons import Node
from tests.harness.procs import wait_until

HEAVY = ("sqlalchemy", "aiohttp")


def test_peerctl_imports_neither_the_store_nor_the_web_server() -> None:
    probe = (
        "import sys; import peerd.cli.peerctl; "
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == ""


def test_engine_store_is_still_there_when_asked_for() -> None:
    import engine
    from engine.store import Store

    assert engine.Store is Store


def test_an_lmtp_worker_process_loads_neither_the_store_nor_the_web_server(node: Node) -> None:
    """A worker speaks LMTP and asks the daemon for the rest over its pipe:
    without SQLAlchemy it starts in half the CPU (each daemon start, and each
    restart of a crashed worker, pays it). Read from the running process's
    memory map: importing SQLAlchemy or aiohttp maps their C extensions."""
    wait_until(lambda: _worker_pids(node), 30, "the LMTP worker's pid")
    with node.lmtp() as lmtp:  # it serves: a worker that started and answered
        assert lmtp.noop()[0] == 250
    for pid in _worker_pids(node):
        mapped = Path(f"/proc/{pid}/maps").read_text()
        assert "/uvloop/" in mapped  # the probe sees the worker's own extensions
        assert [m for m in HEAVY if f"/{m}/" in mapped] == []


def _worker_pids(node: Node) -> list[int]:
    workers = node.call("GET", "/v1/status")["lmtp"]["workers"]
    return [int(w["pid"]) for w in workers if w["pid"] is not None]
