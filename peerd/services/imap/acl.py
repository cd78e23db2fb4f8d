"""IMAP ACL commands (RFC 4314): SETACL, DELETEACL, GETACL, LISTRIGHTS, MYRIGHTS.

How this works: each handler reads or changes the mailbox's ACL in the
store (:mod:`engine.acl`; a change is a fenced write through
:meth:`~peerd.node.node.Node.write_owned`, replicated with the mailbox)
and asks the core (:mod:`peerd.protocols.imap.acl`) for the rights and the
responses. Accounts do not share mailboxes here: the logged-in account owns
every mailbox it can name, holds every right on it, and cannot lose one;
rights given to other identifiers are kept, replicated and shown, and grant
nothing.
"""

from __future__ import annotations

from typing import Final

from engine import acl as acl_store
from peerd.protocols.imap import commands as c
from peerd.protocols.imap.acl import (
    OWNER_RIGHTS,
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
from peerd.protocols.imap.responses import CODE_CANNOT, CommandError
from peerd.services.imap.mailboxes import store_name
from peerd.services.imap.session import Handler, Reply, Session

__all__ = ["HANDLERS"]


async def _acl(session: Session, name: str) -> dict[str, str]:
    account = session.account
    return await session.node.store.read(lambda s: acl_store.mailbox_acl(s, account, name))


def _not_owner(session: Session, identifier: str) -> None:
    if identifier == session.account:
        raise CommandError(
            "the owner of a mailbox always holds every right", code=CODE_CANNOT, status="NO"
        )


async def _change(session: Session, name: str, identifier: str, mod: str | None) -> None:
    def rights(current: str) -> str | None:
        # An identifier left with no rights is taken out of the ACL (RFC 4314 3.1).
        return None if mod is None else modify(current, mod) or None

    await session.node.write_owned(
        session.account, lambda s, a: acl_store.change(s, a, name, identifier, rights)
    )


async def setacl(session: Session, cmd: SetAcl) -> Reply:
    _not_owner(session, cmd.identifier)
    await _change(session, store_name(cmd.mailbox), cmd.identifier, cmd.rights)
    return Reply("SETACL completed")


async def deleteacl(session: Session, cmd: DeleteAcl) -> Reply:
    _not_owner(session, cmd.identifier)
    await _change(session, store_name(cmd.mailbox), cmd.identifier, None)
    return Reply("DELETEACL completed")


async def getacl(session: Session, cmd: GetAcl) -> Reply:
    name = store_name(cmd.mailbox)
    await session.send(acl_response(name, await _acl(session, name), session.account))
    return Reply("GETACL completed")


async def listrights(session: Session, cmd: ListRights) -> Reply:
    name = store_name(cmd.mailbox)
    await _acl(session, name)  # NO [NONEXISTENT] for a mailbox that is not there
    await session.send(listrights_response(name, cmd.identifier, session.account))
    return Reply("LISTRIGHTS completed")


async def myrights(session: Session, cmd: MyRights) -> Reply:
    name = store_name(cmd.mailbox)
    await _acl(session, name)
    await session.send(myrights_response(name, OWNER_RIGHTS))
    return Reply("MYRIGHTS completed")


HANDLERS: Final[dict[type[c.Command], Handler]] = {
    SetAcl: setacl,
    DeleteAcl: deleteacl,
    GetAcl: getacl,
    ListRights: listrights,
    MyRights: myrights,
}
