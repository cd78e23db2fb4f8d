"""The engine's error tree.

Every error the store or the replication engine raises on purpose is an
:class:`EngineError` with a stable ``code``. The daemon maps codes to HTTP
status, IMAP ``NO``/``BAD``, POP3, LMTP and ManageSieve replies in exactly one place
(``peerd/node/errormap.py``); nothing here knows about any protocol.

    EngineError
    ├── NotFound                       (missing account, mailbox or message)
    │   ├── NoSuchAccount
    │   ├── NoSuchMailbox
    │   ├── NoSuchMessage
    │   └── NoSuchScript               (Sieve: no script of that name)
    ├── AlreadyExists
    │   └── ScriptExists               (Sieve: RENAMESCRIPT onto an existing name)
    ├── ScriptActive                   (Sieve: the active script cannot be deleted)
    ├── TooManyScripts                 (Sieve: the per-account script cap)
    ├── InvalidArgument                (a bad name, flag, size, ...)
    │   └── LimitExceeded              (past a limit the sync channel enforces: engine.limits)
    │       ├── AnnotationTooLarge     (a METADATA value past MAX_ANNOTATION_VALUE)
    │       └── TooManyAnnotations     (an account's METADATA entries past MAX_ANNOTATIONS)
    ├── OverQuota                      (permanent for this message)
    │   └── OverMessageQuota           (the account's message count; temporary)
    ├── MessageTooLarge
    ├── Corrupt                        (spool bytes do not match their GUID)
    ├── TemporaryFailure               (retry later: nothing was stored)
    │   ├── StorageFull                (ENOSPC / EDQUOT on the spool)
    │   └── DatabaseBusy               (locked or unavailable database)
    └── SyncError                      (replication: engine.compare, engine.apply, engine.syncwire)
        ├── SyncRefused                (fenced: the receiver owns it or knows a higher epoch)
        │   └── SyncFenced             (ownership.errors: the refusal with the receiver's row)
        ├── SyncStale                  (a delta's base is not the replica's state: sync in full)
        ├── SyncProtocolError          (a malformed or oversized request)
        │   └── SyncVersionMismatch    (the partner speaks a sync protocol version we do not)
        │   └── PartnerRejected        (the partner answered a 4xx: it refuses the account's data)
        │       ├── PartnerLacksRequest (the partner's release predates this request)
        │       └── TooLargeForPartner (one item is larger than the partner takes in a request)
        └── PartnerDown                (the partner did not answer on the sync channel)
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "AnnotationTooLarge",
    "Corrupt",
    "DatabaseBusy",
    "EngineError",
    "InvalidArgument",
    "LimitExceeded",
    "MessageTooLarge",
    "NoSuchAccount",
    "NoSuchMailbox",
    "NoSuchMessage",
    "NoSuchScript",
    "NotFound",
    "OverMessageQuota",
    "OverQuota",
    "PartnerDown",
    "PartnerLacksRequest",
    "PartnerRejected",
    "ScriptActive",
    "ScriptExists",
    "StorageFull",
    "SyncError",
    "SyncProtocolError",
    "SyncRefused",
    "SyncStale",
    "SyncVersionMismatch",
    "TemporaryFailure",
    "TooLargeForPartner",
    "TooManyAnnotations",
    "TooManyScripts",
]


class EngineError(Exception):
    """Base of every deliberate engine error; ``code`` is stable across releases."""

    code = "engine_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(EngineError):
    code = "not_found"


class NoSuchAccount(NotFound):
    code = "no_such_account"


class NoSuchMailbox(NotFound):
    code = "no_such_mailbox"


class NoSuchMessage(NotFound):
    code = "no_such_message"


class AlreadyExists(EngineError):
    code = "already_exists"


class NoSuchScript(NotFound):
    code = "no_such_script"


class ScriptExists(AlreadyExists):
    code = "script_exists"


class ScriptActive(EngineError):
    code = "script_active"


class TooManyScripts(EngineError):
    code = "too_many_scripts"


class InvalidArgument(EngineError):
    code = "invalid_argument"


class LimitExceeded(InvalidArgument):
    """A value beyond what the sync channel carries (engine.limits): refused
    where it enters, so it can never wedge an account's replication."""

    code = "limit_exceeded"


class AnnotationTooLarge(LimitExceeded):
    code = "annotation_too_large"


class TooManyAnnotations(LimitExceeded):
    code = "too_many_annotations"


class OverQuota(EngineError):
    code = "over_quota"


class OverMessageQuota(OverQuota):
    """The account holds as many messages as its limit (RFC 9208 5.2, MESSAGE)."""

    code = "over_message_quota"


class MessageTooLarge(EngineError):
    code = "message_too_large"


class Corrupt(EngineError):
    code = "corrupt"


class TemporaryFailure(EngineError):
    code = "temporary_failure"


class StorageFull(TemporaryFailure):
    code = "storage_full"


class DatabaseBusy(TemporaryFailure):
    code = "database_busy"


class SyncError(EngineError):
    code = "sync_error"


class SyncRefused(SyncError):
    code = "sync_refused"


class SyncStale(SyncError):
    """The replica is not in the state a delta push was planned from."""

    code = "sync_stale"


class SyncProtocolError(SyncError):
    code = "sync_protocol_error"


def shown(value: object, limit: int = 60) -> str:
    """What an error's text shows of a value a peer sent: a string's first
    ``limit`` characters, quoted; of anything else only its type. The repr of
    a decoded document nested near the recursion limit would itself raise
    RecursionError (and of a large one cost its whole size) before the
    error could be raised."""
    if isinstance(value, str):
        return repr(value[:limit])
    if value is None or isinstance(value, bool | int | float):
        return repr(value)[:limit]
    if isinstance(value, dict):
        return "a JSON object"
    return "a JSON array" if isinstance(value, list | tuple) else type(value).__name__


class SyncVersionMismatch(SyncProtocolError):
    """The partner speaks a sync protocol version outside the range this node
    speaks (``engine.syncwire.PROTOCOL_OLDEST`` to ``PROTOCOL_VERSION``):
    one of the two must be upgraded first (``docs/upgrading.md``)."""

    code = "sync_version"


class PartnerRejected(SyncProtocolError):
    """The partner answered a sync request with a 4xx other than a fence or
    bad credentials: it refuses this account's data as it is, and will again
    until the data (or the partner's limits) change."""

    code = "partner_rejected"


class PartnerLacksRequest(PartnerRejected):
    """The partner's release predates this request: it answered 404, or it
    speaks no sync protocol version with the form an account needs (USER_SOME
    in parts). The sender uses the requests it has (``docs/protocol.md``,
    versions); what needs the newer one waits until the partner is upgraded."""

    code = "partner_lacks_request"


class TooLargeForPartner(PartnerRejected):
    """One item of an account's sync (a mailbox's summary, a record) is larger
    than one request to the partner may be (the lower ``sync_max_request`` of
    the two nodes), so no way of cutting the sync into requests sends it: it
    is not sent, and will not be until the item or the limit changes."""

    code = "too_large_for_partner"


class PartnerDown(SyncError):
    """The partner could not be reached (connection refused, reset or timed out):
    nothing was changed there, and trying again later is right."""

    code = "partner_down"
