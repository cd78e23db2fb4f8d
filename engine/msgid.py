"""What identifies a message outside this store: its Message-ID header, and
the key that matches a message across servers when UIDs do not.

Its own module, with nothing but the standard library: peerctl's
``import-imap`` reads the old server's messages with these and must not load
the store (SQLAlchemy) to do so (``tests/test_start_cost.py``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Final

__all__ = ["MAX_MESSAGE_ID", "message_id_of", "message_key"]

# The longest id kept, in characters (the duplicate table's column).
MAX_MESSAGE_ID: Final = 255

_MESSAGE_ID_RE = re.compile(rb"(?im)^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)")


def message_id_of(data: bytes) -> str | None:
    """The Message-ID header's value, from the header block only."""
    end = data.find(b"\r\n\r\n")
    header = data if end < 0 else data[: end + 2]
    match = _MESSAGE_ID_RE.search(header)
    if match is None:
        return None
    raw = re.sub(rb"\s+", b"", match.group(1))
    # The duplicate check drops a message whose id it has seen: two ids that
    # differ must never read the same. UTF-8 (RFC 6532) is kept as text and
    # any other octet as "\xNN" (read as ASCII with U+FFFD, "<\xe4@x>" and
    # "<\xf6@x>" were one id); past MAX_MESSAGE_ID characters the id is cut
    # and a hash of the whole put at its end (cut alone, two ids sharing
    # their first 255 characters were one).
    value = raw.decode("utf-8", "backslashreplace")
    if len(value) > MAX_MESSAGE_ID:
        digest = hashlib.sha1(raw).hexdigest()
        value = f"{value[: MAX_MESSAGE_ID - len(digest) - 1]}#{digest}"
    return value or None


def message_key(message_id: str | None, internaldate: dt.datetime, size: int) -> str:
    """What identifies a message across servers when UIDs do not: its
    Message-ID, internal date (to the second, UTC) and size."""
    when = internaldate.astimezone(dt.UTC).replace(microsecond=0)
    return f"{message_id or ''}|{when:%Y-%m-%dT%H:%M:%SZ}|{size}"
