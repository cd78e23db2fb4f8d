"""The one back-off: first, doubling, capped; reset starts again."""

from __future__ import annotations

import time

from peerd.node.backoff import Backoff


def test_doubles_up_to_the_cap_and_starts_again_after_a_reset() -> None:
    backoff = Backoff(0.25, 1.5)
    assert [backoff.next() for _ in range(5)] == [0.25, 0.5, 1.0, 1.5, 1.5]
    backoff.reset()
    assert backoff.next() == 0.25
    # A cap below the first pause wins.
    assert Backoff(2.0, 1.0).next() == 1.0


def test_waiting_until_the_pause_ends() -> None:
    backoff = Backoff(10.0, 60.0)
    assert not backoff.waiting()
    backoff.next()
    now = time.monotonic()
    assert backoff.waiting(now) and not backoff.waiting(now + 11)
    backoff.reset()
    assert not backoff.waiting(now)
