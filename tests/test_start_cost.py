"""What a process pays before it does anything: peerctl is a client of the
control API (urllib and the config), and the tests start it often, as an admin
does. SQLAlchemy and aiohttp at its start cost about 0.4 s of CPU each time."""

from __future__ import annotations

import json
import os
import smtplib
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from peerd.services.lmtp.worker import encode_frame
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


# What the daemon needs and a worker does not: the scheduler (the daemon
# checked the config's crontab expressions), the other protocols and the Sieve
# compiler (the daemon runs Sieve), the package metadata (--version). Together
# they were half of a worker's start-up CPU.
NOT_IN_A_WORKER = (
    "apscheduler",
    "peerd.protocols.pop3",
    "peerd.protocols.managesieve",
    "peerd.protocols.sieve",
    "importlib.metadata",
    *HEAVY,
)


def test_an_lmtp_worker_imports_only_what_it_serves_with(node: Node, tmp_path: Path) -> None:
    """A worker started as the daemon starts one (``peerd lmtp-worker`` with
    an inherited listening socket and pipe), under ``-X importtime``: it
    comes up, says ready, answers LMTP, stops when told, and imported none
    of NOT_IN_A_WORKER on the way."""
    listener = socket.create_server(("127.0.0.1", 0))
    ours, theirs = socket.socketpair()
    argv = [sys.executable, "-X", "importtime", "-m", "peerd", "lmtp-worker"]
    argv += ["-c", str(node.config), "--listen-fd", str(listener.fileno())]
    argv += ["--pipe-fd", str(theirs.fileno()), "--parent", str(os.getpid())]
    with (tmp_path / "worker.err").open("w+") as err:
        worker = subprocess.Popen(
            argv,
            cwd=node.workdir,
            stdin=subprocess.DEVNULL,
            stderr=err,
            pass_fds=(listener.fileno(), theirs.fileno()),
        )
        try:
            theirs.close()
            ours.settimeout(60)
            assert _read_frame(ours) == {"op": "ready"}
            with smtplib.LMTP("127.0.0.1", listener.getsockname()[1], timeout=30) as lmtp:
                assert lmtp.noop()[0] == 250
            ours.sendall(encode_frame({"op": "stop"}))
            assert worker.wait(60) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            listener.close()
            ours.close()
        err.seek(0)
        imported = {
            line.rsplit("|", 1)[1].strip()
            for line in err.read().splitlines()
            if line.startswith("import time:") and "|" in line
        }
    assert "peerd.services.lmtp.front" in imported  # the probe sees the worker's imports
    unwanted = [
        m for m in imported if any(m == n or m.startswith(n + ".") for n in NOT_IN_A_WORKER)
    ]
    assert sorted(unwanted) == []


def _read_frame(sock: socket.socket) -> dict[str, Any]:
    """One frame of the worker's pipe (peerd.services.lmtp.worker), read blocking."""
    head = _read_exactly(sock, 4)
    return dict(json.loads(_read_exactly(sock, struct.unpack(">I", head)[0])))


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the worker closed its pipe")
        data += chunk
    return data
