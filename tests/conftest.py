"""The fixtures, one set for every test module (the harness is tests/harness/).

``pg_server`` (one real PostgreSQL server per session, i.e. per xdist worker)
and ``pg_url`` (a fresh database on it, copied from a migrated template);
``procs`` (a registry that stops what a test started, by pid, even when the
test fails); ``node`` (one running node), ``pair`` (alpha and beta running),
``lone_node`` (a factory of single nodes whose partner is named but never
runs) and ``store`` (an engine store on SQLite and on PostgreSQL).

A module chooses what ``node`` starts with a marker::

    pytestmark = pytest.mark.node(partner="beta", overrides={"lmtp": {...}})

``partner`` set: the node is a ``lone_node`` (its partner is named, no
replication runs); unset: a node with no partner at all (``make_single``).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

import migrations
from engine.store import Store
from tests.example_counts import PROFILE
from tests.harness import zygote
from tests.harness.clients import Burst, burst_message
from tests.harness.daemons import (
    STARTED,
    ModuleNodes,
    Node,
    make_lone,
    make_pair,
    make_single,
    running,
    template_database,
)
from tests.harness.postgres import PgServer, require_pg
from tests.harness.procs import Registry
from tests.harness.schedule import Recorder, longest_first, module_seconds

__all__ = ["Burst", "LoneNode", "burst_message"]

# Hypothesis draws new examples every run, under CI too (tests/example_counts.py);
# ``--hypothesis-profile`` on the command line still wins (loaded after this).
settings.load_profile(PROFILE)

# The name tests/test_lmtp.py and others import for a ``lone_node``: the same class.
LoneNode = Node


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "node(partner=None, overrides=None): what the `node` fixture starts in this module",
    )
    # PEERD_TEST_DURATIONS=FILE: the run's seconds per module, for
    # tests/module_seconds.json (tests/harness/schedule.py). Reports reach
    # the controlling process, not the xdist workers.
    durations = os.environ.get("PEERD_TEST_DURATIONS")
    if durations and not hasattr(config, "workerinput"):
        config.pluginmanager.register(Recorder(Path(durations)), "peerd-durations")


def pytest_unconfigure(config: pytest.Config) -> None:
    """The daemon launcher (tests/harness/zygote.py) goes with the session: it
    SIGKILLs any daemon it still has and exits, and this process reaps it.
    With ``PEERD_TEST_COSTLOG=FILE`` this process then appends its own CPU
    and that of every child it reaped (the launcher and what it forked,
    PostgreSQL, nginx, Postfix, the clients) to FILE (``scripts/costs.py``)."""
    zygote.close()
    path = os.environ.get("PEERD_TEST_COSTLOG")
    if path:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(path, "a") as out:
            for kind, who in (
                ("pytest", resource.RUSAGE_SELF),
                ("pytest children", resource.RUSAGE_CHILDREN),
            ):
                usage = resource.getrusage(who)
                line = {
                    "kind": kind,
                    "test": worker,
                    "wall": 0,
                    "user": usage.ru_utime,
                    "sys": usage.ru_stime,
                }
                out.write(json.dumps(line) + "\n")


# The fixtures of nodes a module's tests share (started on first use, stopped
# after the module's last test).
_MODULE_SCOPED_NODES = {"module_nodes", "module_node"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules longest first (tests/harness/schedule.py: xdist hands them
    out whole, in this order, to the worker about to run out). In each
    module, the tests on its shared nodes run after the others (in their
    order): the shared nodes then live only while they are used, not
    through the tests that start nodes of their own (an idle pair node costs
    about 0.015 s of CPU a second: its rolling replication and heartbeats)."""
    by_module: dict[str, list[pytest.Item]] = {}
    for item in items:
        by_module.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    ordered: list[pytest.Item] = []
    for group in longest_first(list(by_module.items()), module_seconds()):
        shared = [i for i in group if _MODULE_SCOPED_NODES & set(getattr(i, "fixturenames", ()))]
        ordered += [i for i in group if i not in shared] + shared
    items[:] = ordered


@pytest.fixture(autouse=True)
def _started_nodes() -> Iterator[None]:
    STARTED.clear()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A failed test's report carries the log tail of every daemon it started:
    a timing failure seen only in CI can then be read, not guessed."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("call", "setup"):
        for node in dict.fromkeys(STARTED):
            report.sections.append((f"peerd {node.name} log tail", node.tail(80)))
            if node.proc is not None and node.proc.alive():
                report.sections.append((f"peerd {node.name} status", node.status_text()))


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
    """A fresh database on the session's server, already at the migrations' head:
    ``postgresql+psycopg://postgres@127.0.0.1:PORT/t_…``."""
    return pg_server.create_database(template=pg_server.migrated_template())


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


def _lone(workdir: Path, overrides: dict[str, Any] | None) -> Node:
    return make_lone(workdir, overrides)


@pytest.fixture
def lone_node(tmp_path: Path, procs: Registry) -> Callable[..., Node]:
    """``lone_node(overrides=None, start=True)``: a single node alpha in
    ``tmp_path/node`` whose partner beta is named (so an account can be owned by
    beta) but has no sync address: no replication runs. Stopped by pid at
    teardown (``overrides`` merge into alpha's config)."""

    def make(overrides: dict[str, Any] | None = None, start: bool = True) -> Node:
        node = procs.add(_lone(tmp_path / "node", overrides))
        if start:
            node.start()
        return node

    return make


@pytest.fixture
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    """One running node, as the module's ``pytest.mark.node`` says (default: no partner)."""
    marker = request.node.get_closest_marker("node")
    options = dict(marker.kwargs) if marker else {}
    overrides = options.get("overrides")
    if options.get("partner") is not None:
        single = _lone(tmp_path / "node", overrides)
    else:
        single = make_single(tmp_path, overrides=overrides)
    try:
        yield single.start()
    finally:
        single.stop()


@pytest.fixture(scope="module")
def module_node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    """One running node for a whole module, as its ``pytest.mark.node`` says
    (like ``node``); tests take it through ``shared_node``. A start costs about
    1.5 s of CPU: a module whose tests need only accounts of their own (no
    stop, restart or kill, no config of their own) shares one."""
    marker = request.node.get_closest_marker("node")
    options = dict(marker.kwargs) if marker else {}
    overrides = options.get("overrides")
    workdir = tmp_path_factory.mktemp("module-node")
    if options.get("partner") is not None:
        single = _lone(workdir / "node", overrides)
    else:
        single = make_single(workdir, overrides=overrides)
    with running(single):
        yield single


@pytest.fixture
def shared_node(module_node: Node) -> Node:
    """The module's ``module_node`` with no accounts: those earlier tests made
    are deleted first, so a test may name its accounts freely. A failed test's
    report carries the node's log tail."""
    STARTED.append(module_node)
    if module_node.proc is None or not module_node.proc.alive():
        pytest.fail(f"the module's node {module_node.name} is not running (did a test stop it?)")
    module_node.delete_accounts()
    return module_node


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    """alpha and beta (``make_pair``), running; stopped at teardown."""
    alpha, beta = make_pair(tmp_path)
    with running(alpha, beta):
        yield alpha, beta


@pytest.fixture(scope="module")
def module_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleNodes]:
    """The nodes a module's tests share (``ModuleNodes``, tests/harness/daemons.py):
    ``module_nodes.pair(overrides)``, ``.single(overrides)``, ``.lone(overrides)``
    or ``.get(key, make)`` start them when a test first asks and give the same
    ones to the module's later tests; all are stopped after the module. A
    module wraps its call in a function-scoped fixture of its own (e.g.
    ``routed`` in tests/test_proxies.py), so each test asks anew and a
    stopped node fails the test that asked."""
    shared = ModuleNodes(tmp_path_factory.mktemp("module-nodes"))
    try:
        yield shared
    finally:
        shared.stop()


@pytest.fixture(scope="module")
def module_pair(module_nodes: ModuleNodes) -> tuple[Node, Node]:
    """alpha and beta (``make_pair``) running for a whole module; tests take
    them through ``shared_pair``."""
    return module_nodes.pair()


@pytest.fixture
def shared_pair(module_nodes: ModuleNodes) -> tuple[Node, Node]:
    """The module's running pair (``module_pair``), for tests that name
    accounts of their own and never stop, kill, restart or fail over either
    node (those take ``pair``). A failed test's report carries both nodes'
    log tails."""
    return module_nodes.pair()


def _sqlite_url(tmp_path: Path) -> str:
    """A SQLite database in ``tmp_path`` copied from the migrated template."""
    shutil.copyfile(template_database(), tmp_path / "peerd.db")
    return f"sqlite:///{tmp_path / 'peerd.db'}"


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Store:
    """A store on SQLite alone (the test closes it, or the process does)."""
    url = _sqlite_url(tmp_path)
    migrations.upgrade(url)
    return Store(url, tmp_path / "data")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store on SQLite and on the real PostgreSQL server, its schema from
    Alembic (copied from a migrated template; ``upgrade`` finds it at head)."""
    sqlite = request.param == "sqlite"
    url = _sqlite_url(tmp_path) if sqlite else request.getfixturevalue("pg_url")
    migrations.upgrade(url)
    s = Store(url, tmp_path / "data")
    try:
        yield s
    finally:
        s.close()
