"""ManageSieve for peerd (RFC 5804): the sans-I/O server core (no sockets, no asyncio, no store).

- :mod:`.wire`: :class:`~.wire.Reader`, bytes to lines of words (atoms,
  quoted strings, literals ``{n+}``/``{n}``), with line and literal caps.
- :mod:`.commands`: one frozen dataclass per command; script names checked.
- :mod:`.states`: NON_AUTHENTICATED, AUTHENTICATED, CLOSED and what each allows.
- :mod:`.responses`: OK/NO/BYE with response codes, capabilities, listings.
- :mod:`.session`: :class:`~.session.Session`, the whole server side of a
  connection; it emits typed requests (:class:`~.session.Login`,
  :class:`~.commands.PutScript`, ...) for the service to answer, and checks
  scripts with :func:`peerd.protocols.sieve.compile_script`.

The asyncio listener (later, in ``peerd.services``) owns the socket, TLS,
timeouts, login rules and the store; its loop is drawn in :mod:`.session`.
"""

from __future__ import annotations

from .commands import (
    MAX_NAME,
    Authenticate,
    Capability,
    CheckScript,
    Command,
    CommandSyntaxError,
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
    check_name,
    parse_command,
)
from .responses import (
    ACTIVE,
    ALREADYEXISTS,
    ENCRYPT_NEEDED,
    NONEXISTENT,
    QUOTA,
    QUOTA_MAXSCRIPTS,
    QUOTA_MAXSIZE,
    TRYLATER,
    Response,
)
from .session import (
    NEED_DATA,
    Close,
    Config,
    Done,
    Event,
    Login,
    Refused,
    Reply,
    Request,
    RoomNeeded,
    ScriptContent,
    Scripts,
    Send,
    Session,
    StartTlsNow,
    plain_credentials,
)
from .states import ALLOWED, State, allowed
from .wire import Reader

__all__ = [
    "ACTIVE",
    "ALLOWED",
    "ALREADYEXISTS",
    "ENCRYPT_NEEDED",
    "MAX_NAME",
    "NEED_DATA",
    "NONEXISTENT",
    "QUOTA",
    "QUOTA_MAXSCRIPTS",
    "QUOTA_MAXSIZE",
    "TRYLATER",
    "Authenticate",
    "Capability",
    "CheckScript",
    "Close",
    "Command",
    "CommandSyntaxError",
    "Config",
    "DeleteScript",
    "Done",
    "Event",
    "GetScript",
    "HaveSpace",
    "ListScripts",
    "Login",
    "Logout",
    "Noop",
    "PutScript",
    "Reader",
    "Refused",
    "RenameScript",
    "Reply",
    "Request",
    "Response",
    "RoomNeeded",
    "ScriptContent",
    "Scripts",
    "Send",
    "Session",
    "SetActive",
    "StartTls",
    "StartTlsNow",
    "State",
    "Unauthenticate",
    "allowed",
    "check_name",
    "parse_command",
    "plain_credentials",
]
