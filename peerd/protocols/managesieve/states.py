"""The ManageSieve session states and the commands each accepts, as one table.

How this works: :data:`ALLOWED` maps each :class:`State` to the command
classes valid in it (RFC 5804 section 2); :class:`~.session.Session` asks
:func:`allowed` before running a command and answers ``NO`` otherwise::

    NON_AUTHENTICATED --AUTHENTICATE ok--> AUTHENTICATED --UNAUTHENTICATE--> NON_AUTHENTICATED
    any --LOGOUT, BYE, end of input--> CLOSED

STARTTLS keeps the state (section 2.2: only before login; the session also
refuses it a second time).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from .commands import (
    Authenticate,
    Capability,
    CheckScript,
    Command,
    DeleteScript,
    GetScript,
    HaveSpace,
    ListScripts,
    Logout,
    Noop,
    PutScript,
    RenameScript,
    SetActive,
    StartTls,
    Unauthenticate,
)

__all__ = ["ALLOWED", "State", "allowed"]


class State(enum.Enum):
    NON_AUTHENTICATED = "non-authenticated"
    AUTHENTICATED = "authenticated"
    CLOSED = "closed"


ALLOWED: Final[Mapping[State, frozenset[type[Command]]]] = MappingProxyType(
    {
        # Section 2: CAPABILITY, LOGOUT and NOOP in any state; AUTHENTICATE
        # and STARTTLS only before login.
        State.NON_AUTHENTICATED: frozenset({Authenticate, StartTls, Logout, Capability, Noop}),
        State.AUTHENTICATED: frozenset(
            {
                Logout,
                Capability,
                Noop,
                HaveSpace,
                PutScript,
                ListScripts,
                SetActive,
                GetScript,
                DeleteScript,
                RenameScript,
                CheckScript,
                Unauthenticate,
            }
        ),
        State.CLOSED: frozenset(),
    }
)


def allowed(state: State, command: Command) -> bool:
    return type(command) in ALLOWED[state]
