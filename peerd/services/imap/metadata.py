"""IMAP METADATA commands (RFC 5464): GETMETADATA, SETMETADATA.

How this works: entries live in the store (:mod:`engine.annotations`), per
account and mailbox, the server's under mailbox ``""``; a SETMETADATA is one
fenced write (all values or none, RFC 5464 4.3) that the store keeps within
the limits the sync channel enforces, refusing with ``[METADATA MAXSIZE n]``
or ``[METADATA TOOMANY]`` (:mod:`peerd.node.errormap`). What a GETMETADATA
returns (DEPTH, MAXSIZE, LONGENTRIES) is the core's rule
(:func:`peerd.protocols.imap.metadata.select_entries`).
"""

from __future__ import annotations

from typing import Final

from engine import annotations as annotation_store
from peerd.protocols.imap import commands as c
from peerd.protocols.imap.metadata import (
    GetMetadata,
    SetMetadata,
    longentries_code,
    metadata_response,
    select_entries,
)
from peerd.services.imap.access import Place, place, shown
from peerd.services.imap.session import Handler, Reply, Session

__all__ = ["HANDLERS"]


def _place(session: Session, mailbox: str) -> Place:
    """The account and store name of the mailbox; ``""`` is the server (RFC
    5464 3.1). A shared mailbox's entries are its owner's."""
    return Place(session.account, "") if mailbox == "" else place(session, mailbox)


async def getmetadata(session: Session, cmd: GetMetadata) -> Reply:
    where = _place(session, cmd.mailbox)
    account, name = where.owner, where.name
    stored = await session.node.store.read(lambda s: annotation_store.entries(s, account, name))
    values, longest = select_entries(stored, cmd)
    if values:
        await session.send(
            metadata_response(shown(session, account, name) if name else name, values)
        )
    code = None if longest is None else longentries_code(longest)
    return Reply("GETMETADATA completed", code)


async def setmetadata(session: Session, cmd: SetMetadata) -> Reply:
    where = _place(session, cmd.mailbox)
    name = where.name
    await session.node.write_owned(
        where.owner, lambda s, a: annotation_store.set_entries(s, a, name, cmd.values)
    )
    return Reply("SETMETADATA completed")


HANDLERS: Final[dict[type[c.Command], Handler]] = {
    GetMetadata: getmetadata,
    SetMetadata: setmetadata,
}
