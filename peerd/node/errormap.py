"""The one place where errors become wire replies.

Engine and ownership errors carry stable codes and know no protocol. This
module turns them into HTTP status codes (for ``application/problem+json``),
LMTP replies (RFC 2033 / RFC 3463 enhanced codes), IMAP response codes
(RFC 5530) and POP3 ``-ERR`` replies with RFC 3206 codes. A service never
builds an error reply from an exception itself.
"""

from __future__ import annotations

from engine.errors import (
    AlreadyExists,
    Corrupt,
    DatabaseBusy,
    EngineError,
    InvalidArgument,
    MessageTooLarge,
    NoSuchAccount,
    NotFound,
    OverQuota,
    StorageFull,
    SyncProtocolError,
    SyncRefused,
    SyncStale,
    TemporaryFailure,
)
from ownership.errors import (
    NotCaughtUp,
    NotOwner,
    OwnershipError,
    PartnerReachable,
    PartnerUnreachable,
    StaleEpoch,
    UnknownNode,
)
from peerd.protocols.lmtp import S501_BAD_ADDRESS, S552_TOO_BIG, S554_NUL
from peerd.protocols.pop3 import CODE_SYS_PERM, CODE_SYS_TEMP, Err

__all__ = [
    "S250_OK",
    "S250_OK_DUPLICATE",
    "S421_SHUTTING_DOWN",
    "S451_LOCAL_ERROR",
    "S451_NOT_OWNER",
    "S452_STORAGE",
    "S501_BAD_ADDRESS",
    "S550_NO_SUCH_USER",
    "S552_OVER_QUOTA",
    "S552_TOO_BIG",
    "S554_NUL",
    "http_status",
    "imap_code",
    "lmtp_reply",
    "pop3_not_owner",
    "pop3_reply",
]

# LMTP replies (RFC 2033 4.2, RFC 5321 4.2, RFC 3463 enhanced status codes).
S250_OK = "250 2.1.5 Delivered"
S250_OK_DUPLICATE = "250 2.1.5 Delivered (duplicate suppressed)"
S421_SHUTTING_DOWN = "421 4.3.2 Service shutting down; try again later"
S451_LOCAL_ERROR = "451 4.3.0 Temporary failure, try again later"
S451_NOT_OWNER = "451 4.3.0 Account is served by another node now; try again"
S452_STORAGE = "452 4.3.1 Insufficient system storage"
S550_NO_SUCH_USER = "550 5.1.1 No such user"
S552_OVER_QUOTA = "552 5.2.2 Mailbox is over quota"
# S552_TOO_BIG, S554_NUL and S501_BAD_ADDRESS are the protocol core's
# (peerd.protocols.lmtp): it sends them itself for a message too big, a
# message with NUL and a malformed path; re-exported here for the errors
# that mean the same.


def lmtp_reply(exc: BaseException) -> str:
    """The reply for a recipient whose delivery raised ``exc``."""
    if isinstance(exc, NoSuchAccount):
        return S550_NO_SUCH_USER
    if isinstance(exc, OverQuota):
        return S552_OVER_QUOTA
    if isinstance(exc, MessageTooLarge):
        return S552_TOO_BIG
    if isinstance(exc, NotOwner):
        return f"451 4.3.0 Account is served by {exc.owner} now; try again"
    if isinstance(exc, StorageFull):
        return S452_STORAGE
    if isinstance(exc, InvalidArgument):
        return S501_BAD_ADDRESS
    # Anything else, database trouble included, is temporary: nothing was
    # stored, so the MTA must keep the message and retry.
    return S451_LOCAL_ERROR


_HTTP = [
    (NoSuchAccount, 404),
    (NotFound, 404),
    (AlreadyExists, 409),
    (InvalidArgument, 422),
    (OverQuota, 422),
    (MessageTooLarge, 413),
    (Corrupt, 500),
    (StorageFull, 507),
    (DatabaseBusy, 503),
    (TemporaryFailure, 503),
    (SyncRefused, 409),
    (SyncStale, 412),
    (SyncProtocolError, 400),
    (NotOwner, 409),
    (StaleEpoch, 409),
    (PartnerReachable, 409),
    (PartnerUnreachable, 503),
    (NotCaughtUp, 409),
    (UnknownNode, 422),
]


def http_status(exc: EngineError | OwnershipError) -> int:
    for cls, status in _HTTP:
        if isinstance(exc, cls):
            return status
    return 500


def imap_code(exc: BaseException) -> tuple[str, str | None]:
    """(``NO`` or ``BAD``, RFC 5530 response code or None) for an IMAP command."""
    if isinstance(exc, OverQuota):
        return "NO", "OVERQUOTA"
    if isinstance(exc, NotFound):
        return "NO", "NONEXISTENT"
    if isinstance(exc, AlreadyExists):
        return "NO", "ALREADYEXISTS"
    if isinstance(exc, InvalidArgument):
        return "BAD", "CLIENTBUG"
    if isinstance(exc, MessageTooLarge):
        return "NO", "TOOBIG"
    if isinstance(exc, NotOwner):
        return "NO", "UNAVAILABLE"
    if isinstance(exc, Corrupt):
        return "NO", "SERVERBUG"
    if isinstance(exc, TemporaryFailure):
        return "NO", "UNAVAILABLE"
    return "NO", "SERVERBUG"


# POP3 (RFC 3206 4): SYS/PERM only where retrying cannot help; database
# trouble and a moved account are SYS/TEMP, so the client tries again later
# (and, through a proxy, reaches the new owner).
_POP3_PERMANENT = (Corrupt, InvalidArgument)


def _pop3_text(text: str) -> str:
    # A reply is one line of at most 512 octets (RFC 2449 section 4).
    return " ".join(text.split())[:400]


def pop3_reply(exc: EngineError | OwnershipError, prefix: str = "") -> Err:
    """The ``-ERR [SYS/...]`` reply for a POP3 command whose store work raised ``exc``;
    ``prefix`` says what was not done (``messages not removed: ``, RFC 1939 6)."""
    code = CODE_SYS_PERM if isinstance(exc, _POP3_PERMANENT) else CODE_SYS_TEMP
    return Err(_pop3_text(prefix + exc.message), code)


def pop3_account_moved(account: str) -> Err:
    """An open session whose account this node no longer serves: cut off
    without UPDATE (nothing marked is removed, RFC 1939 6); log in again."""
    return Err(_pop3_text(f"{account} moved to another node; log in again"), CODE_SYS_TEMP)


def pop3_not_owner(account: str, owner: str) -> Err:
    """A login for an account another node owns: temporary, naming the owner
    (POP3 has no referral; RFC 3206 4 SYS/TEMP says try again later)."""
    return Err(_pop3_text(f"{account} is served by {owner}"), CODE_SYS_TEMP)
