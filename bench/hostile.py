"""Hostile users and strangers against a real pair (issue 9): what they cost the node.

    .venv/bin/python -m bench.hostile [--seconds 8] [--prelogin 1000] [--stalled 10]
        [--only health|prelogin|login|stalled]

Starts a real pair (alpha, beta) on loopback, then prints, in one run:

1. ``/v1/health`` latency p50/p99 on alpha, polled every 20 ms, while two
   logged-in users run the worst LIST and SEARCH patterns we know back to
   back: ``LIST "" "*a*a*a*b"`` against a 999-character name (the pattern
   that froze the node for minutes when wildcards were a backtracking
   regex), ``LIST "" "%%%…"`` with 30,000 ``%``, and an ``OR``-chain SEARCH
   with TEXT on a mailbox of 2,000 messages. Target p99 ≤ 50 ms.
2. alpha's RSS above idle with ``--prelogin`` connections that each sent a
   LOGIN with the largest literal a stranger may send before login and
   never finished it, plus a non-synchronizing 60 MB literal started on
   every tenth. Target ≤ 150 MB.
3. a real user's login latency p50/p99 (from 127.0.0.2) while 40
   connections (from 127.0.0.3) guess passwords for another account as fast
   as the node answers. Target p99 ≤ 1 s.
4. alpha's RSS above idle with ``--stalled`` clients that ``FETCH 1:*
   BODY.PEEK[]`` on a mailbox of 100 messages of 1 MB and never read. Target ≤ 100 MB.

Every process it starts is stopped by pid at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import imaplib
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.nodes import Node, make_pair, running

__all__ = ["main"]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def settle_rss(pid: int, tries: int = 20) -> float:
    """RSS once it stops moving (allocations in flight land first), looked
    at every 0.25 s at most ``tries`` times."""
    last = rss_mib(pid)
    for _ in range(tries):
        time.sleep(0.25)
        now = rss_mib(pid)
        if abs(now - last) < 0.5:
            return now
        last = now
    return last


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


class FromAddress(imaplib.IMAP4):
    """imaplib from a chosen loopback source address (the daemon tells clients apart by it)."""

    def __init__(self, port: int, source: str) -> None:
        self.source = source
        super().__init__("127.0.0.1", port, timeout=60)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )


def imap(node: Node, user: str = "user") -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=120)
    client.login(user, "secret")
    return client


def health_during(
    node: Node, seconds: float, load: Callable[[threading.Event], None]
) -> list[float]:
    """/v1/health latencies (ms) while ``load`` runs in two threads."""
    stop = threading.Event()
    workers = [threading.Thread(target=load, args=(stop,)) for _ in range(2)]
    for worker in workers:
        worker.start()
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            with urllib.request.urlopen(f"{node.api}/v1/health", timeout=30) as response:
                response.read()
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(0.02)
    finally:
        stop.set()
        for worker in workers:
            worker.join(120)
    return latencies


def worst_patterns(node: Node) -> Callable[[threading.Event], None]:
    def run(stop: threading.Event) -> None:
        client = imap(node)
        try:
            client.select("INBOX", readonly=True)
            while not stop.is_set():
                client.list('""', '"*a*a*a*b"')
                client.list('""', '"' + "%" * 30000 + '"')
                client.search(
                    None, "OR", "OR", "FROM", "nobody", "SUBJECT", "zz*", "TEXT", "needle-not-here"
                )
        finally:
            client.logout()

    return run


def prelogin_rss(node: Node, count: int) -> tuple[float, int]:
    """RSS above idle (MiB) with ``count`` half-sent logins; how many were open."""
    pid = node.proc.pid if node.proc else 0
    idle = settle_rss(pid)
    held: list[socket.socket] = []
    try:
        for i in range(count):
            raw = socket.create_connection(("127.0.0.1", node.ports["imap"]), timeout=30)
            raw.setblocking(True)
            held.append(raw)
            raw.recv(4096)  # the greeting
            if i % 10 == 0:
                raw.sendall(b"a LOGIN {62914560+}\r\n" + b"x" * 65536)
            else:
                raw.sendall(b"a LOGIN {8192}\r\n")
                raw.recv(64)  # "+ ", or NO [TOOBIG] if the limit is lower
                raw.sendall(b"y" * 8000)
        open_now = sum(1 for s in held if s.fileno() >= 0)
        return settle_rss(pid) - idle, open_now
    finally:
        for raw in held:
            raw.close()


def guessing_flood(node: Node, seconds: float) -> list[float]:
    """A real user's login latencies (ms) while 40 connections guess another's password."""
    stop = threading.Event()

    def guess() -> None:
        while not stop.is_set():
            try:
                raw = socket.create_connection(
                    ("127.0.0.1", node.ports["imap"]), timeout=30, source_address=("127.0.0.3", 0)
                )
            except OSError:
                continue
            with raw:
                reader = raw.makefile("rb")
                try:
                    reader.readline()
                    for n in range(3):
                        raw.sendall(f"g{n} LOGIN victim wrong{n}\r\n".encode())
                        if not reader.readline():
                            break
                except OSError:
                    pass
                finally:
                    reader.close()

    guessers = [threading.Thread(target=guess) for _ in range(40)]
    for thread in guessers:
        thread.start()
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            client = FromAddress(node.ports["imap"], "127.0.0.2")
            client.login("user", "secret")
            latencies.append((time.perf_counter() - started) * 1000)
            client.logout()
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in guessers:
            thread.join(60)
    return latencies


def stalled_rss(node: Node, clients: int) -> float:
    pid = node.proc.pid if node.proc else 0
    idle = settle_rss(pid)
    held: list[socket.socket] = []
    try:
        for _ in range(clients):
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.connect(("127.0.0.1", node.ports["imap"]))
            raw.recv(4096)
            raw.sendall(b"a LOGIN big secret\r\nb SELECT INBOX\r\nc FETCH 1:* BODY.PEEK[]\r\n")
            held.append(raw)
        time.sleep(3)
        return settle_rss(pid) - idle
    finally:
        for raw in held:
            raw.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--prelogin", type=int, default=1000)
    parser.add_argument("--stalled", type=int, default=10)
    parser.add_argument(
        "--only", choices=["health", "prelogin", "login", "stalled"], help="one figure alone"
    )
    args = parser.parse_args(argv)
    wanted = {args.only} if args.only else {"health", "prelogin", "login", "stalled"}
    with tempfile.TemporaryDirectory(prefix="peerd-hostile-") as tmp:
        alpha, beta = make_pair(Path(tmp))
        with running(alpha, beta):
            for name in ("user", "victim", "big"):
                alpha.add_account(name)
            if "health" in wanted:
                client = imap(alpha)
                client.create("a" * 999)
                small = b"From: someone@example.test\r\nSubject: filler\r\n\r\nsome text\r\n"
                for _ in range(2000):
                    client.append("INBOX", None, None, small)
                client.logout()
            if "stalled" in wanted:
                big = imap(alpha, "big")
                body = b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 1000
                for _ in range(100):
                    big.append("INBOX", None, None, body)
                big.logout()

            if "health" in wanted:
                health = health_during(alpha, args.seconds, worst_patterns(alpha))
                print(
                    f"/v1/health during the worst LIST/SEARCH: p50 {statistics.median(health):.1f}"
                    f" ms, p99 {percentile(health, 0.99):.1f} ms over {len(health)} polls"
                    " (target p99 <= 50 ms)"
                )
            if "prelogin" in wanted:
                grown, open_now = prelogin_rss(alpha, args.prelogin)
                print(
                    f"RSS with {open_now} pre-login connections holding maximal literals: "
                    f"+{grown:.0f} MiB over idle (target <= 150 MB)"
                )
            if "login" in wanted:
                logins = guessing_flood(alpha, args.seconds)
                print(
                    f"a real login during a 40-connection guessing flood: p50 "
                    f"{statistics.median(logins):.0f} ms, p99 {percentile(logins, 0.99):.0f} ms, "
                    f"max {max(logins):.0f} ms over {len(logins)} logins (target p99 <= 1000 ms)"
                )
            if "stalled" in wanted:
                grown = stalled_rss(alpha, args.stalled)
                print(
                    f"RSS with {args.stalled} clients fetching 100 MB each and never reading: "
                    f"+{grown:.0f} MiB over idle (target <= 100 MB)"
                )


if __name__ == "__main__":
    main()
