"""Real clients against a running node: peerctl, an IMAP session in IDLE, a POP3
login that must be refused, LMTP delivery bursts from threads, and an audit of
a node's store on disk."""

from __future__ import annotations

import contextlib
import poplib
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from tests.harness import zygote

if TYPE_CHECKING:
    from tests.harness.daemons import Node

__all__ = [
    "Burst",
    "SteadyLoad",
    "audit_store",
    "burst_message",
    "idling",
    "peerctl",
    "pop3_refusal",
    "run_command",
    "start_burst",
]


class _Configured(Protocol):
    @property
    def config(self) -> Path: ...

    @property
    def workdir(self) -> Path: ...


def peerctl(
    node: _Configured,
    *args: str,
    stdin: str | None = None,
    config: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``peerctl -c CONFIG ARGS`` run for real against ``node`` (its config
    unless ``config`` is given), from the node's working directory: forked
    from the daemon launcher (tests/harness/zygote.py), which has imported
    it, or with exec when the launcher is off."""
    argv = ["-c", str(config or node.config), *args]
    return run_command("peerd.cli", argv, node.workdir, stdin=stdin, timeout=timeout)


def run_command(
    module: str,
    argv: Sequence[str],
    cwd: Path,
    *,
    stdin: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGV`` (``peerd check-config``, ``peerd run`` that
    must refuse, ``peerd.cli``...) run to its end from ``cwd``, output
    captured: forked from the daemon launcher, which has imported it, or
    with exec when the launcher is off (``PEERD_TEST_EXEC=1``). The exit
    status and the output are the command's own either way."""
    if zygote.enabled():
        return zygote.run_module(module, argv, cwd, stdin, timeout)
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def idling(node: Node, account: str = "alice") -> tuple[socket.socket, BinaryIO]:
    """A raw IMAP session of ``account`` (password "secret") in IDLE on INBOX."""
    sock = socket.create_connection(("127.0.0.1", node.ports["imap"]), timeout=20)
    stream = sock.makefile("rb")
    stream.readline()
    sock.sendall(f"a LOGIN {account} secret\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())
    while not stream.readline().startswith(b"+"):
        pass
    return sock, stream


def pop3_refusal(port: int, user: str, password: str) -> str:
    """The -ERR a POP3 login gets on ``port`` (AssertionError if it is let in)."""
    client = poplib.POP3("127.0.0.1", port, timeout=20)
    try:
        client.user(user)
        try:
            client.pass_(password)
        except poplib.error_proto as exc:
            return str(exc.args[0], "utf-8", "replace")
        raise AssertionError(f"{user} was let in on port {port}")
    finally:
        client.close()


# --- delivery bursts ------------------------------------------------------------


def burst_message(subject: str) -> bytes:
    """Every fifth message is ~300 KB, so a kill often lands in the middle of one."""
    body = (b"y" * 76 + b"\r\n") * (4000 if subject.endswith("0") or subject.endswith("5") else 40)
    return f"Subject: {subject}\r\nMessage-ID: <{subject}@burst>\r\n\r\n".encode() + body


@dataclass
class Burst:
    """Deliveries from several threads, each on its own LMTP connection.

    ``acked``: subjects that got a 250. ``inflight``: per thread, the subject
    sent when its connection broke (stored or not: the MTA cannot know).
    """

    acked: list[str] = field(default_factory=list)
    inflight: dict[int, str | None] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def join(self, timeout: float = 60) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a delivery thread hung"

    @property
    def unknown(self) -> set[str]:
        return {s for s in self.inflight.values() if s is not None}


def start_burst(port: int, account: str, threads: int, per_thread: int, tag: str) -> Burst:
    """Deliver ``TAG-T-I`` messages to ``account`` from ``threads`` threads; returns at once."""
    burst = Burst()

    def run(t: int) -> None:
        with (
            contextlib.suppress(OSError, smtplib.SMTPException),
            smtplib.LMTP("127.0.0.1", port, timeout=60) as client,
        ):
            for i in range(per_thread):
                if burst.stop.is_set():
                    return
                subject = f"{tag}-{t}-{i}"
                burst.inflight[t] = subject
                refused = client.sendmail(
                    "s@example.test", [f"{account}@example.test"], burst_message(subject)
                )
                assert refused == {}
                burst.acked.append(subject)
                burst.inflight[t] = None

    burst.threads = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(threads)]
    for thread in burst.threads:
        thread.start()
    return burst


@dataclass
class SteadyLoad:
    """A continuous LMTP load: ``rate`` messages a second to ``account``, from
    ``threads`` threads, as an MTA with two next hops sends it. A 4xx (a held
    or moved account) is tried again after ``retry`` seconds on the next port
    of ``ports``; only a 250 is acknowledged.

    ``acked``: subjects that got a 250. ``deferred``: the 4xx replies seen.
    ``inflight``: per thread, the subject whose connection broke, if any.
    """

    ports: list[int]
    account: str
    rate: float = 50.0
    threads: int = 2
    tag: str = "load"
    retry: float = 0.05
    acked: list[str] = field(default_factory=list)
    deferred: list[tuple[float, int, bytes]] = field(default_factory=list)
    inflight: dict[int, str | None] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> SteadyLoad:
        self.workers = [
            threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(self.threads)
        ]
        for worker in self.workers:
            worker.start()
        return self

    def join(self, timeout: float = 60) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(timeout)
            assert not worker.is_alive(), "a delivery thread hung"

    def _run(self, t: int) -> None:
        interval = self.threads / self.rate
        hop = 0
        i = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            subject = f"{self.tag}-{t}-{i}"
            self.inflight[t] = subject
            while not self.stop.is_set():
                code, text = self._send(self.ports[hop % len(self.ports)], subject)
                if code == 250:
                    self.acked.append(subject)
                    break
                if code >= 500:
                    raise AssertionError(f"{subject}: {code} {text!r}")
                self.deferred.append((time.monotonic(), code, text))
                hop += 1
                time.sleep(self.retry)
            self.inflight[t] = None
            i += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def _send(self, port: int, subject: str) -> tuple[int, bytes]:
        data = f"Subject: {subject}\r\nMessage-ID: <{subject}@steady>\r\n\r\nbody\r\n"
        try:
            with smtplib.LMTP("127.0.0.1", port, timeout=30) as lmtp:
                lmtp.docmd("LHLO", "load")
                lmtp.mail("s@example.test")
                code, text = lmtp.rcpt(f"{self.account}@example.test")
                if code != 250:
                    return code, text
                return lmtp.data(data.encode())
        except (OSError, smtplib.SMTPException) as exc:
            return 421, str(exc).encode()


# --- the store on disk ----------------------------------------------------------


def audit_store(db_url: str, data_dir: Path, account: str) -> list[str]:
    """Check ``account`` in a node's store, opened in this process (the node may
    be down): every record's spool file is whole (bytes match the GUID),
    checksums, ``exists`` and quota usage agree with the records. Returns the
    subjects of the live records, all mailboxes, in UID order."""
    from engine import accounts, mailbox, messages
    from engine.flags import record_hash
    from engine.store import Store

    store = Store(db_url, data_dir, owner=False)
    try:

        def read(s: Any) -> list[tuple[str, int]]:
            acct = accounts.get_account(s, account)
            live: list[tuple[str, int]] = []
            for box in mailbox.list_mailboxes(s, acct):
                records = messages.live_records(s, box)
                xor = 0
                for r in records:
                    xor ^= record_hash(r.uid, r.guid, r.flags, r.internaldate, r.modseq)
                assert (box.checksum, box.exists) == (xor, len(records)), box.name
                live += [(r.guid, r.size) for r in records]
            assert acct.quota_used == sum(size for _, size in live)
            return live

        subjects = []
        for guid, size in store.read_sync(read):
            data = store.spool.read(guid)  # raises Corrupt on a missing or partial file
            assert len(data) == size
            first = data.split(b"\r\n", 1)[0].removeprefix(b"Subject: ")
            # A hostile APPEND (tests/fuzz/test_wire.py) may store any bytes.
            subjects.append(first.decode(errors="replace"))
        return subjects
    finally:
        store.close()
