"""Processes the tests start, by pid and never by name: the harness's
(tests/harness/procs.py), plus :func:`require` for real clients and servers."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.harness.procs import Proc, free_port, wait_until

__all__ = ["Proc", "free_port", "require", "wait_until"]


def require(binary: str) -> None:
    """Skip when a real client or server is missing on a developer's machine; fail in CI."""
    if shutil.which(binary):
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{binary} is not installed, and CI must test with it")
    pytest.skip(f"{binary} not installed")
