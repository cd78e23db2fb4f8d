"""How many examples a Hypothesis test runs, and the suite's Hypothesis profile.

A property test writes the count it was designed for, ``max_examples=examples(2000)``.
An ordinary run (a developer's, CI's) runs a quarter of it, never fewer than
100 (Hypothesis's own default) and never more than written; with
``PEERD_TEST_EXAMPLES=full`` in the environment every test runs its written
count: the deep run before a release (docs/testing.md, "Property tests").

A developer's run draws new examples each time. CI's does not: Hypothesis
detects CI (``CI=true``) and derandomizes, so the gate runs the same examples
on every commit and a red CI means the commit broke something, not that a
draw found an old bug in code the commit never touched (that happened once:
a header value ``'1\\x1f'`` drawn on the stop's CI). The exploring is the
developers' runs and the deep run's. The ``peerd`` profile, loaded by
``tests/conftest.py``, keeps what Hypothesis loaded (CI's profile under CI)
and adds ``print_blob``: a failure prints the falsifying example and a
``@reproduce_failure`` blob to replay it.
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
# Built on the profile Hypothesis loaded on import ("ci" under CI:
# derandomized, no example database, no too_slow check).
settings.register_profile(PROFILE, settings(print_blob=True))
