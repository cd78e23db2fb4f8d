"""The IMAP handler table: which function answers each command class.

How this works: each module of this package answers one group of commands
and exports its own ``HANDLERS``; this module joins them into :data:`HANDLERS`,
which the server gives every session. Which state allows which command is the
state table's business (:data:`peerd.protocols.imap.states.ALLOWED`), not the
handlers'. Which rights a command needs on which mailbox is the rights
table's (:data:`peerd.protocols.imap.rights.REQUIRED`): every handler of a
command named there runs only after :func:`~peerd.services.imap.access.enforce`
let it. A new command is a new module (or a function in the module of its
kind), an entry in the state table, and one line here; the connection loop
(:mod:`peerd.services.imap.session`) does not change.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from peerd.protocols.imap import commands as c
from peerd.protocols.imap.rights import REQUIRED
from peerd.services.imap import (
    access,
    acl,
    connection,
    fetch,
    idle,
    mailboxes,
    messages,
    metadata,
    quota,
    search,
)
from peerd.services.imap.session import Handler, Reply, Session

__all__ = ["HANDLERS"]


def _checked(handler: Handler) -> Handler:
    """``handler``, run only if the user holds the rights the command needs."""

    async def run(session: Session, cmd: c.Command) -> Reply | None:
        await access.enforce(session, cmd)
        return await handler(session, cmd)

    return run


_ALL: Final[dict[type[c.Command], Handler]] = {
    **connection.HANDLERS,  # any state, and before login
    **mailboxes.HANDLERS,  # authenticated: mailboxes, SELECT, APPEND
    **idle.HANDLERS,
    **messages.HANDLERS,  # selected: EXPUNGE, STORE, COPY, MOVE, CLOSE
    **fetch.HANDLERS,
    **search.HANDLERS,
    **acl.HANDLERS,  # RFC 4314
    **quota.HANDLERS,  # RFC 9208
    **metadata.HANDLERS,  # RFC 5464
}

HANDLERS: Final[Mapping[type[c.Command], Handler]] = MappingProxyType(
    {cls: _checked(fn) if cls in REQUIRED else fn for cls, fn in _ALL.items()}
)
