"""A real PostgreSQL server for the test session, in a temp dir, stopped by pid.

Debian keeps the server binaries out of PATH (``/usr/lib/postgresql/15/bin``),
so that is searched first. PostgreSQL refuses to run as root; under root (CI)
the server runs as the ``postgres`` system user, which owns the data dir.
Authentication is ``trust`` and the server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Final

import psycopg
import pytest
from psycopg import sql

from tests.harness.procs import Proc, free_port, wait_until

__all__ = ["PgServer", "find_pg_bin", "require_pg"]


def find_pg_bin() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres; the newest Debian one first."""

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all(Path(candidate, b).exists() for b in ("initdb", "pg_ctl", "postgres")):
            return Path(candidate)
    found = shutil.which("initdb")
    if found and Path(found).with_name("postgres").exists():
        return Path(found).parent
    return None


def require_pg() -> Path:
    """The binaries' directory. Missing: skip on a developer's machine, fail in CI,
    so CI can never pass while silently not testing PostgreSQL."""
    bindir = find_pg_bin()
    if bindir is not None:
        return bindir
    if os.environ.get("CI") == "true":
        pytest.fail("PostgreSQL server binaries are not installed, and CI must test them")
    pytest.skip("PostgreSQL server binaries (initdb, postgres) not installed")


# Where a throwaway cluster goes: memory (tmpfs) when the machine has room
# there. Its files are written and removed by the hundred per test (a
# database copied from the template for each); on disk, removing a worker's
# cluster at its end took seconds of the run's tail.
_SHM: Final = Path("/dev/shm")
_SHM_ROOM: Final = 4 << 30


def _cluster_parent() -> str | None:
    try:
        room = os.statvfs(_SHM)
    except OSError:
        return None
    if not os.access(_SHM, os.W_OK) or room.f_bavail * room.f_frsize < _SHM_ROOM:
        return None
    return str(_SHM)


class PgServer:
    """``PgServer().start()`` ... ``create_database()`` ... ``stop()``."""

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or require_pg()
        # Not pytest's tmp_path: that is 0700 root, and the server's user must enter it.
        self.dir = Path(tempfile.mkdtemp(prefix="peerd-pg-", dir=_cluster_parent()))
        self.data = self.dir / "data"
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            pwd.getpwnam("postgres")  # KeyError here: the postgresql package is half installed
            shutil.chown(self.dir, "postgres", "postgres")
            self.user = "postgres"
        self.proc: Proc | None = None
        self._template: str | None = None

    def start(self, timeout: float = 60) -> PgServer:
        initdb = subprocess.run(
            [
                str(self.bindir / "initdb"),
                *("-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8"),
                # A throwaway cluster: initdb's own final fsync is skipped.
                "--no-sync",
            ],
            cwd=self.dir,
            user=self.user,
            group=pwd.getpwnam(self.user).pw_gid if self.user else None,
            extra_groups=[] if self.user else None,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{initdb.stdout}{initdb.stderr}")
        self.proc = Proc(
            [
                str(self.bindir / "postgres"),
                *("-D", str(self.data), "-p", str(self.port)),
                # The Unix socket goes to our dir: /var/run/postgresql may not exist.
                *("-k", str(self.dir)),
                *("-c", "listen_addresses=127.0.0.1"),
                *("-c", "shared_buffers=32MB"),
                # No fsync (nor the full pages it protects): only a crash of
                # the machine would lose what the server wrote, and no test
                # crashes the machine; the tests kill daemons, never the
                # server, and a commit still writes its WAL before it returns
                # (synchronous_commit stays on). Each fsync was a wait that
                # held a pytest worker (the store tests on PostgreSQL spent
                # two thirds of their time waiting).
                *("-c", "fsync=off"),
                *("-c", "full_page_writes=off"),
                # Two daemons, each with a pool, plus the tests' own connections.
                *("-c", "max_connections=200"),
            ],
            self.dir / "postgres.log",
            cwd=self.dir,
            user=self.user,
            # SIGQUIT is PostgreSQL's "immediate" shutdown: no waiting for
            # clients, and no shutdown checkpoint, which on a busy disk took
            # half a minute at the end of a session. The cluster is removed
            # right after, so nothing is lost that anyone reads.
            stop_signal=signal.SIGQUIT,
            die_with_parent=True,
        ).start()

        def ready() -> bool:
            assert self.proc is not None
            if not self.proc.alive():
                raise RuntimeError(f"postgres exited:\n{self.proc.tail()}")
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=1):
                    return True
            except psycopg.OperationalError:
                return False

        try:
            wait_until(ready, timeout, "PostgreSQL to accept connections", interval=0.1)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def dsn(self, db: str) -> str:
        """A libpq DSN (for psycopg itself)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def url(self, db: str) -> str:
        """A SQLAlchemy URL with the psycopg (v3) driver."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str | None = None, template: str | None = None) -> str:
        """CREATE DATABASE (a copy of database ``template`` if given) and return its SQLAlchemy URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            # CREATE DATABASE takes no parameters; the name is quoted as an identifier.
            conn.execute(statement)
        return self.url(name)

    def migrated_template(self) -> str:
        """The name of a database at the migrations' head (made on first use),
        for ``create_database(template=...)``: copying it is cheaper than migrating."""
        if self._template is None:
            import migrations

            name = "t_migrated"
            migrations.upgrade(self.create_database(name))
            self._template = name
        return self._template

    def log(self) -> str:
        path = self.dir / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)
