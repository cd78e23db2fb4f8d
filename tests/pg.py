"""A real PostgreSQL server for the tests, started in a temp dir and stopped by pid."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.procs import Proc, free_port, wait_until

__all__ = ["PgServer", "find_pg_bin"]


def find_pg_bin() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PgServer:
    def __init__(self) -> None:
        bindir = find_pg_bin()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb) not found")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="peerd-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.proc: Proc | None = None
        self._user: list[str] = []
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: run it as the postgres user.
            pwd.getpwnam("postgres")
            shutil.chown(self.dir, "postgres", "postgres")
            self._user = ["runuser", "-u", "postgres", "--"]

    def start(self) -> PgServer:
        subprocess.run(
            [
                *self._user,
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self.proc = Proc(
            [
                *self._user,
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.dir),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "shared_buffers=32MB",
                "-c",
                "max_connections=200",
            ],
            self.dir / "postgres.log",
        ).start()
        wait_until(self._ready, 30, "PostgreSQL to accept connections")
        return self

    def _ready(self) -> bool:
        try:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def dsn(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc is not None:
            # SIGINT is PostgreSQL's "fast" shutdown.
            self.proc.stop(sig=signal.SIGINT)
        shutil.rmtree(self.dir, ignore_errors=True)
