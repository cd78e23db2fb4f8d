"""``scripts/pair.sh``, run for real on a copy of the repository's scripts
and configs (free ports instead of the fixed ones): one node at a time,
stopping what it started when a node fails, and an account that cannot be
created is shown, not swallowed."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.procs import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    """A repository-shaped directory: scripts/pair.sh, configs on free ports, .venv."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "pair.sh", tmp_path / "scripts" / "pair.sh")
    (tmp_path / "configs").mkdir()
    texts = {n: (ROOT / "configs" / f"{n}.toml").read_text() for n in ("alpha", "beta")}
    ports = sorted(
        {int(p) for text in texts.values() for p in re.findall(r"127\.0\.0\.1:(\d+)", text)}
    )
    fresh = {port: free_port() for port in ports}
    for name, text in texts.items():
        text = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{fresh[int(m[1])]}", text)
        text = re.sub(r"sync_port = (\d+)", lambda m: f"sync_port = {fresh[int(m[1])]}", text)
        (tmp_path / "configs" / f"{name}.toml").write_text(text)
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    try:
        yield tmp_path
    finally:
        for pidfile in (tmp_path / "var").glob("*.pid"):
            pid = int(pidfile.read_text())
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass


def pair_sh(tree: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(tree / "scripts" / "pair.sh"), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHON": sys.executable, **env},
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def port_of(tree: Path, node: str, listener: str) -> int:
    text = (tree / "configs" / f"{node}.toml").read_text()
    match = re.search(rf'^{listener} = "127\.0\.0\.1:(\d+)"', text, re.M)
    assert match is not None
    return int(match[1])


def test_one_node_starts_and_stops_alone(tree: Path) -> None:
    done = pair_sh(tree, "start", "alpha")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "alpha is running" in done.stdout and done.stderr == ""
    pid = int((tree / "var" / "alpha.pid").read_text())
    assert alive(pid) and not (tree / "var" / "beta.pid").exists()
    listed = subprocess.run(
        [sys.executable, "-m", "peerd.cli", "-c", "configs/alpha.toml", "account", "list"],
        capture_output=True,
        text=True,
        cwd=tree,
        timeout=60,
    )
    assert listed.stdout.splitlines()[1].split()[:2] == ["alice", "alpha"]
    # Again: the node restarts, the existing account is no error.
    again = pair_sh(tree, "start", "alpha")
    assert again.returncode == 0 and again.stderr == "", again.stderr
    stopped = pair_sh(tree, "stop", "alpha")
    assert stopped.returncode == 0 and stopped.stdout == "alpha stopped\n"
    assert not (tree / "var" / "alpha.pid").exists()
    assert pair_sh(tree, "start", "gamma").returncode == 2


def test_when_a_node_fails_the_ones_started_are_stopped(tree: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port_of(tree, "beta", "imap")))
        taken.listen()
        done = pair_sh(tree)
    assert done.returncode == 1, done.stdout
    assert "beta failed to start (var/beta.log):" in done.stderr
    assert "[listen] imap" in done.stderr and "already in use" in done.stderr
    assert "alpha stopped" in done.stderr
    assert not (tree / "var" / "alpha.pid").exists()
    assert not any(alive(p) for p in _daemons(tree))


def _daemons(tree: Path) -> list[int]:
    """peerd processes whose config is in this tree (none should be left)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(tree).encode() in cmdline or (
            b"peerd" in cmdline and b"configs/alpha.toml" in cmdline and _cwd(proc) == tree
        ):
            found.append(int(proc.name))
    return found


def _cwd(proc: Path) -> Path | None:
    try:
        return Path(os.readlink(proc / "cwd"))
    except OSError:
        return None


def test_an_account_that_cannot_be_created_is_shown(tree: Path) -> None:
    done = pair_sh(tree, "start", "beta", PEERD_TOKEN="not-the-token")
    try:
        assert done.returncode == 1, done.stdout + done.stderr
        assert "could not create the demo account bob on beta: peerctl: Unauthorized" in (
            done.stderr
        )
    finally:
        pair_sh(tree, "stop")
