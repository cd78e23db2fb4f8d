"""Cheap password checks for tests that log in hundreds of times (the login is
not what they test).

An account created with :func:`cheap_hash` (scrypt at ``ln=4``) is not enough
by itself: the node upgrades a hash weaker than its own scheme at the first
login that proves the password (``Node._authenticate``, ``needs_rehash``), and
every later login then pays a full scrypt (``ln=15``, 32 MiB; tens of ms of
CPU each, far more on a loaded machine). :func:`cheap_logins` starts the
daemon with a ``sitecustomize`` that lowers its scrypt cost to the cheap
hash's (as bench/idle.py does), so the hash stays cheap and the upgrade path
is simply not taken. tests/test_rehash.py tests the upgrade itself.
"""

from __future__ import annotations

import base64
import hashlib
import os

from tests.nodes import Node

__all__ = ["CHEAP_LN", "cheap_hash", "cheap_logins"]

CHEAP_LN = 4  # scrypt's smallest cost engine.passwords accepts (MAX_LN bounds the top)

_SITE = f"import engine.passwords\nengine.passwords._LN = {CHEAP_LN}\n"


def cheap_hash(password: str) -> str:
    """A valid ``$scrypt$`` hash of ``password`` at ``ln=CHEAP_LN``."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=1 << CHEAP_LN, r=8, p=1, dklen=32)
    b64 = [base64.b64encode(x).decode().rstrip("=") for x in (salt, digest)]
    return f"$scrypt$ln={CHEAP_LN},r=8,p=1${b64[0]}${b64[1]}"


def cheap_logins(node: Node) -> Node:
    """Before ``node.start()``: the daemon hashes at ``ln=CHEAP_LN`` (and so keeps
    :func:`cheap_hash` hashes as they are). Returns ``node``."""
    site = node.workdir / "cheap-logins-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITE)
    path = os.environ.get("PYTHONPATH")
    node.extra_env["PYTHONPATH"] = f"{site}{os.pathsep}{path}" if path else str(site)
    return node
