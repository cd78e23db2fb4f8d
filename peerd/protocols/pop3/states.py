"""The POP3 session states and which commands each accepts, as one table.

How this works: :data:`ALLOWED` maps each :class:`State` to the command
classes valid in it (RFC 1939 sections 3-6, CAPA from RFC 2449 section 5,
STLS from RFC 2595 section 4, AUTH from RFC 5034 section 4). A server asks
:func:`allowed` before running a command and answers ``-ERR`` with
:data:`TEXT_NOT_ALLOWED` when it says no. Moving between states is the
session's job (RFC 1939 section 3):

    AUTHORIZATION --PASS/AUTH accepted--> TRANSACTION --QUIT--> UPDATE
    AUTHORIZATION --QUIT--> closed (no UPDATE: nothing to remove)

PASS is valid only right after a successful USER (RFC 1939 section 7); that
is one fact the session already keeps (the name to log in with), so it is not
a state of its own here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from .protocol import (
    Auth,
    Capa,
    Command,
    Dele,
    List,
    Noop,
    Pass,
    Quit,
    Retr,
    Rset,
    Stat,
    Stls,
    Top,
    Uidl,
    User,
)

__all__ = ["ALLOWED", "TEXT_NOT_ALLOWED", "State", "allowed"]

TEXT_NOT_ALLOWED: Final = "command not valid in this state"


class State(enum.Enum):
    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    UPDATE = "update"


ALLOWED: Final[Mapping[State, frozenset[type[Command]]]] = MappingProxyType(
    {
        # RFC 1939 section 4 and 7; CAPA in both states (RFC 2449 section 5);
        # STLS only before login (RFC 2595 section 4). NOOP is a TRANSACTION
        # command in RFC 1939 section 5.
        State.AUTHORIZATION: frozenset({User, Pass, Auth, Stls, Capa, Quit}),
        # RFC 1939 section 5; TOP and UIDL are its optional commands (section 7).
        State.TRANSACTION: frozenset({Stat, List, Retr, Dele, Noop, Rset, Top, Uidl, Capa, Quit}),
        # RFC 1939 section 6: the server removes the marked messages, answers
        # QUIT and closes; it reads no further commands.
        State.UPDATE: frozenset(),
    }
)


def allowed(state: State, command: Command) -> bool:
    return type(command) in ALLOWED[state]
