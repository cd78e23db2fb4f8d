"""Real peerd daemons: a pair's configs on free loopback ports, start, stop, kill -9, restart.

A node runs as ``python -m peerd run -c CONFIG`` with the pair's temp dir as its
working directory (the config's ``data_dir`` and SQLite path are relative to it).
It is ready when ``GET /v1/health`` (no token needed) answers 200.
"""

from __future__ import annotations

import json
import signal
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.harness.procs import Proc, free_port, wait_until

__all__ = [
    "LISTENERS",
    "TOKEN",
    "Daemon",
    "pair_sections",
    "to_toml",
    "write_pair_configs",
]

TOKEN = "test-token"
LISTENERS = ("lmtp", "imap", "pop3", "sync", "http", "socketmap")

# section -> key -> value; a value of None in an override removes the key
# (e.g. {"listen": {"pop3": None}} turns that listener off).
Sections = dict[str, Any]


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


def to_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
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


def _merge(sections: Sections, overrides: Mapping[str, Any] | None) -> Sections:
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


def pair_sections(
    name: str, ports: Mapping[str, int], partner: str, partner_ports: Mapping[str, int]
) -> Sections:
    """The sections of one node's config in a pair on loopback, before overrides."""
    return {
        "node": {"name": name, "data_dir": f"var/{name}", "local_domains": ["example.test"]},
        "database": {"url": f"sqlite:///var/{name}/peerd.db"},
        "listen": {key: f"127.0.0.1:{ports[key]}" for key in LISTENERS},
        "api": {"token": TOKEN},
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
    ports = {n: {key: free_port() for key in LISTENERS} for n in ("alpha", "beta")}
    paths = []
    for name, partner, own in (("alpha", "beta", alpha), ("beta", "alpha", beta)):
        sections = pair_sections(name, ports[name], partner, ports[partner])
        _merge(sections, overrides)
        _merge(sections, own)
        path = tmpdir / f"{name}.toml"
        path.write_text(to_toml(sections))
        paths.append(path)
    return paths[0], paths[1], ports


def _http_address(config: Path) -> str:
    listen = tomllib.loads(config.read_text()).get("listen", {})
    if "http" not in listen:
        raise ValueError(f"{config} has no [listen] http: cannot tell when the node is ready")
    return str(listen["http"])


class Daemon:
    """One ``peerd run`` process. ``Daemon(config).start()`` waits for /v1/health."""

    def __init__(self, config: Path, workdir: Path | None = None, name: str | None = None) -> None:
        self.config = config
        self.workdir = workdir or config.parent
        self.name = name or config.stem
        self.http = _http_address(config)
        self.log = self.workdir / f"{self.name}.log"
        self.proc: Proc | None = None
        self.starts = 0

    @property
    def api(self) -> str:
        return f"http://{self.http}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, wait: bool = True, timeout: float = 30) -> Daemon:
        if self.proc is not None and self.proc.alive():
            raise RuntimeError(f"{self.name} is already running (pid {self.proc.pid})")
        self.starts += 1
        # One log across restarts, with a marker, so a failure shows the whole story.
        with open(self.log, "a") as handle:
            handle.write(f"\n===== start #{self.starts} of {self.name} =====\n")
        self.proc = Proc(
            [sys.executable, "-m", "peerd", "run", "-c", str(self.config)],
            self.log,
            cwd=self.workdir,
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
            wait_until(ready, timeout, f"peerd {self.name} /v1/health", interval=0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; log tail:\n{self.tail()}") from None

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

    def restart(self, wait: bool = True, timeout: float = 30) -> Daemon:
        self.stop()
        return self.start(wait, timeout)

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

    def __repr__(self) -> str:
        return f"<Daemon {self.name} pid={self.pid}>"
