"""What identifies a message outside this store: its Message-ID header, and
the key that matches a message across servers when UIDs do not.

Its own module, with nothing but the standard library: peerctl's
``import-imap`` reads the old server's messages with these and must not load
the store (SQLAlchemy) to do so (``tests/test_start_cost.py``).
"""

from __future__ import annotations

import datetime as dt
import re

__all__ = ["message_id_of", "message_key"]

_MESSAGE_ID_RE = re.compile(rb"(?im)^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)")


def message_id_of(data: bytes) -> str | None:
    """The Message-ID header's value, from the header block only."""
    end = data.find(b"\r\n\r\n")
    header = data if end < 0 else data[: end + 2]
    match = _MESSAGE_ID_RE.search(header)
    if match is None:
        return None
    value = re.sub(rb"\s+", b"", match.group(1)).decode("ascii", "replace")
    return value[:255] or None


def message_key(message_id: str | None, internaldate: dt.datetime, size: int) -> str:
    """What identifies a message across servers when UIDs do not: its
    Message-ID, internal date (to the second, UTC) and size."""
    when = internaldate.astimezone(dt.UTC).replace(microsecond=0)
    return f"{message_id or ''}|{when:%Y-%m-%dT%H:%M:%SZ}|{size}"
