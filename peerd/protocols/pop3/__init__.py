"""POP3 for peerd: the sans-I/O protocol core (no sockets, no asyncio, no database).

- :mod:`.protocol`: :class:`CommandReader` turns bytes into events (one
  frozen dataclass per command, SASL response lines, ``-ERR`` errors).
- :mod:`.states`: AUTHORIZATION, TRANSACTION, UPDATE and the commands each allows.
- :mod:`.replies`: ``+OK``/``-ERR`` with response codes, multi-line replies
  with dot-stuffing, TOP, and the failover-stable :func:`uidl`.
- :mod:`.maildrop`: the session's numbered messages and DELE marks, answering
  STAT, LIST, UIDL, DELE and RSET.
- :mod:`.capa`: the CAPA listing for each state.

The asyncio service is :mod:`peerd.services.pop3`: sockets, STLS, timeouts, login
delays, and the store (through :class:`peerd.services.mailstore.AccountStore`,
every write behind the ownership fence), over this core.
"""

from __future__ import annotations

from .capa import IMPLEMENTATION, capa_reply, capabilities
from .maildrop import TEXT_NO_SUCH_MESSAGE, Entry, Maildrop
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
    plain_credentials,
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
    "IMPLEMENTATION",
    "MAX_REPLY_LINE",
    "NEED_DATA",
    "TEXT_NOT_ALLOWED",
    "TEXT_NO_SUCH_MESSAGE",
    "Auth",
    "Capa",
    "Command",
    "CommandError",
    "CommandReader",
    "ConnectionClosed",
    "Continuation",
    "Dele",
    "Entry",
    "Err",
    "Event",
    "List",
    "Maildrop",
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
    "capa_reply",
    "capabilities",
    "dot_stuff",
    "dot_unstuff",
    "message_reply",
    "multiline",
    "parse_command",
    "plain_credentials",
    "top_text",
    "uidl",
]
