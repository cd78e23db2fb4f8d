"""How many examples a Hypothesis test runs, and the suite's Hypothesis profile.

A property test writes the count it was designed for, ``max_examples=examples(2000)``.
An ordinary run (a developer's, CI's) runs a quarter of it, never fewer than
100 (Hypothesis's own default) and never more than written; with
``PEERD_TEST_EXAMPLES=full`` in the environment every test runs its written
count: the deep run before a release (docs/testing.md, "Property tests").

Both runs draw new examples each time: Hypothesis detects CI (``CI=true``)
and would then derandomize, running the same examples on every commit; the
``peerd`` profile, loaded by ``tests/conftest.py``, keeps CI's other settings
and draws at random, so the examples CI has tried grow with every run. A
failure prints the falsifying example and a ``@reproduce_failure`` blob to
replay it (``print_blob``).
"""

from __future__ import annotations

import os

from hypothesis import settings

__all__ = ["FULL", "PROFILE", "examples"]

# The least an ordinary run tries, and the share of the written count it runs.
FLOOR = 100
SHARE = 4


def _full() -> bool:
    value = os.environ.get("PEERD_TEST_EXAMPLES", "")
    if value not in ("", "full"):
        raise ValueError(f"PEERD_TEST_EXAMPLES={value!r}: unset or 'full'")
    return value == "full"


FULL = _full()


def examples(written: int) -> int:
    """``max_examples`` for a test written for ``written`` examples."""
    return written if FULL else min(written, max(FLOOR, written // SHARE))


PROFILE = "peerd"
# Built on the profile Hypothesis loaded on import ("ci" under CI: no
# example database, no too_slow check, print_blob), only not derandomized.
settings.register_profile(PROFILE, settings(derandomize=False, print_blob=True))
