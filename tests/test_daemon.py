"""The daemon's life: sd_notify, and every shipped config loads.

The config parser's rules are tested in tests/test_config.py, the control
API and peerctl in tests/test_api_cli.py; this file keeps only what those do
not cover.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from peerd.node.config import load_config
from tests.nodes import make_single

ROOT = Path(__file__).resolve().parents[1]


def test_sd_notify_ready_and_stopping(tmp_path: Path) -> None:
    node = make_single(tmp_path)
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    os.environ["NOTIFY_SOCKET"] = str(path)
    try:
        node.start()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    try:
        assert sock.recv(100) == b"READY=1"
        assert node.stop() == 0
        assert sock.recv(100) == b"STOPPING=1"
    finally:
        node.stop()
        sock.close()


def test_every_shipped_config_loads() -> None:
    # Anchored at the repository, not the working directory; any config added
    # to configs/ later is checked too (tests/test_config.py names three).
    examples = sorted((ROOT / "configs").glob("*.toml"))
    assert {p.name for p in examples} >= {"alpha.toml", "beta.toml", "peerd.example.toml"}
    for example in examples:
        assert load_config(example).node.name, example
