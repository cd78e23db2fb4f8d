"""IMAP commands that change messages of the selected mailbox (RFC 3501 6.4):
CLOSE, UNSELECT, EXPUNGE, UID EXPUNGE, STORE, COPY, MOVE.

How this works: the core (:class:`~peerd.protocols.imap.selected.Selected`)
resolves the sequence set and renders the answers; the handler makes the one
store write in between and hands the changed records back to the core.
:data:`HANDLERS` names them by command class.
"""

from __future__ import annotations

from typing import Final, Literal

from engine.errors import NoSuchMailbox
from peerd.protocols.imap import commands as c
from peerd.protocols.imap.responses import (
    CODE_COPYUID,
    CODE_NONEXISTENT,
    CODE_TRYCREATE,
    Raw,
    response_code,
    untagged_status,
)
from peerd.services.imap.access import place, selected_rights
from peerd.services.imap.session import Handler, Reply, Session

__all__ = ["HANDLERS"]

_MODES: Final[dict[str, Literal["add", "remove", "replace"]]] = {
    "+": "add",
    "-": "remove",
    "": "replace",
}


async def unselect(session: Session, cmd: c.Unselect) -> Reply:
    session.unselect()
    return Reply("UNSELECT completed")


async def close(session: Session, cmd: c.Close) -> Reply:
    selection = session.selected()
    # RFC 3501 6.4.2: expunge silently, then leave the selected state; RFC
    # 4314 4: not without the "e" right, and no error for it.
    if not selection.box.readonly and "e" in await selected_rights(session):
        await selection.mail.expunge(selection.mailbox_id)
    session.unselect()
    return Reply("CLOSE completed")


async def expunge(session: Session, cmd: c.Expunge | c.UidExpunge) -> Reply:
    selection = session.selected()
    box = selection.box
    box.writable()
    uids = box.uid_expunge_targets(cmd.seqset) if isinstance(cmd, c.UidExpunge) else None
    expunged = await selection.mail.expunge(selection.mailbox_id, uids)
    await session.report(cmd)
    return Reply(f"{cmd.name} completed", box.expunge_code(bool(expunged)))


async def store(session: Session, cmd: c.Store) -> Reply:
    selection = session.selected()
    box = selection.box
    box.writable()
    await session.admit_condstore(cmd)
    targets = box.resolve(cmd.seqset, cmd.uid)
    result = await selection.mail.store_flags(
        selection.mailbox_id,
        [r.uid for _, r in targets],
        cmd.flags,
        mode=_MODES[cmd.mode],
        unchangedsince=cmd.unchangedsince,
    )
    box.absorb(result.changed)
    out, modified = box.store_responses(
        cmd, targets, {r.uid for r in result.changed}, result.modified
    )
    if out:
        await session.send(out)
    if modified is not None:
        return Reply("conditional STORE failed", modified)
    return Reply(f"{'UID ' if cmd.uid else ''}STORE completed")


async def copy(session: Session, cmd: c.Copy | c.Move) -> Reply:
    move = isinstance(cmd, c.Move)
    selection = session.selected()
    if move:
        selection.box.writable()
    dest = place(session, cmd.mailbox)
    uids = [r.uid for _, r in selection.box.resolve(cmd.seqset, cmd.uid)]
    mail = session.mail_of(dest.owner)
    across = dest.owner != selection.owner
    try:
        if not dest.name:
            raise NoSuchMailbox(cmd.mailbox)
        # Between accounts a MOVE is a COPY written by the destination's
        # account, then an EXPUNGE written by the source's: each account's
        # write behind its own fence. Should the second fail, the messages
        # are in both mailboxes; none is lost.
        result = await mail.copy_messages(
            selection.mailbox_id, uids, dest.name, move=move and not across
        )
        if move and across and result.source_uids:
            await selection.mail.expunge(selection.mailbox_id, result.source_uids)
    except NoSuchMailbox:
        if across:  # RFC 4314 6: tell nothing of another account's names
            return Reply("no such mailbox", CODE_NONEXISTENT, "NO")
        return Reply("no such mailbox", CODE_TRYCREATE, "NO")
    code: bytes | None = None
    if result.source_uids:
        # RFC 4315 3: COPYUID uidvalidity source-uids dest-uids.
        code = response_code(
            CODE_COPYUID,
            result.uidvalidity,
            Raw(",".join(str(u) for u in result.source_uids).encode()),
            Raw(",".join(str(u) for u in result.dest_uids).encode()),
        )
    prefix = "UID " if cmd.uid else ""
    if move:
        # RFC 6851 4.3: COPYUID goes in an untagged OK before the EXPUNGEs.
        await session.send(untagged_status("OK", "Moved", code))
        await session.report(cmd)
        return Reply(f"{prefix}MOVE completed")
    return Reply(f"{prefix}COPY completed", code)


HANDLERS: Final[dict[type[c.Command], Handler]] = {
    c.Unselect: unselect,
    c.Close: close,
    c.Expunge: expunge,
    c.UidExpunge: expunge,
    c.Store: store,
    c.Copy: copy,
    c.Move: copy,
}
