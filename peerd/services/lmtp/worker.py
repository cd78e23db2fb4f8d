"""LMTP worker processes: the protocol front in processes of its own.

How this works: the daemon binds the LMTP port itself and starts ``[lmtp]
workers`` processes (forked at its start, or ``peerd lmtp-worker``; below)
that get the listening socket and one end of a socketpair each. A worker
runs the protocol front of :mod:`peerd.services.lmtp.front` (the protocol
core, TLS, the SHA-1, the spool's temp file) and asks the daemon over the
socketpair for what needs the database: a recipient check at RCPT, the delivery after DATA. The daemon
answers with :class:`~peerd.services.lmtp.backend.StoreBackend`, where every
delivery joins the group commit (which makes the temp file durable and
renames it into the spool; ``tmp`` is null when the same bytes are in the
spool already). So the protocol's Python work runs on another core instead
of taking turns with the group commit for the daemon's interpreter lock, and
one process still owns the database and the sync log.

The pipe carries frames: a 4-byte big-endian length, then a JSON object.

=========================  ===============================================
worker -> daemon           daemon -> worker
=========================  ===============================================
``{"op": "ready"}``        ``{"op": "stop"}``: stop accepting, finish the
                           deliveries in progress, exit
(nothing asked)            ``{"op": "forget"}``: an ownership row changed;
                           drop the recipients accepted recently
``{"op": "count",          (no answer): one more of a counter the worker
"name"}``                  keeps for the daemon's ``/metrics`` (its input
                           budget's waits and refusals)
``{"op": "rcpt", "id",     ``{"id", "refusal": null | "451 ..."}``
"address"}``
``{"op": "deliver", "id",  ``{"id", "replies": ["250 ...", ...]}``: one per
"recipients", "guid",      recipient, in order
"tmp", "size",
"message_id",
"mail_from", "queue_id"}``
=========================  ===============================================

Start: ``peerd run`` forks the first workers itself (:func:`fork_workers`),
before its event loop, its threads, the data-dir lock or any database
connection exist, so a worker is born with its modules imported instead of
importing them again (about 0.4 s of CPU each). A forked worker waits on a
socketpair until the daemon's LMTP starts and sends it the listening socket
and its pipe (``SCM_RIGHTS``); the daemon reaps it by a pidfd. A worker
started again after it died is exec'd (``peerd lmtp-worker``): by then the
daemon has threads, and fork keeps only the calling one.

Lifecycle: the listening socket stays open in the daemon while a worker is
restarted, so connections wait in the backlog rather than being refused. A
worker that exits unexpectedly is started again (after a pause that grows to
``RESTART_MAX``). A worker dies with the daemon (``PR_SET_PDEATHSIG``, and it
exits when the pipe closes): a message whose reply had not been sent gets
none, so the MTA retries it and duplicate suppression meets the retry if it
had committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import EngineError, TemporaryFailure
from engine.spool import GUID_RE, Spool, Staged
from peerd.node.backoff import Backoff
from peerd.node.config import Address, Config, load_config
from peerd.node.errormap import S451_LOCAL_ERROR, lmtp_reply
from peerd.services.lmtp.front import FrontSettings, LmtpHandler, serve_lmtp
from peerd.services.lmtp.message import Message

if TYPE_CHECKING:  # the daemon's side; a worker process never imports the store
    from peerd.services.lmtp.backend import StoreBackend

__all__ = [
    "MAX_FRAME",
    "Forked",
    "FrameWriter",
    "PipeBackend",
    "WorkerPool",
    "fork_workers",
    "read_frame",
    "release_forked",
    "worker_main",
    "write_frame",
]

log = logging.getLogger("peerd.services.lmtp.front")

MAX_FRAME = 1 << 20
RESTART_MIN = 0.2
RESTART_MAX = 10.0
# The counters a worker may add to (``{"op": "count"}``): nothing else.
WORKER_COUNTERS = frozenset({"lmtp_input_memory_waits", "lmtp_input_memory_refusals"})
_HEADER = struct.Struct(">I")


def encode_frame(obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ValueError(f"frame of {len(body)} bytes is over {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


def write_frame(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(encode_frame(obj))


class FrameWriter:
    """Frames onto a pipe; the frames made in one turn of the event loop go
    out in one write.

    A group commit answers all of its deliveries in the same turn, and the
    sessions a worker wakes together ask together: one write, and one
    wake-up of the process at the other end, instead of one per frame.
    Frames keep their order.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._frames: list[bytes] = []

    def send(self, obj: dict[str, Any]) -> None:
        frame = encode_frame(obj)  # a frame over MAX_FRAME raises here, alone
        if not self._frames:
            asyncio.get_running_loop().call_soon(self.flush)
        self._frames.append(frame)

    def flush(self) -> None:
        frames, self._frames = self._frames, []
        if frames and not self.writer.is_closing():
            self.writer.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def is_closing(self) -> bool:
        return self.writer.is_closing()

    async def drain(self) -> None:
        self.flush()
        await self.writer.drain()

    def close(self) -> None:
        self.flush()
        self.writer.close()


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next frame, or None at a clean end of the stream."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ConnectionError("the pipe closed inside a frame header") from exc
        return None
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ConnectionError(f"frame of {length} bytes is over {MAX_FRAME}")
    body = await reader.readexactly(length)
    obj = json.loads(body)
    if not isinstance(obj, dict):
        raise ConnectionError("a frame is not a JSON object")
    return obj


# -- the daemon's side ---------------------------------------------------------


class WorkerPool:
    """The daemon's LMTP: the listening socket, its worker processes and their pipes."""

    def __init__(
        self,
        backend: StoreBackend,
        config: Config,
        address: Address,
        count: int,
        forked: list[Forked] | None = None,
    ):
        if config.path is None:
            raise ValueError("LMTP workers need the config file they were started with")
        self.backend = backend
        self.config = config
        self.address = address
        self.count = count
        # Workers forked before the event loop (fork_workers), taken in order.
        self.forked = [f for f in forked or [] if not f.taken]
        self.spool_tmp = backend.node.store.spool.tmp
        self.listener: socket.socket | None = None
        self._workers: list[_Worker] = []
        self._stopping = False
        self._unwatch: Callable[[], None] | None = None

    async def start(self) -> None:
        """Bind and start the workers, without waiting for them to serve:
        connections wait in the listener's backlog until a worker accepts, and
        the daemon starts its other parts while the workers start
        (:meth:`wait_ready` before it says it is ready). The first workers
        are the ones ``peerd run`` forked (``forked``), if any."""
        self.listener = socket.create_server(
            (self.address.host, self.address.port), backlog=1024, reuse_port=False
        )
        self.listener.set_inheritable(True)
        self._workers = [
            _Worker(self, n, self.forked[n] if n < len(self.forked) else None)
            for n in range(self.count)
        ]
        self._unwatch = self.backend.watch_ownership(self.forget_recipients)
        await asyncio.gather(*(w.start() for w in self._workers))

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every worker serves (TimeoutError after ``timeout`` seconds)."""
        await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in self._workers)), timeout)

    def forget_recipients(self) -> None:
        """Tell every worker to drop the recipients it accepted recently."""
        for worker in self._workers:
            if worker.frames is not None and not worker.frames.is_closing():
                worker.frames.send({"op": "forget"})

    async def stop(self, grace: float) -> None:
        """Stop accepting; let the workers finish what they hold (up to ``grace``)."""
        self._stopping = True
        if self._unwatch is not None:
            self._unwatch()
        await asyncio.gather(*(w.stop(grace) for w in self._workers))
        if self.listener is not None:
            self.listener.close()

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process is not None]

    async def status(self) -> dict[str, Any]:
        """For ``/v1/status``: the worker processes and how often they were restarted."""
        return {
            "workers": [
                {"pid": w.process.pid if w.process else None, "restarts": w.restarts}
                for w in self._workers
            ]
        }

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request from a worker, answered by the store backend."""
        op = request.get("op")
        if op == "rcpt":
            return {"refusal": await self.backend.check_rcpt(str(request["address"]))}
        if op == "deliver":
            staged = self._staged(request)
            message = Message(
                recipients=tuple(str(r) for r in request["recipients"]),
                staged=staged,
                size=int(request["size"]),
                message_id=request.get("message_id"),
                mail_from=None if request.get("mail_from") is None else str(request["mail_from"]),
                queue_id=None if request.get("queue_id") is None else str(request["queue_id"]),
            )
            return {"replies": await self.backend.deliver(message)}
        raise ValueError(f"unknown request {op!r}")

    def _staged(self, request: dict[str, Any]) -> Staged:
        """The spooled file a worker names: in this spool's temp folder, or
        (``tmp`` null: the same bytes came before) already in the spool."""
        guid = str(request["guid"])
        spool = self.backend.node.store.spool
        if not GUID_RE.match(guid):
            raise ValueError(f"bad GUID {guid!r}")
        if request.get("tmp") is None:
            if not spool.has(guid):
                # Swept since the worker found it (engine.sweep): the MTA sends it again.
                raise TemporaryFailure(f"{guid} left the spool; try again")
            return Staged(guid, None, spool.path(guid))
        tmp = Path(str(request["tmp"]))
        if tmp.parent != self.spool_tmp or not tmp.name.startswith(guid):
            raise ValueError(f"bad spool file {tmp} for {guid}")
        return Staged(guid, tmp, spool.path(guid))


class _Worker:
    """One worker process and its pipe, restarted if it dies."""

    def __init__(self, pool: WorkerPool, number: int, forked: Forked | None = None) -> None:
        self.pool = pool
        self.number = number
        self.forked = forked  # its first process, forked at the daemon's start
        self.process: asyncio.subprocess.Process | ForkedProcess | None = None
        self.frames: FrameWriter | None = None
        self.ready = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.restarts = 0

    async def start(self) -> None:
        """Spawn the process and watch it; ``ready`` is set when it serves."""
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise())

    async def _spawn(self) -> None:
        assert self.pool.listener is not None and self.pool.config.path is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.set_inheritable(True)
        listen_fd = self.pool.listener.fileno()
        forked, self.forked = self.forked, None
        try:
            process: asyncio.subprocess.Process | ForkedProcess | None = None
            if forked is not None and not forked.taken:
                try:
                    process = forked.hand_over(listen_fd, theirs.fileno())
                except OSError as exc:
                    log.error("LMTP worker %d: the forked process is gone (%s)", self.number, exc)
            self.process = process or await self._exec(listen_fd, theirs.fileno())
        finally:
            theirs.close()
        self.ready.clear()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=MAX_FRAME + 8)
        self.frames = FrameWriter(writer)
        task = asyncio.create_task(self._serve(reader, self.frames))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        how = "forked" if isinstance(self.process, ForkedProcess) else "started"
        log.info("LMTP worker %d %s (pid %d)", self.number, how, self.process.pid)

    async def _exec(self, listen_fd: int, pipe_fd: int) -> asyncio.subprocess.Process:
        """A new interpreter: ``peerd lmtp-worker`` with the two sockets, and
        the config the daemon runs with on its stdin. Not the file: it may
        have been edited since, to something a restart would refuse (the
        worker died on it, again and again) or that only a restart applies
        (this worker alone would have taken it)."""
        assert self.pool.config.path is not None
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "peerd",
            "lmtp-worker",
            "-c",
            str(self.pool.config.path),
            "--listen-fd",
            str(listen_fd),
            "--pipe-fd",
            str(pipe_fd),
            "--parent",
            str(os.getpid()),
            "--log-format",
            self.pool.config.log.format,
            "--config-stdin",
            stdin=subprocess.PIPE,
            pass_fds=(listen_fd, pipe_fd),
        )
        assert process.stdin is not None
        # The running config (reloaded keys included), pickled: a pipe from
        # this process to its own child, nobody else's input.
        process.stdin.write(pickle.dumps(self.pool.backend.node.config))
        with contextlib.suppress(ConnectionError):  # it died at once: supervise says so
            await process.stdin.drain()
        process.stdin.close()
        return process

    async def _serve(self, reader: asyncio.StreamReader, frames: FrameWriter) -> None:
        try:
            while (frame := await read_frame(reader)) is not None:
                if frame.get("op") == "ready":
                    self.ready.set()
                    continue
                if frame.get("op") == "count":
                    name = frame.get("name")
                    if name in WORKER_COUNTERS:
                        self.pool.backend.node.counters.inc(str(name))
                    continue
                task = asyncio.create_task(self._answer(frame, frames))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (ConnectionError, ValueError) as exc:
            log.error("LMTP worker %d: bad pipe: %s", self.number, exc)
        finally:
            frames.close()

    async def _answer(self, frame: dict[str, Any], frames: FrameWriter) -> None:
        reply: dict[str, Any]
        try:
            reply = await self.pool.handle(frame)
        except (EngineError, ValueError, KeyError, TypeError) as exc:
            log.error("LMTP worker %d: request refused: %s", self.number, exc)
            reply = {"error": lmtp_reply(exc)}
        except Exception:
            log.exception("LMTP worker %d: request failed", self.number)
            reply = {"error": S451_LOCAL_ERROR}
        reply["id"] = frame.get("id")
        if not frames.is_closing():
            frames.send(reply)

    async def _supervise(self) -> None:
        backoff = Backoff(RESTART_MIN, RESTART_MAX)
        while True:
            assert self.process is not None
            code = await self.process.wait()
            # What it asked before it died is answered (or fails) first; then
            # its temp files, which nothing will commit now, can go.
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            removed = self.pool.backend.node.store.spool.clean_temp(self.process.pid)
            if self.pool._stopping:
                return
            pause = backoff.next()
            log.error(
                "LMTP worker %d (pid %d) exited with %s (%d temp file(s) removed); "
                "starting it again in %.1fs",
                self.number,
                self.process.pid,
                code,
                removed,
                pause,
            )
            await asyncio.sleep(pause)
            if self.pool._stopping:
                return
            self.restarts += 1
            self.pool.backend.node.counters.inc("lmtp_worker_restarts")
            try:
                await self._spawn()
            except OSError as exc:
                log.error("LMTP worker %d could not start: %s", self.number, exc)

    async def stop(self, grace: float) -> None:
        process = self.process
        if process is None:
            return
        if self.frames is not None and not self.frames.is_closing():
            self.frames.send({"op": "stop"})
            with contextlib.suppress(ConnectionError):
                await self.frames.drain()
        try:
            await asyncio.wait_for(process.wait(), grace + 2)
        except TimeoutError:
            log.warning("LMTP worker %d did not stop in time; killing it", self.number)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        # Answers to what it asked last still run; let them end.
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor


# -- the worker's side ---------------------------------------------------------


class PipeBackend:
    """The front's backend in a worker: requests over the pipe to the daemon."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.frames = FrameWriter(writer)
        self._next = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.stop_requested = asyncio.Event()
        self.closed = asyncio.Event()
        # The front's forget_recipients, once the front exists.
        self.on_forget: Callable[[], None] = lambda: None

    async def run(self) -> None:
        """Read the daemon's frames until the pipe closes."""
        try:
            while (frame := await read_frame(self.reader)) is not None:
                if frame.get("op") == "stop":
                    self.stop_requested.set()
                    continue
                if frame.get("op") == "forget":
                    self.on_forget()
                    continue
                future = self._pending.pop(int(frame.get("id", -1)), None)
                if future is not None and not future.done():
                    future.set_result(frame)
        except (ConnectionError, ValueError) as exc:
            log.error("pipe to the daemon broke: %s", exc)
        finally:
            self.closed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the daemon went away"))
            self._pending.clear()

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        if self.closed.is_set():
            raise ConnectionError("the daemon went away")
        self._next += 1
        frame["id"] = self._next
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.frames.send(frame)
        self._pending[self._next] = future
        return await future

    def count(self, name: str) -> None:
        """One more of counter ``name``, kept by the daemon (no answer)."""
        if not self.closed.is_set() and not self.frames.is_closing():
            self.frames.send({"op": "count", "name": name})

    async def check_rcpt(self, address: str) -> str | None:
        try:
            reply = await self.request({"op": "rcpt", "address": address})
        except ConnectionError:
            return S451_LOCAL_ERROR
        if "error" in reply:
            return str(reply["error"])
        refusal = reply.get("refusal")
        return None if refusal is None else str(refusal)

    async def deliver(self, message: Message) -> list[str]:
        count = len(message.recipients)
        staged = message.staged
        try:
            reply = await self.request(
                {
                    "op": "deliver",
                    "recipients": list(message.recipients),
                    "guid": staged.guid,
                    "tmp": None if staged.tmp is None else str(staged.tmp),
                    "size": message.size,
                    "message_id": message.message_id,
                    "mail_from": message.mail_from,
                    "queue_id": message.queue_id,
                }
            )
        except ConnectionError:
            # Maybe committed just before the daemon died: the MTA retries
            # and duplicate suppression meets the retry.
            return [S451_LOCAL_ERROR] * count
        if "error" in reply:
            return [str(reply["error"])] * count
        replies = [str(r) for r in reply.get("replies", [])]
        if len(replies) != count:
            return [S451_LOCAL_ERROR] * count
        return replies


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the daemon dies (Linux), and check it still lives."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)  # the daemon died before we asked


async def _serve_worker(config: Config, listen_fd: int, pipe_fd: int) -> None:
    pipe = socket.socket(fileno=pipe_fd)
    reader, writer = await asyncio.open_unix_connection(sock=pipe, limit=MAX_FRAME + 8)
    backend = PipeBackend(reader, writer)
    pipe_task = asyncio.create_task(backend.run())
    spool = Spool(config.node.data_dir / "spool", clean=False)
    handler = LmtpHandler(FrontSettings.of(config), spool, backend, count=backend.count)
    backend.on_forget = handler.forget_recipients
    listener = socket.socket(fileno=listen_fd)
    server = await serve_lmtp(handler, sock=listener)
    write_frame(writer, {"op": "ready"})
    gc.freeze()  # what start-up made lives as long as the process (see peerd.app.daemon)
    loop = asyncio.get_running_loop()
    # SIGTERM from an admin (or the daemon's supervisor) works like "stop".
    loop.add_signal_handler(signal.SIGTERM, backend.stop_requested.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the daemon decides
    stop = asyncio.create_task(backend.stop_requested.wait())
    gone = asyncio.create_task(backend.closed.wait())
    await asyncio.wait({stop, gone}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    gone.cancel()
    server.close()
    if not backend.closed.is_set():
        # Deliveries in progress finish (their answers still come over the
        # pipe); then the open sessions get a 421. New connections wait in
        # the daemon's backlog for the next worker, or are refused if the
        # daemon is stopping.
        await handler.goodbye(config.lmtp.shutdown_grace.total_seconds())
    backend.frames.close()
    pipe_task.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
        await pipe_task


def _use_uvloop() -> None:
    """The worker's event loop is uvloop's where it is installed.

    A worker is nothing but sockets, a pipe and small writes to temp files:
    the event loop's own Python (transports, selector, wake-ups) is a good
    part of its CPU, and uvloop runs it in C (``docs/benchmarks.md``: about
    12% less CPU per message in the worker). The daemon keeps asyncio's
    loop: it serves HTTP, IMAP and POP3 and runs hooks as subprocesses, and
    its loop is not what limits it.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        log.info("uvloop is not installed; the LMTP worker runs on asyncio's loop")
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def worker_main(
    config_path: str,
    listen_fd: int,
    pipe_fd: int,
    parent: int,
    log_format: str | None = None,
    config_stdin: bool = False,
) -> int:
    """``peerd lmtp-worker``: started by the daemon, never by hand; ``log_format``
    is the daemon's (``peerd run --log-format`` may override the file's).
    ``config_stdin``: the daemon's running config comes pickled on stdin
    (``config_path`` only names it)."""
    _die_with_parent(parent)
    if config_stdin:
        config = pickle.loads(sys.stdin.buffer.read())
        if not isinstance(config, Config):
            raise SystemExit("peerd lmtp-worker: no config on stdin")
    else:
        config = load_config(config_path, schedules=False)  # the daemon checked them
    _log_as_worker(config, log_format)
    return _run_worker(config, listen_fd, pipe_fd)


def _log_as_worker(config: Config, log_format: str | None = None) -> None:
    from peerd.node.logs import setup_logging

    setup_logging(log_format or config.log.format, config.log.level, f"{config.node.name}/lmtp")


def _run_worker(config: Config, listen_fd: int, pipe_fd: int) -> int:
    log.info("LMTP worker %d started", os.getpid())
    _use_uvloop()
    try:
        asyncio.run(_serve_worker(config, listen_fd, pipe_fd))
    except TemporaryFailure as exc:  # pragma: no cover - the spool folder is gone
        log.error("LMTP worker cannot serve: %s", exc)
        return 1
    return 0


# -- workers forked at the daemon's start --------------------------------------


class ForkedProcess:
    """A forked worker as the daemon sees it: what ``supervise`` and ``stop``
    use of :class:`asyncio.subprocess.Process` (``pid``, ``wait``, ``kill``).
    It is the daemon's child but not asyncio's: its exit is read from a pidfd
    (Linux 5.3), then it is reaped here, by its pid alone."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited: asyncio.Future[int] | None = None

    async def wait(self) -> int:
        if self.returncode is not None:
            return self.returncode
        if self._exited is None:
            self._exited = asyncio.get_running_loop().create_future()
            self._watch(self._exited)
        return await asyncio.shield(self._exited)

    def _watch(self, exited: asyncio.Future[int]) -> None:
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(self.pid)

        def reap() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            if not exited.done():
                exited.set_result(self.returncode)

        loop.add_reader(pidfd, reap)

    def kill(self) -> None:
        if self.returncode is None:  # once reaped, the pid may be another process's
            os.kill(self.pid, signal.SIGKILL)


class Forked:
    """A worker forked by :func:`fork_workers`, waiting for its two sockets.

    ``setup`` is the daemon's end of the socketpair the child waits on: the
    daemon sends the listening socket and the worker's pipe over it once its
    LMTP starts (:meth:`hand_over`), or closes it, and the child exits.
    """

    def __init__(self, pid: int, setup: socket.socket) -> None:
        self.pid = pid
        self.setup = setup
        self.taken = False

    def hand_over(self, listen_fd: int, pipe_fd: int) -> ForkedProcess:
        """Send the worker its sockets: from now on it serves (and is reaped by
        the :class:`ForkedProcess` returned)."""
        self.taken = True
        try:
            socket.send_fds(self.setup, [b"serve"], [listen_fd, pipe_fd])
        except OSError:
            # It died while it waited (killed by hand?): reaped here; the
            # caller starts one with exec instead.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            raise
        finally:
            self.setup.close()
        return ForkedProcess(self.pid)


def fork_workers(config: Config) -> list[Forked]:
    """Fork ``[lmtp] workers`` processes now, for the LMTP the daemon starts
    later (:class:`WorkerPool`); none where LMTP runs in the daemon or a
    fork is not safe here.

    Called by ``peerd run`` after its imports and before its event loop: the
    process has one thread (fork keeps only the calling one: a lock another
    thread held would stay locked in the child), no loop, no database
    connection and no data-dir lock yet, so the child takes nothing it must
    not hold. Objects made until now are frozen first (``gc.freeze``): the
    child's collector then never writes to their pages, which it shares with
    the daemon.
    """
    count = config.lmtp.workers
    if config.listen.lmtp is None or config.path is None or count <= 0:
        return []
    if threading.active_count() != 1 or not hasattr(os, "pidfd_open"):
        log.info("LMTP workers are exec'd: fork is not safe here")
        return []
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401 - imported once here rather than in each child
    # Not collected first: a full collection costs 70 ms here and frees a few
    # dozen objects; the daemon freezes what start-up made at ready anyway.
    gc.freeze()
    forked: list[Forked] = []
    for _ in range(count):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child (coverage does not follow a fork)
            code = 1
            try:
                ours.close()
                for other in forked:  # the daemon's ends for the workers before it
                    other.setup.close()
                code = _forked_main(config, theirs, parent)
            except BaseException:
                log.exception("LMTP worker %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        theirs.close()
        forked.append(Forked(pid, ours))
    return forked


def release_forked(forked: list[Forked]) -> None:
    """At the daemon's exit: forked workers that never got their sockets (the
    daemon stopped before its LMTP started) see their socketpair close, exit,
    and are reaped here."""
    for worker in forked:
        if worker.taken:
            continue
        worker.taken = True
        worker.setup.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(worker.pid, 0)


def _forked_main(config: Config, setup: socket.socket, parent: int) -> int:
    """The forked child: as ``peerd lmtp-worker`` would be, once its sockets come."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides (as in _serve_worker)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    _log_as_worker(config)
    _, fds, _, _ = socket.recv_fds(setup, 16, 2)
    setup.close()
    if len(fds) != 2:  # the daemon stopped before its LMTP started
        for fd in fds:
            os.close(fd)
        return 0
    return _run_worker(config, fds[0], fds[1])
