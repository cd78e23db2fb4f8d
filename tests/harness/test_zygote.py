"""The daemon launcher (tests/harness/zygote.py): a forked daemon is the real
``peerd run`` in a process of its own, its exit status comes back, and nothing
outlives the launcher."""

from __future__ import annotations

import json
import os
import pstats
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.daemons import make_pair, make_single
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


EXITING = """
import atexit, sys, threading, time
from pathlib import Path

def late() -> None:
    time.sleep(0.3)
    Path("thread").write_text("joined")

threading.Thread(target=late).start()  # not a daemon thread: the exit waits for it
atexit.register(lambda: Path("atexit").write_text("ran after " + Path("thread").read_text()))
sys.stdout.write("written, never flushed by hand")
sys.exit(sys.argv[1] if sys.argv[1:] else None)
"""


def test_a_child_ends_as_the_interpreter_would_without_its_teardown(tmp_path: Path) -> None:
    """The launcher's child leaves with ``os._exit`` (zygote._run): first it
    does what the interpreter's exit does that anyone sees: non-daemon
    threads joined, then ``atexit`` handlers, the streams flushed, and the
    exit status ``sys.exit`` gives."""
    (tmp_path / "exiting.py").write_text(EXITING)
    said = run_module("exiting", ["the reason"], tmp_path)
    assert (said.returncode, said.stdout, said.stderr) == (
        1,
        "written, never flushed by hand",
        "the reason\n",
    )
    assert (tmp_path / "atexit").read_text() == "ran after joined"
    assert run_module("exiting", ["3"], tmp_path).returncode == 1  # a string, as Python does
    (tmp_path / "three.py").write_text("import sys\nsys.exit(3)\n")
    assert run_module("three", [], tmp_path).returncode == 3
    (tmp_path / "fine.py").write_text("print('done')\n")
    assert (
        run_module("fine", [], tmp_path).returncode,
        run_module("fine", [], tmp_path).stdout,
    ) == (
        0,
        "done\n",
    )


def test_a_pair_forked_from_the_launcher_imports_nothing_on_its_way_to_ready_and_out(
    tmp_path: Path,
) -> None:
    """What a daemon imports between its fork and its exit (an idle start,
    the ownership exchange with its partner, the stop) it imports again in
    every one of the suite's hundreds of starts: the launcher imports it
    once (zygote.PRELOAD). Seen in the daemons' profiles
    (``PEERD_TEST_PROFILE``): a module's body runs as ``<module>``."""
    nodes = make_pair(tmp_path)
    for node in nodes:
        node.extra_env["PEERD_TEST_PROFILE"] = str(tmp_path)
        node.start()
    for node in reversed(nodes):
        assert node.stop() == 0
    profiles = sorted(tmp_path.glob("peerd_run-*.prof"))
    assert len(profiles) == 2
    executed = {
        path
        for path, _, function in pstats.Stats(*map(str, profiles)).stats  # type: ignore[attr-defined]
        if function == "<module>" and path.endswith(".py")
    }
    assert any(path.endswith("peerd/__main__.py") for path in executed)  # the probe sees modules
    imported = sorted(p for p in executed if not p.endswith("peerd/__main__.py"))
    assert imported == []
