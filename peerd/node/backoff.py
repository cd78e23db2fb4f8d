"""Exponential back-off: the one way a part of the daemon waits before trying again.

How this works: :meth:`Backoff.next` is called after each failure and gives
the pause before the next try: ``first``, then twice the previous, never
more than ``maximum``. :meth:`Backoff.reset` after a success starts again at
``first``. ``not_before`` is when the last pause ends (``time.monotonic``),
for a caller that does not sleep but skips work until then (the rolling
worker's per-account retries).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    first: float
    maximum: float
    delay: float = 0.0  # the last pause given; 0 before the first failure
    not_before: float = 0.0

    def next(self) -> float:
        """The pause after one more failure (and note when it ends)."""
        self.delay = min(self.maximum, self.delay * 2 if self.delay else self.first)
        self.not_before = time.monotonic() + self.delay
        return self.delay

    def reset(self) -> None:
        self.delay = 0.0
        self.not_before = 0.0

    def waiting(self, now: float | None = None) -> bool:
        """True while the last pause has not ended."""
        return self.not_before > (time.monotonic() if now is None else now)
