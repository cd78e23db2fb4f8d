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

from sqlalchemy.orm import Session as DbSession

from engine import acl as acl_store
from engine.errors import InvalidArgument, NoSuchMailbox
from engine.mailview import MailboxStatus
from peerd.protocols.imap import commands as c
from peerd.protocols.imap.caturl import bad_url, cut, parse_url
from peerd.protocols.imap.listing import list_responses, lsub_responses, status_response
from peerd.protocols.imap.responses import (
    CODE_ALREADYEXISTS,
    CODE_APPENDUID,
    CODE_CANNOT,
    CODE_NONEXISTENT,
    CODE_READ_ONLY,
    CODE_READ_WRITE,
    CODE_TOOBIG,
    CODE_TRYCREATE,
    CODE_UNKNOWN_CTE,
    CommandError,
    Raw,
    response_code,
)
from peerd.protocols.imap.rights import (
    OTHER_USERS,
    PREFIX,
    held,
    namespace_response,
    permitted_flags,
)
from peerd.protocols.imap.selected import Selected, closed_response
from peerd.protocols.imap.sequence import SequenceSet
from peerd.services.imap.access import Place, place, rights_on, shown, store_name
from peerd.services.imap.session import Handler, Reply, Selection, Session

__all__ = ["HANDLERS", "store_name"]

_WRITING: Final = "stwe"
"""A shared mailbox selected with none of these rights is read-only (RFC 4314 4)."""


def _mailbox(session: Session, decoded: str) -> Place:
    """The mailbox a command names; NO [NONEXISTENT] for a level of the
    Other Users namespace, which is no mailbox."""
    where = place(session, decoded)
    if not where.name:
        raise CommandError(f"no such mailbox: {decoded}", code=CODE_NONEXISTENT, status="NO")
    return where


async def enable(session: Session, cmd: c.Enable) -> Reply:
    await session.send(session.ext.enable(cmd.caps))
    return Reply("ENABLE completed")


async def namespace(session: Session, cmd: c.Namespace) -> Reply:
    await session.send(namespace_response())
    return Reply("NAMESPACE completed")


async def select(session: Session, cmd: c.Select | c.Examine) -> Reply:
    readonly = isinstance(cmd, c.Examine)
    session.ext.admit(cmd)
    where = _mailbox(session, cmd.mailbox)
    name, mail = where.name, session.mail_of(where.owner)
    if where.owner != session.account:
        rights = await rights_on(session, where)
        readonly = readonly or not any(r in rights for r in _WRITING)
    if session.selection is not None:
        # RFC 7162 3.2.11 (any client of a server that offers QRESYNC).
        await session.send(closed_response())
    # RFC 3501 6.3.1: a failed SELECT leaves no mailbox selected.
    session.unselect()
    known = cmd.qresync
    vanished: tuple[int, ...] = ()
    if known is None:
        snapshot = await mail.snapshot(name)
    else:
        snapshot, vanished = await mail.snapshot_and_vanished(name, known.uidvalidity, known.modseq)
    shown_as = shown(session, where.owner, snapshot.name)
    box = Selected(
        snapshot, name=shown_as, readonly=readonly, ext=session.ext, keywords=snapshot.keywords
    )
    if box.needs_claim(snapshot, snapshot.recentuid):
        # RFC 3501 2.3.2: this session is the first to be told of these.
        box.claimed(*await mail.claim_recent(snapshot.mailbox_id))
    session.select(Selection(snapshot.mailbox_id, snapshot.uniqueid, box, where.owner, mail))
    await session.send(box.opening())
    if known is not None:
        resync = box.resync(known, vanished)
        if resync:
            await session.send(resync)
    return Reply(f"{cmd.name} completed", CODE_READ_ONLY if readonly else CODE_READ_WRITE)


async def create(session: Session, cmd: c.Create) -> Reply:
    if cmd.mailbox.rstrip("/") == OTHER_USERS:
        raise CommandError(f"{OTHER_USERS} names other accounts", code=CODE_CANNOT, status="NO")
    where = _mailbox(session, cmd.mailbox)
    name = where.name
    if name == "INBOX":
        raise CommandError("INBOX always exists", code=CODE_ALREADYEXISTS, status="NO")
    if cmd.special_use:
        # RFC 6154 3: CREATE-SPECIAL-USE is not offered; attributes follow names.
        raise CommandError("CREATE with USE is not offered (no CREATE-SPECIAL-USE)")
    # In another account's mailbox the new one takes its parent's ACL, so
    # whoever could create it there can reach it (as Cyrus does).
    await session.mail_of(where.owner).create_mailbox(
        name, inherit_acl=where.owner != session.account
    )
    return Reply("CREATE completed")


async def delete(session: Session, cmd: c.Delete) -> Reply:
    where = _mailbox(session, cmd.mailbox)
    await session.mail_of(where.owner).delete_mailbox(where.name)
    selection = session.selection
    if (
        selection is not None
        and selection.owner == where.owner
        and selection.box.name == shown(session, where.owner, where.name)
    ):
        session.unselect()
    return Reply("DELETE completed")


async def rename(session: Session, cmd: c.Rename) -> Reply:
    old, new = _mailbox(session, cmd.mailbox), _mailbox(session, cmd.new_name)
    if old.owner != new.owner:
        raise CommandError(
            "a mailbox cannot be renamed into another account", code=CODE_CANNOT, status="NO"
        )
    await session.mail_of(old.owner).rename_mailbox(old.name, new.name)
    return Reply("RENAME completed")


async def subscribe(session: Session, cmd: c.Subscribe) -> Reply:
    await session.mail.subscribe(store_name(cmd.mailbox))
    return Reply("SUBSCRIBE completed")


async def unsubscribe(session: Session, cmd: c.Unsubscribe) -> Reply:
    await session.mail.unsubscribe(store_name(cmd.mailbox))
    return Reply("UNSUBSCRIBE completed")


async def shared_names(session: Session) -> dict[str, str]:
    """The other accounts' mailboxes this user may see (the ``l`` right, RFC
    4314 2.1), of accounts this node serves, as the client names them: to
    the rights the user holds on each."""
    user, node = session.account, session.node

    def read(s: DbSession) -> dict[str, str]:
        found = acl_store.shared_with(s, user)
        elsewhere = node.guard_many(s, {m.owner for m in found})
        out = {}
        for m in found:
            rights = held(user, m.owner, m.acl)
            if "l" in rights and m.owner not in elsewhere:
                out[f"{PREFIX}{m.owner}/{m.name}"] = rights
        return out

    return await node.store.read(read)


def _levels(shared: dict[str, str]) -> list[str]:
    """The levels above shared mailboxes that are no mailbox of theirs:
    ``Other Users``, each account, and any superior not shared."""
    levels: set[str] = set()
    for name in shared:
        at = name.find("/")
        while at != -1:
            levels.add(name[:at])
            at = name.find("/", at + 1)
    return sorted(levels - set(shared))


async def list_mailboxes(session: Session, cmd: c.List) -> Reply:
    listing = await session.mail.listing()
    shared = await shared_names(session)
    names = [*listing.names, *shared]
    # A loop over every mailbox name: off the event loop, like SEARCH.
    out, listed = await session.mail.run_blocking(
        partial(list_responses, cmd, names, listing.subscriptions, _levels(shared))
    )
    if out:
        await session.send(out)
    # RFC 5819 (LIST-STATUS): a STATUS after the LIST responses, for the
    # mailboxes the user may read, read a few hundred at a time per owner
    # (a mailbox deleted since the LIST gets none).
    readable = [n for n in listed if "r" in shared.get(n, "r")] if cmd.status_items else []
    for start in range(0, len(readable), _STATUS_BATCH):
        batch = readable[start : start + _STATUS_BATCH]
        places = [place(session, name) for name in batch]
        counts: dict[tuple[str, str], MailboxStatus] = {}
        for owner in dict.fromkeys(where.owner for where in places):
            names = [where.name for where in places if where.owner == owner]
            found = await session.mail_of(owner).statuses(names)
            counts.update(((owner, name), status) for name, status in found.items())
        replies = [
            status_response(name, cmd.status_items, counts[(where.owner, where.name)])
            for name, where in zip(batch, places, strict=True)
            if (where.owner, where.name) in counts
        ]
        if replies:
            await session.send(b"".join(replies))
    return Reply("LIST completed")


# LIST-STATUS: the mailboxes whose STATUS one read gives; the event loop
# resolves and renders a batch at a time (about 10 ms for 500).
_STATUS_BATCH: Final = 500


async def lsub(session: Session, cmd: c.Lsub) -> Reply:
    listing = await session.mail.listing()
    names = [*listing.names, *await shared_names(session)]
    out = await session.mail.run_blocking(
        partial(lsub_responses, cmd, names, listing.subscriptions)
    )
    if out:
        await session.send(out)
    return Reply("LSUB completed")


async def status(session: Session, cmd: c.Status) -> Reply:
    where = _mailbox(session, cmd.mailbox)
    counts = await session.mail_of(where.owner).status(where.name)
    name = shown(session, where.owner, where.name)
    await session.send(status_response(name, cmd.items, counts))
    return Reply("STATUS completed")


async def _catenated(session: Session, parts: tuple[c.CatPart, ...], budget: int) -> bytes:
    """The message CATENATE builds (RFC 4469 5): its TEXT parts and the
    sections its URLs name, in order; ``NO [BADURL url]`` for a URL that names
    nothing here, ``NO [TOOBIG]`` past ``budget`` octets (what is left of
    ``[imap] max_literal`` for the command)."""
    out: list[bytes] = []
    size = 0
    for part in parts:
        if part.text is not None:
            data = part.text
        else:
            assert part.url is not None
            url = parse_url(part.url, session.account)
            try:
                where = place(session, url.mailbox)
                if "r" not in await rights_on(session, where):
                    raise NoSuchMailbox(url.mailbox)
                mail = session.mail_of(where.owner)
                box = await mail.snapshot(where.name)
            except (NoSuchMailbox, InvalidArgument) as exc:
                raise bad_url(url.text, "no such mailbox") from exc
            if url.uidvalidity is not None and url.uidvalidity != box.uidvalidity:
                raise bad_url(url.text, "UIDVALIDITY differs: the mailbox changed")
            record = next((r for r in box.records if r.uid == url.uid), None)
            if record is None:
                raise bad_url(url.text, "no such message")
            # The whole message is read, then cut: room for all of it first.
            await session.hold.take(record.size)
            data = cut(url, await mail.message(record.guid))
            session.hold.give_back(record.size - len(data))
        size += len(data)
        if size > budget:
            raise _too_big(session)
        out.append(data)
    return b"".join(out)


def _too_big(session: Session) -> CommandError:
    limit = session.node.config.imap.max_literal
    return CommandError(f"the APPEND would pass {limit} octets", code=CODE_TOOBIG, status="NO")


async def append(session: Session, cmd: c.Append) -> Reply:
    where = _mailbox(session, cmd.mailbox)
    shared = where.owner != session.account
    rights = await rights_on(session, where) if shared else ""
    now = dt.datetime.now(dt.UTC)
    messages = []
    # The reader caps the literals of one command at [imap] max_literal; a
    # CATENATE URL of a few octets names a whole stored message, so the
    # messages built here are held to the same cap together (300 URLs of a
    # 2 MB message in one MULTIAPPEND held 600 MB before).
    left = session.node.config.imap.max_literal
    for one in cmd.messages:
        data = await _catenated(session, one.catenate, left) if one.catenate else one.message
        left -= len(data)
        if left < 0:
            raise _too_big(session)
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
        messages.append((data, permitted_flags(one.flags, rights) if shared else one.flags, when))
    try:
        # RFC 3502 6.3.11: several messages are appended all together or not at all.
        appended = await session.mail_of(where.owner).append_many(where.name, messages)
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
