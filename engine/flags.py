"""Message flags and the per-record checksum.

Flags are stored as one space-separated string, sorted, with the RFC 3501
system flags in their canonical spelling (``\\Seen``, not ``\\SEEN``) so that
two nodes holding the same flags hold the same string, byte for byte: the
mailbox checksum depends on it. ``\\Recent`` is session state (RFC 3501 2.3.2;
dropped by RFC 9051) and is never stored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable

from engine.errors import InvalidArgument

__all__ = ["SYSTEM_FLAGS", "format_flags", "normalize_flags", "parse_flags", "record_hash"]

SYSTEM_FLAGS = ("\\Answered", "\\Deleted", "\\Draft", "\\Flagged", "\\Seen")
_CANONICAL = {f.lower(): f for f in SYSTEM_FLAGS}
# RFC 3501 9: flag-keyword = atom; atom-specials excluded. We also refuse
# backslash in keywords (only system flags start with one).
_KEYWORD_RE = re.compile(r"\A[!#$&'+\-.0-9:;<=>?@A-Z^_`a-z|~\x5b]+\Z")
MAX_FLAG_LEN = 128


def normalize_flags(flags: Iterable[str]) -> frozenset[str]:
    """Validate flags and give system flags their canonical spelling."""
    out: set[str] = set()
    for flag in flags:
        if flag.startswith("\\"):
            canonical = _CANONICAL.get(flag.lower())
            if canonical is None:
                if flag.lower() == "\\recent":
                    continue
                raise InvalidArgument(f"unknown system flag {flag!r}")
            out.add(canonical)
        else:
            if not flag or len(flag) > MAX_FLAG_LEN or not _KEYWORD_RE.match(flag):
                raise InvalidArgument(f"invalid keyword {flag!r}")
            out.add(flag)
    return frozenset(out)


def format_flags(flags: Iterable[str]) -> str:
    return " ".join(sorted(set(flags)))


def parse_flags(stored: str) -> frozenset[str]:
    return frozenset(stored.split()) if stored else frozenset()


def record_hash(uid: int, guid: str, flags: str, internaldate: dt.datetime, modseq: int) -> int:
    """A signed 64-bit hash of one record; a mailbox checksum is their XOR.

    XOR makes the checksum incremental (add a record: XOR it in; remove or
    change one: XOR the old value out) and independent of order, like Cyrus's
    sync CRC. It covers everything replication must make equal, the record's
    modseq included (as Cyrus's does): two mailboxes with equal checksums hold
    the same records with the same modseqs (RFC 7162 3.1), so a replica whose
    modseqs lag its owner's is noticed by the cheap summary compare.
    """
    stamp = int(internaldate.timestamp())
    digest = hashlib.sha1(
        f"{uid}\0{guid}\0{flags}\0{stamp}\0{modseq}".encode(), usedforsecurity=False
    ).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
