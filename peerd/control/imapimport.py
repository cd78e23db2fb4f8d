"""``/v1/accounts/{name}/import``: mail copied in from another IMAP server.

How this works: ``peerctl import-imap`` is the IMAP client of the old
server; this node only takes what it read. ``GET …/import`` lists the
account's mailboxes with their import cursors (the remote UIDVALIDITY and
the last remote UID copied), ``GET …/import/keys`` the Message-ID/date/size
keys of one mailbox (to match messages when a remote UIDVALIDITY changed),
and ``POST …/import`` takes one batch: the messages are spooled, then
appended behind the ownership fence (:meth:`~peerd.node.node.Node.write_owned`)
with the cursor moved in the same transaction (:mod:`engine.mailimport`), so
the partner gets them by the usual replication and a batch sent twice, or a
rerun after a kill, copies nothing twice. Over quota, the messages that fit
are kept and the answer is a 422 ``over_quota`` problem saying how far it got.
A message no write path here stores (NUL octets, larger than ``[imap]
max_literal``: what LMTP refuses with 554 5.6.0 and 552 5.3.4) is left out
and listed in the answer's ``refused`` with its old UID and why; the rest of
the batch is stored and the cursor moves past it, so the import goes on.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session

from engine import mailimport
from engine.accounts import get_account
from engine.errors import InvalidArgument, MessageTooLarge
from engine.mailbox import normalize_mailbox_name
from engine.mailimport import Batch, ImportedMessage
from engine.models import Account
from peerd.control.call import Call
from peerd.control.schema import Flag, Integer, ObjectList, Text, TextList, member

__all__ = [
    "MAX_BATCH",
    "MAX_BATCH_BODY",
    "ImportBatch",
    "ImportMessage",
    "KeysQuery",
    "Refused",
    "import_batch",
    "import_keys",
    "import_state",
]

MAX_BATCH = 500
# A batch's JSON body: one message of [imap] max_literal's default (64 MiB)
# in base64, and room for the rest.
MAX_BATCH_BODY = 96 << 20
UID = Integer(minimum=1, maximum=2**32 - 1)
NUL_CODE = "message_has_nul"


@dataclass(frozen=True, slots=True)
class ImportMessage:
    uid: int = member(UID)
    data: str = member(Text(min_length=0))  # base64 of the message's bytes
    internaldate: str = member(Text(max_length=64))  # ISO 8601 with an offset
    flags: tuple[str, ...] = member(TextList(Text(max_length=256)), default=())


@dataclass(frozen=True, slots=True)
class ImportBatch:
    mailbox: str = member(Text(max_length=1024))
    uidvalidity: int = member(UID)
    done_uid: int = member(Integer(maximum=2**32 - 1))
    messages: tuple[ImportMessage, ...] = member(ObjectList(ImportMessage, MAX_BATCH), default=())
    rematch: bool = member(Flag(), default=False)
    subscribe: bool = member(Flag(), default=False)


@dataclass(frozen=True, slots=True)
class KeysQuery:
    mailbox: str = member(Text(max_length=1024))


async def import_state(call: Call[None, None]) -> web.Response:
    name = call.path("name")

    def read(session: Session) -> list[mailimport.Cursor]:
        return mailimport.cursors(session, get_account(session, name))

    found = await call.node.store.read(read)
    return web.json_response(
        {
            "account": name,
            "mailboxes": [
                {
                    "mailbox": c.mailbox,
                    "uidvalidity": c.uidvalidity,
                    "last_uid": c.last_uid,
                    "exists": c.exists,
                }
                for c in found
            ],
        }
    )


async def import_keys(call: Call[None, KeysQuery]) -> web.Response:
    name, mailbox = call.path("name"), normalize_mailbox_name(call.query.mailbox)
    read_bytes = call.node.store.spool.read

    def read(session: Session) -> list[str]:
        return mailimport.message_keys(session, get_account(session, name), mailbox, read_bytes)

    keys = await call.node.store.read(read)
    return web.json_response({"account": name, "mailbox": mailbox, "keys": keys})


@dataclass(frozen=True, slots=True)
class Refused:
    """A message of a batch this store does not keep; the rest go on."""

    uid: int
    code: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"uid": self.uid, "code": self.code, "reason": self.reason}


def _message(index: int, given: ImportMessage, limit: int) -> tuple[bytes, dt.datetime] | Refused:
    """A message's bytes and date; :class:`Refused` for one no write path
    here stores (the same rules as LMTP and APPEND); a malformed item fails
    the whole batch (422)."""
    where = f"messages[{index}] (remote UID {given.uid})"
    try:
        data = base64.b64decode(given.data, validate=True)
    except binascii.Error as exc:
        raise InvalidArgument(f"{where}: data is not base64") from exc
    try:
        when = dt.datetime.fromisoformat(given.internaldate)
    except ValueError as exc:
        raise InvalidArgument(f"{where}: internaldate is not ISO 8601") from exc
    if when.tzinfo is None:
        raise InvalidArgument(f"{where}: internaldate must carry an offset")
    if len(data) > limit:
        # LMTP: 552 5.3.4 for that recipient; APPEND: NO [TOOBIG].
        return Refused(
            given.uid,
            MessageTooLarge.code,
            f"{len(data)} octets, more than [imap] max_literal {limit}",
        )
    if b"\0" in data:
        # The store keeps no NUL octets (RFC 3501 4.3: a literal is CHAR8,
        # no NUL; only RFC 3516's literal8 carries them): LMTP refuses such
        # a message with 554 5.6.0, APPEND with NO [UNKNOWN-CTE].
        return Refused(
            given.uid,
            NUL_CODE,
            f"holds NUL octets ({data.count(0)}), which this server does not store"
            " (LMTP refuses such a message with 554 5.6.0)",
        )
    return data, when


async def import_batch(call: Call[ImportBatch, None]) -> web.Response:
    node, body = call.node, call.body
    name = call.path("name")
    mailbox = normalize_mailbox_name(body.mailbox)
    limit = node.config.imap.max_literal
    kept: list[tuple[ImportMessage, bytes, dt.datetime]] = []
    refused: list[Refused] = []
    for i, given in enumerate(body.messages):
        found = _message(i, given, limit)
        if isinstance(found, Refused):
            refused.append(found)
        else:
            kept.append((given, *found))
    spool = node.store.spool
    staged = await node.store.run_blocking(lambda: [spool.stage(d) for _, d, _ in kept])
    batch = Batch(
        mailbox=mailbox,
        uidvalidity=body.uidvalidity,
        done_uid=body.done_uid,
        messages=tuple(
            ImportedMessage(m.uid, st.guid, len(data), m.flags, when)
            for (m, data, when), st in zip(kept, staged, strict=True)
        ),
        rematch=body.rematch,
        subscribe=body.subscribe,
    )

    def write(session: Session, account: Account) -> mailimport.Outcome:
        return mailimport.import_batch(session, account, batch)

    outcome = await node.write_owned(name, write, staged=staged)
    answer: dict[str, Any] = {
        "account": name,
        "mailbox": mailbox,
        "appended": outcome.appended,
        "skipped": outcome.skipped,
        "last_uid": outcome.last_uid,
        # Not stored, each with why; the cursor moves past them all the same.
        "refused": [r.to_json() for r in refused],
    }
    if outcome.over_quota:
        # The messages that fit are committed: a problem (RFC 9457) that
        # still says how far the batch got.
        problem = {
            "type": "about:blank",
            "title": "Over Quota",
            "status": 422,
            "detail": outcome.over_quota,
            "code": "over_quota",
            **answer,
        }
        return web.Response(
            status=422, text=json.dumps(problem), content_type="application/problem+json"
        )
    return web.json_response(answer)
