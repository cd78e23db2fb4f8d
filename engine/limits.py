"""The limits the sync channel enforces, defined once.

How this works: the sync decoder (:mod:`engine.syncwire`) refuses a record
beyond these limits, so a value past them that got into the store would make
the partner refuse every sync of its account for ever. Every write path
checks the same limits where the data enters, through the functions here
(called by the engine's own write functions, so IMAP, POP3, LMTP, Sieve,
ManageSieve and the API cannot miss them), and a refusal is
:class:`~engine.errors.LimitExceeded` (IMAP ``NO [LIMIT]``, LMTP 552,
ManageSieve ``NO (QUOTA)``, HTTP 422 in peerd's error map). Lengths are in
characters, as the decoder counts them once the JSON is parsed.
"""

from __future__ import annotations

import json

from engine.errors import AnnotationTooLarge, LimitExceeded

__all__ = [
    "ACL_RIGHTS",
    "MAX_ACCOUNT_NAME",
    "MAX_ACL_CHARS",
    "MAX_ACL_ENTRIES",
    "MAX_ACL_IDENTIFIER",
    "MAX_ANNOTATIONS",
    "MAX_ANNOTATION_ENTRY",
    "MAX_ANNOTATION_VALUE",
    "MAX_FLAGS_CHARS",
    "MAX_MAILBOXES",
    "MAX_MAILBOX_NAME",
    "MAX_PASSWORD_HASH",
    "MAX_RECORDS",
    "MAX_SCRIPTS",
    "MAX_SCRIPT_CHARS",
    "MAX_SCRIPT_NAME",
    "MAX_SUBSCRIPTIONS",
    "MAX_TOMBSTONES",
    "MAX_VACATIONS",
    "check_acl",
    "check_annotation",
    "check_count",
    "check_flags",
    "check_length",
]

MAX_FLAGS_CHARS = 8192
"""One message's stored flags (space-separated, engine.flags.format_flags)."""

MAX_MAILBOX_NAME = 1000
"""One mailbox name (and so one subscription), ``/``-separated."""

MAX_MAILBOXES = 100_000
"""Mailboxes of one account."""

MAX_SUBSCRIPTIONS = 100_000
"""Subscriptions of one account (a name need not exist: RFC 3501 6.3.6)."""

MAX_RECORDS = 5_000_000
"""Message records of one mailbox in one sync message."""

MAX_TOMBSTONES = 10_000
"""Deleted mailboxes one account remembers (engine.mailbox.remember_deleted):
past it the oldest is forgotten. Every account state carries them (every
rolling delta too), and the sync decoder takes at most :data:`MAX_RECORDS`:
unbounded, a user creating and deleting a mailbox in a loop would make every
sync of the account slower, then refused for ever."""

MAX_SCRIPTS = 1000
"""Sieve scripts of one account ([managesieve] max_scripts is at most this)."""

MAX_SCRIPT_CHARS = 1 << 20
"""One Sieve script (the Sieve parser's own limit, 256 KiB, is below it)."""

MAX_SCRIPT_NAME = 512
"""One Sieve script's name (RFC 5804 1.6 names are at most 512 octets here)."""

MAX_VACATIONS = 1_000_000
"""Vacation reply-once records of one account (the oldest goes past it)."""

MAX_ACCOUNT_NAME = 255
MAX_PASSWORD_HASH = 255


def check_flags(stored: str) -> str:
    """``stored`` if it is within :data:`MAX_FLAGS_CHARS`, else LimitExceeded."""
    if len(stored) > MAX_FLAGS_CHARS:
        raise LimitExceeded(
            f"a message's flags must be at most {MAX_FLAGS_CHARS} characters"
            f" (these would be {len(stored)})"
        )
    return stored


def check_length(value: str, limit: int, what: str) -> str:
    """``value`` if it has at most ``limit`` characters, else LimitExceeded."""
    if len(value) > limit:
        raise LimitExceeded(f"{what} must be at most {limit} characters")
    return value


def check_count(count: int, limit: int, what: str) -> None:
    """LimitExceeded if one more than ``count`` would pass ``limit``."""
    if count >= limit:
        raise LimitExceeded(f"at most {limit} {what} per account")


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
