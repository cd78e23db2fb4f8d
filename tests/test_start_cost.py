"""What a process pays before it does anything: peerctl is a client of the
control API (urllib and the config), and the tests start it often, as an admin
does. SQLAlchemy and aiohttp at its start cost about 0.4 s of CPU each time."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from peerd.services.lmtp.worker import Forked, encode_frame
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


def test_the_first_lmtp_worker_is_forked_by_the_daemon_and_holds_only_its_sockets(
    node: Node,
) -> None:
    """``peerd run`` forks its first worker before its event loop
    (peerd.services.lmtp.worker.fork_workers): born with its modules
    imported, the worker serves for a few hundredths of a CPU second where an
    exec'd one spent about 0.4 s importing. It holds none of the daemon's
    files: not the data-dir lock, not the database, not the log a test
    harness gave the daemon (its standard streams aside)."""
    wait_until(lambda: _worker_pids(node), 30, "the LMTP worker's pid")
    with node.lmtp() as lmtp:  # it serves: a worker that started and answered
        assert lmtp.noop()[0] == 250
    (pid,) = _worker_pids(node)
    assert _parent(pid) == node.pid
    # Forked, not exec'd: the same interpreter image as the daemon's, whose
    # store (SQLAlchemy) it shares and never imported itself.
    assert Path(f"/proc/{pid}/exe").resolve() == Path(f"/proc/{node.pid}/exe").resolve()
    assert "/sqlalchemy/" in Path(f"/proc/{pid}/maps").read_text()
    assert _cpu_seconds(pid) < 0.15  # exec'd: 0.4 s or more
    held = [os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir() if int(f.name) > 2]
    workdir = str(node.workdir.resolve())
    assert any(h.startswith("socket:") for h in held)  # the probe sees its sockets
    assert [h for h in held if h.startswith(workdir)] == []  # no lock, database or log


def test_a_restarted_lmtp_worker_loads_neither_the_store_nor_the_web_server(node: Node) -> None:
    """A worker started again after it died is exec'd (the daemon has threads
    by then; fork keeps only the calling one): it speaks LMTP and asks the
    daemon for the rest over its pipe, so without SQLAlchemy and aiohttp it
    starts in half the CPU. Read from the running process's memory map:
    importing SQLAlchemy or aiohttp maps their C extensions."""
    wait_until(lambda: _worker_pids(node), 30, "the LMTP worker's pid")
    (first,) = _worker_pids(node)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: _worker_pids(node) not in ([], [first]), 30, "the restarted worker")
    with node.lmtp() as lmtp:
        assert lmtp.noop()[0] == 250
    for pid in _worker_pids(node):
        mapped = Path(f"/proc/{pid}/maps").read_text()
        assert "/uvloop/" in mapped  # the probe sees the worker's own extensions
        assert [m for m in HEAVY if f"/{m}/" in mapped] == []


def test_a_daemon_refused_at_start_leaves_no_forked_worker(node: Node) -> None:
    """The worker is forked before the data-dir lock is taken: a second
    daemon on the same data_dir is refused, and the worker it forked is
    gone with it (reaped, not left waiting for sockets that never come)."""
    second = subprocess.Popen(
        [sys.executable, "-m", "peerd", "run", "-c", str(node.config)],
        cwd=node.workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its process group: what it forks stays in it
    )
    try:
        _, err = second.communicate(timeout=120)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    assert second.returncode != 0
    assert "in use by another peerd" in err
    assert "forked (pid" not in err  # its LMTP never started
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _group(p) == second.pid]
    assert left == []
    assert node.healthy()


def _group(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):  # gone meanwhile
        return None


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def test_a_forked_worker_that_died_before_its_sockets_came_is_reaped() -> None:
    """``Forked.hand_over`` to a worker that is gone: an OSError (the daemon
    execs one instead, ``_Worker._spawn``), and the dead child reaped, not
    left a zombie."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: gone at once, as if killed
        os._exit(3)
    theirs.close()
    wait_until(lambda: _state(pid) == "Z", 10, "the child to exit")
    listener = socket.create_server(("127.0.0.1", 0))
    pipe, other = socket.socketpair()
    try:
        with pytest.raises(OSError):
            Forked(pid, ours).hand_over(listener.fileno(), pipe.fileno())
        assert not Path(f"/proc/{pid}").exists()  # reaped
        assert ours.fileno() == -1  # the daemon's end closed
    finally:
        for sock in (listener, pipe, other, ours):
            sock.close()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
