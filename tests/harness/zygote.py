"""A launcher that forks real ``peerd`` daemons with their modules already imported.

How this works: a daemon's start used to cost about 1 s of CPU importing its
modules (SQLAlchemy, aiohttp, the services) before it did anything, and the
suite starts hundreds of daemons. Each pytest process (each xdist worker)
therefore starts one launcher, ``python -m tests.harness.zygote FD``: a
single-threaded process that imports what a running daemon imports, freezes
the garbage collector's view of it, then waits on a socketpair (``FD``) for
requests, one JSON line each, one JSON line answered:

=========================================  =====================================
request                                    answer
=========================================  =====================================
``{"op": "spawn", "argv", "cwd", "env",    ``{"pid": N}``: a forked child runs
"log"}``                                   ``peerd`` with ``argv``
``{"op": "poll", "pid"}``                  ``{"code": null | int}``: its exit
                                           status, as ``Popen.returncode``
                                           (``-SIG`` when a signal killed it)
=========================================  =====================================

The child is what ``python -m peerd ARGV`` would be, in a process of its own:
a new session (its pid is its process group, as with ``start_new_session``),
stdin from ``/dev/null``, stdout and stderr appended to ``log``, ``cwd`` and
``env`` as given, ``sys.argv`` and ``sys.path[0]`` as ``-m`` sets them; then
the daemon's real ``main``, and the interpreter's normal exit (atexit,
threads joined, streams flushed) with ``main``'s status. So a test signals,
SIGKILLs and restarts it by pid exactly as before; only its exit status
comes from the launcher, which is its parent and reaps it (``poll``).

Nothing is left behind: each child gets ``PR_SET_PDEATHSIG`` (SIGKILL) so it
dies with the launcher, and the launcher SIGKILLs every child it has not
reaped, and its process group, when its socket closes (the pytest process
ended or died). The harness still stops each daemon by pid at teardown.

The client side is :func:`spawn` (used by ``Node.start``) and
:class:`ForkedProc`, a :class:`~tests.harness.procs.Proc` whose process is
the launcher's child. ``PEERD_TEST_EXEC=1`` in the environment turns the
launcher off (every daemon is a plain ``exec`` again), e.g. to compare.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import importlib
import json
import locale
import os
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from tests.harness.procs import Proc, kill9, pid_alive

__all__ = ["ForkedProc", "Launcher", "close", "enabled", "run_module", "spawn"]

# What a running daemon imports (peerd.app.daemon and what it imports while it
# starts and serves: the services, the dialects). The daemon forks its LMTP
# worker itself (peerd.services.lmtp.worker.fork_workers), as in production,
# so the worker starts with these modules imported too.
PRELOAD = (
    "peerd.app.main",
    "peerd.cli.peerctl",
    "peerd.app.daemon",
    "peerd.services.gate",
    "peerd.services.imap.server",
    "peerd.services.lmtp.worker",
    "peerd.services.mailstore",
    "peerd.services.pop3",
    "peerd.services.starttls",
    "peerd.node.tls",
    "engine.acl",
    "engine.mailview",
    "sqlalchemy.dialects.sqlite",
    "sqlalchemy.dialects.postgresql",
    # What the daemon imports on its way to ready: LMTP's store side and
    # Sieve (peerd.app.daemon._start_lmtp), uvloop (fork_workers, for the
    # worker). Imported in each daemon instead, they were a fifth of its start.
    "peerd.services.lmtp.backend",
    "uvloop",
    "concurrent.futures.thread",
    "apscheduler.executors.asyncio",
    "email.generator",
    "smtplib",
    # socket.getaddrinfo encodes a host with the idna codec: the listeners'
    # check at start (peerd.node.config._check_listen_addresses) resolves each.
    "encodings.idna",
)

_PR_SET_PDEATHSIG = 1


# --- the launcher's side ----------------------------------------------------------


class _Spawned(Exception):
    """Raised in a forked child: unwinds the launcher's loop, then runs peerd."""

    def __init__(self, request: dict[str, Any]) -> None:
        super().__init__("child")
        self.request = request


def _serve(sock: socket.socket) -> None:
    """Answer requests until the socket closes. In a forked child, raises
    :class:`_Spawned` (the launcher's frames have nothing to clean up)."""
    reader = sock.makefile("rb")
    children: dict[int, int | None] = {}  # pid -> exit status once reaped
    started: dict[int, tuple[float, str]] = {}  # pid -> (monotonic start, what), for the cost log
    zygote = os.getpid()
    for line in reader:
        request = json.loads(line)
        reply: dict[str, Any]
        if request["op"] == "spawn":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                reader.close()
                sock.close()
                request["zygote"] = zygote
                raise _Spawned(request)
            children[pid] = None
            started[pid] = (time.monotonic(), _what(request))
            reply = {"pid": pid}
        elif request["op"] == "poll":
            pid = int(request["pid"])
            if pid in children and children[pid] is None:
                with contextlib.suppress(ChildProcessError):
                    done, status, usage = os.wait4(pid, os.WNOHANG)
                    if done:
                        children[pid] = os.waitstatus_to_exitcode(status)
                        _log_cost(started.pop(pid, None), usage)
            reply = {"code": children.get(pid)}
        else:
            reply = {"error": f"unknown op {request['op']!r}"}
        sock.sendall(json.dumps(reply).encode() + b"\n")
    # The pytest process is gone or done: nothing it started may outlive it.
    for pid, code in children.items():
        if code is None:
            kill9(pid, group=True)
            kill9(pid)
            with contextlib.suppress(ChildProcessError):
                _, _, usage = os.wait4(pid, 0)
                _log_cost(started.pop(pid, None), usage)


def _what(request: dict[str, Any]) -> str:
    """A child's kind for the cost log: ``peerd run``, ``peerd.cli status``..."""
    argv = [a for a in request["argv"] if not a.startswith("-") and not a.endswith(".toml")]
    test = str(request["env"].get("PYTEST_CURRENT_TEST", "")).split(" ")[0]
    return " ".join([str(request.get("module") or "peerd"), *argv[:1]]) + "\t" + test


def _log_cost(start: tuple[float, str] | None, usage: Any) -> None:
    """With ``PEERD_TEST_COSTLOG=FILE``, append one JSON line per reaped child:
    what it ran, its wall time and its CPU (its own and that of the children it
    reaped: a daemon's LMTP worker). ``scripts/costs.py`` sums such a file."""
    path = os.environ.get("PEERD_TEST_COSTLOG")
    if not path or start is None:
        return
    kind, test = start[1].split("\t")
    line = {
        "kind": kind,
        "test": test,
        "wall": round(time.monotonic() - start[0], 3),
        "user": usage.ru_utime,
        "sys": usage.ru_stime,
    }
    with open(path, "a") as out:
        out.write(json.dumps(line) + "\n")


def _become(request: dict[str, Any]) -> None:
    """In the forked child: turn into ``python -m MODULE ARGV`` up to running
    the module (see the module doc)."""
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != request["zygote"]:  # the launcher died before prctl took effect
        os._exit(1)
    append = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    opened = [
        os.open(request.get("stdin") or os.devnull, os.O_RDONLY),
        os.open(request["log"], append, 0o644),
        os.open(request.get("stderr") or request["log"], append, 0o644),
    ]
    for fd, source in enumerate(opened):
        os.dup2(source, fd)
    for source in set(opened):
        os.close(source)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["-m", *request["argv"]]  # runpy puts the module's path in argv[0]
    sys.path[0] = os.getcwd()


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    for name in PRELOAD:
        importlib.import_module(name)
    # The ORM's mappers are set up at their first use (a daemon's first
    # write): 15 ms of CPU each daemon spent again, done here once.
    from sqlalchemy.orm import configure_mappers

    configure_mappers()
    if threading.active_count() != 1:  # fork() keeps only the calling thread
        raise SystemExit(f"zygote: {threading.active_count()} threads after the imports")
    gc.collect()
    gc.freeze()  # the children's collector never walks what was imported here
    sock.sendall(b'{"ready": true}\n')
    try:
        _serve(sock)
    except _Spawned as spawned:
        request = spawned.request
    else:
        return
    _become(request)
    profile = os.environ.get("PEERD_TEST_PROFILE")
    if profile:
        _profiled(request, profile)
    _run(request.get("module", "peerd"))


def _run(module: str) -> NoReturn:
    """As ``python -m MODULE``: its ``__main__`` runs as ``__main__`` and exits
    with ``sys.exit``; then the child ends as the interpreter's exit would,
    less the teardown of what it holds.

    The interpreter's own exit first does what anyone can see (non-daemon
    threads joined, ``atexit`` handlers such as logging's flush, the
    standard streams flushed), then frees every object, module by module.
    In a forked child most of those objects are the launcher's imports,
    whose pages the child shares: freeing them writes to each page (reference
    counts), so the kernel copies it first, and a daemon's exit cost about
    50 ms of CPU, a seventh of its idle life. The child does the first part
    and leaves with ``os._exit``. An exception other than ``SystemExit``
    takes the interpreter's normal way out (its traceback printed)."""
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = _exit_status(exc.code)
    threading._shutdown()  # type: ignore[attr-defined]  # what the interpreter calls first at its exit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _exit_status(code: object) -> int:
    """The status ``sys.exit(code)`` gives the process."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        print(code, file=sys.stderr, flush=True)
    return 1


def _profiled(request: dict[str, Any], where: str) -> None:
    """With ``PEERD_TEST_PROFILE=DIR``: profile the child with cProfile, its
    main thread and every thread it starts (the store's committer and
    readers, ``asyncio.to_thread``: a daemon's database work runs there),
    and write ``DIR/KIND-PID.prof`` when it exits normally, to see where
    the suite's daemons spend their CPU (``pstats``). A process the child
    forks (an LMTP worker) ends with ``os._exit`` and writes none."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    threads: list[cProfile.Profile] = []
    kind = _what(request).split("\t")[0].replace(" ", "_").replace("/", "_")

    def in_thread(*_: object) -> None:
        # threading.setprofile's hook runs at a new thread's first call:
        # it hands the thread to a profiler of its own (one per thread).
        own = cProfile.Profile()
        threads.append(own)
        own.enable()

    def dump() -> None:
        threading.setprofile(None)
        profiler.disable()
        stats = pstats.Stats(profiler)
        for own in list(threads):
            with contextlib.suppress(TypeError):  # a thread that never called anything
                stats.add(own)
        stats.dump_stats(os.path.join(where, f"{kind}-{os.getpid()}.prof"))

    atexit.register(dump)
    threading.setprofile(in_thread)
    profiler.enable()


# --- the pytest side --------------------------------------------------------------


def enabled() -> bool:
    return os.environ.get("PEERD_TEST_EXEC", "") != "1"


class Launcher:
    """A launcher process: started on first use, again if it died. The
    harness uses one per pytest process; a test may make its own."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.reader: Any = None
        self.log = Path(tempfile.gettempdir()) / f"peerd-zygote-{os.getpid()}-{id(self)}.log"
        self._atexit = False

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        root = Path(__file__).resolve().parents[2]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.harness.zygote", str(theirs.fileno())],
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        theirs.close()
        self.sock = ours
        self.reader = ours.makefile("rb")
        ready = self.reader.readline()
        if not ready:
            self.proc.wait(10)
            raise RuntimeError(f"the daemon launcher did not start; see {self.log}")
        if not self._atexit:
            atexit.register(self.close)
            self._atexit = True

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def close(self) -> None:
        """Close the socket: the launcher SIGKILLs every daemon it still has, and exits."""
        if self.sock is not None:
            self.reader.close()
            self.sock.close()  # the launcher sees EOF and SIGKILLs what it still has
            self.sock = None
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            if self.proc.returncode == 0:
                self.log.unlink(missing_ok=True)  # kept when it failed: it says why
            self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ask(self, request: dict[str, Any], start: bool = False) -> dict[str, Any] | None:
        """One request and its answer; None when the launcher is gone (and
        ``start`` is false: a spawn starts a new one)."""
        with self.lock:
            if not self.alive():
                if not start:
                    return None
                self.close()
                self._start()
            assert self.sock is not None
            try:
                self.sock.sendall(json.dumps(request).encode() + b"\n")
                line = self.reader.readline()
            except OSError:
                line = b""
            if not line:
                return None
            answer: dict[str, Any] = json.loads(line)
            return answer


_LAUNCHER = Launcher()


class ForkedProc(Proc):
    """A :class:`Proc` whose process the launcher forked: the same pid, signals
    and log; ``returncode`` and ``wait`` ask the launcher, which reaps it."""

    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        cwd: Path,
        env: dict[str, str],
        launcher: Launcher | None = None,
        extra: dict[str, str | None] | None = None,
    ) -> None:
        """``extra``: ``module`` (default ``peerd``), ``stdin`` and ``stderr``
        (files; default ``/dev/null`` and ``log``)."""
        super().__init__(argv, log, cwd, env)
        self.launcher = launcher or _LAUNCHER
        self.extra = extra or {}
        self._pid: int | None = None
        self._code: int | None = None
        self._parent: int | None = None  # the launcher process that forked it

    def start(self) -> ForkedProc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        request = {
            "op": "spawn",
            "argv": self.argv,
            "cwd": str(self.cwd),
            "env": self.env,
            "log": str(self.log),
            **self.extra,
        }
        answer = self.launcher.ask(request, start=True)
        if answer is None or "pid" not in answer:
            raise RuntimeError(f"the daemon launcher could not start {self.argv}: {answer}")
        self._pid = int(answer["pid"])
        self._parent = self.launcher.pid
        return self

    @property
    def pid(self) -> int:
        if self._pid is None:
            raise RuntimeError(f"{self.argv[0]} was never started")
        return self._pid

    def _poll(self) -> int | None:
        if self._pid is None or self._code is not None:
            return self._code
        answer = None
        if self.launcher.pid == self._parent:  # not a new launcher, which never knew it
            answer = self.launcher.ask({"op": "poll", "pid": self._pid})
        if answer is None:  # its launcher is gone, and with it (PDEATHSIG) its children
            if not pid_alive(self._pid):
                self._code = -signal.SIGKILL
        else:
            self._code = answer["code"]
        return self._code

    def alive(self) -> bool:
        return self._pid is not None and self._poll() is None

    @property
    def returncode(self) -> int | None:
        return self._poll()

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (code := self._poll()) is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.argv, timeout)
            time.sleep(0.01)
        return code

    def stop(self, timeout: float = 15.0, sig: int | None = None) -> int | None:
        if self._pid is None:
            return None
        if self.alive():
            os.kill(self._pid, self.stop_signal if sig is None else sig)
            try:
                self.wait(timeout)
            except subprocess.TimeoutExpired:
                kill9(self._pid)
                self.wait(10)
        kill9(self._pid, group=True)
        return self._code

    def kill9(self) -> None:
        if self.alive():
            kill9(self.pid)
            self.wait(10)


def close() -> None:
    """Stop this process's launcher (and so every daemon it still has)."""
    _LAUNCHER.close()


def spawn(
    argv: Sequence[str],
    log: Path,
    cwd: Path,
    env: dict[str, str] | None,
    launcher: Launcher | None = None,
) -> ForkedProc:
    """Start ``python -m peerd ARGV`` through ``launcher`` (default: this
    process's), see the module doc."""
    return ForkedProc(argv, log, cwd, dict(os.environ) if env is None else env, launcher).start()


def run_module(
    module: str,
    argv: Sequence[str],
    cwd: Path,
    stdin: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """What ``subprocess.run([python, "-m", module, *argv], input=stdin,
    capture_output=True, text=True, cwd=cwd, timeout=timeout)`` gives, the
    process forked from the launcher (a command the tests run often, e.g.
    ``peerctl``). Its stdin, stdout and stderr are files rather than pipes
    (stdin ``/dev/null`` without ``stdin``); the text is decoded as
    ``subprocess`` decodes it."""
    args = [sys.executable, "-m", module, *argv]
    encoding = locale.getpreferredencoding(False)
    with tempfile.TemporaryDirectory(prefix="peerd-run-") as tmp:
        where = Path(tmp)
        if stdin is not None:
            (where / "stdin").write_bytes(stdin.encode(encoding))
        extra = {
            "module": module,
            "stdin": str(where / "stdin") if stdin is not None else None,
            "stderr": str(where / "stderr"),
        }
        proc = ForkedProc(argv, where / "stdout", cwd, dict(os.environ), extra=extra).start()
        try:
            code: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill9()
            code = None
        finally:
            kill9(proc.pid, group=True)  # what it forked, if anything is left
        out, err = (_text(where / name, encoding) for name in ("stdout", "stderr"))
    if code is None:
        raise subprocess.TimeoutExpired(args, timeout, out, err)
    return subprocess.CompletedProcess(args, code, out, err)


def _text(path: Path, encoding: str) -> str:
    data = path.read_bytes() if path.exists() else b""
    # subprocess's text mode: universal newlines.
    return data.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")


if __name__ == "__main__":
    main()
