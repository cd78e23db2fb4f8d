"""The one place where errors become wire replies.

Engine and ownership errors carry stable codes and know no protocol. This
module turns them into HTTP status codes (for ``application/problem+json``),
LMTP replies (RFC 2033 / RFC 3463 enhanced codes), IMAP response codes
(RFC 5530) and POP3 ``-ERR`` replies with RFC 3206 codes. A service never
builds an error reply from an exception itself.

Each table maps an error class to its reply; an exception gets the entry of
the first class in its method resolution order that has one (:func:`_lookup`),
so a subclass inherits its base's reply and the order of the entries does
not matter (``NoSuchAccount`` finds its own entry before ``NotFound``'s).

What a client reads of an error (:func:`client_text`) is its message only
for the errors whose message is written for the client that asked: what it
named and why that is refused (an account, a mailbox, a limit, the owner).
Any other error's message is for the admin: the store's holds the SQL
statement and its parameters and the database driver's words, the spool's
file paths, a directory's or the partner's their own; the client gets a
short text fixed by the error's class, and the whole message goes to the
node's log.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, TypeVar

from engine.errors import (
    AlreadyExists,
    AnnotationTooLarge,
    Corrupt,
    DatabaseBusy,
    EngineError,
    InvalidArgument,
    LimitExceeded,
    MessageTooLarge,
    NoSuchAccount,
    NoSuchScript,
    NotFound,
    OverMessageQuota,
    OverQuota,
    PartnerDown,
    ScriptActive,
    ScriptExists,
    StorageFull,
    SyncError,
    SyncProtocolError,
    SyncRefused,
    SyncStale,
    TemporaryFailure,
    TooManyAnnotations,
    TooManyScripts,
)
from engine.limits import MAX_ANNOTATION_VALUE
from ownership.errors import (
    NotCaughtUp,
    NotOwner,
    OwnershipError,
    PartnerReachable,
    PartnerUnreachable,
    StaleEpoch,
    TargetDamaged,
    UnknownNode,
)
from peerd.node.inputbudget import AccountNoRoom, NoRoom
from peerd.protocols.lmtp import S501_BAD_ADDRESS, S552_TOO_BIG, S554_NUL

# The POP3 and ManageSieve protocol packages are imported where their replies
# are made, not here: the LMTP worker process imports this module for its
# replies, and those two packages (the Sieve compiler with them) were a fifth
# of what it imported at every start.
if TYPE_CHECKING:
    from peerd.protocols.pop3 import Err

__all__ = [
    "S250_OK",
    "S250_OK_DUPLICATE",
    "S421_SHUTTING_DOWN",
    "S451_LOCAL_ERROR",
    "S451_NOT_HERE_YET",
    "S451_NOT_OWNER",
    "S451_PARTNER_UNKNOWN",
    "S452_OVER_MESSAGE_QUOTA",
    "S452_STORAGE",
    "S501_BAD_ADDRESS",
    "S550_NO_SUCH_USER",
    "S552_OVER_QUOTA",
    "S552_TOO_BIG",
    "S554_NUL",
    "client_text",
    "http_status",
    "imap_code",
    "lmtp_reply",
    "lmtp_sieve_reject",
    "managesieve_refusal",
    "pop3_not_owner",
    "pop3_reply",
    "problem_title",
]

T = TypeVar("T")

log = logging.getLogger("peerd.node.errormap")


def _lookup(table: Mapping[type[BaseException], T], exc: BaseException) -> T | None:
    """The entry of the nearest class of ``exc`` (in MRO order) that has one."""
    for cls in type(exc).__mro__:
        found = table.get(cls)
        if found is not None:
            return found
    return None


# The errors whose message is the client's to read (see the module's docstring).
_TOLD: Final = (
    NotFound,
    AlreadyExists,
    ScriptActive,
    TooManyScripts,
    InvalidArgument,
    OverQuota,
    MessageTooLarge,
    SyncRefused,
    SyncStale,
    SyncProtocolError,
    OwnershipError,
    NoRoom,  # "server busy": no room in the input budget within the wait
)
# And those whose message is the administrator's to read as well.
_TOLD_ADMIN: Final = (SyncError, Corrupt, StorageFull)
# What a client reads instead of any other error's message, by class.
_UNTOLD: dict[type[BaseException], str] = {
    StorageFull: "insufficient storage on the server; try again later",
    DatabaseBusy: "the mail store's database is busy or unavailable; try again later",
    TemporaryFailure: "temporary failure on the server; try again later",
    PartnerDown: "the partner node did not answer; try again later",
    Corrupt: "the message data is damaged on the server",
    EngineError: "internal server error",
}


def client_text(exc: EngineError | OwnershipError, service: str = "", admin: bool = False) -> str:
    """What a client may read of ``exc``: its message for the errors whose
    message is written for it, else the fixed text of its class; the message
    then goes to the log (``service`` names the listener there). ``admin``:
    the reader is the node's administrator (the control API, ``peerctl``),
    who also reads why the partner failed (a TLS certificate it does not
    trust, its answer) and what is damaged or full; never a database's
    own text."""
    if isinstance(exc, _TOLD) or (admin and isinstance(exc, _TOLD_ADMIN)):
        return exc.message
    text = _lookup(_UNTOLD, exc) or "internal server error"
    log.warning("%s: %s: %s (the client was told: %s)", service or "-", exc.code, exc.message, text)
    return text


def problem_title(exc: BaseException) -> str:
    """An error's title on the wire: the class that gave it its ``code``.

    A subclass that keeps its base's code keeps its base's title too
    (``SyncFenced`` is a ``SyncRefused`` to the API's clients).
    """
    return next(c.__name__ for c in type(exc).__mro__ if "code" in vars(c) or c is Exception)


# LMTP replies (RFC 2033 4.2, RFC 5321 4.2, RFC 3463 enhanced status codes).
S250_OK = "250 2.1.5 Delivered"
S250_OK_DUPLICATE = "250 2.1.5 Delivered (duplicate suppressed)"
S421_SHUTTING_DOWN = "421 4.3.2 Service shutting down; try again later"
S451_LOCAL_ERROR = "451 4.3.0 Temporary failure, try again later"
S451_NOT_OWNER = "451 4.3.0 Account is served by another node now; try again"
S451_HANDED_OVER = "451 4.3.0 Account is being handed over to another node; try again"
# A recipient this node does not know but its partner does (just created
# there, not synced yet), or one it cannot ask the partner about: never a
# permanent 550 for an account that may exist (RFC 5321 4.2.1).
S451_NOT_HERE_YET = "451 4.3.0 Account exists on the partner, not here yet; try again"
S451_PARTNER_UNKNOWN = "451 4.4.3 Cannot ask the partner whether the user exists; try again"
S452_STORAGE = "452 4.3.1 Insufficient system storage"
S550_NO_SUCH_USER = "550 5.1.1 No such user"
S552_OVER_QUOTA = "552 5.2.2 Mailbox is over quota"
# RFC 3463 X.2.2 (mailbox full), temporary: a message count falls as the user
# expunges, so the MTA keeps the message and retries.
S452_OVER_MESSAGE_QUOTA = "452 4.2.2 Mailbox holds as many messages as its quota allows"
# S552_TOO_BIG, S554_NUL and S501_BAD_ADDRESS are the protocol core's
# (peerd.protocols.lmtp): it sends them itself for a message too big, a
# message with NUL and a malformed path; re-exported here for the errors
# that mean the same.
S552_LIMIT = "552 5.3.4 Message exceeds a limit of the mail store"


def _not_owner_lmtp(exc: BaseException) -> str:
    if not isinstance(exc, NotOwner):
        return S451_NOT_OWNER
    if exc.moving:
        return S451_HANDED_OVER
    return f"451 4.3.0 Account is served by {exc.owner} now; try again"


_LMTP: dict[type[BaseException], Callable[[BaseException], str]] = {
    NoSuchAccount: lambda _: S550_NO_SUCH_USER,
    OverQuota: lambda _: S552_OVER_QUOTA,
    OverMessageQuota: lambda _: S452_OVER_MESSAGE_QUOTA,
    MessageTooLarge: lambda _: S552_TOO_BIG,
    LimitExceeded: lambda _: S552_LIMIT,
    NotOwner: _not_owner_lmtp,
    StorageFull: lambda _: S452_STORAGE,
    # RFC 3463 X.3.1: no memory for the message now; the MTA retries.
    NoRoom: lambda _: S452_STORAGE,
    InvalidArgument: lambda _: S501_BAD_ADDRESS,
}


def lmtp_reply(exc: BaseException) -> str:
    """The reply for a recipient whose delivery raised ``exc``."""
    reply = _lookup(_LMTP, exc)
    # Anything else, database trouble included, is temporary: nothing was
    # stored, so the MTA must keep the message and retry.
    return S451_LOCAL_ERROR if reply is None else reply(exc)


_HTTP: dict[type[BaseException], int] = {
    NotFound: 404,
    AlreadyExists: 409,
    InvalidArgument: 422,
    OverQuota: 422,
    MessageTooLarge: 413,
    Corrupt: 500,
    StorageFull: 507,
    DatabaseBusy: 503,
    TemporaryFailure: 503,
    SyncRefused: 409,
    SyncStale: 412,
    SyncProtocolError: 400,
    PartnerDown: 503,
    NotOwner: 409,
    StaleEpoch: 409,
    PartnerReachable: 409,
    PartnerUnreachable: 503,
    NotCaughtUp: 409,
    TargetDamaged: 409,
    UnknownNode: 422,
}


def http_status(exc: EngineError | OwnershipError) -> int:
    status = _lookup(_HTTP, exc)
    return 500 if status is None else status


_IMAP: dict[type[BaseException], tuple[str, str | None]] = {
    OverQuota: ("NO", "OVERQUOTA"),
    NotFound: ("NO", "NONEXISTENT"),
    AlreadyExists: ("NO", "ALREADYEXISTS"),
    InvalidArgument: ("BAD", "CLIENTBUG"),
    LimitExceeded: ("NO", "LIMIT"),  # RFC 5530 3
    AnnotationTooLarge: ("NO", f"METADATA MAXSIZE {MAX_ANNOTATION_VALUE}"),  # RFC 5464 4.3
    TooManyAnnotations: ("NO", "METADATA TOOMANY"),  # RFC 5464 4.3
    MessageTooLarge: ("NO", "TOOBIG"),
    NotOwner: ("NO", "UNAVAILABLE"),
    Corrupt: ("NO", "SERVERBUG"),
    TemporaryFailure: ("NO", "UNAVAILABLE"),
    # RFC 5530 3: the node's input budget is full (a temporary failure,
    # UNAVAILABLE), or this account holds its share of it (a limit).
    AccountNoRoom: ("NO", "LIMIT"),
}


def imap_code(exc: BaseException) -> tuple[str, str | None]:
    """(``NO`` or ``BAD``, RFC 5530 response code or None) for an IMAP command."""
    return _lookup(_IMAP, exc) or ("NO", "SERVERBUG")


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
    from peerd.protocols.pop3 import CODE_SYS_PERM, CODE_SYS_TEMP, Err

    code = CODE_SYS_PERM if isinstance(exc, _POP3_PERMANENT) else CODE_SYS_TEMP
    return Err(_pop3_text(prefix + client_text(exc, "pop3")), code)


def pop3_account_moved(account: str) -> Err:
    """An open session whose account this node no longer serves: cut off
    without UPDATE (nothing marked is removed, RFC 1939 6); log in again."""
    from peerd.protocols.pop3 import CODE_SYS_TEMP, Err

    return Err(_pop3_text(f"{account} moved to another node; log in again"), CODE_SYS_TEMP)


def pop3_not_owner(account: str, owner: str) -> Err:
    """A login for an account another node owns: temporary, naming the owner
    (POP3 has no referral; RFC 3206 4 SYS/TEMP says try again later)."""
    from peerd.protocols.pop3 import CODE_SYS_TEMP, Err

    return Err(_pop3_text(f"{account} is served by {owner}"), CODE_SYS_TEMP)


def lmtp_sieve_reject(reason: str) -> str:
    """A Sieve ``reject``/``ereject`` (RFC 5429 section 2.1): 550 for this
    recipient only, with the script's reason on one line."""
    text = " ".join(reason.split())[:400] or "Message rejected"
    return f"550 5.7.1 {text}"


@functools.cache
def _managesieve() -> dict[type[BaseException], str | None]:
    """ManageSieve (RFC 5804 section 1.3): the response code for a refused request."""
    from peerd.protocols import managesieve as ms

    return {
        NoSuchScript: ms.NONEXISTENT,
        ScriptActive: ms.ACTIVE,
        ScriptExists: ms.ALREADYEXISTS,
        TooManyScripts: ms.QUOTA_MAXSCRIPTS,
        LimitExceeded: ms.QUOTA,  # RFC 5804 1.3: past a server limit
        NoSuchAccount: None,
        NotOwner: ms.TRYLATER,
        TemporaryFailure: ms.TRYLATER,
    }


def managesieve_refusal(exc: EngineError | OwnershipError) -> tuple[str, str | None]:
    """(text, response code) for ``NO``; anything unexpected is TRYLATER."""
    from peerd.protocols.managesieve import TRYLATER

    if isinstance(exc, NotOwner):
        if exc.moving:
            return "account is being handed over to another node", TRYLATER
        return f"account is served by {exc.owner} now", TRYLATER
    code = _lookup(_managesieve(), exc)
    text = client_text(exc, "managesieve")
    if code is None and not isinstance(exc, NoSuchAccount):
        return text, TRYLATER
    return text, code
