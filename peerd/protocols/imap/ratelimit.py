"""The per-session IMAP command rate limit (``[imap] commands_per_second``), without I/O.

How this works: time is cut into one-second windows, each starting with the
first command after the previous one ended. :meth:`CommandRate.check` is
asked once per command, with the time, and says what the session does:

- ``RUN``: within the budget of ``per_second`` commands in this window;
- ``REFUSE``: over it. The session answers ``NO [LIMIT]`` (RFC 5530 3: "the
  operation ran up against an implementation limit") without running the
  command, so the client sees why, and may wait and send it again;
- ``CLOSE``: the client was refused ``per_second`` times in this window and
  still sends, at twice the allowed rate after being told. The session says
  ``* BYE [LIMIT]`` and closes (RFC 3501 7.1.5).

LOGOUT is never refused (a client must be able to leave), but it is counted.
A budget of 0 or less turns the limit off.
"""

from __future__ import annotations

import enum

__all__ = ["CommandRate", "Verdict"]


class Verdict(enum.Enum):
    RUN = "run"
    REFUSE = "refuse"
    CLOSE = "close"


class CommandRate:
    __slots__ = ("_refused", "_start", "_used", "per_second")

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._start = float("-inf")
        self._used = 0
        self._refused = 0

    def check(self, now: float, *, exempt: bool = False) -> Verdict:
        """One more command at ``now`` (seconds, monotonic); ``exempt``: never refuse it."""
        if self.per_second <= 0:
            return Verdict.RUN
        if now - self._start >= 1.0:
            self._start, self._used, self._refused = now, 0, 0
        self._used += 1
        if self._used <= self.per_second or exempt:
            return Verdict.RUN
        self._refused += 1
        return Verdict.CLOSE if self._refused > self.per_second else Verdict.REFUSE

    def retry_after(self, now: float) -> float:
        """Seconds until the current window ends and the budget is whole again."""
        return max(0.0, self._start + 1.0 - now)
