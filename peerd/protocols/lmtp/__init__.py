"""LMTP for peerd: the sans-I/O server core (no sockets, no asyncio, no store).

How this works: :class:`LmtpConnection` is one server session. Feed it the
bytes the socket reads, take events out, and write what
:meth:`~LmtpConnection.data_to_send` returns::

    conn = LmtpConnection(Settings("mx.example", max_message_size=50 << 20,
                                   max_recipients=1000))
    send(conn.data_to_send())                       # the 220 greeting
    conn.receive_data(read())
    while (event := conn.next_event()) is not NEED_DATA:
        match event:
            case RcptRequested(address):  conn.answer_rcpt(check(address))
            case MessageReceived():       conn.answer_message(deliver(event))
            case StartTlsRequested():     send(conn.data_to_send()); handshake()
                                          conn.tls_started()
            case Closing() | ConnectionClosed(): break
        send(conn.data_to_send())
    send(conn.data_to_send())

- :mod:`.connection`: the session, its limits and pipelining (RFC 2033,
  RFC 5321, RFC 2920, RFC 3207).
- :mod:`.commands`: command lines to frozen dataclasses (paths, SIZE, BODY).
- :mod:`.states`: the state machine as tables.
- :mod:`.events`: what the core hands the server.
- :mod:`.replies`: every reply the core sends, as a named constant.

The asyncio service over this core is :mod:`peerd.services.lmtp`: sockets,
TLS, timeouts, the recipient cache, spooling, and the store behind it.
"""

from __future__ import annotations

from .commands import (
    Command,
    Data,
    Help,
    Invalid,
    Lhlo,
    Mail,
    Noop,
    Quit,
    Rcpt,
    Rset,
    StartTls,
    Vrfy,
    parse_command,
)
from .connection import DEFAULT_MAX_BAD_COMMANDS, DEFAULT_MAX_LINE, LmtpConnection, Settings
from .events import (
    NEED_DATA,
    Closing,
    ConnectionClosed,
    Event,
    MessageReceived,
    NeedData,
    RcptRequested,
    StartTlsRequested,
)
from .replies import (
    REPLY_LINE,
    S214_HELP,
    S220_READY_FOR_TLS,
    S221_BYE,
    S250_OK,
    S250_RCPT_OK,
    S250_SENDER_OK,
    S252_CANNOT_VRFY,
    S354_SEND_DATA,
    S421_BUSY,
    S421_IDLE,
    S421_TOO_MANY_ERRORS,
    S452_TOO_MANY_RCPTS,
    S500_BAD_SYNTAX,
    S500_LINE_TOO_LONG,
    S500_UNKNOWN,
    S500_USE_LHLO,
    S501_BAD_ADDRESS,
    S501_BAD_BODY,
    S501_BAD_SENDER,
    S501_BAD_SIZE,
    S501_SYNTAX_DATA,
    S501_SYNTAX_LHLO,
    S501_SYNTAX_MAIL,
    S501_SYNTAX_QUIT,
    S501_SYNTAX_RCPT,
    S501_SYNTAX_RSET,
    S501_SYNTAX_STARTTLS,
    S501_SYNTAX_VRFY,
    S502_NOT_IMPLEMENTED,
    S503_ALREADY_TLS,
    S503_BAD_SEQUENCE,
    S503_IN_TRANSACTION,
    S503_NEED_LHLO,
    S503_NEED_MAIL,
    S503_NEED_RCPT,
    S503_NESTED_MAIL,
    S552_SIZE_EXCEEDED,
    S552_TOO_BIG,
    S554_NUL,
    S555_MAIL_PARAMS,
    S555_RCPT_PARAMS,
    encode_reply,
    greeting,
)
from .states import ALLOWED, NEXT, REFUSALS, State, Step, advance, refusal

__all__ = [
    "ALLOWED",
    "DEFAULT_MAX_BAD_COMMANDS",
    "DEFAULT_MAX_LINE",
    "NEED_DATA",
    "NEXT",
    "REFUSALS",
    "REPLY_LINE",
    "S214_HELP",
    "S220_READY_FOR_TLS",
    "S221_BYE",
    "S250_OK",
    "S250_RCPT_OK",
    "S250_SENDER_OK",
    "S252_CANNOT_VRFY",
    "S354_SEND_DATA",
    "S421_BUSY",
    "S421_IDLE",
    "S421_TOO_MANY_ERRORS",
    "S452_TOO_MANY_RCPTS",
    "S500_BAD_SYNTAX",
    "S500_LINE_TOO_LONG",
    "S500_UNKNOWN",
    "S500_USE_LHLO",
    "S501_BAD_ADDRESS",
    "S501_BAD_BODY",
    "S501_BAD_SENDER",
    "S501_BAD_SIZE",
    "S501_SYNTAX_DATA",
    "S501_SYNTAX_LHLO",
    "S501_SYNTAX_MAIL",
    "S501_SYNTAX_QUIT",
    "S501_SYNTAX_RCPT",
    "S501_SYNTAX_RSET",
    "S501_SYNTAX_STARTTLS",
    "S501_SYNTAX_VRFY",
    "S502_NOT_IMPLEMENTED",
    "S503_ALREADY_TLS",
    "S503_BAD_SEQUENCE",
    "S503_IN_TRANSACTION",
    "S503_NEED_LHLO",
    "S503_NEED_MAIL",
    "S503_NEED_RCPT",
    "S503_NESTED_MAIL",
    "S552_SIZE_EXCEEDED",
    "S552_TOO_BIG",
    "S554_NUL",
    "S555_MAIL_PARAMS",
    "S555_RCPT_PARAMS",
    "Closing",
    "Command",
    "ConnectionClosed",
    "Data",
    "Event",
    "Help",
    "Invalid",
    "Lhlo",
    "LmtpConnection",
    "Mail",
    "MessageReceived",
    "NeedData",
    "Noop",
    "Quit",
    "Rcpt",
    "RcptRequested",
    "Rset",
    "Settings",
    "StartTls",
    "StartTlsRequested",
    "State",
    "Step",
    "Vrfy",
    "advance",
    "encode_reply",
    "greeting",
    "parse_command",
    "refusal",
]
