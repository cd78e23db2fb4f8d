"""The errors a new admin hits first: each is one line saying what to do,
exit status 2, never a traceback (issue 12, "Errors a newcomer hits")."""

from __future__ import annotations

import functools
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness.certs import self_signed
from tests.harness.clients import run_command
from tests.harness.procs import free_port, wait_until
from tests.nodes import Node, peerctl, write_config

LoneNode = Callable[..., Node]


def _peerd(*args: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return run_command("peerd", args, cwd, timeout=timeout)


def _refused_in_one_line(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit status 2, no traceback, and the last line of stderr says it all."""
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "Traceback" not in out, out
    last = done.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, last
    return last


def _variant(node: Node, path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    sections = tomllib.loads(node.config.read_text())
    change(sections)
    write_config(path, sections)
    return path


# -- check-config ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda s: s["api"].update(token="change-me"), "[api] token is still the example's"),
        (
            lambda s: s["sync"].update(sync_password="change-me-too"),
            "[sync] sync_password is still the example's",
        ),
        (lambda s: s["partner"].update(name="alpha"), "[partner] name: 'alpha' is this node's"),
        (
            lambda s: s["sync"].pop("sync_password"),
            "[listen] sync is set but [sync] sync_authname/sync_password are not",
        ),
    ],
    ids=["example-token", "example-sync-password", "partner-is-self", "sync-listener-open"],
)
def test_check_config_and_run_refuse_what_must_not_serve(
    lone_node: LoneNode, tmp_path: Path, change: Callable[[dict[str, Any]], None], needle: str
) -> None:
    node = lone_node(start=False)
    bad = _variant(node, node.workdir / "bad.toml", change)
    line = _refused_in_one_line(_peerd("check-config", "-c", str(bad), cwd=node.workdir), needle)
    assert line.startswith(f"peerd: {bad}: ")
    # `run` refuses the same before it touches anything.
    _refused_in_one_line(_peerd("run", "-c", str(bad), cwd=node.workdir), needle)


def test_certificates_that_do_not_load_are_refused_before_anything_opens(
    lone_node: LoneNode,
) -> None:
    """A missing certificate, a key that is not the certificate's, a CA file
    that holds no certificate: one line naming the key and the file, from
    check-config and from run (which used to migrate the database, start the
    LMTP worker and then die with a traceback from the IMAP listener)."""
    node = lone_node(start=False)
    cert, key = self_signed(node.workdir, "one")
    _, other_key = self_signed(node.workdir, "two")
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"tls": {"cert": str(node.workdir / "gone.crt"), "key": str(key)}},
            "[tls] cert: cannot read",
        ),
        ({"tls": {"cert": str(cert), "key": str(other_key)}}, "do not load as a pair"),
        ({"tls": {"cert": str(cert)}}, "[tls] cert and key go together"),
        ({"sync": {"sync_tls_ca": str(key)}}, "[sync] sync_tls_ca: " + str(key)),
    ]
    for number, (tables, needle) in enumerate(cases):
        bad = _variant(
            node, node.workdir / f"tls{number}.toml", functools.partial(_merge, tables=tables)
        )
        _refused_in_one_line(_peerd("check-config", "-c", str(bad), cwd=node.workdir), needle)
        _refused_in_one_line(_peerd("run", "-c", str(bad), cwd=node.workdir), needle)
    assert not node.db_path.exists()  # run refused before it migrated anything
    good = _variant(
        node,
        node.workdir / "good.toml",
        lambda s: _merge(s, {"tls": {"cert": str(cert), "key": str(key)}}),
    )
    assert _peerd("check-config", "-c", str(good), cwd=node.workdir).returncode == 0


def _merge(sections: dict[str, Any], tables: dict[str, Any]) -> None:
    for name, table in tables.items():
        sections.setdefault(name, {}).update(table)


# -- peerd run ---------------------------------------------------------------------


def test_a_port_in_use_is_one_line_naming_the_listener(lone_node: LoneNode) -> None:
    node = lone_node(start=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", node.ports["imap"]))
        taken.listen()
        done = _peerd("run", "-c", str(node.config), cwd=node.workdir)
    _refused_in_one_line(done, "[listen] imap", "already in use", str(node.ports["imap"]))


def test_postgresql_unreachable_is_one_line(lone_node: LoneNode) -> None:
    node = lone_node(start=False)
    url = f"postgresql+psycopg://peerd:pw@127.0.0.1:{free_port()}/peerd"
    bad = _variant(node, node.workdir / "pg.toml", lambda s: s["database"].update(url=url))
    done = _peerd("run", "-c", str(bad), cwd=node.workdir)
    _refused_in_one_line(done, "cannot reach the database", "start PostgreSQL", "[database] url")


def test_a_second_daemon_on_the_same_data_dir_is_refused(lone_node: LoneNode) -> None:
    node = lone_node()

    def other_ports(sections: dict[str, Any]) -> None:
        sections["listen"] = {k: f"127.0.0.1:{free_port()}" for k in sections["listen"]}

    second = _variant(node, node.workdir / "second.toml", other_ports)
    done = _peerd("run", "-c", str(second), cwd=node.workdir)
    _refused_in_one_line(done, "is in use by another peerd", f"(pid {node.pid})")
    assert node.healthy()
    # Once the first stops, the lock is free again.
    assert node.stop() == 0
    node.start()


def test_a_data_dir_just_created_is_said_at_start(lone_node: LoneNode, tmp_path: Path) -> None:
    node = lone_node(start=False)
    fresh = tmp_path / "elsewhere" / "alpha"
    config = _variant(
        node,
        node.workdir / "fresh.toml",
        lambda s: s.update(node={**s["node"], "data_dir": str(fresh)}, database={}),
    )
    moved = Node(config, node.workdir, name="fresh", template=False)
    try:
        moved.start()
        text = moved.log.read_text()
        assert f"data_dir {fresh} did not exist and was just created" in text
        assert "starts with 0 account(s)" in text
        moved.add_account("alice")
        moved.restart()
        assert moved.log.read_text().count("was just created") == 1
    finally:
        moved.stop()


# -- peerctl -----------------------------------------------------------------------


def test_peerctl_into_a_closed_pipe_says_nothing(lone_node: LoneNode) -> None:
    node = lone_node()
    proc = subprocess.Popen(
        [sys.executable, "-m", "peerd.cli", "-c", str(node.config), "status"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=node.workdir,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head` that has read enough: no reader left
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(60) == 2
    assert err == ""


def test_ctrl_c_at_the_password_prompt_is_one_line(lone_node: LoneNode) -> None:
    node = lone_node()
    argv = [sys.executable, "-m", "peerd.cli", "-c", str(node.config), "account", "add", "zed"]
    pid, master = pty.fork()
    if pid == 0:  # the child: a terminal of its own, as at a shell
        os.chdir(node.workdir)
        # As a shell's foreground command has it: pytest run as a background
        # job (CI, nohup) ignores SIGINT, and exec would pass that on.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execv(sys.executable, argv)
    output = b""
    try:
        deadline = time.monotonic() + 60
        while b"Password:" not in output and time.monotonic() < deadline:
            if select.select([master], [], [], 1)[0]:
                output += os.read(master, 1024)
        assert b"Password:" in output, output
        os.write(master, b"\x03")  # Ctrl-C: the terminal sends SIGINT
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(master, 1024)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        # Wait for its exit, but not for ever: one still at the prompt fails.
        done, status = os.waitpid(pid, os.WNOHANG)
        while not done and time.monotonic() < deadline + 10:
            time.sleep(0.05)
            done, status = os.waitpid(pid, os.WNOHANG)
        assert done, f"peerctl did not exit on Ctrl-C: {output!r}"
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(master)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 2, text
    assert "peerctl: interrupted" in text and "Traceback" not in text, text
    assert node.call("GET", "/v1/accounts")["accounts"] == []


def test_reconcile_of_one_account_fails_with_a_non_zero_status(lone_node: LoneNode) -> None:
    # A partner named but not there: the reconcile cannot compare anything.
    node = lone_node({"sync": {"sync_host": "127.0.0.1", "sync_port": free_port()}})
    node.add_account("alice")
    done = peerctl(node, "reconcile", "-u", "alice")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED alice" in done.stdout
    assert "peerctl: reconcile failed: 1 account(s)" in done.stderr


# -- sizes -------------------------------------------------------------------------


def test_quotas_take_size_units_in_peerctl_and_the_api(lone_node: LoneNode) -> None:
    node = lone_node()
    done = peerctl(
        node, "account", "add", "alice", "--quota", "10M", "--password-stdin", stdin="pw\n"
    )
    assert done.returncode == 0, done.stderr
    assert "quota 10.0 MiB" in done.stdout
    assert node.call("GET", "/v1/accounts/alice")["quota_limit"] == 10 << 20
    done = peerctl(node, "account", "quota", "alice", "5M")
    assert done.returncode == 0, done.stderr
    assert node.call("GET", "/v1/accounts/alice")["quota_limit"] == 5 << 20
    node.call("PUT", "/v1/accounts/alice/quota", {"quota_limit": "1G"})
    assert node.call("GET", "/v1/accounts/alice")["quota_limit"] == 1 << 30
    node.call("PUT", "/v1/accounts/alice/quota", {"quota_limit": 1234})
    assert node.call("GET", "/v1/accounts/alice")["quota_limit"] == 1234
    node.call("POST", "/v1/accounts", {"name": "bob", "password": "pw", "quota_limit": "512K"})
    assert node.call("GET", "/v1/accounts/bob")["quota_limit"] == 512 << 10
    done = peerctl(node, "account", "quota", "alice", "5 parsecs")
    assert done.returncode == 2 and "give bytes, a size like 10M" in done.stderr


def test_run_refuses_in_one_line_what_used_to_crash_at_start(lone_node: LoneNode) -> None:
    """check-config said ok to each of these and `run` then died with a
    traceback (exit status 1, which systemd restarts on): FileExistsError
    from a data_dir that is a file, EADDRNOTAVAIL from a listener on an
    address this host does not have, ArgumentError from a database URL."""
    node = lone_node(start=False)
    a_file = node.workdir / "not-a-dir"
    a_file.write_text("")
    cases: list[tuple[Callable[[dict[str, Any]], None], str]] = [
        (lambda s: s["node"].update(data_dir=str(a_file)), "[node] data_dir"),
        # 192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of this host.
        (lambda s: s["listen"].update(imap="192.0.2.1:1143"), "[listen] imap: cannot listen"),
        (lambda s: s["database"].update(url="sqlite"), "[database] url: not a database URL"),
    ]
    for number, (change, needle) in enumerate(cases):
        bad = _variant(node, node.workdir / f"start{number}.toml", change)
        for command in ("check-config", "run"):
            _refused_in_one_line(_peerd(command, "-c", str(bad), cwd=node.workdir), needle)
    assert not node.db_path.exists()


def test_a_reload_to_a_config_that_must_not_serve_keeps_the_running_one(
    lone_node: LoneNode,
) -> None:
    """SIGHUP read the file with less care than check-config and run: a sync
    CA file that holds no certificate was applied (every later sync
    connection failed), and a duration of inf logged a traceback."""
    node = lone_node()
    _, key = self_signed(node.workdir, "one")
    original = node.config.read_text()
    assert node.pid is not None
    edits: list[Callable[[dict[str, Any]], None]] = [
        lambda s: s.setdefault("sync", {}).update(sync_tls_ca=str(key)),
        lambda s: s.setdefault("imap", {}).update(idle_timeout=float("inf")),
    ]
    for number, change in enumerate(edits, start=1):
        node.config.write_text(original)
        _variant(node, node.config, change)
        os.kill(node.pid, signal.SIGHUP)
        wait_until(
            lambda n=number: node.log.read_text().count("config not reloaded") >= n,  # type: ignore[misc]
            20,
            f"reload refusal {number}",
        )
    log = node.log.read_text()
    assert "Traceback" not in log and "reload failed" not in log, log
    assert "[sync] sync_tls_ca: " in log and "[imap] idle_timeout: longer than" in log
    counters = node.call("GET", "/v1/status")["counters"]
    assert counters["config_reload_failures"] == 2 and counters.get("config_reloads", 0) == 0
    node.config.write_text(original)
    assert node.healthy()
