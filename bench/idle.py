"""Many idle IMAP sessions on one node: memory per session and the wake-up latency (issue 13).

    .venv/bin/python -m bench.idle [--sessions 10000] [--per-account 10] [--clients 2] [--json FILE]

Starts one real daemon (``[imap] max_connections`` raised, the open-file
limit raised to the hard limit for the bench and the daemon), creates
``sessions / per-account`` accounts directly in its store before it starts
(through the engine; their password hash is a cheap scrypt, ``ln=4``, so
that ten thousand logins do not spend minutes hashing — a login's cost is
not what is measured), then opens the sessions from ``--clients`` client
processes (asyncio, raw sockets: ``LOGIN``, ``SELECT INBOX``, ``IDLE``
pipelined), ``--per-account`` sessions per account.

- **memory per idle session**: the daemon's RSS (``/proc/PID/status``) with
  every session in IDLE, less its RSS before the sessions were opened (after
  a warm-up of a few sessions opened and closed, so the first login's
  imports and caches do not count), divided by the sessions.
- **wake-up latency**: one message delivered over LMTP to every account
  (transactions of ``--batch`` recipients on one connection, pipelined);
  for each session, the time from the LMTP ``250`` of its account's
  recipient to the ``* n EXISTS`` of that message, both taken from the
  kernel's receive time of the segment at the client's socket
  (``SO_TIMESTAMPNS``): what the server took, however late the client
  processes read. The time each client process read it is printed too
  (the sessions are read by one ``epoll`` loop per process, not by an event
  loop). The first transaction's wake-ups run while the second is being
  delivered: that delay is in the figure, and the delivery's own time (first
  MAIL to last 250) is printed beside the same delivery's with no session
  open.
- **CPU per woken session**: the daemon's CPU from before the delivery until
  it is idle again, less the same for the same delivery with no session
  open (after a warm-up delivery), divided by the sessions.

The daemon's ``[auth] scrypt_cost`` is the test nodes' (4), the cost of the
accounts' hashes: at the default (15) each login would check, and upgrade,
at 0.1 s of CPU, which is what opening the sessions would then measure. ``--profile FILE`` records the daemon with ``py-spy``
(raw collapsed stacks, every thread) from just before the delivery.

The load average is printed with the figures: the host is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import migrations
from engine import accounts
from engine.passwords import hash_password
from engine.store import Store
from ownership import table as ownership_table
from tests.harness.daemons import SCRYPT_COST
from tests.nodes import Node, make_single

__all__ = ["cheap_hash", "main", "raise_nofile", "rss_kib"]

PASSWORD = "pw"


def cheap_hash(password: str) -> str:
    """A scrypt hash at the test nodes' cost (``SCRYPT_COST``, ln=4, which
    ``make_single`` configures as ``[auth] scrypt_cost``), so the node keeps
    it: for benches only."""
    return hash_password(password, SCRYPT_COST)


def raise_nofile() -> int:
    """The soft open-file limit raised to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quiescent(pid: int, timeout: float = 120.0) -> float:
    """The process's CPU seconds once it stops using CPU (< 20 ms in 0.5 s)."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - last < 0.02:
            return now
        last = now
    return last


def create_accounts(node: Node, names: list[str]) -> None:
    """Accounts with an INBOX, owned by ``node``, written into its stopped store."""
    node.db_path.parent.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(node.db_url)
    store = Store(node.db_url, node.workdir / "var" / node.name)
    hashed = cheap_hash(PASSWORD)
    try:
        for start in range(0, len(names), 1000):

            def create(s: Any, chunk: list[str] = names[start : start + 1000]) -> None:
                for name in chunk:
                    accounts.create_account(s, name, password_hash=hashed)
                    ownership_table.create(s, name, node.name)

            store.write_sync(create)
    finally:
        store.close()


# --- the client side --------------------------------------------------------------


class _Idler(asyncio.Protocol):
    """One IMAP session: log in, select, idle (the wake-up is read by :func:`_collect`)."""

    __slots__ = ("buffer", "idling", "transport", "user")

    def __init__(self, user: str, idling: asyncio.Future[None]) -> None:
        self.user = user
        self.buffer = b""
        self.idling = idling
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # The kernel stamps each segment with the time it reached this socket.
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        transport.write(f"a LOGIN {self.user} {PASSWORD}\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n+ " in self.buffer or self.buffer.startswith(b"+ "):
            self.buffer = b""
            if not self.idling.done():
                self.idling.set_result(None)
        elif not self.idling.done() and any(
            bad in self.buffer for bad in (b"\r\na NO", b"\r\nb NO", b"* BYE")
        ):
            self.idling.set_exception(RuntimeError(self.buffer[-300:].decode("latin-1")))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.idling.done():
            self.idling.set_exception(RuntimeError(f"{self.user}: connection lost"))


SO_TIMESTAMPNS = 35  # Linux (asm-generic/socket.h); SCM_TIMESTAMPNS has the same value
_STAMP = struct.Struct("qq")  # struct timespec, CLOCK_REALTIME


def _recv_stamped(sock: socket.socket) -> tuple[bytes, float | None]:
    """What the socket has, and the kernel's receive time of the segment read."""
    data, ancillary, _, _ = sock.recvmsg(65536, 64)
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = _STAMP.unpack(raw[: _STAMP.size])
            return data, sec + nsec / 1e9
    return data, None


def _collect(
    socks: list[socket.socket], stop: threading.Event
) -> list[tuple[float | None, float | None]]:
    """Each session's first ``* n EXISTS``: (kernel receive time, time this
    process read it), both ``time.time()``; read with one epoll and
    ``recvmsg`` per socket, so the figure does not wait on an event loop."""
    seen: list[tuple[float | None, float | None]] = [(None, None)] * len(socks)
    buffers = [b""] * len(socks)
    index = {sock.fileno(): k for k, sock in enumerate(socks)}
    left = len(socks)
    with select.epoll() as poller:
        for fd in index:
            poller.register(fd, select.EPOLLIN)
        while left and not stop.is_set():
            for fd, _ in poller.poll(0.05):
                k = index[fd]
                try:
                    data, stamp = _recv_stamped(socks[k])
                except BlockingIOError:
                    continue
                read_at = time.time()
                if not data:
                    poller.unregister(fd)
                    continue
                buffers[k] += data
                if seen[k][0] is None and b" EXISTS\r\n" in buffers[k]:
                    seen[k] = (stamp if stamp is not None else read_at, read_at)
                    buffers[k] = b""
                    left -= 1
    return seen


async def _clients(port: int, users: list[str], pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(100)
    idlers: list[_Idler] = []

    async def one(user: str) -> None:
        async with gate:
            idling: asyncio.Future[None] = loop.create_future()
            _, idler = await loop.create_connection(lambda: _Idler(user, idling), "127.0.0.1", port)
            idlers.append(idler)
            await asyncio.wait_for(idling, 120)

    await asyncio.gather(*(one(u) for u in users))
    # From here the sockets are read by _collect, not by the event loop.
    socks: list[socket.socket] = []
    for idler in idlers:
        assert idler.transport is not None
        idler.transport.pause_reading()
        fd = idler.transport.get_extra_info("socket").fileno()
        sock = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)  # a dup of it
        sock.setblocking(False)
        socks.append(sock)
    stop = threading.Event()
    collecting = loop.run_in_executor(None, _collect, socks, stop)
    pipe.send("idle")
    # "collect" once the parent delivered (then: every session's times), or "close".
    while await loop.run_in_executor(None, pipe.recv) == "collect":
        try:
            seen = await asyncio.wait_for(asyncio.shield(collecting), 60)
        except TimeoutError:
            stop.set()
            seen = await collecting
        pipe.send([(i.user, *s) for i, s in zip(idlers, seen, strict=True)])
    stop.set()
    await collecting
    for sock in socks:
        sock.close()
    for idler in idlers:
        if idler.transport is not None:
            idler.transport.close()
    await asyncio.sleep(0.2)


def _client_process(port: int, users: list[str], pipe: Connection) -> None:
    raise_nofile()
    asyncio.run(_clients(port, users, pipe))


# --- delivery -------------------------------------------------------------------


class _Lines:
    """Reply lines off a blocking socket, each with the kernel's receive time
    of the segment that completed it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.stamp = 0.0
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def line(self) -> tuple[bytes, float]:
        while b"\r\n" not in self.buffer:
            data, stamp = _recv_stamped(self.sock)
            if not data:
                raise RuntimeError("LMTP connection closed")
            self.buffer += data
            self.stamp = stamp if stamp is not None else time.time()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line, self.stamp

    def reply(self) -> tuple[bytes, float]:
        while True:
            line, stamp = self.line()
            if line[3:4] != b"-":
                return line, stamp


def deliver_all(
    port: int, users: list[str], batch: int, tag: str
) -> tuple[dict[str, float], float]:
    """One message to every user over LMTP (one connection, transactions of
    ``batch`` recipients, pipelined): the kernel's receive time of each
    recipient's ``250``, and the seconds from the first MAIL to the last 250."""
    acks: dict[str, float] = {}
    with socket.create_connection(("127.0.0.1", port)) as sock:
        lines = _Lines(sock)
        lines.reply()
        sock.sendall(b"LHLO bench.test\r\n")
        lines.reply()
        started = time.time()
        for start in range(0, len(users), batch):
            chunk = users[start : start + batch]
            envelope = b"MAIL FROM:<bench@example.test>\r\n" + b"".join(
                f"RCPT TO:<{user}@example.test>\r\n".encode() for user in chunk
            )
            sock.sendall(envelope + b"DATA\r\n")
            for _ in range(len(chunk) + 1):
                answer, _ = lines.reply()
                if not answer.startswith(b"250"):
                    raise RuntimeError(f"MAIL/RCPT refused: {answer!r}")
            if not lines.reply()[0].startswith(b"354"):
                raise RuntimeError("DATA refused")
            sock.sendall(
                b"From: bench@example.test\r\nSubject: wake up\r\n"
                b"Message-ID: <wake-%s-%d@bench.test>\r\n\r\nnew mail\r\n.\r\n"
                % (tag.encode(), start)
            )
            for user in chunk:
                answer, stamp = lines.reply()
                if not answer.startswith(b"250"):
                    raise RuntimeError(f"{user}: {answer!r}")
                acks[user] = stamp
        took = max(acks.values()) - started
        sock.sendall(b"QUIT\r\n")
    return acks, took


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _latencies(
    acks: dict[str, float], seen: list[tuple[str, float | None, float | None]]
) -> tuple[list[float], list[float], int]:
    """Per session, ms from its recipient's 250 to its EXISTS: arrived at the
    client's socket (the kernel's stamps: the server's figure), and read by
    the client process (its own delay included); and the sessions that saw none."""
    arrived: list[float] = []
    read: list[float] = []
    missing = 0
    for user, stamp, read_at in seen:
        if stamp is None or read_at is None:
            missing += 1
            continue
        arrived.append((stamp - acks[user]) * 1000)
        read.append((read_at - acks[user]) * 1000)
    return arrived, read, missing


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    return {
        "p50": round(_pct(values, 50), 1),
        "p99": round(_pct(values, 99), 1),
        "max": round(max(values), 1),
    }


def _profiler(pid: int, out: Path, seconds: int) -> subprocess.Popen[bytes]:
    """py-spy sampling the daemon (every thread, idle ones too) for ``seconds``."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [spy, "record", "--pid", str(pid), "--rate", "250", "--idle", "--threads"]
    command += [
        "--format",
        "raw",
        "--duration",
        str(seconds),
        "--output",
        str(out),
        "--nonblocking",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    return proc


def run(
    sessions: int, per_account: int, clients: int, batch: int, profile: Path | None = None
) -> dict[str, Any]:
    hard = raise_nofile()
    if hard < sessions + 1000:
        raise SystemExit(f"the open-file hard limit ({hard}) is too low for {sessions} sessions")
    users = [f"idle{i:05d}" for i in range(max(1, sessions // per_account))]
    with tempfile.TemporaryDirectory(prefix="peerd-idle-") as tmp:
        node = make_single(
            Path(tmp),
            overrides={
                "imap": {
                    "max_connections": sessions + 100,
                    "max_connections_per_ip": 0,
                    "max_sessions_per_account": per_account + 5,
                }
            },
        )
        create_accounts(node, users)
        node.start()
        try:
            pid = node.pid
            assert pid is not None
            # Warm-up: a few sessions opened and closed.
            _open_and_wait(node, users[: min(20, len(users))], 1, per_account=1, close_only=True)
            # The same delivery with no session open: what it costs the daemon
            # anyway (the store, the full-text index, the sync log).
            deliver_all(node.port("lmtp"), users, batch, "warm")  # the first is slower
            base_before = quiescent(pid)
            _, base_took = deliver_all(node.port("lmtp"), users, batch, "base")
            base_acked = cpu_seconds(pid)
            base_end = quiescent(pid)
            base_after = base_end - base_acked
            time.sleep(1.0)
            before = rss_kib(pid)
            sessions_of = [u for u in users for _ in range(per_account)]
            started = time.monotonic()
            procs, pipes = _start_clients(node, sessions_of, clients)
            for pipe in pipes:
                if pipe.recv() != "idle":
                    raise RuntimeError("a client process failed")
            opened_s = time.monotonic() - started
            time.sleep(1.0)
            after = rss_kib(pid)
            spy = _profiler(pid, profile, 12) if profile else None
            cpu_before = quiescent(pid)
            acks, took = deliver_all(node.port("lmtp"), users, batch, "idle")
            cpu_acked = cpu_seconds(pid)
            seen: list[tuple[str, float | None, float | None]] = []
            for pipe in pipes:
                pipe.send("collect")
            for pipe in pipes:
                seen.extend(pipe.recv())
            cpu_end = quiescent(pid)
            if spy is not None:
                spy.wait(60)
            for pipe in pipes:
                pipe.send("close")
            for proc in procs:
                proc.join(60)
        finally:
            node.stop()
    load = os.getloadavg()
    arrived, read, missing = _latencies(acks, seen)
    server, client = _summary(arrived), _summary(read)
    # What the delivery cost with the sessions open, less what the same
    # delivery cost with none (the store, the full-text index, the sync log).
    wake_cpu = (cpu_end - cpu_before) - (base_end - base_before)
    return {
        "sessions": len(sessions_of),
        "accounts": len(users),
        "client_processes": clients,
        "batch": batch,
        "open_seconds": round(opened_s, 2),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_session": round((after - before) / len(sessions_of), 2),
        "wake_p50_ms": server["p50"],
        "wake_p99_ms": server["p99"],
        "wake_max_ms": server["max"],
        "read_p50_ms": client["p50"],
        "read_p99_ms": client["p99"],
        "read_max_ms": client["max"],
        "missing": missing,
        "delivery_s": round(took, 3),
        "delivery_no_sessions_s": round(base_took, 3),
        "delivery_cpu_s": round(cpu_acked - cpu_before, 3),
        "after_cpu_s": round(cpu_end - cpu_acked, 3),
        "after_cpu_no_sessions_s": round(base_after, 3),
        "delivery_cpu_no_sessions_s": round(base_acked - base_before, 3),
        "wake_cpu_s": round(wake_cpu, 3),
        "cpu_us_per_wake": round(wake_cpu / len(sessions_of) * 1e6, 1),
        "load": [round(x, 2) for x in load],
        "cpus": os.cpu_count(),
    }


def _start_clients(
    node: Node, sessions_of: list[str], clients: int
) -> tuple[list[mp.process.BaseProcess], list[Connection]]:
    ctx = mp.get_context("spawn")
    procs: list[mp.process.BaseProcess] = []
    pipes: list[Connection] = []
    for k in range(clients):
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(
            target=_client_process, args=(node.port("imap"), sessions_of[k::clients], theirs)
        )
        proc.start()
        procs.append(proc)
        pipes.append(mine)
    return procs, pipes


def _open_and_wait(
    node: Node, users: list[str], clients: int, *, per_account: int, close_only: bool
) -> None:
    procs, pipes = _start_clients(node, [u for u in users for _ in range(per_account)], clients)
    for pipe in pipes:
        pipe.recv()
    for pipe in pipes:
        pipe.send("close")
    for proc in procs:
        proc.join(180)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--per-account", type=int, default=10)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--batch", type=int, default=500, help="recipients per LMTP transaction")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--quick", action="store_true", help="1,000 sessions")
    parser.add_argument(
        "--profile", type=Path, help="py-spy's samples of the daemon around the wake-up (raw)"
    )
    args = parser.parse_args()
    sessions = 1000 if args.quick else args.sessions
    result = run(sessions, args.per_account, args.clients, args.batch, args.profile)
    print(
        f"{result['sessions']} idle IMAP sessions ({result['accounts']} accounts x"
        f" {args.per_account}), opened in {result['open_seconds']} s"
        f" from {args.clients} client processes"
    )
    print(
        f"daemon RSS {result['rss_before_kib']} KiB -> {result['rss_after_kib']} KiB:"
        f" {result['kib_per_session']} KiB per idle session (target <= 20)"
    )
    print(
        f"wake-up, LMTP 250 -> '* n EXISTS' at the client's socket (kernel receive times):"
        f" p50 {result['wake_p50_ms']} ms  p99 {result['wake_p99_ms']} ms"
        f"  max {result['wake_max_ms']} ms  (target p99 <= 200 ms);"
        f" sessions that saw none: {result['missing']}"
    )
    print(
        f"  the same, read by the client processes: p50 {result['read_p50_ms']} ms"
        f"  p99 {result['read_p99_ms']} ms  max {result['read_max_ms']} ms"
    )
    print(
        f"delivery (first MAIL -> last 250, {result['accounts']} recipients in transactions"
        f" of {result['batch']}): {result['delivery_s']} s, with no session open"
        f" {result['delivery_no_sessions_s']} s"
    )
    print(
        f"daemon CPU: {result['delivery_cpu_s']} s until the last 250,"
        f" {result['after_cpu_s']} s after it until idle again; with no session open"
        f" {result['delivery_cpu_no_sessions_s']} s and {result['after_cpu_no_sessions_s']} s;"
        f" so the wake-ups took {result['wake_cpu_s']} s"
        f" = {result['cpu_us_per_wake']} us per woken session"
    )
    print(f"load average {result['load'][0]} {result['load'][1]} ({result['cpus']} cores, shared)")
    if args.json:
        args.json.write_text(json.dumps({"idle": result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
