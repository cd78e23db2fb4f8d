"""The limits the sync channel enforces, defined once.

How this works: the sync decoder (:mod:`engine.syncwire`) refuses a record
beyond these limits, so a value past them that got into the store would make
the partner refuse every sync of its account for ever. Every write path
checks the same limits where the data enters, through the functions here,
and a refusal is :class:`~engine.errors.LimitExceeded` (IMAP ``NO [LIMIT]``,
LMTP 552, HTTP 422 in peerd's error map).
"""

from __future__ import annotations

import json

from engine.errors import AnnotationTooLarge, LimitExceeded

__all__ = [
    "ACL_RIGHTS",
    "MAX_ACL_CHARS",
    "MAX_ACL_ENTRIES",
    "MAX_ACL_IDENTIFIER",
    "MAX_ANNOTATIONS",
    "MAX_ANNOTATION_ENTRY",
    "MAX_ANNOTATION_VALUE",
    "MAX_FLAGS_CHARS",
    "check_acl",
    "check_annotation",
    "check_flags",
]

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


MAX_ACL_CHARS = 65536
"""One mailbox's ACL as stored (JSON, identifier to rights); the sync decoder's cap."""

MAX_ACL_ENTRIES = 100
"""Identifiers in one mailbox's ACL (RFC 4314 SETACL)."""

MAX_ACL_IDENTIFIER = 255
"""One ACL identifier's length in characters."""

ACL_RIGHTS = "lrswipkxtecda"
"""The rights an ACL may hold: RFC 4314 2.1, with the obsolete ``c`` and ``d`` of RFC 2086."""


def check_acl(acl: dict[str, str]) -> str:
    """``acl`` as stored (JSON, sorted) if it is within the limits above, else LimitExceeded."""
    if len(acl) > MAX_ACL_ENTRIES:
        raise LimitExceeded(f"an ACL holds at most {MAX_ACL_ENTRIES} identifiers")
    for identifier, rights in acl.items():
        if not identifier or len(identifier) > MAX_ACL_IDENTIFIER:
            raise LimitExceeded(f"an ACL identifier is 1 to {MAX_ACL_IDENTIFIER} characters long")
        if any(r not in ACL_RIGHTS for r in rights):
            raise LimitExceeded(f"ACL rights are letters of {ACL_RIGHTS!r}")
    stored = json.dumps(acl, sort_keys=True)
    if len(stored) > MAX_ACL_CHARS:
        raise LimitExceeded(f"a mailbox's ACL must be at most {MAX_ACL_CHARS} characters")
    return stored


MAX_ANNOTATIONS = 1000
"""METADATA entries (RFC 5464) of one account, its mailboxes' and its server entries together."""

MAX_ANNOTATION_ENTRY = 1024
"""One METADATA entry name's length (``/private/...``)."""

MAX_ANNOTATION_VALUE = 65536
"""One METADATA value's size in octets (RFC 5464 4.3 ``MAXSIZE``)."""


def check_annotation(entry: str, value: bytes) -> None:
    """LimitExceeded if ``entry`` or ``value`` is past the limits above; a
    value too large is :class:`~engine.errors.AnnotationTooLarge`."""
    if not entry or len(entry) > MAX_ANNOTATION_ENTRY:
        raise LimitExceeded(f"a METADATA entry name is 1 to {MAX_ANNOTATION_ENTRY} characters")
    if len(value) > MAX_ANNOTATION_VALUE:
        raise AnnotationTooLarge(
            f"a METADATA value is at most {MAX_ANNOTATION_VALUE} octets (this one {len(value)})"
        )
