"""POP3 for peerd: the sans-I/O protocol core (no sockets, no asyncio, no database).

- :mod:`.protocol`: :class:`CommandReader` turns bytes into events (one
  frozen dataclass per command, SASL response lines, ``-ERR`` errors).
- :mod:`.states`: AUTHORIZATION, TRANSACTION, UPDATE and the commands each allows.
- :mod:`.replies`: ``+OK``/``-ERR`` with response codes, multi-line replies
  with dot-stuffing, TOP, and the failover-stable :func:`uidl`.

The asyncio service stays in :mod:`peerd.pop3` for now. This package is
named ``pop3core`` only because a package ``peerd/pop3/`` would shadow that
module; once the service moves into the package, this becomes ``peerd.pop3``
(its modules import each other relatively, so only the name changes).
"""

from __future__ import annotations

from .protocol import (
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_SASL_LINE,
    NEED_DATA,
    Auth,
    Capa,
    Command,
    CommandError,
    CommandReader,
    ConnectionClosed,
    Dele,
    Event,
    List,
    NeedData,
    Noop,
    Pass,
    Quit,
    Retr,
    Rset,
    SaslCancel,
    SaslResponse,
    Stat,
    Stls,
    Top,
    Uidl,
    User,
    parse_command,
)
from .replies import (
    CODE_AUTH,
    CODE_IN_USE,
    CODE_LOGIN_DELAY,
    CODE_SYS_PERM,
    CODE_SYS_TEMP,
    MAX_REPLY_LINE,
    Continuation,
    Err,
    Ok,
    dot_stuff,
    dot_unstuff,
    message_reply,
    multiline,
    top_text,
    uidl,
)
from .states import ALLOWED, TEXT_NOT_ALLOWED, State, allowed

__all__ = [
    "ALLOWED",
    "CODE_AUTH",
    "CODE_IN_USE",
    "CODE_LOGIN_DELAY",
    "CODE_SYS_PERM",
    "CODE_SYS_TEMP",
    "DEFAULT_MAX_LINE",
    "DEFAULT_MAX_SASL_LINE",
    "MAX_REPLY_LINE",
    "NEED_DATA",
    "TEXT_NOT_ALLOWED",
    "Auth",
    "Capa",
    "Command",
    "CommandError",
    "CommandReader",
    "ConnectionClosed",
    "Continuation",
    "Dele",
    "Err",
    "Event",
    "List",
    "NeedData",
    "Noop",
    "Ok",
    "Pass",
    "Quit",
    "Retr",
    "Rset",
    "SaslCancel",
    "SaslResponse",
    "Stat",
    "State",
    "Stls",
    "Top",
    "Uidl",
    "User",
    "allowed",
    "dot_stuff",
    "dot_unstuff",
    "message_reply",
    "multiline",
    "parse_command",
    "top_text",
    "uidl",
]
