"""The IMAP session states and which commands each accepts, as one table.

How this works: :data:`ALLOWED` maps each :class:`State` to the command
classes valid in it (RFC 3501 3 and 6; the extensions' RFCs where they say
otherwise). A server asks :func:`allowed` before running a command and answers
``BAD`` when it says no (RFC 3501 6: a command in the wrong state is a
protocol error). Moving between states is the session's job; the arrows are
drawn in RFC 3501 3.5:

    NOT_AUTHENTICATED --LOGIN/AUTHENTICATE--> AUTHENTICATED
    AUTHENTICATED --SELECT/EXAMINE--> SELECTED --CLOSE/UNSELECT--> AUTHENTICATED
    any state --LOGOUT--> LOGOUT
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from peerd.protocols.imap import acl, metadata, quota
from peerd.protocols.imap import commands as c

__all__ = ["ALLOWED", "State", "allowed"]


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


# RFC 3501 6.1; ID may be sent in any state (RFC 2971 3.1).
_ANY: Final = frozenset({c.Capability, c.Noop, c.Logout, c.Id})

_NOT_AUTHENTICATED: Final = _ANY | {c.StartTLS, c.Login, c.Authenticate}

# RFC 3501 6.3, NAMESPACE (RFC 2342 5) and IDLE (RFC 2177) here and when selected;
# so are ACL (RFC 4314 3), QUOTA (RFC 9208 4.1) and METADATA (RFC 5464 4).
_AUTHENTICATED_AND_SELECTED: Final = (
    _ANY
    | acl.COMMANDS
    | quota.COMMANDS
    | metadata.COMMANDS
    | {
        c.Namespace,
        c.Select,
        c.Examine,
        c.Create,
        c.Delete,
        c.Rename,
        c.Subscribe,
        c.Unsubscribe,
        c.List,
        c.Lsub,
        c.Status,
        c.Append,
        c.Idle,
    }
)

# ENABLE only before a mailbox is selected (RFC 5161 3.1).
_AUTHENTICATED: Final = _AUTHENTICATED_AND_SELECTED | {c.Enable}

# RFC 3501 6.4; SORT and THREAD RFC 5256; UNSELECT RFC 3691, UID EXPUNGE RFC 4315, MOVE RFC 6851.
_SELECTED: Final = _AUTHENTICATED_AND_SELECTED | {
    c.Check,
    c.Close,
    c.Unselect,
    c.Expunge,
    c.UidExpunge,
    c.Search,
    c.Sort,
    c.Thread,
    c.Fetch,
    c.Store,
    c.Copy,
    c.Move,
}

ALLOWED: Final[Mapping[State, frozenset[type[c.Command]]]] = MappingProxyType(
    {
        State.NOT_AUTHENTICATED: _NOT_AUTHENTICATED,
        State.AUTHENTICATED: _AUTHENTICATED,
        State.SELECTED: _SELECTED,
        State.LOGOUT: frozenset(),
    }
)


def allowed(state: State, command: c.Command) -> bool:
    """Whether ``command`` may run in ``state``."""
    return type(command) in ALLOWED[state]
