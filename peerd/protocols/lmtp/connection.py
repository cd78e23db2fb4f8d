"""One LMTP server connection, sans-I/O: bytes in, events out, replies as bytes.

How this works: the server feeds what the socket reads to
:meth:`LmtpConnection.receive_data` (``b""`` at end of input) and calls
:meth:`~LmtpConnection.next_event` until it returns :data:`NEED_DATA`. The
core reads command lines, checks each against the state table
(:mod:`.states`) and answers it, queueing the reply; it stops with an event
(:mod:`.events`) where the server must act, and the server answers with
:meth:`~LmtpConnection.answer_rcpt`, :meth:`~LmtpConnection.answer_message`
or :meth:`~LmtpConnection.tls_started`. Whatever is due on the wire comes
out of :meth:`~LmtpConnection.data_to_send`.

Pipelining (RFC 2920): a client may send MAIL, RCPTs and DATA in one write.
A one-line ``250`` queued while the next command line is already here is
held (3.1 lets a server send a group's replies together), so that group
costs one write of three replies rather than three; every other reply (the
``354``, errors, ``221``) makes everything queued due at once, as does
running out of input. Nothing waits behind a held reply for input that
may never come.

After DATA the message is read up to the lone dot in blocks, not lines,
with one search per block for ``CRLF.CRLF``; a dot-stuffed line is
unstuffed (RFC 5321 4.5.2), and a bare LF becomes CRLF, as Cyrus stores it.
The limits, all enforced here:

- a command line over ``max_line`` octets (RFC 5321 4.5.3.1.4 asks for at
  least 512) is refused with ``500`` as soon as the limit is passed and
  dropped up to its end, so memory stays bounded by the limit;
- more than ``max_recipients`` accepted recipients: ``452`` (4.5.3.1.10);
- a SIZE declared over ``max_message_size`` is refused at MAIL (RFC 1870
  6.1); a message over it is read to its end keeping only a few bytes, and
  each recipient gets ``552``;
- a message with NUL gets ``554`` per recipient (RFC 5322 2.3);
- a message the server has no room for (:meth:`LmtpConnection.refuse_data`,
  the server's input budget) is read to its end keeping nothing, like one
  too big, and each recipient gets the server's reply (``452 4.3.1``);
- ``max_bad_commands`` lines that are no command end the session with ``421``.

STARTTLS (RFC 3207) where the server offers it: after ``220`` the core
throws away whatever the client had already sent and ignores anything fed
until the server says the handshake is done, so bytes sent in the clear are
never read as if they came over TLS (the CVE-2011-0411 class); after the
handshake the session starts over at LHLO (RFC 3207 4.2).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

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
    S214_HELP,
    S220_READY_FOR_TLS,
    S221_BYE,
    S250_OK,
    S250_SENDER_OK,
    S252_CANNOT_VRFY,
    S354_SEND_DATA,
    S421_TOO_MANY_ERRORS,
    S452_TOO_MANY_RCPTS,
    S500_LINE_TOO_LONG,
    S502_NOT_IMPLEMENTED,
    S503_ALREADY_TLS,
    S552_SIZE_EXCEEDED,
    S552_TOO_BIG,
    S554_NUL,
    encode_reply,
    greeting,
)
from .states import State, Step, advance, refusal

__all__ = [
    "DEFAULT_MAX_BAD_COMMANDS",
    "DEFAULT_MAX_LINE",
    "LmtpConnection",
    "Settings",
]

# RFC 5321 4.5.3.1.4: a command line is at least 512 octets with its CRLF.
DEFAULT_MAX_LINE: Final = 512
DEFAULT_MAX_BAD_COMMANDS: Final = 5

_TERMINATOR: Final = b"\r\n.\r\n"
_BARE_LF: Final = re.compile(rb"(?<!\r)\n")
# A message a little over the limit may still fit once unstuffed; past
# this much over, it is refused without keeping it.
_STUFFING_SLACK: Final = 64


@dataclass(frozen=True, slots=True)
class Settings:
    """What one LMTP connection needs to know; validated when built."""

    hostname: str
    max_message_size: int
    max_recipients: int
    max_line: int = DEFAULT_MAX_LINE
    starttls: bool = False  # offer STARTTLS (until TLS is on)
    max_bad_commands: int = DEFAULT_MAX_BAD_COMMANDS

    def __post_init__(self) -> None:
        name = self.hostname
        if not name or not name.isascii() or not name.isprintable() or " " in name:
            raise ValueError("the host name must be printable ASCII without spaces")
        for what, value, least in (
            ("max_message_size", self.max_message_size, 1),
            ("max_recipients", self.max_recipients, 1),
            ("max_line", self.max_line, 64),
            ("max_bad_commands", self.max_bad_commands, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{what} must be an integer >= {least}")


@functools.lru_cache(maxsize=16)
def _lhlo_reply(hostname: str, max_message_size: int, offer_tls: bool) -> bytes:
    # RFC 2033 4.1 / RFC 5321 4.1.1.1: the name, then one extension a line.
    # No enhanced code here (RFC 2034 section 4).
    keywords = [
        hostname,
        "PIPELINING",  # RFC 2920
        "ENHANCEDSTATUSCODES",  # RFC 2034
        "8BITMIME",  # RFC 6152
        "SMTPUTF8",  # RFC 6531
        *(["STARTTLS"] if offer_tls else []),  # RFC 3207
        f"SIZE {max_message_size}",  # RFC 1870
    ]
    last = len(keywords) - 1
    return b"".join(
        encode_reply(f"250{' ' if n == last else '-'}{word}") for n, word in enumerate(keywords)
    )


def _answer(reply: str) -> bytes:
    # The server's answer to a recipient or a message is one whole reply,
    # 2xx, 4xx or 5xx: RFC 2033 4.2 counts one per recipient.
    if reply[:1] not in ("2", "4", "5") or reply[3:4] != " ":
        raise ValueError(f"not a final LMTP reply: {reply[:40]!r}")
    return encode_reply(reply)


class LmtpConnection:
    """The server side of one LMTP session (see the module's docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = State.GREETED
        self.tls = False
        self.sender: str | None = None
        # MAIL's SIZE= (RFC 1870): what the client says the message is.
        self.declared_size: int | None = None
        self.recipients: list[str] = []
        self.bad_commands = 0
        # Command lines read so far (over-long ones too): the server's idle
        # timer counts a line as progress, a byte alone is not.
        self.lines = 0
        self._buf = bytearray()
        self._scanned = 0  # command mode: bytes of _buf known to hold no LF
        self._discarding = False  # inside an over-long line, dropping to its LF
        self._searched = 0  # DATA: where the next search for the terminator starts
        # DATA: refused (over the limit, or no room): read to the end keeping
        # nothing, then this reply for every recipient.
        self._refusal: str | None = None
        self._eof = False
        self._rcpt: str | None = None  # the recipient whose answer is due
        self._out: list[bytes] = [greeting(settings.hostname)]
        self._due = True

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` at end of input."""
        if self._eof:
            if data:
                raise RuntimeError("data after end of input")
            return
        if not data:
            self._eof = True
        elif self.state is not State.TLS_HANDSHAKE and self.state is not State.CLOSED:
            self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read (for the server's flow control)."""
        return len(self._buf)

    def next_event(self) -> Event | NeedData:
        """Run what is buffered until the server has something to do."""
        if self._rcpt is not None:
            raise RuntimeError("the RCPT is not answered yet (answer_rcpt)")
        while True:
            state = self.state
            if state is State.DATA:
                message = self._read_message()
                if message is NEED_DATA:
                    return self._need_data()
                if message is not None:
                    return message
                continue
            if state is State.CLOSED:
                return ConnectionClosed()
            if state is State.DELIVERING:
                raise RuntimeError("the message is not answered yet (answer_message)")
            if state is State.TLS_HANDSHAKE:
                raise RuntimeError("the TLS handshake is not done yet (tls_started)")
            line = self._read_line()
            if line is NEED_DATA:
                return self._need_data()
            self.lines += 1
            event = self._bad(S500_LINE_TOO_LONG) if line is None else self._run(line)
            if event is not None:
                return event

    # -- the server's answers ------------------------------------------------------

    def answer_rcpt(self, reply: str) -> None:
        """The reply to the RCPT of the last :class:`RcptRequested`; a 2xx accepts it."""
        if self.state is State.CLOSED:
            self._rcpt = None
            return
        address = self._rcpt
        if address is None:
            raise RuntimeError("no RCPT is waiting for an answer")
        encoded = _answer(reply)
        self._rcpt = None
        if reply[0] == "2":
            self.recipients.append(address)
            self.state = advance(self.state, Step.RCPT_ACCEPTED)
        self._queue(encoded, reply)

    def answer_message(self, replies: Sequence[str]) -> None:
        """One reply per recipient of the :class:`MessageReceived`, in RCPT order."""
        if self.state is State.CLOSED:
            return
        if self.state is not State.DELIVERING:
            raise RuntimeError("no message is waiting for an answer")
        if len(replies) != len(self.recipients):
            raise ValueError(
                f"{len(replies)} replies for {len(self.recipients)} recipients (RFC 2033 4.2)"
            )
        encoded = [_answer(reply) for reply in replies]
        for line, reply in zip(encoded, replies, strict=True):
            self._queue(line, reply)
        self._end_transaction()
        self.state = advance(self.state, Step.ANSWERED)

    @property
    def refusing(self) -> bool:
        """In DATA, the message is refused already (read to its end, kept not)."""
        return self._refusal is not None

    def refuse_data(self, reply: str) -> None:
        """The server cannot hold this message now (no room in its input
        budget): what came of it is dropped, the rest is read and dropped as
        it comes, and at its end every recipient gets ``reply`` (a 4xx: the
        MTA keeps the message and tries again)."""
        if self.state is not State.DATA:
            raise RuntimeError("no message is being received")
        _answer(reply)  # a final reply, or ValueError now rather than at the end
        if self._refusal is None:
            self._refusal = reply
            end = self._buf.find(_TERMINATOR, self._searched)
            if end < 0:
                del self._buf[:-4]
                self._searched = 0

    def forget_input(self) -> None:
        """The connection is over: let go of whatever input is buffered."""
        self._buf = bytearray()
        self._scanned = 0

    def tls_started(self) -> None:
        """The handshake after :class:`StartTlsRequested` is done: start over at LHLO."""
        if self.state is State.CLOSED:
            return
        self.state = advance(self.state, Step.TLS_STARTED)
        self.tls = True
        self._end_transaction()
        self._buf.clear()
        self._scanned = 0
        self._discarding = False

    # -- output --------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """The replies due on the wire now (held pipelined ``250``s stay queued)."""
        if not self._due or not self._out:
            return b""
        self._due = False
        out = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        return out

    def close_with(self, reply: str) -> bytes:
        """Everything queued and ``reply`` (a ``421`` at shutdown or timeout);
        the session is over and reads nothing more."""
        self._out.append(encode_reply(reply))
        self.state = advance(self.state, Step.CLOSE)
        self._buf.clear()
        self._due = False
        out = b"".join(self._out)
        self._out.clear()
        return out

    # -- commands ------------------------------------------------------------

    def _run(self, line: bytes) -> Event | None:
        command = parse_command(line)
        if isinstance(command, Invalid):
            if command.bad:
                return self._bad(command.reply)
            self._reply(command.reply)
            return None
        if isinstance(command, StartTls):
            # Not offered: as if unknown to the server (RFC 3207 4).
            if not self.settings.starttls:
                self._reply(S502_NOT_IMPLEMENTED)
                return None
            if self.tls:
                self._reply(S503_ALREADY_TLS)
                return None
        refused = refusal(self.state, command)
        if refused is not None:
            self._reply(refused)
            return None
        return self._accept(command)

    def _accept(self, command: Command) -> Event | None:
        match command:
            case Rcpt(address):
                if len(self.recipients) >= self.settings.max_recipients:
                    self._reply(S452_TOO_MANY_RCPTS)
                    return None
                self._rcpt = address
                return RcptRequested(address)
            case Mail(sender, size):
                if size is not None and size > self.settings.max_message_size:
                    self._reply(S552_SIZE_EXCEEDED)
                    return None
                self.sender = sender
                self.declared_size = size
                self.state = advance(self.state, Step.MAIL)
                self._reply(S250_SENDER_OK)
            case Lhlo():
                self._end_transaction()
                self.state = advance(self.state, Step.LHLO)
                offer_tls = self.settings.starttls and not self.tls
                s = self.settings
                self._out.append(_lhlo_reply(s.hostname, s.max_message_size, offer_tls))
                self._due = True
            case Rset():
                self._end_transaction()
                self.state = advance(self.state, Step.RSET)
                self._reply(S250_OK)
            case Quit():
                self._reply(S221_BYE)
                self.state = advance(self.state, Step.CLOSE)
                return Closing("quit")
            case StartTls():
                discarded = len(self._buf)
                self._buf.clear()
                self._scanned = 0
                self._discarding = False
                self._reply(S220_READY_FOR_TLS)
                self.state = advance(self.state, Step.STARTTLS)
                return StartTlsRequested(discarded)
            case Data():
                self.state = advance(self.state, Step.DATA)
                self._reply(S354_SEND_DATA)
                # A CRLF in front lets the search find a terminator at the very
                # start (an empty message) like any other.
                self._buf[0:0] = b"\r\n"
                self._searched = 0
                self._refusal = None
            case Vrfy():
                self._reply(S252_CANNOT_VRFY)
            case Help():
                self._reply(S214_HELP)
            case Noop():
                self._reply(S250_OK)
        return None

    def _bad(self, reply: str) -> Event | None:
        self.bad_commands += 1
        self._reply(reply)
        if self.bad_commands < self.settings.max_bad_commands:
            return None
        self._reply(S421_TOO_MANY_ERRORS)
        self.state = advance(self.state, Step.CLOSE)
        return Closing("too many errors")

    def _end_transaction(self) -> None:
        self.sender = None
        self.declared_size = None
        self.recipients = []

    # -- replies -------------------------------------------------------------

    def _reply(self, reply: str) -> None:
        self._queue(encode_reply(reply), reply)

    def _queue(self, line: bytes, reply: str) -> None:
        self._out.append(line)
        # RFC 2920 3.1: hold a 250 while the next command is already here.
        if not (reply.startswith("250 ") and self._buf.find(b"\n") >= 0):
            self._due = True

    def _need_data(self) -> ConnectionClosed | NeedData:
        self._due = True  # nothing more comes out before more input: send what is held
        if self._eof:
            self.state = advance(self.state, Step.CLOSE)
            return ConnectionClosed()
        return NEED_DATA

    # -- reading -------------------------------------------------------------

    def _read_line(self) -> bytes | NeedData | None:
        """The next command line without its line ending; None for one over
        the limit; NEED_DATA until a whole line is here."""
        buf = self._buf
        cap = self.settings.max_line
        while True:
            newline = buf.find(b"\n", self._scanned)
            if newline < 0:
                if self._discarding:
                    buf.clear()
                    self._scanned = 0
                elif len(buf) > cap + 1:  # the line and a CR cannot fit any more
                    buf.clear()
                    self._scanned = 0
                    self._discarding = True
                    return None
                else:
                    self._scanned = len(buf)
                return NEED_DATA
            self._scanned = 0
            if self._discarding:
                del buf[: newline + 1]
                self._discarding = False
                continue
            # RFC 5321 2.3.8 wants CRLF; a bare LF is taken too, as most servers do.
            end = newline - 1 if newline and buf[newline - 1] == 0x0D else newline
            line = bytes(buf[:end])
            del buf[: newline + 1]
            return None if len(line) > cap else line

    def _read_message(self) -> MessageReceived | NeedData | None:
        """The message once its terminator is here; None if the core refused
        it itself (the replies are queued)."""
        buf = self._buf
        end = buf.find(_TERMINATOR, self._searched)
        if end < 0:
            if len(buf) > self.settings.max_message_size + _STUFFING_SLACK:
                self._refusal = self._refusal or S552_TOO_BIG
            if self._refusal is not None:
                del buf[:-4]  # keep only what a terminator could straddle
            self._searched = max(0, len(buf) - 4)
            return NEED_DATA
        self.state = advance(self.state, Step.END_OF_DATA)
        if self._refusal is not None:
            del buf[: end + 5]
            self._refuse_message(self._refusal)
            return None
        with memoryview(buf) as view:  # one copy, not a slice's and then another
            data = bytes(view[2 : end + 2])
        del buf[: end + 5]
        # RFC 5321 4.5.2: a line starting with a dot had one more put in front.
        if b"\r\n.." in data:
            data = data.replace(b"\r\n..", b"\r\n.")
        if data.startswith(b".."):
            data = data[1:]
        if b"\0" in data:
            self._refuse_message(S554_NUL)
            return None
        if len(data) > self.settings.max_message_size:
            self._refuse_message(S552_TOO_BIG)
            return None
        # Two counts run at memchr speed; the regex only when there is a bare LF.
        if data.count(b"\n") != data.count(b"\r\n"):
            data = _BARE_LF.sub(b"\r\n", data)
        return MessageReceived(self.sender or "", tuple(self.recipients), data)

    def _refuse_message(self, reply: str) -> None:
        self.answer_message([reply] * len(self.recipients))
