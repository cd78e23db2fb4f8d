"""What a process pays before it does anything: peerctl is a client of the
control API (urllib and the config), and the tests start it often, as an admin
does. SQLAlchemy and aiohttp at its start cost about 0.4 s of CPU each time."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("sqlalchemy", "aiohttp")


def test_peerctl_imports_neither_the_store_nor_the_web_server() -> None:
    probe = (
        "import sys; import peerd.cli.peerctl; "
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == ""


def test_engine_store_is_still_there_when_asked_for() -> None:
    import engine
    from engine.store import Store

    assert engine.Store is Store
