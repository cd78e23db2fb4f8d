"""The limits the sync channel enforces, defined once.

How this works: the sync decoder (:mod:`engine.syncwire`) refuses a record
beyond these limits, so a value past them that got into the store would make
the partner refuse every sync of its account for ever. Every write path
checks the same limits where the data enters, through the functions here,
and a refusal is :class:`~engine.errors.LimitExceeded` (IMAP ``NO [LIMIT]``,
LMTP 552, HTTP 422 in peerd's error map).
"""

from __future__ import annotations

from engine.errors import LimitExceeded

__all__ = ["MAX_FLAGS_CHARS", "check_flags"]

MAX_FLAGS_CHARS = 8192
"""One message's stored flags (space-separated, engine.flags.format_flags)."""


def check_flags(stored: str) -> str:
    """``stored`` if it is within :data:`MAX_FLAGS_CHARS`, else LimitExceeded."""
    if len(stored) > MAX_FLAGS_CHARS:
        raise LimitExceeded(
            f"a message's flags must be at most {MAX_FLAGS_CHARS} characters"
            f" (these would be {len(stored)})"
        )
    return stored
