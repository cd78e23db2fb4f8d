"""The sync protocol's bodies: JSON for state and plans, frames for message bytes.

How this works: this module is the sans-I/O core of the sync protocol. It
turns :mod:`engine.syncstate` and :mod:`engine.compare` values into bytes
and back, and validates everything it reads (types, GUID syntax, sizes,
counts): a malformed or oversized request is a :class:`SyncProtocolError`
before any state is touched. Records travel as compact arrays
``[uid, guid, flags, internaldate, size, modseq, expunged]``. Message bytes
travel as frames, ``<guid> <length>\\n<bytes>`` one after another, and each
frame's SHA-1 must equal its GUID. Compression (zlib) wraps a whole body
when the session asks for it. ``docs/protocol.md`` documents every request.

Versions: every request and every answer carries ``X-Sync-Protocol: <n>``,
the version it is written in. A node takes requests and answers of any
version from :data:`PROTOCOL_OLDEST` to :data:`PROTOCOL_VERSION` and refuses
the rest with ``sync_version`` (:func:`peer_protocol`); a message with no
header is version 1, the protocol as it was before the header. A server
answers in the version of the request; a client speaks the newest version
both nodes speak (its first request offers its own, and a partner that does
not speak it refuses, naming its newest in the header). A release that
changes a request's format raises :data:`PROTOCOL_VERSION` and keeps the
previous one readable, so a pair upgrades one node at a time.

Version 2 adds USER_SOME in parts (:class:`UserPart`, :mod:`engine.userparts`):
an account whose mailbox summaries do not fit in one request is sent in
several, each answered in pages that fit the asker's limit.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from engine import jsontext
from engine.compare import MailboxPush, Push
from engine.errors import SyncProtocolError, SyncVersionMismatch, shown
from engine.limits import (
    MAX_ACCOUNT_NAME,
    MAX_ACL_CHARS,
    MAX_ANNOTATION_ENTRY,
    MAX_ANNOTATION_VALUE,
    MAX_ANNOTATIONS,
    MAX_FLAGS_CHARS,
    MAX_MAILBOX_NAME,
    MAX_MAILBOXES,
    MAX_PASSWORD_HASH,
    MAX_RECORDS,
    MAX_SCRIPT_CHARS,
    MAX_SCRIPT_NAME,
    MAX_SCRIPTS,
    MAX_SUBSCRIPTIONS,
    MAX_VACATIONS,
)
from engine.spool import guid_of
from engine.syncstate import AccountState, MailboxState, MailboxSummary, RecordState

__all__ = [
    "MAX_FRAME",
    "MAX_REQUEST_HEADER",
    "OFF_LOOP",
    "PROTOCOL_HEADER",
    "PROTOCOL_OLDEST",
    "PROTOCOL_VERSION",
    "USER_PARTS",
    "UserPart",
    "answer_version",
    "body_budget",
    "compress",
    "decode_account_state",
    "decode_delta",
    "decode_frame_views",
    "decode_frames",
    "decode_json",
    "decode_push",
    "decode_summary",
    "decode_user_page",
    "decode_user_part",
    "decompress",
    "encode_account_state",
    "encode_delta",
    "encode_frames",
    "encode_json",
    "encode_push",
    "encode_summary",
    "encode_user_part",
    "peer_max_request",
    "peer_protocol",
    "split_push",
]

_GUID = re.compile(r"\A[0-9a-f]{40}\Z")
_UNIQUEID = re.compile(r"\A[0-9a-f]{1,32}\Z")
MAX_FRAME = 512 << 20
# Bodies at least this large are (de)compressed in a thread, not on an event
# loop: zlib lets go of the interpreter lock.
OFF_LOOP = 256 << 10

# The sync protocol's version: raised by a release that changes what a request
# or an answer holds; the oldest still understood stays one behind it then.
PROTOCOL_HEADER = "X-Sync-Protocol"
PROTOCOL_VERSION = 2
PROTOCOL_OLDEST = 1
# The first version with USER_SOME in parts (UserPart): a partner that speaks
# only older ones takes an account's summaries in one request or not at all.
USER_PARTS = 2
_VERSION = re.compile(r"\A[1-9][0-9]{0,5}\Z")


def peer_protocol(value: str | None, here: str = "this node", there: str = "the partner") -> int:
    """The version a partner's request or answer says it speaks (its
    ``X-Sync-Protocol`` header; none: 1). Raises :class:`SyncVersionMismatch`
    when this node (``here``) does not speak it, naming the node to upgrade."""
    version = 1
    if value is not None:
        given = _header_number(value, _VERSION)
        if given is None:
            raise SyncProtocolError(
                f"{PROTOCOL_HEADER} must be a version number, not {value[:20]!r}"
            )
        version = given
    if not PROTOCOL_OLDEST <= version <= PROTOCOL_VERSION:
        older = here if version > PROTOCOL_VERSION else there
        raise SyncVersionMismatch(
            f"{there} speaks sync protocol {version}, {here} speaks {PROTOCOL_OLDEST} to "
            f"{PROTOCOL_VERSION}: upgrade {older} (docs/upgrading.md)"
        )
    return version


def answer_version(value: str | None) -> int:
    """The version to answer a request in whose header is ``value``: the
    request's own when this node speaks it (an older client reads its
    answers), else this node's newest (a refusal then names it)."""
    try:
        return peer_protocol(value)
    except SyncProtocolError:
        return PROTOCOL_VERSION


# Every authenticated answer says the largest request body its node takes
# (its ``sync_max_request``), so the sender cuts its requests to the
# partner's limit, not only its own; a sender of an older version ignores it.
MAX_REQUEST_HEADER = "X-Sync-Max-Request"
_MAX_REQUEST = re.compile(r"\A[1-9][0-9]{0,15}\Z")


def peer_max_request(value: str | None) -> int | None:
    """The partner's ``sync_max_request`` from :data:`MAX_REQUEST_HEADER`;
    None when the answer does not say (or says something else than a number)."""
    return None if value is None else _header_number(value, _MAX_REQUEST)


def body_budget(limit: int) -> int:
    """The most JSON one body may hold so that it stays within ``limit``
    octets however it travels: zlib adds at most 5 octets per 16 KiB block
    and a few more to data it cannot shrink (0.1% and 64 octets cover it)."""
    return max(1, limit - limit // 1024 - 64)


def _header_number(value: str, digits: re.Pattern[str]) -> int | None:
    """A header's number, when ``digits`` matches it; None when not. HTTP's
    optional white space is space and tab only: str.strip() would also take
    characters int() refuses (U+001F, U+0085, ...)."""
    text = value.strip(" \t")
    return int(text) if digits.match(text) else None


def encode_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def decode_json(data: bytes) -> dict[str, Any]:
    try:
        value = jsontext.loads(data)
    except RecursionError as exc:
        raise SyncProtocolError("body is not JSON: nested too deeply") from exc
    except ValueError as exc:
        # JSONDecodeError, UnicodeDecodeError, a lone surrogate (jsontext) and
        # an integer of more digits than int() converts
        # (sys.get_int_max_str_digits): all the sender's.
        raise SyncProtocolError(f"body is not JSON: {str(exc)[:200]}") from exc
    if not isinstance(value, dict):
        raise SyncProtocolError("body must be a JSON object")
    return value


def compress(data: bytes, *, messages: bool = False) -> bytes:
    """zlib, fast. ``messages``: a body of message frames, compressed with
    Huffman coding only (no LZ77 matching): mail's bulk is base64, where
    matching finds next to nothing, and Huffman-only is three times faster
    for the same ratio (0.75 on the benchmark mix, 126 vs 38 MB/s here).
    JSON bodies repeat themselves and get the full level 1. The receiver
    inflates both the same way."""
    if not messages:
        return zlib.compress(data, 1)
    deflater = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_HUFFMAN_ONLY)
    return deflater.compress(data) + deflater.flush()


def decompress(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise SyncProtocolError(f"bad compressed body: {exc}") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise SyncProtocolError(f"body larger than {limit} bytes once decompressed")
    return out


def _int(value: Any, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SyncProtocolError(f"{what} must be an integer >= {minimum}")
    return value


def _signed(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
        raise SyncProtocolError(f"{what} must be a 64-bit integer")
    return value


def _str(value: Any, what: str, limit: int = 1024) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise SyncProtocolError(f"{what} must be a string of at most {limit} characters")
    return value


def _guid(value: Any) -> str:
    if not isinstance(value, str) or not _GUID.match(value):
        raise SyncProtocolError(f"not a GUID: {shown(value)}")
    return value


def _uniqueid(value: Any) -> str:
    if not isinstance(value, str) or not _UNIQUEID.match(value):
        raise SyncProtocolError(f"not a mailbox uniqueid: {shown(value)}")
    return value


def _list(value: Any, what: str, limit: int = MAX_RECORDS) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise SyncProtocolError(f"{what} must be a list of at most {limit} items")
    return value


def encode_record(r: RecordState) -> list[Any]:
    return [r.uid, r.guid, r.flags, r.internaldate, r.size, r.modseq, 1 if r.expunged else 0]


def decode_record(value: Any) -> RecordState:
    if not isinstance(value, list) or len(value) != 7:
        raise SyncProtocolError(
            "a record is [uid, guid, flags, internaldate, size, modseq, expunged]"
        )
    uid, guid, flags, when, size, modseq, expunged = value
    return RecordState(
        _int(uid, "uid", 1),
        _guid(guid),
        _str(flags, "flags", MAX_FLAGS_CHARS),
        _signed(when, "internaldate"),
        _int(size, "size"),
        _int(modseq, "modseq"),
        bool(expunged),
    )


def encode_summary(s: MailboxSummary) -> dict[str, Any]:
    return {
        "uniqueid": s.uniqueid,
        "name": s.name,
        "uidvalidity": s.uidvalidity,
        "last_uid": s.last_uid,
        "highestmodseq": s.highestmodseq,
        "acl": s.acl,
        "checksum": s.checksum,
        "exists": s.exists,
        "sync_base": s.sync_base,
    }


def decode_summary(value: Any) -> MailboxSummary:
    if not isinstance(value, dict):
        raise SyncProtocolError("a mailbox summary must be an object")
    return MailboxSummary(
        uniqueid=_uniqueid(value.get("uniqueid")),
        name=_str(value.get("name"), "name", MAX_MAILBOX_NAME),
        uidvalidity=_int(value.get("uidvalidity"), "uidvalidity", 1),
        last_uid=_int(value.get("last_uid"), "last_uid"),
        highestmodseq=_int(value.get("highestmodseq"), "highestmodseq"),
        acl=_str(value.get("acl", "{}"), "acl", MAX_ACL_CHARS),
        checksum=_signed(value.get("checksum"), "checksum"),
        exists=_int(value.get("exists"), "exists"),
        sync_base=_int(value.get("sync_base", 0), "sync_base"),
    )


def encode_account_state(state: AccountState) -> dict[str, Any]:
    return {
        "name": state.name,
        "exists": state.exists,
        "password_hash": state.password_hash,
        "quota_limit": state.quota_limit,
        "message_limit": state.message_limit,
        "subscriptions": list(state.subscriptions),
        "tombstones": sorted(state.tombstones),
        "sieve": [list(s) for s in state.sieve],
        "vacations": [list(v) for v in state.vacations],
        "annotations": encode_annotations(state.annotations),
        "import_cursors": [list(c) for c in state.import_cursors],
        "mailboxes": [encode_mailbox_state(m) for m in state.mailboxes],
    }


def encode_mailbox_state(m: MailboxState) -> dict[str, Any]:
    """A mailbox in an account state: its summary, mode and records (in
    this order: :mod:`engine.userparts` writes the records after the rest)."""
    return {
        "summary": encode_summary(m.summary),
        "mode": m.mode,
        "records": [encode_record(r) for r in m.records],
    }


def decode_mailbox_state(item: Any) -> MailboxState:
    if not isinstance(item, dict):
        raise SyncProtocolError("a mailbox must be an object")
    mode = item.get("mode", "none")
    if mode not in ("none", "full", "delta"):
        raise SyncProtocolError(f"unknown mailbox mode {shown(mode)}")
    records = tuple(decode_record(r) for r in _list(item.get("records", []), "records"))
    return MailboxState(decode_summary(item.get("summary")), mode, records)


def decode_account_state(value: Any) -> AccountState:
    if not isinstance(value, dict):
        raise SyncProtocolError("account state must be an object")
    quota = value.get("quota_limit")
    limit = value.get("message_limit")
    mailboxes = [
        decode_mailbox_state(item)
        for item in _list(value.get("mailboxes", []), "mailboxes", MAX_MAILBOXES)
    ]
    return AccountState(
        name=_str(value.get("name"), "name", MAX_ACCOUNT_NAME),
        exists=bool(value.get("exists")),
        password_hash=_str(value.get("password_hash", ""), "password_hash", MAX_PASSWORD_HASH),
        quota_limit=None if quota is None else _int(quota, "quota_limit"),
        message_limit=None if limit is None else _int(limit, "message_limit"),
        subscriptions=tuple(
            _str(s, "subscription", MAX_MAILBOX_NAME)
            for s in _list(value.get("subscriptions", []), "subscriptions", MAX_SUBSCRIPTIONS)
        ),
        mailboxes=tuple(mailboxes),
        tombstones=frozenset(
            _uniqueid(t) for t in _list(value.get("tombstones", []), "tombstones")
        ),
        sieve=decode_sieve(value.get("sieve", [])),
        vacations=decode_vacations(value.get("vacations", [])),
        annotations=decode_annotations(value.get("annotations", [])),
        import_cursors=decode_import_cursors(value.get("import_cursors", [])),
    )


@dataclass(frozen=True, slots=True)
class UserPart:
    """One request of USER_SOME in parts (version 2, ``docs/protocol.md``).

    The owner's ``summaries`` of the mailboxes whose uniqueid is above
    ``after`` and at most ``upto`` (None: no upper bound), in uniqueid order
    (as ASCII strings). The replica answers for every mailbox it holds in
    that range, named or not (one it holds that the owner did not name is
    one the owner lacks: all its records); with ``named_only``, for the named
    ones alone (``replicate -m``). The part with ``after == ""`` also carries
    the account's own state (fields, subscriptions, Sieve, ...), once.
    ``resume``: where the answer starts, a previous page's ``next``
    (uniqueid, and the last UID of that mailbox already sent; 0: none).
    """

    summaries: tuple[MailboxSummary, ...] = ()
    after: str = ""
    upto: str | None = None
    resume: tuple[str, int] | None = None
    named_only: bool = False

    def __post_init__(self) -> None:
        if self.upto is not None and self.upto <= self.after:
            raise SyncProtocolError("a part's upto must be above its after")
        previous = self.after
        for s in self.summaries:
            if not previous < s.uniqueid or not self.covers(s.uniqueid):
                raise SyncProtocolError(
                    f"summaries must be in uniqueid order within the part ({s.uniqueid})"
                )
            previous = s.uniqueid
        if self.resume is not None and not self.covers(self.resume[0]):
            raise SyncProtocolError("a part resumes at a mailbox outside it")

    def covers(self, uniqueid: str) -> bool:
        return self.after < uniqueid and (self.upto is None or uniqueid <= self.upto)

    @property
    def first(self) -> bool:
        """The part whose first page carries the account's own state."""
        return self.after == ""


def encode_user_part(account: str, ownership: dict[str, object], part: UserPart) -> dict[str, Any]:
    return {
        "account": account,
        "ownership": ownership,
        "summaries": [encode_summary(s) for s in part.summaries],
        "after": part.after,
        "upto": part.upto,
        "from": None if part.resume is None else list(part.resume),
        "named_only": part.named_only,
    }


def decode_user_part(body: dict[str, Any]) -> UserPart:
    """The part a version 2 ``user_some`` asks about (its sender is read apart)."""
    after = body.get("after", "")
    upto = body.get("upto")
    resume = body.get("from")
    if resume is not None:
        if not isinstance(resume, list) or len(resume) != 2:
            raise SyncProtocolError("from is [mailbox uniqueid, uid]")
        resume = (_uniqueid(resume[0]), _int(resume[1], "from uid"))
    return UserPart(
        summaries=tuple(
            decode_summary(s) for s in _list(body.get("summaries", []), "summaries", MAX_MAILBOXES)
        ),
        after="" if after == "" else _uniqueid(after),
        upto=None if upto is None else _uniqueid(upto),
        resume=resume,
        named_only=body.get("named_only") is True,
    )


def decode_user_page(
    value: dict[str, Any],
) -> tuple[AccountState | None, list[MailboxState], tuple[str, int] | None]:
    """One page of a version 2 ``user_some`` answer: the account's own state
    (the first page of the first part only; its ``mailboxes`` empty), the
    mailboxes of the page, and where the next page starts (None: the part
    is complete)."""
    raw_state = value.get("state")
    state = None if raw_state is None else decode_account_state(raw_state)
    if state is not None and state.mailboxes:
        raise SyncProtocolError("a page's account state holds no mailboxes")
    mailboxes = [
        decode_mailbox_state(m) for m in _list(value.get("mailboxes"), "mailboxes", MAX_MAILBOXES)
    ]
    after = value.get("next")
    if after is None:
        return state, mailboxes, None
    if not isinstance(after, list) or len(after) != 2:
        raise SyncProtocolError("next is [mailbox uniqueid, uid] or null")
    return state, mailboxes, (_uniqueid(after[0]), _int(after[1], "next uid"))


def encode_push(push: Push) -> dict[str, Any]:
    return {
        "account": push.account,
        "delete_account": push.delete_account,
        "create_account": push.create_account,
        # [password_hash, quota_limit]; the message limit beside it, which a
        # partner of an older version ignores.
        "account_fields": list(push.account_fields[:2]) if push.account_fields else None,
        "message_limit": push.account_fields[2] if push.account_fields else None,
        "deletes": list(push.deletes),
        "subscriptions": list(push.subscriptions) if push.subscriptions is not None else None,
        "sieve": None if push.sieve is None else [list(s) for s in push.sieve],
        "vacations": None if push.vacations is None else [list(v) for v in push.vacations],
        "annotations": None if push.annotations is None else encode_annotations(push.annotations),
        # A partner of an older version ignores it (it keeps no cursors).
        "import_cursors": None
        if push.import_cursors is None
        else [list(c) for c in push.import_cursors],
        "mailboxes": [
            {
                "summary": encode_summary(m.summary),
                "create": m.create,
                "upserts": [encode_record(r) for r in m.upserts],
                "expunges": list(m.expunges),
            }
            for m in push.mailboxes
        ],
    }


def decode_push(value: Any) -> Push:
    if not isinstance(value, dict):
        raise SyncProtocolError("a push must be an object")
    fields = value.get("account_fields")
    account_fields: tuple[str, int | None, int | None] | None = None
    if fields is not None:
        if not isinstance(fields, list) or len(fields) != 2:
            raise SyncProtocolError("account_fields is [password_hash, quota_limit]")
        quota = None if fields[1] is None else _int(fields[1], "quota_limit")
        limit = value.get("message_limit")
        messages = None if limit is None else _int(limit, "message_limit")
        account_fields = (_str(fields[0], "password_hash", MAX_PASSWORD_HASH), quota, messages)
    mailboxes = []
    for item in _list(value.get("mailboxes", []), "mailboxes", MAX_MAILBOXES):
        if not isinstance(item, dict):
            raise SyncProtocolError("a mailbox push must be an object")
        mailboxes.append(
            MailboxPush(
                summary=decode_summary(item.get("summary")),
                upserts=tuple(decode_record(r) for r in _list(item.get("upserts", []), "upserts")),
                expunges=tuple(
                    _int(u, "uid", 1) for u in _list(item.get("expunges", []), "expunges")
                ),
                create=bool(item.get("create", False)),
            )
        )
    subscriptions = value.get("subscriptions")
    return Push(
        account=_str(value.get("account"), "account", MAX_ACCOUNT_NAME),
        delete_account=bool(value.get("delete_account", False)),
        create_account=bool(value.get("create_account", False)),
        account_fields=account_fields,
        deletes=tuple(_uniqueid(u) for u in _list(value.get("deletes", []), "deletes")),
        mailboxes=tuple(mailboxes),
        subscriptions=None
        if subscriptions is None
        else tuple(
            _str(s, "subscription", MAX_MAILBOX_NAME)
            for s in _list(subscriptions, "subscriptions", MAX_SUBSCRIPTIONS)
        ),
        sieve=None if value.get("sieve") is None else decode_sieve(value["sieve"]),
        vacations=None if value.get("vacations") is None else decode_vacations(value["vacations"]),
        annotations=None
        if value.get("annotations") is None
        else decode_annotations(value["annotations"]),
        import_cursors=None
        if value.get("import_cursors") is None
        else decode_import_cursors(value["import_cursors"]),
    )


def split_push(push: Push, budget: int, held: Mapping[str, str] | None = None) -> list[Push]:
    """``push`` as pushes to apply one after another, each encoding to at most
    ``budget`` characters of JSON (as a bound on each record reckons it;
    ``push`` itself when it fits), so that no APPLY outgrows the
    partner's ``sync_max_request`` however many records a change touched (a
    STORE of long keywords on a large mailbox, a first sync of a large
    account): every record is within the limits, their number is not.

    The first push is ``push`` without its records: the account's fields,
    the mailbox deletes, and every mailbox's summary (so renames and
    creates happen together, as :func:`engine.apply.apply_push` needs them).
    When the summaries alone outgrow ``budget`` (thousands of mailboxes
    with long ACLs), the account's fields go first, then the deletes, then
    the summaries of the mailboxes the replica holds (renames) and of the new
    ones, as many a push as fit: a mailbox that sits on a name another one
    takes in an earlier push steps aside (``Recovered/<uniqueid>``) until its
    own push names it. ``held`` (uniqueid to the replica's name of it) keeps
    the mailboxes of each chain or cycle of renames in one push when they
    fit in one, so no push leaves a mailbox aside: a sync cut short there
    (and a failover then) shows no ``Recovered/`` mailbox. A summary larger
    than ``budget`` goes alone (the caller says whether the partner takes it). Then the account's subscriptions, Sieve scripts, vacation records,
    METADATA and import cursors, each alone, when they are large; then the
    records, mailbox by mailbox in UID order, each with its mailbox's
    summary. A mailbox is equal to the owner's once the last
    push naming it is applied; until then the replica reports it mismatched
    (and keeps no ``sync_base`` for it), so a sync cut short between two
    pushes is completed by the next compare, in full.
    """
    overheads = [len(encode_json(encode_summary(m.summary))) + 64 for m in push.mailboxes]
    costs = [
        [_EXPUNGE_COST] * len(m.expunges) + [_record_cost(r) for r in m.upserts]
        for m in push.mailboxes
    ]
    # The account's whole sets (each None when unchanged), a push of its own
    # each when together they are large: 100,000 subscriptions of long names
    # and 1,000 METADATA values of 64 KB are within the limits.
    blank = Push(push.account)
    sets: dict[str, Any] = {
        "subscriptions": push.subscriptions,
        "sieve": push.sieve,
        "vacations": push.vacations,
        "annotations": push.annotations,
        "import_cursors": push.import_cursors,
    }
    sizes = {
        k: len(encode_json(encode_push(replace(blank, **{k: v}))))
        for k, v in sets.items()
        if v is not None
    }
    if sum(overheads) + sum(map(sum, costs)) + sum(sizes.values()) <= budget:
        return [push]
    apart: dict[str, Any] = {k: None for k in sizes} if sum(sizes.values()) > budget // 2 else {}
    head = replace(
        push,
        mailboxes=tuple(
            replace(m, upserts=(), expunges=(), resurrected=()) for m in push.mailboxes
        ),
        **apart,
    )
    kept = sum(v for k, v in sizes.items() if k not in apart)
    heads = _cut_head(head, overheads, budget - kept, held or {})
    alone = [replace(blank, **{k: sets[k]}) for k in apart]
    parts: list[list[MailboxPush]] = [[]]
    used = 0
    for mp, overhead, mailbox_costs in zip(push.mailboxes, overheads, costs, strict=True):
        items: list[tuple[int, RecordState | None]] = [(uid, None) for uid in mp.expunges]
        items += [(r.uid, r) for r in mp.upserts]
        upserts: list[RecordState] = []
        expunges: list[int] = []
        size = 0
        for (uid, record), cost in zip(items, mailbox_costs, strict=True):
            if used + overhead + size + cost > budget and (parts[-1] or upserts or expunges):
                if upserts or expunges:
                    parts[-1].append(_records_part(mp, upserts, expunges))
                parts.append([])
                upserts, expunges, size, used = [], [], 0, 0
            if record is None:
                expunges.append(uid)
            else:
                upserts.append(record)
            size += cost
        if upserts or expunges:
            parts[-1].append(_records_part(mp, upserts, expunges))
            used += overhead + size
    rest = [Push(push.account, mailboxes=tuple(p)) for p in parts if p]
    return [*heads, *alone, *rest]


# What one uniqueid costs in a push's deletes, at most (32 digits, quotes, comma).
_DELETE_COST = 35


def _cut_head(head: Push, overheads: list[int], budget: int, held: Mapping[str, str]) -> list[Push]:
    """``head`` (a push without records), or its fields, deletes and
    summaries in several pushes of at most ``budget`` when it is larger."""
    base = len(encode_json(encode_push(Push(head.account))))
    if base + len(head.deletes) * _DELETE_COST + sum(overheads) <= budget:
        return [head]
    out = [replace(head, deletes=(), mailboxes=())]
    step = max(1, (budget - base) // _DELETE_COST)
    for start in range(0, len(head.deletes), step):
        out.append(Push(head.account, deletes=head.deletes[start : start + step]))
    chunk: list[MailboxPush] = []
    used = base
    for group in _rename_groups(head.mailboxes, held):
        size = sum(overheads[i] for i in group)
        if chunk and used + size > budget:
            out.append(Push(head.account, mailboxes=tuple(chunk)))
            chunk, used = [], base
        # A group larger than a push goes in several: its mailboxes then
        # step aside (Recovered/) until their own push names them.
        for i in group:
            if chunk and used + overheads[i] > budget:
                out.append(Push(head.account, mailboxes=tuple(chunk)))
                chunk, used = [], base
            chunk.append(head.mailboxes[i])
            used += overheads[i]
    if chunk:
        out.append(Push(head.account, mailboxes=tuple(chunk)))
    return out


def _rename_groups(mailboxes: tuple[MailboxPush, ...], held: Mapping[str, str]) -> list[list[int]]:
    """The indexes of ``mailboxes`` in groups to push together: the mailboxes
    the replica holds first (a rename frees a name a new mailbox may take),
    each chain or cycle of renames (one takes the name another holds there,
    by ``held``) in one group, every other mailbox alone."""
    parent = list(range(len(mailboxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    holder = {
        held[m.summary.uniqueid]: i
        for i, m in enumerate(mailboxes)
        if not m.create and m.summary.uniqueid in held
    }
    for i, m in enumerate(mailboxes):
        j = holder.get(m.summary.name)
        if not m.create and j is not None and j != i:
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in sorted(range(len(mailboxes)), key=lambda i: mailboxes[i].create):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


# What one record or expunged UID costs in a push's JSON, at most: the
# numbers at 20 digits, the GUID, the punctuation, and the flags with each
# character escaped (only a system flag's backslash is, but this is a bound).
_RECORD_COST = 4 * 20 + 42 + 16
_EXPUNGE_COST = 21


def _record_cost(record: RecordState) -> int:
    return _RECORD_COST + 2 * len(record.flags)


def _records_part(mp: MailboxPush, upserts: list[RecordState], expunges: list[int]) -> MailboxPush:
    return replace(mp, upserts=tuple(upserts), expunges=tuple(expunges), create=False)


def encode_annotations(rows: Iterable[tuple[str, str, bytes]]) -> list[list[str]]:
    """METADATA entries (Cyrus's ANNOTATION): ``[[uniqueid or "", entry, base64 value], ...]``."""
    return [[m, e, base64.b64encode(v).decode("ascii")] for m, e, v in rows]


def decode_annotations(value: Any) -> tuple[tuple[str, str, bytes], ...]:
    """The account's METADATA entries, within :mod:`engine.limits` (the same
    limits the IMAP server checks where they are set)."""
    out = []
    for item in _list(value, "annotations", MAX_ANNOTATIONS):
        if not isinstance(item, list) or len(item) != 3:
            raise SyncProtocolError("an annotation is [mailbox uniqueid, entry, value]")
        mailbox = "" if item[0] == "" else _uniqueid(item[0])
        entry = _str(item[1], "annotation entry", MAX_ANNOTATION_ENTRY)
        try:
            data = base64.b64decode(
                _str(item[2], "annotation value", 4 * MAX_ANNOTATION_VALUE), validate=True
            )
        except binascii.Error as exc:
            raise SyncProtocolError("an annotation value is base64") from exc
        if len(data) > MAX_ANNOTATION_VALUE:
            raise SyncProtocolError(f"an annotation value is at most {MAX_ANNOTATION_VALUE} octets")
        out.append((mailbox, entry, data))
    return tuple(out)


def decode_import_cursors(value: Any) -> tuple[tuple[str, int, int], ...]:
    """import-imap's cursors: ``[[mailbox uniqueid, uidvalidity, last_uid], ...]``,
    at most one per mailbox."""
    out: dict[str, tuple[int, int]] = {}
    for item in _list(value, "import_cursors", MAX_MAILBOXES):
        if not isinstance(item, list) or len(item) != 3:
            raise SyncProtocolError("an import cursor is [mailbox uniqueid, uidvalidity, last_uid]")
        mailbox = _uniqueid(item[0])
        if mailbox in out:
            raise SyncProtocolError(f"two import cursors for mailbox {mailbox}")
        out[mailbox] = (_int(item[1], "uidvalidity", 1), _int(item[2], "last_uid"))
    return tuple((m, v, u) for m, (v, u) in sorted(out.items()))


def decode_sieve(value: Any) -> tuple[tuple[str, str, bool], ...]:
    """The SIEVE part: ``[[name, content, active], ...]``, at most one active."""
    out = []
    for item in _list(value, "sieve", MAX_SCRIPTS):
        if not isinstance(item, list) or len(item) != 3 or not isinstance(item[2], bool):
            raise SyncProtocolError("a script is [name, content, active]")
        out.append(
            (
                _str(item[0], "script name", MAX_SCRIPT_NAME),
                _str(item[1], "script", MAX_SCRIPT_CHARS),
                item[2],
            )
        )
    if sum(active for _, _, active in out) > 1:
        raise SyncProtocolError("at most one script is active")
    return tuple(out)


def decode_vacations(value: Any) -> tuple[tuple[str, str], ...]:
    """The vacation records: ``[[key, until], ...]``, ``until`` ISO 8601 with offset."""
    out = []
    for item in _list(value, "vacations", MAX_VACATIONS):
        if not isinstance(item, list) or len(item) != 2:
            raise SyncProtocolError("a vacation record is [key, until]")
        key, until = _str(item[0], "vacation key", 64), _str(item[1], "vacation until", 64)
        try:
            when = dt.datetime.fromisoformat(until)
        except ValueError:
            raise SyncProtocolError(f"bad vacation time {until!r}") from None
        if when.tzinfo is None:
            raise SyncProtocolError(f"vacation time without an offset {until!r}")
        out.append((key, until))
    return tuple(out)


def encode_delta(control: dict[str, Any], frames: Iterable[tuple[str, bytes]]) -> bytes:
    """A delta request: the JSON control part, then the message frames.

    ``<length of the JSON>\n<JSON><frames>``, one body, so a push and the bytes
    it needs travel in one round trip.
    """
    head = encode_json(control)
    return b"".join([f"{len(head)}\n".encode(), head, *encode_frames(frames)])


def decode_delta(data: bytes) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    newline = data.find(b"\n", 0, 16)
    if newline < 0 or not data[:newline].isdigit():
        raise SyncProtocolError("a delta body starts with the length of its JSON part")
    length = int(data[:newline])
    end = newline + 1 + length
    if end > len(data):
        raise SyncProtocolError("the delta's JSON part is truncated")
    return decode_json(data[newline + 1 : end]), decode_frames(data[end:])


def encode_frames(items: Iterable[tuple[str, bytes]]) -> Iterator[bytes]:
    for guid, data in items:
        yield f"{guid} {len(data)}\n".encode() + data


def decode_frames(data: bytes, limit_count: int = 1_000_000) -> list[tuple[str, bytes]]:
    """Split and verify frames: every frame's bytes must hash to its GUID."""
    return [(guid, bytes(body)) for guid, body in decode_frame_views(data, limit_count)]


def decode_frame_views(data: bytes, limit_count: int = 1_000_000) -> list[tuple[str, memoryview]]:
    """:func:`decode_frames` without copying: each frame's bytes are a view
    into ``data`` (an UPLOAD's frames go straight to their files)."""
    out: list[tuple[str, memoryview]] = []
    view = memoryview(data)
    pos = 0
    while pos < len(data):
        newline = data.find(b"\n", pos, pos + 80)
        if newline < 0:
            raise SyncProtocolError(f"bad frame header at offset {pos}")
        try:
            guid_text, length_text = data[pos:newline].decode("ascii").split(" ")
            # Decimal digits as the encoder writes them: int() would also take
            # "+5", "\t5" and "0_5".
            if not length_text.isdigit():
                raise ValueError(length_text)
            length = int(length_text)
        except (UnicodeDecodeError, ValueError) as exc:
            raise SyncProtocolError(f"bad frame header at offset {pos}") from exc
        guid = _guid(guid_text)
        if not 0 <= length <= MAX_FRAME or newline + 1 + length > len(data):
            raise SyncProtocolError(f"frame for {guid} is truncated or too large")
        body = view[newline + 1 : newline + 1 + length]
        if guid_of(body) != guid:
            raise SyncProtocolError(f"frame bytes do not match GUID {guid}")
        out.append((guid, body))
        pos = newline + 1 + length
        if len(out) > limit_count:
            raise SyncProtocolError("too many frames in one request")
    return out
