"""Processes the tests start: free loopback ports, start and stop by pid, never by name.

Every child runs in its own process group (``start_new_session``) so that the
helpers it forks can be cleaned up with ``killpg`` on *its* pid, and nothing else
on the machine is touched. A :class:`Registry` remembers what a test started so
a fixture can stop all of it at teardown even when the test failed half-way.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
import socket
import subprocess
import time
import urllib.error
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

__all__ = [
    "Proc",
    "Registry",
    "Stoppable",
    "free_port",
    "kill9",
    "pid_alive",
    "port_open",
    "stop_pid",
    "wait_port",
    "wait_until",
]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _port_pool() -> list[int]:
    """Ports the kernel never hands out as a connection's local port.

    A port picked with ``bind(0)`` comes from the ephemeral range, the same range
    every outgoing connection (Postfix to LMTP, a node to its partner, the test
    itself) takes its local port from: between the moment the test picks a port and
    the moment a daemon binds it (or re-binds it after a restart), a connection may
    hold it, and the daemon fails with EADDRINUSE. CI saw exactly that. So the
    pool is what lies outside the ephemeral range, above 30000 (clear of the
    local pair's fixed ports in configs/).
    """
    low, high = _ephemeral_range()
    pool = [p for p in range(30000, 65536) if not low <= p <= high]
    return pool or list(range(30000, 32768))


def _worker_share(pool: list[int]) -> list[int]:
    """This pytest-xdist worker's own slice of the pool (the whole pool outside
    xdist): two workers of one run never pick the same port, even while one has
    picked a port and its daemon has not bound it yet."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count <= 1:
        return pool
    index = int(worker[2:]) % count
    size = len(pool) // count
    return pool[index * size : (index + 1) * size]


_POOL = _worker_share(_port_pool())
# Each process starts at its own place in its pool, so two pytest runs side by
# side rarely meet; a port comes round again only after the whole pool has.
_next = (os.getpid() * 7919) % len(_POOL)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1, free now, outside the kernel's ephemeral range.

    No outgoing connection can take it in the meantime, and this process hands
    it out again only after every other port of the pool, so a node stopped and
    restarted on its ports finds them free again.
    """
    global _next
    for _ in range(len(_POOL)):
        port = _POOL[_next]
        _next = (_next + 1) % len(_POOL)
        if _bindable(port):
            return port
    raise RuntimeError("no free loopback port left outside the ephemeral range")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(
    check: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``check`` until it returns something true; raise TimeoutError naming ``what`` otherwise.

    A control-API 404 counts as "not there yet": waiting for an account or a
    mailbox to reach the replica starts before the replica has heard of it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except urllib.error.HTTPError as error:
            if error.code != 404:
                raise
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def wait_port(port: int, timeout: float = 15.0, what: str = "") -> None:
    wait_until(lambda: port_open(port), timeout, what or f"127.0.0.1:{port} to accept connections")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs. A zombie counts as dead: a daemon we did not fork
    (Postfix's master) is reaped by PID 1, which in a container may never do it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may hold spaces.
    return stat.rpartition(")")[2].split()[0] != "Z"


def kill9(pid: int, group: bool = False) -> None:
    """SIGKILL one pid (and its process group when ``group``); gone already is fine."""
    try:
        if group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 15.0) -> bool:
    """Stop a process that is not our child (so it cannot be waited for): signal,
    poll, then SIGKILL. True if it went away on ``sig`` alone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    try:
        wait_until(lambda: not pid_alive(pid), timeout, f"pid {pid} to exit")
        return True
    except TimeoutError:
        kill9(pid)
        return False


def _die_with_parent(sig: int, parent: int) -> Callable[[], None]:
    """A preexec_fn: the kernel sends ``sig`` to the child when the thread that
    started it exits (prctl PR_SET_PDEATHSIG), so a pytest killed by a CI
    timeout, where no ``finally`` runs, does not leave a server behind."""

    # Loaded here, not in the child: dlopen after fork() in a threaded parent can deadlock.
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(1, sig, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


class Stoppable(Protocol):
    def stop(self) -> object: ...


class Proc:
    """A child process in its own process group, stdout and stderr into ``log``."""

    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
        die_with_parent: bool = False,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        """``die_with_parent``: the child gets ``stop_signal`` when the *thread*
        that starts it exits. Use it only for processes started from the main
        thread (a session's server), never from a worker or timer thread."""
        self.argv = list(argv)
        self.log = log
        self.cwd = cwd
        self.env = env
        # Dropping privileges in the child itself (not via runuser/su) keeps the
        # pid we hold the server's own: su-style wrappers SIGKILL their child
        # two seconds after they are signalled, which would spoil a clean stop.
        self.user = user
        self.stop_signal = stop_signal
        self.die_with_parent = die_with_parent
        # Runs in the child before exec (e.g. a resource limit a test needs).
        self.preexec = preexec
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as handle:  # the child keeps its own copy of the fd
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                user=self.user,
                group=pwd.getpwnam(self.user).pw_gid if self.user else None,
                extra_groups=[] if self.user else None,
                preexec_fn=self._preexec(),
            )
        return self

    def _preexec(self) -> Callable[[], None] | None:
        steps = [
            _die_with_parent(self.stop_signal, os.getpid()) if self.die_with_parent else None,
            self.preexec,
        ]
        chosen = [step for step in steps if step is not None]
        if not chosen:
            return None

        def run() -> None:
            for step in chosen:
                step()

        return run

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise RuntimeError(f"{self.argv[0]} was never started")
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def send(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        if self.popen is None:
            raise RuntimeError(f"{self.argv[0]} was never started")
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 15.0, sig: int | None = None) -> int | None:
        """Signal (default: the process's own stop signal), wait, then SIGKILL.
        Afterwards SIGKILL whatever is left in its process group. Returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            os.kill(self.pid, self.stop_signal if sig is None else sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                kill9(self.pid)
                self.popen.wait(10)
        # Its group id is its pid: this reaches only helpers it forked.
        kill9(self.pid, group=True)
        return self.popen.returncode

    def kill9(self) -> None:
        """SIGKILL the process (not its group: a crash test wants only it gone)."""
        if self.popen is not None and self.popen.poll() is None:
            kill9(self.pid)
            self.popen.wait(10)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


T = TypeVar("T", bound=Stoppable)


class Registry:
    """What one test (or session) started; :meth:`stop_all` stops it, newest first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._items: list[Stoppable] = []

    def start(
        self,
        argv: Sequence[str],
        name: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> Proc:
        proc = Proc(argv, self.log_dir / f"{name}.log", cwd, env, user, stop_signal)
        # Registered before it starts: a failing start still gets cleaned up.
        self.add(proc)
        return proc.start()

    def add(self, item: T) -> T:
        self._items.append(item)
        return item

    def stop_all(self) -> list[str]:
        """Stop everything; one failing stop does not keep the rest running.
        Returns the errors, so the fixture can report them."""
        errors: list[str] = []
        while self._items:
            item = self._items.pop()
            try:
                item.stop()
            except Exception as exc:
                errors.append(f"{item!r}: {exc!r}")
        return errors
