"""IMAP ACL commands (RFC 4314): SETACL, DELETEACL, GETACL, LISTRIGHTS, MYRIGHTS.

How this works: each handler reads or changes the mailbox's ACL in the
store (:mod:`engine.acl`; a change is a fenced write of the account that
owns the mailbox, through :meth:`~peerd.node.node.Node.write_owned`,
replicated with the mailbox) and asks the core
(:mod:`peerd.protocols.imap.acl`) for the rights and the responses. The
rights these commands need (``a``; any right for MYRIGHTS) are checked
before they run, from the one table
(:data:`peerd.protocols.imap.rights.REQUIRED`). The owner of a mailbox holds
every right on it and cannot lose one; the rights given to other
identifiers (an account's name, or ``anyone``) are what those accounts may
do with the mailbox, under ``Other Users/`` (:mod:`peerd.services.imap.access`).
"""

from __future__ import annotations

from typing import Final

from engine import acl as acl_store
from peerd.protocols.imap import commands as c
from peerd.protocols.imap.acl import (
    DeleteAcl,
    GetAcl,
    ListRights,
    MyRights,
    SetAcl,
    acl_response,
    listrights_response,
    modify,
    myrights_response,
)
from peerd.protocols.imap.responses import CODE_CANNOT, CODE_NONEXISTENT, CommandError
from peerd.services.imap.access import Place, place, rights_on, shown
from peerd.services.imap.session import Handler, Reply, Session

__all__ = ["HANDLERS"]


def _mailbox(session: Session, decoded: str) -> Place:
    where = place(session, decoded)
    if not where.name:
        raise CommandError(f"no such mailbox: {decoded}", code=CODE_NONEXISTENT, status="NO")
    return where


async def _acl(session: Session, where: Place) -> dict[str, str]:
    return await session.node.store.read(
        lambda s: acl_store.mailbox_acl(s, where.owner, where.name)
    )


def _not_owner(where: Place, identifier: str) -> None:
    if identifier == where.owner:
        raise CommandError(
            "the owner of a mailbox always holds every right", code=CODE_CANNOT, status="NO"
        )


async def _change(session: Session, where: Place, identifier: str, mod: str | None) -> None:
    name = where.name

    def rights(current: str) -> str | None:
        # An identifier left with no rights is taken out of the ACL (RFC 4314 3.1).
        return None if mod is None else modify(current, mod) or None

    await session.node.write_owned(
        where.owner, lambda s, a: acl_store.change(s, a, name, identifier, rights)
    )


async def setacl(session: Session, cmd: SetAcl) -> Reply:
    where = _mailbox(session, cmd.mailbox)
    _not_owner(where, cmd.identifier)
    await _change(session, where, cmd.identifier, cmd.rights)
    return Reply("SETACL completed")


async def deleteacl(session: Session, cmd: DeleteAcl) -> Reply:
    where = _mailbox(session, cmd.mailbox)
    _not_owner(where, cmd.identifier)
    await _change(session, where, cmd.identifier, None)
    return Reply("DELETEACL completed")


async def getacl(session: Session, cmd: GetAcl) -> Reply:
    where = _mailbox(session, cmd.mailbox)
    name = shown(session, where.owner, where.name)
    await session.send(acl_response(name, await _acl(session, where), where.owner))
    return Reply("GETACL completed")


async def listrights(session: Session, cmd: ListRights) -> Reply:
    where = _mailbox(session, cmd.mailbox)
    await _acl(session, where)  # NO [NONEXISTENT] for a mailbox that is not there
    name = shown(session, where.owner, where.name)
    await session.send(listrights_response(name, cmd.identifier, where.owner))
    return Reply("LISTRIGHTS completed")


async def myrights(session: Session, cmd: MyRights) -> Reply:
    where = _mailbox(session, cmd.mailbox)
    await _acl(session, where)
    name = shown(session, where.owner, where.name)
    await session.send(myrights_response(name, await rights_on(session, where)))
    return Reply("MYRIGHTS completed")


HANDLERS: Final[dict[type[c.Command], Handler]] = {
    SetAcl: setacl,
    DeleteAcl: deleteacl,
    GetAcl: getacl,
    ListRights: listrights,
    MyRights: myrights,
}
