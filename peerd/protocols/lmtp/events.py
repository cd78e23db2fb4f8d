"""What the LMTP core hands the server: the events that need the server's part.

How this works: the core answers most commands itself (LHLO, MAIL, RSET,
NOOP, VRFY, HELP, every syntax and sequence error). It stops and returns an
event only where the server must act: a recipient to check
(:class:`RcptRequested`, answered with ``answer_rcpt``), a message to
deliver (:class:`MessageReceived`, answered with ``answer_message``, one
reply per recipient), a TLS handshake to run (:class:`StartTlsRequested`,
then ``tls_started``), the connection to close after the last reply
(:class:`Closing`), or the end of input (:class:`ConnectionClosed`).
:data:`NEED_DATA` says that nothing more can be done until more bytes come.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, TypeAlias

__all__ = [
    "NEED_DATA",
    "Closing",
    "ConnectionClosed",
    "Event",
    "MessageReceived",
    "NeedData",
    "RcptRequested",
    "StartTlsRequested",
]


@dataclass(frozen=True, slots=True)
class RcptRequested:
    """RCPT TO passed the syntax, sequence and count checks: may ``address``
    be delivered to? The server answers ``answer_rcpt(reply)``; a 2xx
    accepts it."""

    address: str


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """The message after DATA, dot-unstuffed (RFC 5321 4.5.2), bare LFs made
    CRLF, within the size limit and free of NUL. The server answers
    ``answer_message(replies)``: one reply per recipient, in RCPT order
    (RFC 2033 4.2)."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes

    def __post_init__(self) -> None:
        if not self.recipients:
            raise ValueError("a message needs a recipient")

    def __repr__(self) -> str:  # never a whole message in a log line
        return (
            f"MessageReceived(sender={self.sender!r}, recipients={self.recipients!r}, "
            f"data=<{len(self.data)} bytes>)"
        )


@dataclass(frozen=True, slots=True)
class StartTlsRequested:
    """``220`` is queued (RFC 3207 4): send it, run the handshake, then call
    ``tls_started``. ``discarded`` counts the bytes the client had sent
    after STARTTLS: they came in the clear and were thrown away, never read
    as commands (the CVE-2011-0411 class); a client that does this is
    broken or hostile."""

    discarded: int = 0


@dataclass(frozen=True, slots=True)
class Closing:
    """The last reply is queued (``221`` after QUIT, ``421`` after too many
    errors): send it and close."""

    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The input ended; an unfinished message or line is dropped."""


class NeedData(enum.Enum):
    NEED_DATA = "need data"


NEED_DATA: Final = NeedData.NEED_DATA

Event: TypeAlias = RcptRequested | MessageReceived | StartTlsRequested | Closing | ConnectionClosed
