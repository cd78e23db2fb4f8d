"""Failpoints: named pauses a test puts in a real daemon's way.

How this works: ``$PEERD_FAILPOINTS`` is a comma-separated list of
``name=seconds`` (``transfer.held=30``), or ``@PATH`` of a file holding
such a list (read at every call, so a test changes it without a restart;
a missing file is an empty list); :func:`pause` sleeps that long where the
code names the point, and logs it; a test lifts a pause by taking the
point out of the file. Tests set it to hold a daemon
inside one step of a long operation (a move between pairs) and SIGKILL it
there; unset (always, in production) a failpoint costs one dictionary
lookup. The variable is read at each call, so a daemon restarted without
it runs straight through.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

__all__ = ["pause", "seconds"]

log = logging.getLogger("peerd.failpoints")

VARIABLE = "PEERD_FAILPOINTS"
STEP = 0.1  # how often a pause looks whether it was lifted


def seconds(name: str) -> float:
    """The pause set for ``name`` (0: none)."""
    spec = os.environ.get(VARIABLE, "")
    if spec.startswith("@"):
        try:
            with open(spec[1:]) as handle:
                spec = handle.read()
        except OSError:
            spec = ""
    for item in spec.replace("\n", ",").split(","):
        key, _, value = item.partition("=")
        if key.strip() == name:
            try:
                return max(0.0, float(value))
            except ValueError:
                return 0.0
    return 0.0


async def pause(name: str) -> None:
    """Sleep as long as ``name`` says; the pause ends early once the
    variable (or its file) no longer names the point."""
    wait = seconds(name)
    if not wait:
        return
    log.warning("failpoint %s: pausing %.1f s", name, wait)
    ends = time.monotonic() + wait
    while time.monotonic() < ends and seconds(name):
        await asyncio.sleep(min(STEP, max(0.0, ends - time.monotonic())))
