"""The failed-login throttle, shared by every service that checks passwords.

How this works: each failed login is remembered under two keys, the account
name and the source address, for ``[auth] failure_window``. A key that has
``max_failures_per_account`` (or ``max_failures_per_ip``) failures inside the
window is refused at once, without hashing, until its oldest failure ages out.
The throttle lives in the :class:`~peerd.node.node.Node`, so it counts across
connections and across IMAP, POP3 and nginx ``auth_http`` alike. A successful
login does not clear it (the guesser may also know one right password).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["FailureThrottle"]


class FailureThrottle:
    """Failures per key within a sliding window; ``blocked`` says when a key is over."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float] | None:
        seen = self._failures.get(key)
        if seen is None:
            return None
        horizon = self._clock() - self.window
        while seen and seen[0] <= horizon:
            seen.popleft()
        if not seen:
            del self._failures[key]
            return None
        return seen

    def blocked(self, key: str, limit: int) -> bool:
        seen = self._recent(key)
        return seen is not None and len(seen) >= limit

    def fail(self, key: str) -> None:
        self._failures.setdefault(key, deque()).append(self._clock())
        if len(self._failures) > 100_000:
            # Bound the memory a spray of names and addresses can take.
            for stale in [k for k in list(self._failures) if self._recent(k) is None]:
                self._failures.pop(stale, None)
