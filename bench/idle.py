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
  (transactions of ``--batch`` recipients on one connection); for each
  session, the time from the LMTP ``250`` of its account's recipient to the
  ``* n EXISTS`` the client reads (``time.monotonic`` is one clock for every
  process of the host). p50/p99/max over all sessions; the client processes'
  own delay is inside the figure.

The load average is printed with the figures: the host is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import multiprocessing as mp
import os
import resource
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import migrations
from engine import accounts
from engine.store import Store
from ownership import table as ownership_table
from tests.nodes import Node, make_single

__all__ = ["cheap_hash", "main", "raise_nofile", "rss_kib"]

PASSWORD = "pw"


def cheap_hash(password: str) -> str:
    """A scrypt hash the node accepts, with the smallest cost (ln=4): for benches only."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=1 << 4, r=8, p=1, dklen=32)

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode().rstrip("=")

    return f"$scrypt$ln=4,r=8,p=1${b64(salt)}${b64(digest)}"


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
    """One IMAP session: log in, select, idle; then note when EXISTS comes."""

    __slots__ = ("armed", "buffer", "idling", "seen", "transport", "user")

    def __init__(self, user: str, idling: asyncio.Future[None]) -> None:
        self.user = user
        self.buffer = b""
        self.idling = idling
        self.armed = False
        self.seen: float | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(f"a LOGIN {self.user} {PASSWORD}\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())

    def data_received(self, data: bytes) -> None:
        if self.armed:
            if self.seen is None and b" EXISTS\r\n" in data:
                self.seen = time.monotonic()
            return
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
    for idler in idlers:
        idler.armed = True
    pipe.send("idle")
    # "collect" once the parent delivered (then: every session's time), or "close".
    while await loop.run_in_executor(None, pipe.recv) == "collect":
        deadline = time.monotonic() + 60
        while any(i.seen is None for i in idlers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        pipe.send([(i.user, i.seen) for i in idlers])
    for idler in idlers:
        if idler.transport is not None:
            idler.transport.close()
    await asyncio.sleep(0.2)


def _client_process(port: int, users: list[str], pipe: Connection) -> None:
    raise_nofile()
    asyncio.run(_clients(port, users, pipe))


# --- delivery -------------------------------------------------------------------


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if line[3:4] != b"-":
            return line


async def deliver_all(port: int, users: list[str], batch: int, tag: str) -> dict[str, float]:
    """One message to every user over LMTP; the time each recipient's 250 arrived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    acks: dict[str, float] = {}
    try:
        await _reply(reader)
        writer.write(b"LHLO bench.test\r\n")
        await _reply(reader)
        for start in range(0, len(users), batch):
            chunk = users[start : start + batch]
            writer.write(b"MAIL FROM:<bench@example.test>\r\n")
            for user in chunk:
                writer.write(f"RCPT TO:<{user}@example.test>\r\n".encode())
            writer.write(b"DATA\r\n")
            await writer.drain()
            for _ in range(len(chunk) + 1):
                answer = await _reply(reader)
                if not answer.startswith(b"250"):
                    raise RuntimeError(f"MAIL/RCPT refused: {answer!r}")
            if not (await _reply(reader)).startswith(b"354"):
                raise RuntimeError("DATA refused")
            writer.write(
                b"From: bench@example.test\r\nSubject: wake up\r\n"
                b"Message-ID: <wake-%s-%d@bench.test>\r\n\r\nnew mail\r\n.\r\n"
                % (tag.encode(), start)
            )
            await writer.drain()
            for user in chunk:
                answer = await _reply(reader)
                if not answer.startswith(b"250"):
                    raise RuntimeError(f"{user}: {answer!r}")
                acks[user] = time.monotonic()
        writer.write(b"QUIT\r\n")
    finally:
        writer.close()
    return acks


async def _acked_cpu(node: Node, pid: int, users: list[str], batch: int, tag: str) -> float:
    await deliver_all(node.port("lmtp"), users, batch, tag)
    return cpu_seconds(pid)


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run(sessions: int, per_account: int, clients: int, batch: int) -> dict[str, Any]:
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
            # after its last 250 anyway (the full-text index, the sync log).
            quiescent(pid)
            base_acked = asyncio.run(_acked_cpu(node, pid, users, batch, "base"))
            base_after = quiescent(pid) - base_acked
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
            quiescent(pid)
            cpu_before = cpu_seconds(pid)
            acks = asyncio.run(deliver_all(node.port("lmtp"), users, batch, "idle"))
            cpu_acked = cpu_seconds(pid)
            latencies: list[float] = []
            missing = 0
            for pipe in pipes:
                pipe.send("collect")
            for pipe in pipes:
                for user, seen in pipe.recv():
                    if seen is None:
                        missing += 1
                    else:
                        latencies.append((seen - acks[user]) * 1000)
            cpu_end = quiescent(pid)
            for pipe in pipes:
                pipe.send("close")
            for proc in procs:
                proc.join(60)
        finally:
            node.stop()
    load = os.getloadavg()
    result = {
        "sessions": len(sessions_of),
        "accounts": len(users),
        "client_processes": clients,
        "open_seconds": round(opened_s, 2),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_session": round((after - before) / len(sessions_of), 2),
        "wake_p50_ms": round(_pct(latencies, 50), 1) if latencies else None,
        "wake_p99_ms": round(_pct(latencies, 99), 1) if latencies else None,
        "wake_max_ms": round(max(latencies), 1) if latencies else None,
        "missing": missing,
        "delivery_cpu_s": round(cpu_acked - cpu_before, 3),
        "after_cpu_s": round(cpu_end - cpu_acked, 3),
        "after_cpu_no_sessions_s": round(base_after, 3),
        "wake_cpu_s": round(cpu_end - cpu_acked - base_after, 3),
        "cpu_us_per_wake": round((cpu_end - cpu_acked - base_after) / len(sessions_of) * 1e6, 1),
        "load": [round(x, 2) for x in load],
        "cpus": os.cpu_count(),
    }
    return result


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
    args = parser.parse_args()
    sessions = 1000 if args.quick else args.sessions
    result = run(sessions, args.per_account, args.clients, args.batch)
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
        f"wake-up, LMTP 250 -> '* n EXISTS' read by the client: p50 {result['wake_p50_ms']} ms"
        f"  p99 {result['wake_p99_ms']} ms  max {result['wake_max_ms']} ms"
        f"  (target p99 <= 200 ms); sessions that saw none: {result['missing']}"
    )
    print(
        f"daemon CPU: {result['delivery_cpu_s']} s until the last 250 (the deliveries),"
        f" {result['after_cpu_s']} s after it until idle again; the same delivery with no"
        f" session open: {result['after_cpu_no_sessions_s']} s after it; so the wake-ups took"
        f" {result['wake_cpu_s']} s = {result['cpu_us_per_wake']} us per woken session"
    )
    print(f"load average {result['load'][0]} {result['load'][1]} ({result['cpus']} cores, shared)")
    if args.json:
        args.json.write_text(json.dumps({"idle": result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
