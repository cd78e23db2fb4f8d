"""The names tests have long imported from here; all of them live in the one
harness now (tests/harness/daemons.py and tests/harness/clients.py)."""

from __future__ import annotations

from tests.harness.clients import idling, peerctl, pop3_refusal
from tests.harness.daemons import TOKEN, Node, make_pair, make_single, running, write_config

__all__ = [
    "TOKEN",
    "Node",
    "idling",
    "make_pair",
    "make_single",
    "peerctl",
    "pop3_refusal",
    "running",
    "write_config",
]
