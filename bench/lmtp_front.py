"""The LMTP front alone: its CPU per message, with no store and no disk.

    .venv/bin/python -m bench.lmtp_front [--messages 6000] [--connections 20]
        [--loop uvloop|asyncio] [--rounds 3]

Runs the protocol front of an LMTP worker (``peerd.services.lmtp.front``:
the protocol, the SHA-1, the spool's temp file) in a process of its own, on
uvloop as a worker does, with a backend that accepts every recipient and
answers every delivery at once (and removes the temp file). The spool is
in ``/dev/shm`` when there is one. The pipelining client of
``bench.lmtp_ingest`` sends the message mix over ``--connections``
connections, and the script prints the front's CPU per message (user and
system, all threads, from ``/proc``) for each round.

That is the part of an LMTP worker's CPU the protocol code owns; the pipe
to the daemon and the group commit are not in it. CPU time, unlike a rate,
moves little when other programs load the machine, so two versions of the
front can be compared on a busy machine: run this once per version.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.lmtp_ingest import cpu_seconds, run_pipelining
from bench.workload import messages

_RCPT = "user{}@example.test"


class _Instant:
    """Every recipient exists; every delivery is done at once."""

    def __init__(self, spool: object) -> None:
        self.spool = spool

    async def check_rcpt(self, address: str) -> str | None:
        return None

    async def deliver(self, message: object) -> list[str]:
        staged = message.staged  # type: ignore[attr-defined]
        self.spool.discard([staged])  # type: ignore[attr-defined]
        return ["250 2.1.5 Delivered"] * len(message.recipients)  # type: ignore[attr-defined]


def serve(spool_dir: Path, loop_kind: str) -> None:
    """The front's process: prints its port, serves until stdin closes."""
    from engine.spool import Spool
    from peerd.services.lmtp.front import FrontSettings, LmtpHandler, serve_lmtp

    async def main() -> None:
        spool = Spool(spool_dir)
        settings = FrontSettings(
            hostname="front.bench",
            local_domains=frozenset({"example.test"}),
            max_message_size=50 << 20,
            max_recipients=1000,
            max_line=4096,
        )
        handler = LmtpHandler(settings, spool, _Instant(spool))
        listener = socket.create_server(("127.0.0.1", 0))
        server = await serve_lmtp(handler, sock=listener)
        print(listener.getsockname()[1], flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        server.close()

    if loop_kind == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    else:
        asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.loop)
        return
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as tmp:
        front = subprocess.Popen(
            [
                *(sys.executable, "-m", "bench.lmtp_front"),
                *("--serve", str(Path(tmp) / "spool"), "--loop", args.loop),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert front.stdout is not None and front.stdin is not None
            port = int(front.stdout.readline())
            per = args.messages // args.connections
            rcpts = [_RCPT.format(c) for c in range(args.connections)]
            payloads = [messages(per, rcpts[c], base=c * per) for c in range(args.connections)]
            count = per * args.connections
            size = sum(len(p) for batch in payloads for p in batch)
            print(
                f"messages          {count} ({size / 1e6:.1f} MB) a round over "
                f"{args.connections} connections, front on {args.loop}"
            )
            run_pipelining(port, [batch[: per // 10] for batch in payloads], rcpts)  # warm-up
            for n in range(args.rounds):
                used = cpu_seconds(front.pid)
                started = time.perf_counter()
                failures, seconds = run_pipelining(port, payloads, rcpts)
                used = cpu_seconds(front.pid) - used
                if failures:
                    raise SystemExit(f"{len(failures)} deliveries failed: {failures[:3]}")
                print(
                    f"round {n + 1}           front CPU {1000 * used / count:.3f} ms a message; "
                    f"{count / seconds:.0f} msgs/s "
                    f"(load {os.getloadavg()[0]:.1f}, {time.perf_counter() - started:.1f} s)"
                )
        finally:
            if front.stdin is not None:
                front.stdin.close()
            front.wait(30)


if __name__ == "__main__":
    main()
