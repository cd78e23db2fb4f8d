"""Shared fixtures. The harness's come first: a real PostgreSQL server for the
session, a fresh database per test, and a process registry that stops what a
test started, by pid, even when the test fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.postgres import PgServer, require_pg
from tests.harness.procs import Registry
from tests.nodes import Node, make_pair, make_single, running


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole session (skipped locally, failed in CI, if missing)."""
    server = PgServer(require_pg()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh database on the session's server: ``postgresql+psycopg://postgres@127.0.0.1:PORT/t_…``."""
    return pg_server.create_database()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Registry]:
    """``procs.start(argv, name)`` / ``procs.add(nginx)``: all stopped at teardown, newest first."""
    registry = Registry(tmp_path / "logs")
    try:
        yield registry
    finally:
        errors = registry.stop_all()
        if errors:
            pytest.fail("stopping processes failed:\n" + "\n".join(errors))


# --- other fixtures below ---


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    single = make_single(tmp_path)
    try:
        yield single.start()
    finally:
        single.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    alpha, beta = make_pair(tmp_path)
    with running(alpha, beta):
        yield alpha, beta


# Imports for the fixtures below stay down here: the file above is the harness's.
import contextlib  # noqa: E402
import smtplib  # noqa: E402
import threading  # noqa: E402
import tomllib  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import quote  # noqa: E402

import migrations  # noqa: E402
from engine.store import Store  # noqa: E402
from tests.harness.daemons import Daemon, write_pair_configs  # noqa: E402


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


class LoneNode(Daemon):
    """One real ``peerd run`` (alpha). Its partner beta is named (so an account
    can be owned by beta) but has no sync address: no replication runs."""

    @property
    def workdir_data(self) -> Path:
        return self.workdir / "var" / self.name

    @property
    def db_path(self) -> Path:
        return self.workdir_data / "peerd.db"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    def port(self, listener: str) -> int:
        return int(tomllib.loads(self.config.read_text())["listen"][listener].rpartition(":")[2])

    def lmtp(self, timeout: float = 30) -> smtplib.LMTP:
        return smtplib.LMTP("127.0.0.1", self.port("lmtp"), timeout=timeout)

    def add_account(self, name: str, password: str = "secret", **extra: Any) -> Any:
        return self.call("POST", "/v1/accounts", {"name": name, "password": password, **extra})

    def records(self, account: str, mailbox: str = "INBOX") -> list[dict[str, Any]]:
        path = f"/v1/accounts/{quote(account)}/mailboxes/{quote(mailbox, safe='')}"
        return list(self.call("GET", path)["messages"])

    def burst(self, account: str, threads: int, per_thread: int, tag: str = "burst") -> Burst:
        """Start delivering ``TAG-T-I`` messages to ``account``; returns at once."""
        burst = Burst()
        port = self.port("lmtp")

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

        burst.threads = [
            threading.Thread(target=run, args=(t,), daemon=True) for t in range(threads)
        ]
        for thread in burst.threads:
            thread.start()
        return burst

    def audit(self, account: str) -> list[str]:
        """Open the node's store in this process (the node may be down) and check
        it: every record's spool file is whole (bytes match the GUID), checksums,
        ``exists`` and quota usage agree with the records. Returns the subjects
        of the live records, all mailboxes, in UID order."""
        from engine import accounts, mailbox, messages
        from engine.flags import record_hash
        from engine.store import Store

        store = Store(self.db_url, self.workdir_data, owner=False)
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
                subjects.append(data.split(b"\r\n", 1)[0].removeprefix(b"Subject: ").decode())
            return subjects
        finally:
            store.close()


@pytest.fixture
def lone_node(tmp_path: Path, procs: Registry) -> Callable[..., LoneNode]:
    """``lone_node(overrides=None, start=True)``: a single node in ``tmp_path/node``,
    stopped by pid at teardown (``overrides`` merge into alpha's config)."""

    def make(overrides: dict[str, Any] | None = None, start: bool = True) -> LoneNode:
        alpha, _, _ = write_pair_configs(
            tmp_path / "node", {"sync": {"sync_host": None}}, alpha=overrides
        )
        node = procs.add(LoneNode(alpha))
        if start:
            node.start()
        return node

    return make


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store on SQLite and on the real PostgreSQL server, its schema from Alembic."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'peerd.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    migrations.upgrade(url)
    s = Store(url, tmp_path / "data")
    try:
        yield s
    finally:
        s.close()
