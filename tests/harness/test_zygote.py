"""The daemon launcher (tests/harness/zygote.py): a forked daemon is the real
``peerd run`` in a process of its own, its exit status comes back, and nothing
outlives the launcher."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.daemons import make_single
from tests.harness.procs import kill9, pid_alive, wait_until
from tests.harness.zygote import ForkedProc, Launcher, run_module, spawn


@pytest.fixture
def launcher() -> Iterator[Launcher]:
    """A launcher of this test's own (not the one the other tests' nodes share)."""
    own = Launcher()
    try:
        yield own
    finally:
        own.close()


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def test_a_node_runs_forked_from_the_launcher_in_a_session_of_its_own(tmp_path: Path) -> None:
    node = make_single(tmp_path)
    node.start()
    try:
        proc = node.proc
        assert isinstance(proc, ForkedProc)
        assert os.getsid(proc.pid) == proc.pid  # its own session and process group
        assert _ppid(proc.pid) == proc.launcher.pid
        assert Path(f"/proc/{proc.pid}/cwd").resolve() == node.workdir.resolve()
        node.add_account("amy")
        with node.lmtp() as lmtp:  # its LMTP worker (a child of its own) serves
            lmtp.sendmail("x@example.test", ["amy"], b"Subject: forked\r\n\r\nhi\r\n")
        assert node.audit("amy") == ["forked"]
    finally:
        code = node.stop()
    assert code == 0  # its exit status, as the launcher reaped it
    log = node.log.read_text()  # its stdout and stderr
    assert "node alpha ready" in log and "node alpha stopped" in log


def test_exit_statuses_come_back_as_popen_gives_them(tmp_path: Path, launcher: Launcher) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nname = 1\n")
    failed = spawn(["run", "-c", str(bad)], tmp_path / "bad.log", tmp_path, None, launcher)
    assert failed.wait(60) == 2  # peerd's exit status for a config it refuses
    assert "peerd:" in (tmp_path / "bad.log").read_text()  # its stderr went to the log
    node = make_single(tmp_path / "n")
    node.proc = spawn(["run", "-c", str(node.config)], node.log, node.workdir, None, launcher)
    node.wait_ready()
    node.kill9()
    assert node.proc.returncode == -signal.SIGKILL
    assert not pid_alive(node.proc.pid)


def test_daemons_die_with_their_launcher_and_a_new_launcher_starts(
    tmp_path: Path, launcher: Launcher
) -> None:
    node = make_single(tmp_path)
    node.proc = spawn(["run", "-c", str(node.config)], node.log, node.workdir, None, launcher)
    node.wait_ready()
    daemon, first = node.proc.pid, launcher.pid
    assert first is not None
    kill9(first)  # the launcher crashes: PR_SET_PDEATHSIG takes its daemon down
    wait_until(lambda: not pid_alive(daemon), 20, "the daemon to die with its launcher")
    assert not node.proc.alive()
    dead = node.proc
    node.proc = spawn(["run", "-c", str(node.config)], node.log, node.workdir, None, launcher)
    node.wait_ready()
    assert launcher.pid not in (None, first)
    assert dead.returncode == -signal.SIGKILL  # not asked of the new launcher
    again = node.proc.pid
    launcher.close()  # what the launcher does when pytest exits or dies: its socket closes
    wait_until(lambda: not pid_alive(again), 20, "the daemon to be killed by its closing launcher")


def test_a_command_run_through_the_launcher_gives_what_subprocess_run_gives(
    tmp_path: Path,
) -> None:
    node = make_single(tmp_path)
    good = run_module("peerd", ["check-config", "-c", str(node.config)], tmp_path)
    assert (good.returncode, good.stderr) == (0, "")
    assert good.stdout == f"{node.config}: ok (node alpha)\n"
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nname = 1\n")
    refused = run_module("peerd", ["check-config", "-c", str(bad)], tmp_path)
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr.startswith(f"peerd: {bad}")
    helped = run_module(
        "peerd.cli", ["--help"], tmp_path
    )  # peerctl (its stdin: tests/test_api_cli.py)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: peerctl")


def test_the_cost_log_has_a_line_per_reaped_child_with_its_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``PEERD_TEST_COSTLOG``: the launcher (which reads its environment when
    it starts) appends what each child ran, the test that started it, its
    wall time and its CPU, once it has reaped it."""
    log = tmp_path / "costs.jsonl"
    monkeypatch.setenv("PEERD_TEST_COSTLOG", str(log))
    own = Launcher()
    try:
        bad = tmp_path / "bad.toml"
        bad.write_text("[node]\nname = 1\n")
        argv = ["run", "-c", str(bad)]
        failed = spawn(argv, tmp_path / "bad.log", tmp_path, None, own)
        assert failed.wait(60) == 2
    finally:
        own.close()
    (line,) = [json.loads(text) for text in log.read_text().splitlines()]
    assert line["kind"] == "peerd run"
    assert line["test"] == os.environ["PYTEST_CURRENT_TEST"].split(" ")[0]
    assert line["user"] + line["sys"] > 0 and line["wall"] > 0
