"""The supported install (docs/install.md), done for real: build the wheel,
run scripts/install.sh into a temp layout as root, start the installed unit's
``ExecStart`` as its ``User`` the way systemd would (no systemd in these
machines: the test plays its part, ``NOTIFY_SOCKET`` included), talk to it,
stop it by pid, and install again as an upgrade does.
"""

from __future__ import annotations

import configparser
import grp
import os
import pwd
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Proc, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
USER = "peerd-itest"
VENDORED = ("engine", "ownership", "migrations")

sys.path.insert(0, str(ROOT / "scripts"))
from make_config import set_values  # type: ignore[import-not-found]  # noqa: E402


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(
            "the install creates a system user and chowns directories: "
            "run as root (CI does, through scripts/test.sh)"
        )
    for tool in ("useradd", "runuser", "install"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built as an admin would (pip, with build isolation)."""
    _require_root()
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (found,) = out.glob("peerd-*.whl")
    return found


@pytest.fixture
def layout() -> Iterator[Path]:
    """A temp root the service user can traverse (pytest's tmp_path is 0700)."""
    _require_root()
    root = Path(tempfile.mkdtemp(prefix="peerd-install-"))
    root.chmod(0o755)
    _remove_user()  # one a killed run left behind: the install must create it
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
        _remove_user()


def _remove_user() -> None:
    """The test's own service user and group (a name no one else uses), gone:
    the next run starts from a machine without them."""
    subprocess.run(["userdel", USER], check=False, capture_output=True)
    subprocess.run(["groupdel", USER], check=False, capture_output=True)
    assert not _user_exists()
    assert USER not in {group.gr_name for group in grp.getgrall()}


def _user_exists() -> bool:
    try:
        pwd.getpwnam(USER)
        return True
    except KeyError:
        return False


def _install(root: Path, wheel: Path) -> subprocess.CompletedProcess[str]:
    argv = [
        "bash",
        str(ROOT / "scripts" / "install.sh"),
        "--name",
        "gamma",
        "--hostname",
        "gamma.example.test",
        "--wheel",
        str(wheel),
        "--user",
        USER,
        "--prefix",
        f"{root}/opt/peerd",
        "--config-dir",
        f"{root}/etc/peerd",
        "--state-dir",
        f"{root}/var/lib/peerd",
        "--unit-dir",
        f"{root}/etc/systemd/system",
        "--doc-dir",
        f"{root}/usr/share/doc/peerd",
        "--bin-dir",
        f"{root}/usr/local/bin",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(path.read_text())
    return unit


def _mode(path: Path) -> tuple[str, str, int]:
    st = path.stat()
    return (
        pwd.getpwuid(st.st_uid).pw_name,
        grp.getgrgid(st.st_gid).gr_name,
        stat.S_IMODE(st.st_mode),
    )


def test_the_wheel_puts_only_peerd_into_site_packages(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = archive.read("peerd-0.1.0.dist-info/top_level.txt").decode().split()
        env = archive.read("peerd/migrations/env.py").decode()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"peerd", "peerd-0.1.0.dist-info"}, tops
    assert top_level == ["peerd"]
    for package in VENDORED:
        assert f"peerd/{package}/__init__.py" in names
    assert "peerd/migrations/alembic.ini" in names
    assert "peerd/migrations/versions/0001_store_and_ownership_tables.py" in names
    # The import statements were rewritten; the docstring that names engine.db was not.
    assert "from peerd.engine.db import make_engine, metadata" in env
    assert "one metadata (engine.db)" in env
    assert "\nfrom engine" not in env and "\nimport engine" not in env


def test_install_start_as_the_unit_would_stop_and_upgrade(wheel: Path, layout: Path) -> None:
    first = _install(layout, wheel)
    config = layout / "etc/peerd/peerd.toml"
    unit = _unit(layout / "etc/systemd/system/peerd.service")
    service = unit["Service"]

    # The unit: what systemd needs, pointing at what the script made.
    assert service["Type"] == "notify"
    assert service["User"] == USER and service["Group"] == USER
    assert "2" in service["RestartPreventExitStatus"].split()
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert service[key] == "yes"
    assert service["ProtectSystem"] == "strict"
    doc = unit["Unit"]["Documentation"].removeprefix("file://")
    assert Path(doc).is_file(), doc
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == f"{layout}/opt/peerd/bin/peerd" and os.access(argv[0], os.X_OK)
    assert argv[1:4] == ["run", "-c", str(config)]
    workdir = Path(service["WorkingDirectory"])
    assert workdir == layout / "var/lib/peerd"
    assert service["ReadWritePaths"] == str(workdir)

    # Owners and modes: the config is the daemon's to read, not to write.
    assert _mode(layout / "etc/peerd") == ("root", USER, 0o750)
    assert _mode(layout / "etc/peerd/tls") == ("root", USER, 0o750)
    assert _mode(config) == ("root", USER, 0o640)
    assert _mode(workdir) == (USER, USER, 0o750)
    user = pwd.getpwnam(USER)
    assert user.pw_shell == "/usr/sbin/nologin" and user.pw_uid < 1000
    text = config.read_text()
    assert 'name = "gamma"' in text and "change-me" not in text
    assert f'data_dir = "{workdir}"' in text

    # site-packages holds peerd and its dependencies, no generic names of ours.
    site = next((layout / "opt/peerd/lib").glob("python3*/site-packages"))
    assert not {p.name for p in site.iterdir()} & set(VENDORED)
    version = subprocess.run(
        [f"{layout}/usr/local/bin/peerd", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("peerd 0.1.0 (sync protocol 1-2, schema ")
    assert version.stdout.strip() in first.stdout

    # The admin's edits: free loopback ports; the partner is not installed yet.
    ports = {name: free_port() for name in ("lmtp", "imap", "pop3", "sync", "http", "socketmap")}
    listen = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    config.write_text(set_values(text, {"listen": listen, "sync": {"sync_port": free_port()}}))

    # Start ExecStart as the unit's user, with systemd's notify socket.
    notify_path = layout / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify_path.chmod(0o666)
    notify.settimeout(90)
    env = {"PATH": "/usr/bin:/bin", "NOTIFY_SOCKET": str(notify_path), "LANG": "C.UTF-8"}
    proc = Proc(argv, layout / "peerd.log", cwd=workdir, env=env, user=service["User"])
    try:
        proc.start()
        messages: list[str] = []
        while "READY=1" not in messages:
            try:
                messages += notify.recv(4096).decode().split("\n")
            except TimeoutError:
                pytest.fail(f"no READY=1 from the daemon:\n{proc.tail()}")
        with urllib.request.urlopen(f"http://{listen['http']}/v1/health", timeout=10) as response:
            assert response.status == 200
        assert pwd.getpwuid((workdir / "peerd.db").stat().st_uid).pw_name == USER
        status = subprocess.run(
            [f"{layout}/usr/local/bin/peerctl", "-c", str(config), "status"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0 and "gamma" in status.stdout, status.stdout + status.stderr
        assert proc.stop(timeout=60) == 0, proc.tail()
        wait_until(lambda: "STOPPING=1" in messages or _more(notify, messages), 10, "STOPPING=1")
    finally:
        proc.stop()
        notify.close()

    # An upgrade is the same script again: the venv is replaced, the config kept.
    edited = config.read_bytes()
    again = _install(layout, wheel)
    assert f"config {config} exists: kept" in again.stdout
    assert config.read_bytes() == edited
    assert _mode(config) == ("root", USER, 0o640)


def _more(sock: socket.socket, messages: list[str]) -> bool:
    sock.settimeout(0.2)
    try:
        messages += sock.recv(4096).decode().split("\n")
    except TimeoutError:
        return False
    return "STOPPING=1" in messages
