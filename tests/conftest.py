"""Shared fixtures: a real PostgreSQL server, real peerd daemons, clean teardown by pid."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodes import Node, make_pair, make_single
from tests.pg import PgServer, find_pg_bin


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if find_pg_bin() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not installed, and CI must test it")
        pytest.skip("PostgreSQL server binaries not installed")
    server = PgServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    return pg_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


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
    try:
        alpha.start(wait=False)
        beta.start(wait=False)
        alpha.wait_ready()
        beta.wait_ready()
        yield alpha, beta
    finally:
        alpha.stop()
        beta.stop()
