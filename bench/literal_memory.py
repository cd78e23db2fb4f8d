"""What concurrent APPEND literals make the daemon hold (the input memory budget).

    .venv/bin/python -m bench.literal_memory [--connections 1,8,32] [--size 64M]
        [--plus | --lmtp] [--accounts N] [--wait 5] [--config SECTION.KEY=VALUE ...]

For each count N of ``--connections`` a fresh node starts; N logged-in
connections each announce ``a APPEND INBOX {SIZE}`` (``--plus``:
``{SIZE+}``, RFC 7888 LITERAL+) and send every octet of the literal but the
last, so the server must hold what came until the command is complete.
Once each connection has sent what it can (or waited ``--wait`` seconds:
a node that applies backpressure stops reading), the daemon's RSS
(``/proc/PID/status`` VmRSS) is read, then every connection is cut off
(RST, mid-literal) and the RSS read again. One line per N: the RSS at
idle, while held, after the cut, how many literals got their ``+`` (or
were read to their last octet) and how many were refused. ``--lmtp``: N
deliveries instead, each sending a message of SIZE but for its final dot,
and the RSS is the LMTP worker's. ``--appends N``: instead, N APPENDs of
SIZE one after the other on one connection, timed (the ordinary path:
wall time and the daemon's CPU).

The connections log in as ``--accounts`` accounts in turn (default: one
account per 40 connections). ``--config imap.max_literal=8M`` (and more)
set keys of the node's config.
The node and its clients are on loopback; the node is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import os
import socket
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.hostile import settle_rss
from peerd.node.config import parse_size
from tests.nodes import Node, make_single, running

__all__ = ["main"]

_CHUNK = 1 << 20


@dataclass
class Outcome:
    continued: bool = False  # "+" came (synchronizing), or every octet but one went
    refused: bytes = b""  # the server's answer instead
    sent: int = 0


async def _line(reader: asyncio.StreamReader) -> bytes:
    return await reader.readline()


async def one(
    port: int, user: str, size: int, plus: bool, wait: float, out: Outcome
) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _line(reader)  # greeting
    writer.write(f"l LOGIN {user} secret\r\n".encode())
    while not (line := await _line(reader)).startswith(b"l "):
        pass
    if not line.startswith(b"l OK"):
        raise RuntimeError(f"login failed: {line!r}")
    head = b"Subject: held\r\n\r\n"
    writer.write(f"a APPEND INBOX {{{size}{'+' if plus else ''}}}\r\n".encode())
    if not plus:
        try:
            answer = await asyncio.wait_for(_line(reader), wait)
        except TimeoutError:
            return writer  # still waiting for "+": held back
        if not answer.startswith(b"+"):
            out.refused = answer.strip()
            return writer
        out.continued = True
    writer.write(head)
    out.sent = len(head)
    if await _all_but_the_last(writer, size, wait, out) and plus:
        out.continued = True
    return writer


async def one_lmtp(
    port: int, user: str, size: int, wait: float, out: Outcome
) -> asyncio.StreamWriter:
    """A delivery whose message is sent but for its final dot."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _line(reader)  # greeting
    writer.write(b"LHLO bench\r\n")
    while not (await _line(reader)).startswith(b"250 "):
        pass
    # SIZE= as Postfix sends it (RFC 1870): what the message will be.
    mail = f"MAIL FROM:<b@example.test> SIZE={size}\r\nRCPT TO:<{user}@example.test>\r\n"
    writer.write(mail.encode() + b"DATA\r\n")
    for _ in range(3):
        await _line(reader)
    if await _all_but_the_last(writer, size, wait, out):
        out.continued = True
    return writer


async def _all_but_the_last(
    writer: asyncio.StreamWriter, size: int, wait: float, out: Outcome
) -> bool:
    """Send octets until all of ``size`` but the last went (True), or the
    server stops reading for ``wait`` seconds (False: backpressure)."""
    chunk = b"x" * (_CHUNK - 2) + b"\r\n"
    deadline = time.monotonic() + wait
    try:
        while out.sent < size - 1:
            n = min(len(chunk), size - 1 - out.sent)
            writer.write(chunk[:n])
            out.sent += n
            await asyncio.wait_for(writer.drain(), max(deadline - time.monotonic(), 0.01))
    except TimeoutError:
        return False
    return True


def lmtp_pids(node: Node) -> list[int]:
    workers = node.call("GET", "/v1/status").get("lmtp", {}).get("workers", [])
    return [int(w["pid"]) for w in workers if w.get("pid")]


async def round_of(
    node: Node, count: int, size: int, plus: bool, wait: float, accounts: int, lmtp: bool = False
) -> str:
    # LMTP: the worker process holds the messages, not the daemon.
    pid = lmtp_pids(node)[0] if lmtp else node.pid
    assert pid is not None
    idle = settle_rss(pid, 40)
    outcomes = [Outcome() for _ in range(count)]
    tasks = [
        asyncio.create_task(
            one_lmtp(node.port("lmtp"), f"u{i % accounts}", size, wait, outcomes[i])
            if lmtp
            else one(node.port("imap"), f"u{i % accounts}", size, plus, wait, outcomes[i])
        )
        for i in range(count)
    ]
    writers = await asyncio.gather(*tasks)
    holding = await asyncio.to_thread(settle_rss, pid)
    for writer in writers:
        sock = writer.get_extra_info("socket")
        if sock is not None:  # RST, not FIN: cut off mid-literal
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    await asyncio.sleep(0.5)
    after = await asyncio.to_thread(settle_rss, pid)
    got = sum(o.continued for o in outcomes)
    refused = sum(bool(o.refused) for o in outcomes)
    mib = sum(o.sent for o in outcomes) / (1 << 20)
    sample = next((o.refused.decode(errors="replace") for o in outcomes if o.refused), "")
    return (
        f"N={count:3d} size={size >> 20} MiB {'LMTP' if lmtp else '{n+}' if plus else '{n} '}:"
        f" RSS idle {idle:7.1f}"
        f" MiB, holding {holding:7.1f} MiB (+{holding - idle:.1f}), after the cut {after:7.1f}"
        f" MiB (+{after - idle:.1f}); sent {mib:.0f} MiB, {got} {'messages' if lmtp else 'literals'}"
        " under way,"
        f" {refused} refused{(': ' + sample[:90]) if sample else ''}"
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def appends(node: Node, count: int, size: int) -> str:
    """``count`` APPENDs of ``size`` octets one after the other on one
    connection: the ordinary path, timed (wall, and the daemon's CPU)."""
    pid = node.pid
    assert pid is not None
    body = b"Subject: timed\r\nContent-Type: application/octet-stream\r\n\r\n"
    line = b"z" * 1022 + b"\r\n"
    body += line * max(0, (size - len(body)) // len(line))
    client = imaplib.IMAP4("127.0.0.1", node.port("imap"), timeout=120)
    client.login("u0", "secret")
    cpu, started = cpu_seconds(pid), time.perf_counter()
    for _ in range(count):
        status, _ = client.append("INBOX", None, None, body)
        assert status == "OK"
    wall, used = time.perf_counter() - started, cpu_seconds(pid) - cpu
    client.logout()
    return (
        f"{count} APPENDs of {len(body) / 1024:.0f} KiB: {wall:.2f} s wall"
        f" ({count * len(body) / wall / (1 << 20):.1f} MiB/s), daemon CPU {used:.2f} s"
        f" ({used / count * 1000:.1f} ms each)"
    )


def _value(text: str) -> Any:
    if text.isdigit():
        return int(text)
    if text in ("true", "false"):
        return text == "true"
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--connections", default="1,8,32")
    parser.add_argument("--size", default="64M")
    parser.add_argument("--plus", action="store_true", help="non-synchronizing literals")
    parser.add_argument(
        "--lmtp", action="store_true", help="LMTP messages (the worker's RSS) instead"
    )
    parser.add_argument("--wait", type=float, default=5.0)
    parser.add_argument(
        "--accounts",
        type=int,
        default=0,
        help="spread over this many (default: one per 40 connections)",
    )
    parser.add_argument("--config", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument(
        "--appends", type=int, default=0, help="instead: time this many APPENDs of --size, in turn"
    )
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    overrides: dict[str, dict[str, Any]] = {"imap": {"max_connections_per_ip": 0}}
    for item in args.config:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        overrides.setdefault(section, {})[name] = _value(value)
    if args.appends:
        with tempfile.TemporaryDirectory(prefix="peerd-litmem-") as tmp:
            node = make_single(Path(tmp), overrides=overrides)
            with running(node):
                node.add_account("u0")
                print(appends(node, args.appends, size), flush=True)
        return
    for count in (int(n) for n in args.connections.split(",")):
        with tempfile.TemporaryDirectory(prefix="peerd-litmem-") as tmp:
            node = make_single(Path(tmp), overrides=overrides)
            with running(node):
                accounts = args.accounts or max(1, -(-count // 40))
                for i in range(accounts):
                    node.add_account(f"u{i}")
                line = asyncio.run(
                    round_of(node, count, size, args.plus, args.wait, accounts, args.lmtp)
                )
                print(f"{line} ({accounts} account(s))", flush=True)


if __name__ == "__main__":
    main()
