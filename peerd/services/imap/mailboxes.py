"""IMAP commands on mailboxes (RFC 3501 6.3): ENABLE, NAMESPACE, SELECT, EXAMINE,
CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, STATUS, APPEND.

How this works: each handler turns its command into one call of the
account's :class:`~peerd.services.mailstore.AccountStore` and asks the core
for the responses (:mod:`~peerd.protocols.imap.listing` for LIST, LSUB and
STATUS; :class:`~peerd.protocols.imap.selected.Selected` for SELECT).
:data:`HANDLERS` names them by command class.
"""

from __future__ import annotations

import datetime as dt
from functools import partial
from typing import Final

from engine.errors import InvalidArgument, NoSuchMailbox
from engine.mailview import normalize_mailbox_name
from peerd.protocols.imap import commands as c
from peerd.protocols.imap.caturl import bad_url, cut, parse_url
from peerd.protocols.imap.listing import list_responses, lsub_responses, status_response
from peerd.protocols.imap.responses import (
    CODE_ALREADYEXISTS,
    CODE_APPENDUID,
    CODE_READ_ONLY,
    CODE_READ_WRITE,
    CODE_TOOBIG,
    CODE_TRYCREATE,
    CODE_UNKNOWN_CTE,
    CommandError,
    Raw,
    response_code,
)
from peerd.protocols.imap.selected import Selected, closed_response
from peerd.protocols.imap.sequence import SequenceSet
from peerd.services.imap.session import Handler, Reply, Selection, Session

__all__ = ["HANDLERS"]


def store_name(decoded: str) -> str:
    """A decoded mailbox name in the store's form (INBOX's case, no empty levels)."""
    return normalize_mailbox_name(decoded)


async def enable(session: Session, cmd: c.Enable) -> Reply:
    await session.send(session.ext.enable(cmd.caps))
    return Reply("ENABLE completed")


async def namespace(session: Session, cmd: c.Namespace) -> Reply:
    await session.send(b'* NAMESPACE (("" "/")) NIL NIL\r\n')
    return Reply("NAMESPACE completed")


async def select(session: Session, cmd: c.Select | c.Examine) -> Reply:
    readonly = isinstance(cmd, c.Examine)
    session.ext.admit(cmd)
    name = store_name(cmd.mailbox)
    if session.selection is not None:
        # RFC 7162 3.2.11 (any client of a server that offers QRESYNC).
        await session.send(closed_response())
    # RFC 3501 6.3.1: a failed SELECT leaves no mailbox selected.
    session.unselect()
    known = cmd.qresync
    vanished: tuple[int, ...] = ()
    if known is None:
        snapshot = await session.mail.snapshot(name)
    else:
        snapshot, vanished = await session.mail.snapshot_and_vanished(
            name, known.uidvalidity, known.modseq
        )
    box = Selected(snapshot, name=snapshot.name, readonly=readonly, ext=session.ext)
    if box.needs_claim(snapshot, snapshot.recentuid):
        # RFC 3501 2.3.2: this session is the first to be told of these.
        box.claimed(*await session.mail.claim_recent(snapshot.mailbox_id))
    session.select(Selection(snapshot.mailbox_id, snapshot.uniqueid, box))
    await session.send(box.opening())
    if known is not None:
        resync = box.resync(known, vanished)
        if resync:
            await session.send(resync)
    return Reply(f"{cmd.name} completed", CODE_READ_ONLY if readonly else CODE_READ_WRITE)


async def create(session: Session, cmd: c.Create) -> Reply:
    name = store_name(cmd.mailbox)
    if name == "INBOX":
        raise CommandError("INBOX always exists", code=CODE_ALREADYEXISTS, status="NO")
    if cmd.special_use:
        # RFC 6154 3: CREATE-SPECIAL-USE is not offered; attributes follow names.
        raise CommandError("CREATE with USE is not offered (no CREATE-SPECIAL-USE)")
    await session.mail.create_mailbox(name)
    return Reply("CREATE completed")


async def delete(session: Session, cmd: c.Delete) -> Reply:
    name = store_name(cmd.mailbox)
    await session.mail.delete_mailbox(name)
    if session.selection is not None and session.selection.box.name == name:
        session.unselect()
    return Reply("DELETE completed")


async def rename(session: Session, cmd: c.Rename) -> Reply:
    await session.mail.rename_mailbox(store_name(cmd.mailbox), store_name(cmd.new_name))
    return Reply("RENAME completed")


async def subscribe(session: Session, cmd: c.Subscribe) -> Reply:
    await session.mail.subscribe(store_name(cmd.mailbox))
    return Reply("SUBSCRIBE completed")


async def unsubscribe(session: Session, cmd: c.Unsubscribe) -> Reply:
    await session.mail.unsubscribe(store_name(cmd.mailbox))
    return Reply("UNSUBSCRIBE completed")


async def list_mailboxes(session: Session, cmd: c.List) -> Reply:
    listing = await session.mail.listing()
    # A loop over every mailbox name: off the event loop, like SEARCH.
    out, listed = await session.mail.run_blocking(
        partial(list_responses, cmd, listing.names, listing.subscriptions)
    )
    if out:
        await session.send(out)
    # RFC 5819 (LIST-STATUS): a STATUS after the LIST responses.
    for name in listed if cmd.status_items else ():
        await session.send(status_response(name, cmd.status_items, await session.mail.status(name)))
    return Reply("LIST completed")


async def lsub(session: Session, cmd: c.Lsub) -> Reply:
    listing = await session.mail.listing()
    out = await session.mail.run_blocking(
        partial(lsub_responses, cmd, listing.names, listing.subscriptions)
    )
    if out:
        await session.send(out)
    return Reply("LSUB completed")


async def status(session: Session, cmd: c.Status) -> Reply:
    name = store_name(cmd.mailbox)
    await session.send(status_response(name, cmd.items, await session.mail.status(name)))
    return Reply("STATUS completed")


async def _catenated(session: Session, parts: tuple[c.CatPart, ...]) -> bytes:
    """The message CATENATE builds (RFC 4469 5): its TEXT parts and the
    sections its URLs name, in order; ``NO [BADURL url]`` for a URL that names
    nothing here, ``NO [TOOBIG]`` past ``[imap] max_literal``."""
    out: list[bytes] = []
    size = 0
    limit = session.node.config.imap.max_literal
    for part in parts:
        if part.text is not None:
            data = part.text
        else:
            assert part.url is not None
            url = parse_url(part.url, session.account)
            try:
                box = await session.mail.snapshot(store_name(url.mailbox))
            except NoSuchMailbox as exc:
                raise bad_url(url.text, "no such mailbox") from exc
            if url.uidvalidity is not None and url.uidvalidity != box.uidvalidity:
                raise bad_url(url.text, "UIDVALIDITY differs: the mailbox changed")
            record = next((r for r in box.records if r.uid == url.uid), None)
            if record is None:
                raise bad_url(url.text, "no such message")
            data = cut(url, await session.mail.message(record.guid))
        size += len(data)
        if size > limit:
            raise CommandError(
                f"the message would pass {limit} octets", code=CODE_TOOBIG, status="NO"
            )
        out.append(data)
    return b"".join(out)


async def append(session: Session, cmd: c.Append) -> Reply:
    name = store_name(cmd.mailbox)
    now = dt.datetime.now(dt.UTC)
    messages = []
    for one in cmd.messages:
        data = await _catenated(session, one.catenate) if one.catenate else one.message
        if b"\0" in data:
            if one.binary or one.catenate:
                # RFC 3516 4.4: the store keeps no NUL octets; refused as such.
                raise CommandError(
                    "messages with NUL octets cannot be stored here",
                    code=CODE_UNKNOWN_CTE,
                    status="NO",
                )
            raise InvalidArgument("message contains NUL")
        when = (one.internaldate or now).astimezone(dt.UTC)
        messages.append((data, one.flags, when))
    try:
        # RFC 3502 6.3.11: several messages are appended all together or not at all.
        appended = await session.mail.append_many(name, messages)
    except NoSuchMailbox:
        # RFC 3501 6.3.11: TRYCREATE, so the client may CREATE and retry.
        return Reply("no such mailbox", CODE_TRYCREATE, "NO")
    await session.report(cmd)
    # RFC 4315 3: APPENDUID uidvalidity uid-set (one UID per message, in order).
    uids = Raw(str(SequenceSet.from_numbers([a.uid for a in appended])).encode())
    return Reply("APPEND completed", response_code(CODE_APPENDUID, appended[0].uidvalidity, uids))


HANDLERS: Final[dict[type[c.Command], Handler]] = {
    c.Enable: enable,
    c.Namespace: namespace,
    c.Select: select,
    c.Examine: select,
    c.Create: create,
    c.Delete: delete,
    c.Rename: rename,
    c.Subscribe: subscribe,
    c.Unsubscribe: unsubscribe,
    c.List: list_mailboxes,
    c.Lsub: lsub,
    c.Status: status,
    c.Append: append,
}
