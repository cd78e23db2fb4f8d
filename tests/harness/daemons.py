"""Real peerd daemons: configs on free loopback ports, start, stop, kill -9, restart.

How this works: a config is a dict of TOML sections written by :func:`to_toml`
(one writer). :func:`pair_sections` gives one node of a pair on loopback,
:func:`single_sections` a node without a partner; overrides merge per section
(a value of ``None`` removes the key). :func:`write_pair_configs` writes
``alpha.toml`` and ``beta.toml``; :func:`make_single` and :func:`make_pair` also
wrap them in :class:`Node` objects. A node runs as ``python -m peerd run -c
CONFIG`` with its working directory holding the config (``data_dir`` and the
SQLite path are relative to it); it is ready when ``GET /v1/health`` (no token)
answers 200. Before its first start a node whose database is the default
SQLite file gets a copy of a database migrated once per process
(:func:`template_database`), so the daemon finds it at head and skips Alembic;
``Node(..., template=False)`` starts from an empty directory instead.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import shutil
import signal
import smtplib
import sqlite3
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.harness import zygote
from tests.harness.clients import Burst, audit_store, start_burst
from tests.harness.procs import Proc, free_port, wait_until

__all__ = [
    "LISTENERS",
    "SCRYPT_COST",
    "TOKEN",
    "Daemon",
    "ModuleNodes",
    "Node",
    "make_lone",
    "make_pair",
    "make_single",
    "pair_sections",
    "running",
    "single_sections",
    "template_database",
    "to_toml",
    "write_config",
    "write_pair_configs",
]

TOKEN = "test-token"
# The nodes' ``[auth] scrypt_cost``: the least a node takes, so the suite's
# thousands of account creations and logins cost microseconds, not 0.1 s of
# CPU and 32 MiB each (the default, 15). The tests of what the cost decides
# (the rehash to the node's cost, the hashing queue under a flood) set their own.
SCRYPT_COST = 4
LISTENERS = ("lmtp", "imap", "pop3", "sync", "http", "socketmap")
# make_single / make_pair nodes listen on these (no socketmap unless asked for).
NODE_LISTENERS = ("lmtp", "imap", "pop3", "sync", "http")

# section -> key -> value; a value of None in an override removes the key
# (e.g. {"listen": {"pop3": None}} turns that listener off).
Sections = dict[str, Any]


# --- TOML -----------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        # A JSON string is a valid TOML basic string (same escapes).
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(sections: Mapping[str, Any]) -> str:
    """Tables of scalars, arrays and inline tables; a list of dicts becomes an
    array of tables (``[[section]]``), e.g. ``proxy_hook``."""
    out: list[str] = []
    for name, table in sections.items():
        if isinstance(table, list):
            for item in table:
                out.append(f"[[{name}]]")
                out.extend(f"{k} = {_toml_value(v)}" for k, v in item.items() if v is not None)
                out.append("")
            continue
        out.append(f"[{name}]")
        out.extend(f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None)
        out.append("")
    return "\n".join(out)


def write_config(path: Path, sections: Mapping[str, Any]) -> None:
    """Write ``sections`` to ``path`` as TOML."""
    path.write_text(to_toml(sections))


def merge(sections: Sections, overrides: Mapping[str, Any] | None) -> Sections:
    """Merge ``overrides`` into ``sections`` per section (``None`` removes a key or section)."""
    for section, values in (overrides or {}).items():
        if values is None:
            sections.pop(section, None)
        elif isinstance(values, Mapping):
            table = sections.setdefault(section, {})
            for key, value in values.items():
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value
        else:  # e.g. a list of [[proxy_hook]] tables replaces the section
            sections[section] = values
    return sections


# --- configs --------------------------------------------------------------------


def _common(name: str, ports: Mapping[str, int]) -> Sections:
    return {
        "node": {"name": name, "data_dir": f"var/{name}", "local_domains": ["example.test"]},
        "database": {"url": f"sqlite:///var/{name}/peerd.db"},
        "listen": {key: f"127.0.0.1:{port}" for key, port in ports.items()},
        "api": {"token": TOKEN},
        "auth": {"scrypt_cost": SCRYPT_COST},
    }


def pair_sections(
    name: str, ports: Mapping[str, int], partner: str, partner_ports: Mapping[str, int]
) -> Sections:
    """The sections of one node's config in a pair on loopback, before overrides.
    Every port in ``ports`` becomes a listener."""
    return {
        **_common(name, ports),
        "sync": {
            "sync_host": "127.0.0.1",
            "sync_port": partner_ports["sync"],
            "sync_authname": "repl",
            "sync_password": "repl-secret",
            "sync_compress": True,
            "sync_log": True,
            "sync_repeat_interval": "1s",
        },
        "partner": {"name": partner, "api": f"http://127.0.0.1:{partner_ports['http']}"},
    }


def single_sections(name: str, ports: Mapping[str, int]) -> Sections:
    """A node with no partner: it serves its own accounts and accepts sync logins."""
    return {
        **_common(name, ports),
        "lmtp": {"shutdown_grace": "10s"},
        "sync": {"sync_authname": "repl", "sync_password": "repl-secret"},
    }


def _lively(partner_ports: Mapping[str, int]) -> Sections:
    """What :func:`make_pair` adds to :func:`pair_sections`: fast rolling
    replication and reconnects, and routing to the partner's services."""
    return {
        "lmtp": {"shutdown_grace": "10s"},
        "sync": {"sync_repeat_interval": "200ms", "sync_reconnect_maxwait": "1s"},
        "routing": {
            "partner_imap": f"127.0.0.1:{partner_ports['imap']}",
            "partner_pop3": f"127.0.0.1:{partner_ports['pop3']}",
            "partner_lmtp": f"127.0.0.1:{partner_ports['lmtp']}",
        },
    }


def _ports(listeners: tuple[str, ...]) -> dict[str, int]:
    return {key: free_port() for key in listeners}


def write_pair_configs(
    tmpdir: Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    alpha: Mapping[str, Any] | None = None,
    beta: Mapping[str, Any] | None = None,
) -> tuple[Path, Path, dict[str, dict[str, int]]]:
    """Write ``alpha.toml`` and ``beta.toml`` in ``tmpdir`` for a pair on free ports.

    ``overrides`` is merged per section into both configs, then ``alpha`` /
    ``beta`` into that node's only. Returns the two paths and the ports:
    ``{"alpha": {"lmtp": P, "imap": P, "pop3": P, "sync": P, "http": P, "socketmap": P}, "beta": {...}}``.
    """
    tmpdir.mkdir(parents=True, exist_ok=True)
    ports = {n: _ports(LISTENERS) for n in ("alpha", "beta")}
    paths = []
    for name, partner, own in (("alpha", "beta", alpha), ("beta", "alpha", beta)):
        sections = pair_sections(name, ports[name], partner, ports[partner])
        merge(sections, overrides)
        merge(sections, own)
        path = tmpdir / f"{name}.toml"
        write_config(path, sections)
        paths.append(path)
    return paths[0], paths[1], ports


# --- a migrated database to copy ------------------------------------------------

_TEMPLATE: Path | None = None


def template_database() -> Path:
    """A SQLite database at the migrations' head, made once per process."""
    global _TEMPLATE
    if _TEMPLATE is None:
        import migrations

        where = Path(tempfile.mkdtemp(prefix="peerd-template-"))
        atexit.register(shutil.rmtree, where, True)
        path = where / "peerd.db"
        migrations.upgrade(f"sqlite:///{path}")
        # Fold the WAL into the file, so copying the file alone copies everything.
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        _TEMPLATE = path
    return _TEMPLATE


# --- a node ---------------------------------------------------------------------


# Every node started since the current test began (tests/conftest.py clears it
# and, when the test fails, adds each one's log tail to the report).
STARTED: list[Node] = []


class Node:
    """One ``peerd run`` process: ``Node(config).start()`` waits for /v1/health.

    ``ports`` maps each ``[listen]`` name to its port (read when the node is
    made; a test may add to it), ``call`` speaks to the control API, and the
    helpers below cover what the tests do most (accounts, mailboxes, LMTP,
    replicate, an audit of the store on disk).
    """

    def __init__(
        self,
        config: Path,
        workdir: Path | None = None,
        name: str | None = None,
        *,
        template: bool = True,
    ) -> None:
        self.config = config
        self.workdir = workdir or config.parent
        self.name = name or config.stem
        self.template = template
        listen = self._sections().get("listen", {})
        if "http" not in listen:
            raise ValueError(f"{config} has no [listen] http: cannot tell when the node is ready")
        self.http = str(listen["http"])
        self.ports: dict[str, int] = {k: _port(v) for k, v in listen.items()}
        self.log = self.workdir / f"{self.name}.log"
        self.proc: Proc | None = None
        self.starts = 0
        # Added to the daemon's environment (on top of this process's).
        self.extra_env: dict[str, str] = {}

    def _sections(self) -> dict[str, Any]:
        return tomllib.loads(self.config.read_text())

    # --- where things are

    @property
    def api(self) -> str:
        return f"http://{self.http}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def workdir_data(self) -> Path:
        return self.workdir / "var" / self.name

    @property
    def db_path(self) -> Path:
        return self.workdir_data / "peerd.db"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    def db_row(self, sql: str, *params: object) -> tuple[Any, ...] | None:
        """The first row ``sql`` gives on this node's SQLite database, read-only
        (beside the running daemon: WAL readers do not block it)."""
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30) as db:
            row = db.execute(sql, params).fetchone()
        return None if row is None else tuple(row)

    def port(self, listener: str) -> int:
        """The port of ``listener`` as the config says now."""
        return _port(self._sections()["listen"][listener])

    # --- life cycle

    def _seed_database(self) -> None:
        """Copy the migrated template to the default SQLite path if nothing is there yet."""
        url = self._sections().get("database", {}).get("url")
        if url != f"sqlite:///var/{self.name}/peerd.db" or self.db_path.exists():
            return
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template_database(), self.db_path)

    def start(
        self,
        wait: bool = True,
        timeout: float = 30,
        preexec: Callable[[], None] | None = None,
    ) -> Node:
        """Start ``peerd run``; with ``wait``, return once it serves /v1/health.
        ``preexec`` runs in the child before exec (e.g. a resource limit)."""
        if self.proc is not None and self.proc.alive():
            raise RuntimeError(f"{self.name} is already running (pid {self.proc.pid})")
        if self.starts == 0 and self.template:
            self._seed_database()
        self.starts += 1
        STARTED.append(self)
        # One log across restarts (appended to), so a failure shows the whole
        # story; nothing but the daemon writes to it (a test may parse it).
        argv = ["run", "-c", str(self.config)]
        env = {**os.environ, **self.extra_env} if self.extra_env else None
        # The interpreter's own variables (PYTHONPATH: another tree's code, a
        # sitecustomize) act only when an interpreter starts: a daemon that
        # sets one is exec'd, not forked from the launcher, whose modules are
        # already imported.
        interpreter_env = any(key.startswith("PYTHON") for key in self.extra_env)
        if preexec is None and not interpreter_env and zygote.enabled():
            # Forked from this process's launcher, its modules already imported
            # (tests/harness/zygote.py): the same daemon, a second less CPU.
            self.proc = zygote.spawn(argv, self.log, self.workdir, env)
        else:
            self.proc = Proc(
                [sys.executable, "-m", "peerd", *argv],
                self.log,
                cwd=self.workdir,
                env=env,
                preexec=preexec,
            ).start()
        if wait:
            self.wait_ready(timeout)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api}/v1/health", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            if self.proc is None or not self.proc.alive():
                code = self.proc.returncode if self.proc else None
                raise RuntimeError(
                    f"peerd {self.name} exited (code {code}) before it was ready; log tail:\n"
                    f"{self.tail()}"
                )
            return self.healthy()

        try:
            wait_until(ready, timeout, f"peerd {self.name} /v1/health", interval=0.05)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; log tail:\n{self.tail()}") from None

    def status_text(self) -> str:
        """``/v1/status`` as JSON text, or why it could not be read (for failure reports)."""
        try:
            request = urllib.request.Request(self.api + "/v1/status")
            request.add_header("Authorization", f"Bearer {TOKEN}")
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.dumps(json.loads(response.read()), indent=1)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # HTTPException: the port answers, but not as HTTP (the node is gone
            # and another process has the port).
            return f"(status unavailable: {exc!r})"

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (a clean shutdown), wait, then SIGKILL. Returns the exit code."""
        return self.proc.stop(timeout, sig=signal.SIGTERM) if self.proc is not None else None

    def kill9(self) -> None:
        """A crash: SIGKILL, no chance to clean up."""
        if self.proc is not None:
            self.proc.kill9()

    def restart(self, wait: bool = True, timeout: float = 30) -> Node:
        self.stop()
        return self.start(wait, timeout)

    # --- the control API

    def call(self, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> Any:
        """A control-API request; returns the decoded JSON (HTTPError on a 4xx/5xx)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.api + path, data=data, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=120) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def add_account(self, name: str, password: str = "secret", **extra: Any) -> Any:
        return self.call("POST", "/v1/accounts", {"name": name, "password": password, **extra})

    def delete_accounts(self) -> list[str]:
        """Delete every account this node lists (a node shared by a module's
        tests: each test then starts from no accounts). Returns the names."""
        names = [str(a["name"]) for a in self.call("GET", "/v1/accounts")["accounts"]]
        for name in names:
            self.call("DELETE", f"/v1/accounts/{quote(name)}")
        return names

    def mailbox(self, account: str, mailbox: str = "INBOX", expunged: bool = False) -> Any:
        query = "?expunged=1" if expunged else ""
        return self.call(
            "GET", f"/v1/accounts/{quote(account)}/mailboxes/{quote(mailbox, safe='')}{query}"
        )

    def records(self, account: str, mailbox: str = "INBOX") -> list[dict[str, Any]]:
        return list(self.mailbox(account, mailbox)["messages"])

    def replicate(self, account: str, **extra: Any) -> Any:
        return self.call("POST", "/v1/replicate", {"account": account, **extra})

    # --- clients and checks

    def lmtp(self, timeout: float = 30) -> smtplib.LMTP:
        """An LMTP client connected to this node."""
        return smtplib.LMTP("127.0.0.1", self.port("lmtp"), timeout=timeout)

    def burst(self, account: str, threads: int, per_thread: int, tag: str = "burst") -> Burst:
        """Start delivering ``TAG-T-I`` messages to ``account``; returns at once."""
        return start_burst(self.port("lmtp"), account, threads, per_thread, tag)

    def audit(self, account: str) -> list[str]:
        """Open the node's store in this process (the node may be down) and check
        it: every record's spool file is whole (bytes match the GUID), checksums,
        ``exists`` and quota usage agree with the records. Returns the subjects
        of the live records, all mailboxes, in UID order."""
        return audit_store(self.db_url, self.workdir_data, account)

    def __repr__(self) -> str:
        return f"<Node {self.name} pid={self.pid}>"


# The harness's earlier name for the same class.
Daemon = Node


def _port(address: str) -> int:
    return int(str(address).rpartition(":")[2])


def make_single(
    workdir: Path,
    name: str = "alpha",
    overrides: Mapping[str, Any] | None = None,
    *,
    template: bool = True,
) -> Node:
    """A node without a partner, config in ``workdir/NAME.toml`` (not started)."""
    workdir.mkdir(parents=True, exist_ok=True)
    sections = merge(single_sections(name, _ports(NODE_LISTENERS)), overrides)
    config = workdir / f"{name}.toml"
    write_config(config, sections)
    return Node(config, workdir, name, template=template)


def make_lone(workdir: Path, overrides: Mapping[str, Any] | None = None) -> Node:
    """Node alpha of a pair whose partner beta is named (an account can be
    owned by beta) but has no sync address: no replication runs. Config in
    ``workdir/alpha.toml``, ``overrides`` merged into it; not started."""
    alpha, _, _ = write_pair_configs(workdir, {"sync": {"sync_host": None}}, alpha=overrides)
    return Node(alpha)


def make_pair(
    workdir: Path,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    template: bool = True,
) -> tuple[Node, Node]:
    """alpha and beta replicating to each other (rolling every 200 ms) and routing
    to each other; ``overrides`` is ``{"alpha": {...}, "beta": {...}}``. Not started."""
    workdir.mkdir(parents=True, exist_ok=True)
    ports = {"alpha": _ports(NODE_LISTENERS), "beta": _ports(NODE_LISTENERS)}
    nodes = []
    for name, partner in (("alpha", "beta"), ("beta", "alpha")):
        sections = pair_sections(name, ports[name], partner, ports[partner])
        merge(sections, _lively(ports[partner]))
        merge(sections, (overrides or {}).get(name))
        config = workdir / f"{name}.toml"
        write_config(config, sections)
        nodes.append(Node(config, workdir, name, template=template))
    return nodes[0], nodes[1]


@contextmanager
def running(*nodes: Node) -> Iterator[tuple[Node, ...]]:
    """Start the nodes together, wait until each serves, stop them all (by pid) at the end."""
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            node.wait_ready()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


class ModuleNodes:
    """Nodes a module's tests share (``module_nodes`` in tests/conftest.py):
    ``get(key, make)`` builds them with ``make(workdir)`` (not started: a
    :class:`Node` or a tuple of them) and starts them together the first
    time a test asks for ``key``, and gives the same ones to every later test
    of the module that asks for it; :meth:`stop` stops them all, at once, at
    the module's end. One key per distinct config: ``pair(overrides)`` and
    ``single(overrides)`` key theirs by the config itself.

    Sound for tests that only deliver, read and check, each with accounts of
    its own (the nodes keep what earlier tests left: names must not clash,
    and node-wide counters and logs are read as differences). A test that
    stops, kills, restarts, fails over or reconfigures a node takes its own.
    Each time the nodes are handed out they must still run (a test that
    stopped one fails here, not somewhere later), and they join the test's
    ``STARTED``: a failed test's report carries their log tails."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._nodes: dict[str, tuple[Node, ...]] = {}

    def get(self, key: str, make: Callable[[Path], Node | tuple[Node, ...]]) -> tuple[Node, ...]:
        nodes = self._nodes.get(key)
        if nodes is None:
            made = make(self.root / f"shared-{len(self._nodes)}")
            nodes = made if isinstance(made, tuple) else (made,)
            self._nodes[key] = nodes
            for node in nodes:
                node.start(wait=False)
            for node in nodes:
                node.wait_ready()
        for node in nodes:
            if node.proc is None or not node.proc.alive():
                raise RuntimeError(
                    f"the module's shared {node.name} ({key}) is not running: did a test stop"
                    f" it? log tail:\n{node.tail()}"
                )
            STARTED.append(node)
        return nodes

    def pair(self, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[Node, Node]:
        """A running :func:`make_pair` pair with ``overrides``, the module's one for that config."""
        key = "pair " + json.dumps(overrides, sort_keys=True, default=str)
        alpha, beta = self.get(key, lambda workdir: make_pair(workdir, overrides))
        return alpha, beta

    def single(self, overrides: Mapping[str, Any] | None = None, *, clean: bool = True) -> Node:
        """A running :func:`make_single` node with ``overrides``, the module's
        one for that config; with ``clean``, the accounts earlier tests made
        are deleted first (so a test may name its accounts freely)."""
        key = "single " + json.dumps(overrides, sort_keys=True, default=str)
        (node,) = self.get(key, lambda workdir: make_single(workdir, overrides=overrides))
        if clean:
            node.delete_accounts()
        return node

    def lone(self, overrides: Mapping[str, Any] | None = None, *, clean: bool = True) -> Node:
        """Like :meth:`single`, a :func:`make_lone` node (its partner named, never running)."""
        key = "lone " + json.dumps(overrides, sort_keys=True, default=str)
        (node,) = self.get(key, lambda workdir: make_lone(workdir / "node", overrides))
        if clean:
            node.delete_accounts()
        return node

    def stop(self) -> None:
        """Stop every node by its pid, one after the other (as :func:`running` does)."""
        nodes = [node for group in self._nodes.values() for node in group]
        self._nodes.clear()
        for node in nodes:
            node.stop()
