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
