"""LMTP ingest: messages/s and MB/s into one real peerd node, durability on.

    .venv/bin/python -m bench.lmtp_ingest [--messages 3200] [--connections 20]
        [--client pipelining|smtplib] [--warmup 800] [--workers 1]
        [--flush filesystem|file] [--py-spy FILE [--gil]] [--threads]

Starts a node (SQLite, fsync on, replication off) in a temp dir, creates one
account per connection, delivers ``--warmup`` messages of the mix (not
timed: a new node's database and WAL file grow and its spool folders get
their first blocks then), then times ``--messages`` more over concurrent LMTP
connections, and prints the rate next to the machine's ceiling measured in
the same run: write+fsync of the same files, one by one, from Python. 20
connections is what Postfix opens to one LMTP destination by default
(``lmtp_destination_concurrency_limit`` = ``default_destination_concurrency_limit``
= 20). Every message has its own Message-ID, so none meets duplicate
suppression.

The client:

- ``pipelining`` (the default) talks as Postfix's LMTP client does when the
  server offers PIPELINING (RFC 2920): MAIL, RCPT and DATA go in one write,
  the three replies are read, then the message (dot-stuffed beforehand, as an
  MTA has it in its queue file) and its reply. One asyncio loop drives every
  connection; every reply is checked.
- ``smtplib``: one Python thread per connection running ``smtplib.LMTP``,
  which waits for each reply before the next command (a round trip per
  command, and the dot-stuffing done while timed).

It also prints the CPU each process used per message over the timed part
(``/proc``: all threads, user and system): the LMTP worker, the daemon, and
this script's client. Those figures move less with a loaded machine than
the rate does. ``--py-spy FILE`` records the worker (the daemon with
``--workers 0``) with py-spy over the timed part, and the daemon beside a
worker into FILE with the suffix ``.daemon``, as py-spy's "raw" format
(collapsed stacks, one a line: the input of flamegraph.pl and speedscope);
py-spy must be on the PATH; with ``--gil`` it samples only the thread that
holds the interpreter lock. ``--threads`` prints the daemon's CPU per
message for each of its threads (user + system; a pool's threads summed,
named as ``py-spy dump`` names them, so py-spy must be on the PATH), and how
many messages the full-text indexer had still to index when the timed part
ended (its work then falls after the timing).

On an ext4 without a journal (this project's machines), the kernel's inode
allocator skips every inode freed in the last 60 seconds (360 while its
inode table block is unwritten; ``recently_deleted()`` in
``fs/ext4/ialloc.c``), so after thousands of files were deleted each new
file costs up to a millisecond of kernel time (see ``docs/benchmarks.md``).
This script deletes its files at the end and syncs: a run that starts within
``--settle`` seconds of the last one's cleanup waits for the rest of that
time first, and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import smtplib
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.workload import ceiling, messages
from peerd.protocols.pop3 import dot_stuff
from tests.nodes import make_single

_MARK = Path(tempfile.gettempdir()) / "peerd-bench-lmtp-cleanup"


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """One (possibly multi-line) reply; the last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        if line[3:4] != b"-":
            return line


async def _pipelined(port: int, rcpt: str, bodies: list[bytes], failures: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        greeting = await _reply(reader)
        if not greeting.startswith(b"220"):
            raise ConnectionError(f"greeting {greeting!r}")
        writer.write(b"LHLO bench.test\r\n")
        capabilities: list[bytes] = []
        while True:
            line = await reader.readline()
            capabilities.append(line[4:].strip().upper())
            if line[3:4] != b"-":
                break
        if b"PIPELINING" not in capabilities:
            raise ConnectionError("the server does not offer PIPELINING")
        envelope = b"MAIL FROM:<bench@example.test>\r\nRCPT TO:<%s>\r\nDATA\r\n" % rcpt.encode()
        for body in bodies:
            writer.write(envelope)
            replies = [await _reply(reader) for _ in range(3)]
            if not (
                replies[0].startswith(b"250")
                and replies[1].startswith(b"250")
                and replies[2].startswith(b"354")
            ):
                failures.append(repr(replies))
                if replies[2].startswith(b"354"):
                    writer.write(b".\r\n")
                    await _reply(reader)
                writer.write(b"RSET\r\n")
                await _reply(reader)
                continue
            writer.write(body)
            final = await _reply(reader)
            if not final.startswith(b"250"):
                failures.append(repr(final))
        writer.write(b"QUIT\r\n")
        await _reply(reader)
    finally:
        writer.close()


def run_pipelining(
    port: int, payloads: list[list[bytes]], rcpts: list[str]
) -> tuple[list[str], float]:
    """Deliver ``payloads[c]`` to ``rcpts[c]`` on connection c; (failures, seconds)."""
    failures: list[str] = []
    # After DATA the same transparency as a POP3 multi-line reply (RFC 5321
    # 4.5.2, RFC 1939 3): leading dots doubled, then the lone dot.
    stuffed = [[dot_stuff(p) for p in batch] for batch in payloads]

    async def main() -> None:
        await asyncio.gather(
            *(_pipelined(port, r, b, failures) for r, b in zip(rcpts, stuffed, strict=True))
        )

    started = time.perf_counter()
    asyncio.run(main())
    return failures, time.perf_counter() - started


def run_smtplib(
    port: int, payloads: list[list[bytes]], rcpts: list[str]
) -> tuple[list[str], float]:
    """The same with smtplib, one thread per connection."""
    failures: list[str] = []

    def run(c: int) -> None:
        with smtplib.LMTP("127.0.0.1", port) as lmtp:
            for data in payloads[c]:
                refused = lmtp.sendmail("bench@example.test", [rcpts[c]], data)
                if refused:
                    failures.append(str(refused))

    threads = [threading.Thread(target=run, args=(c,)) for c in range(len(rcpts))]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures, time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process, all its threads (Linux ``/proc``)."""
    # proc(5): utime and stime are fields 14 and 15; the name (field 2) may
    # hold spaces, so count from its closing parenthesis.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """User and system CPU of each thread of a process, by thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[float, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        found[int(task.name)] = (int(fields[11]) / tick, int(fields[12]) / tick)
    return found


def thread_names(pid: int) -> dict[int, str]:
    """Python's names of a process's threads by thread id (``py-spy dump``),
    a pool's number dropped (``store-read_2`` is ``store-read``)."""
    exe = shutil.which("py-spy")
    if exe is None:
        raise SystemExit("--threads: py-spy is not on the PATH")
    dump = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True)
    names: dict[int, str] = {}
    for line in dump.stdout.splitlines():
        # Thread 10650 (idle): "store-commit"
        if line.startswith("Thread ") and '"' in line:
            name = line.split('"')[1]
            names[int(line.split()[1])] = name.rstrip("0123456789").rstrip("_") or name
    return names


def per_thread(
    pid: int, before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    """CPU (user, system) each named thread used between two samples."""
    names = thread_names(pid)
    used: dict[str, tuple[float, float]] = {}
    for tid, (user, system) in after.items():
        was = before.get(tid, (0.0, 0.0))
        name = names.get(tid, f"thread {tid}")
        total = used.get(name, (0.0, 0.0))
        used[name] = (total[0] + user - was[0], total[1] + system - was[1])
    return used


def settle(seconds: float) -> None:
    """Wait until ``seconds`` have passed since the last run deleted its files."""
    try:
        waited = seconds - (time.time() - _MARK.stat().st_mtime)
    except FileNotFoundError:
        return
    if waited > 0:
        print(
            f"(waiting {waited:.0f} s: the last run deleted its files {seconds - waited:.0f} s ago)"
        )
        time.sleep(waited)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=3200)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=800)
    parser.add_argument("--client", choices=("pipelining", "smtplib"), default="pipelining")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--flush", default="filesystem")
    parser.add_argument("--settle", type=float, default=65.0)
    parser.add_argument("--py-spy", dest="py_spy", type=Path, default=None)
    parser.add_argument("--gil", action="store_true")
    parser.add_argument("--threads", action="store_true")
    args = parser.parse_args()
    settle(args.settle)
    try:
        with tempfile.TemporaryDirectory(prefix="peerd-bench-") as tmp:
            workdir = Path(tmp)
            report(workdir, args)
    finally:
        os.sync()  # the freed inodes' table blocks written: not "dirty" (300 s more)
        _MARK.touch()


def report(workdir: Path, args: argparse.Namespace) -> None:
    node = make_single(
        workdir,
        overrides={"lmtp": {"workers": args.workers}, "node": {"spool_flush": args.flush}},
    )
    node.start()
    try:
        per = args.messages // args.connections
        rcpts = [f"user{c}@example.test" for c in range(args.connections)]
        payloads = [messages(per, rcpts[c], base=c * per) for c in range(args.connections)]
        for c in range(args.connections):
            node.add_account(f"user{c}")
        total_bytes = sum(len(p) for batch in payloads for p in batch)
        client = run_pipelining if args.client == "pipelining" else run_smtplib
        warm = args.warmup // args.connections
        if warm:
            start = per * args.connections
            warmup = [
                messages(warm, rcpts[c], base=start + c * warm) for c in range(args.connections)
            ]
            failures, _ = client(node.ports["lmtp"], warmup, rcpts)
            if failures:
                raise SystemExit(f"{len(failures)} warm-up deliveries failed: {failures[:3]}")
        status = node.call("GET", "/v1/status")
        before = status["store"]
        assert node.proc is not None
        pids = {"daemon": node.proc.pid}
        for n, worker in enumerate(status.get("lmtp", {}).get("workers", [])):
            pids[f"worker {n}" if n else "worker"] = int(worker["pid"])
        spies = [_start_py_spy(args.py_spy, pids.get("worker", pids["daemon"]), args.gil)]
        if args.py_spy is not None and "worker" in pids:
            spies.append(
                _start_py_spy(args.py_spy.with_suffix(".daemon"), pids["daemon"], args.gil)
            )
        threads_before = thread_cpu(pids["daemon"])
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        client_before = time.process_time()
        failures, seconds = client(node.ports["lmtp"], payloads, rcpts)
        client_cpu = time.process_time() - client_before
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        threads = thread_cpu(pids["daemon"])
        for spy in spies:
            _stop_py_spy(spy)
        after = node.call("GET", "/v1/status")["store"]
        if args.threads:
            backlog = node.call("GET", "/v1/index")["pending"]
            by_thread = per_thread(pids["daemon"], threads_before, threads)
    finally:
        node.stop()
    count = per * args.connections
    if failures:
        raise SystemExit(f"{len(failures)} deliveries failed: {failures[:3]}")
    rate, mbs = count / seconds, total_bytes / seconds / 1e6
    ceil_rate, ceil_mbs = ceiling([p for batch in payloads for p in batch], str(workdir))
    print(
        f"messages          {count} ({total_bytes / 1e6:.1f} MB) over {args.connections} "
        f"LMTP connections ({args.client} client)"
    )
    print(f"peerd LMTP        {rate:8.0f} msgs/s  {mbs:6.1f} MB/s  (fsync on, group commit)")
    print(
        f"ceiling           {ceil_rate:8.0f} msgs/s  {ceil_mbs:6.1f} MB/s  (write+fsync per file, Python)"
    )
    print(f"ratio             {rate / ceil_rate:8.2f} of the ceiling")
    cpu["client"] = client_cpu
    shares = ", ".join(f"{name} {1000 * used / count:.2f}" for name, used in cpu.items())
    print(f"CPU per message   {shares} ms")
    if args.threads:
        ranked = sorted(by_thread.items(), key=lambda item: -sum(item[1]))
        print(
            "daemon threads    "
            + ", ".join(
                f"{name} {1000 * user / count:.2f}+{1000 * system / count:.2f}"
                for name, (user, system) in ranked
                if user + system > 0
            )
            + " ms (user+system)"
        )
        print(f"full-text index   {backlog} messages still to index when the timing ended")
    writes, batches = after["writes"] - before["writes"], after["batches"] - before["batches"]
    print(
        f"group commit      {writes} deliveries in {batches} commits "
        f"({writes / batches:.1f} a commit; largest since start {after['largest_batch']})"
    )


def _start_py_spy(output: Path | None, pid: int, gil: bool) -> subprocess.Popen[bytes] | None:
    if output is None:
        return None
    exe = shutil.which("py-spy")
    if exe is None:
        raise SystemExit("--py-spy: py-spy is not on the PATH")
    argv = [exe, "record", "--pid", str(pid), "--format", "raw", "--output", str(output)]
    argv += ["--rate", "250", "--nonblocking", *(["--gil"] if gil else [])]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the timing starts
    return spy


def _stop_py_spy(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        spy.wait(60)


if __name__ == "__main__":
    main()
