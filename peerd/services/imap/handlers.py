"""The IMAP handler table: which function answers each command class.

How this works: each module of this package answers one group of commands
and exports its own ``HANDLERS``; this module joins them into :data:`HANDLERS`,
which the server gives every session. Which state allows which command is the
state table's business (:data:`peerd.protocols.imap.states.ALLOWED`), not the
handlers'. A new command is a new module (or a function in the module of its
kind), an entry in the state table, and one line here; the connection loop
(:mod:`peerd.services.imap.session`) does not change.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from peerd.protocols.imap import commands as c
from peerd.services.imap import (
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
from peerd.services.imap.session import Handler

__all__ = ["HANDLERS"]

HANDLERS: Final[Mapping[type[c.Command], Handler]] = MappingProxyType(
    {
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
)
