"""Reading IMAP commands from bytes, without I/O (RFC 3501 2.2, 4, 9).

How this works, in three layers:

1. **Framing** (:class:`CommandReader`). ``feed()`` bytes as they arrive and
   pull events with ``next_event()`` until it returns None. A command is a
   line, unless the line ends in a literal announcement ``{n}`` (or ``{n+}``,
   RFC 7888 LITERAL+): then ``n`` octets follow, then the rest of the command,
   which may announce more literals. For a synchronizing ``{n}`` the reader
   returns :class:`ContinuationNeeded` and the server must write
   ``event.reply()`` (``+ Ready for literal data``) before the client sends the
   octets (RFC 3501 7.5); ``{n+}`` needs nothing, unless the server set
   ``ask_room``: then the reader returns :class:`RoomNeeded` before it takes
   the octets of any literal, so the server can find room for them first
   (:mod:`peerd.node.inputbudget`; for ``{n}`` the :class:`ContinuationNeeded`
   is the moment). A server that finds none calls :meth:`CommandReader.refuse`:
   a synchronizing literal's command is answered at once (the client sends no
   octets), a non-synchronizing one's octets are read and dropped as they
   come and the command then answered, with the refusal.

2. **Tokens** (:mod:`~peerd.protocols.imap.tokens`). The framed command becomes
   a list of :data:`~peerd.protocols.imap.tokens.Token`: atoms, strings, lists.

3. **Grammar** (:mod:`~peerd.protocols.imap.grammar`). Each command's arguments
   are read from the tokens into a :mod:`~peerd.protocols.imap.commands`
   dataclass; FETCH items and SEARCH criteria go to
   :mod:`~peerd.protocols.imap.fetchatt` and :mod:`~peerd.protocols.imap.searchkey`.

This module is layer 1 and the reader's events; it re-exports the names of
layers 2 and 3 and of :mod:`~peerd.protocols.imap.sasl` that servers and tests
use.

Any :class:`~peerd.protocols.imap.responses.CommandError` raised in layers 2 and 3 is
turned, here and only here, into a :class:`ProtocolError` event carrying the
tag, so a server writes ``event.reply()`` and goes on (``a1 BAD ...``, or
``NO [BADCHARSET ...]``). Unknown commands are ``BAD`` with the tag too.

Limits (hostile input is capped in the core, STYLE.md rule 1):

- ``max_line`` caps the text of one command (every line of it, literals
  excluded). Past it the reader cannot know where the command ends, so the
  error is fatal: ``* BYE``, and the server closes.
- ``max_literal`` caps the literal octets of one command (all its literals
  together), so one command never holds more than ``max_line + max_literal``.
  A synchronizing literal over the cap is refused at once with
  ``NO [TOOBIG]``; the client does not send its octets (RFC 3501 7.5, RFC 7888
  4) and the reader is back at the start of a command. A non-synchronizing
  literal over the cap is already on its way: RFC 7888 4 lets the server read
  and discard it, or close. We read and discard (the octets are dropped as
  they arrive, never buffered), skip the rest of that command, then answer
  ``BAD [TOOBIG]``; the connection stays usable. A literal size that is not
  a 32-bit number (RFC 3501 9, ``number``) is fatal.
- A literal's octets are gathered apart from the command text, in one buffer
  that grows as they come (no copy of all of it until it is whole), so the
  reader holds about the octets received; :meth:`CommandReader.close` lets
  go of all of it at once when the connection ends.
- Parentheses nest at most :data:`MAX_DEPTH` deep.

Raw lines: during IDLE (RFC 2177, the client ends it with ``DONE``) and
AUTHENTICATE (RFC 3501 6.2.2, base64 responses to ``+`` challenges) the client
sends lines that are not commands. The server then pulls ``next_line()``
instead of ``next_event()``; bytes already buffered are kept across the
switch, so pipelined input is never lost. :func:`decode_sasl_response`
(:mod:`~peerd.protocols.imap.sasl`) decodes an AUTHENTICATE response line.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal, TypeAlias

from peerd.protocols.imap import commands as c
from peerd.protocols.imap.grammar import parse_command
from peerd.protocols.imap.responses import (
    CODE_TOOBIG,
    CommandError,
    continuation,
    tagged,
    untagged_status,
)
from peerd.protocols.imap.sasl import decode_sasl_response, plain_credentials
from peerd.protocols.imap.sequence import MAX_NUMBER
from peerd.protocols.imap.tokens import (
    MAX_DEPTH,
    Literal8Data,
    LiteralData,
    Token,
    tag_of,
    tokenize,
)

__all__ = [
    "MAX_DEPTH",
    "CommandReader",
    "ContinuationNeeded",
    "Event",
    "Line",
    "ProtocolError",
    "RoomNeeded",
    "Token",
    "decode_sasl_response",
    "parse_command",
    "plain_credentials",
    "tokenize",
]


# -- events -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContinuationNeeded:
    """A synchronizing literal of ``size`` octets was announced: write :meth:`reply`."""

    size: int

    def reply(self) -> bytes:
        return continuation("Ready for literal data")


@dataclass(frozen=True, slots=True)
class RoomNeeded:
    """A non-synchronizing literal of ``size`` octets is on its way (only with
    ``ask_room``): find room for it, then call ``next_event()`` again (or
    :meth:`CommandReader.refuse`). Its octets are not taken before."""

    size: int


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The client sent something the server must refuse; write :meth:`reply`.

    ``tag`` is None when no valid tag could be read (the reply is then untagged).
    ``fatal``: the stream cannot be resynchronised; reply, then close.
    """

    tag: str | None
    text: str
    fatal: bool = False
    code: bytes | None = None
    status: Literal["BAD", "NO"] = "BAD"

    def reply(self) -> bytes:
        if self.fatal:
            return untagged_status("BYE", self.text, self.code)
        if self.tag is None:
            return untagged_status(self.status, self.text, self.code)
        return tagged(self.tag, self.status, self.text, self.code)


@dataclass(frozen=True, slots=True)
class Line:
    """A raw line (CRLF removed), from :meth:`CommandReader.next_line`."""

    data: bytes


Event: TypeAlias = c.Command | ContinuationNeeded | RoomNeeded | ProtocolError


# -- framing ------------------------------------------------------------------------


def _literal_marker(body: bytes) -> tuple[int, int, bool, bool] | None:
    """``(start, size, synchronizing, literal8)`` when ``body`` ends in ``{n}``/``{n+}``."""
    if not body.endswith(b"}"):
        return None
    start = body.rfind(b"{")
    if start < 0:
        return None
    digits = body[start + 1 : -1]
    sync = not digits.endswith(b"+")
    if not sync:
        digits = digits[:-1]
    if not digits.isdigit():  # bytes.isdigit(): ASCII 0-9 only
        return None
    # number is 1*DIGIT, leading zeros allowed (RFC 3501 9). int() refuses more
    # than 4300 digits (a ValueError, not this protocol's error), and a size of
    # more than ten significant digits is past 2^32-1 whatever they are.
    significant = digits.lstrip(b"0")
    size = int(significant or b"0") if len(significant) <= 10 else MAX_NUMBER + 1
    eight = start > 0 and body[start - 1 : start] == b"~"  # literal8, RFC 3516 4.2
    return (start - 1 if eight else start), size, sync, eight


class CommandReader:
    """Incremental reader: ``feed(data)``, then ``next_event()`` until None.

    See the module docstring for literals, limits and raw lines.
    """

    def __init__(
        self,
        max_line: int = 64 * 1024,
        max_literal: int = 64 * 1024 * 1024,
        *,
        ask_room: bool = False,
    ) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.ask_room = ask_room
        self._buf = bytearray()
        self._scan = 0  # the newline search resumes here
        self._parts: list[bytes] = []  # the command's text, split at its literals
        self._literals: list[bytes] = []
        self._text_size = 0
        self._literal_size = 0
        self._need = -1  # literal octets still to come, -1 when reading text
        self._eight = False  # the literal being read is a literal8 (RFC 3516 4.2)
        self._sync = False  # ... and was announced synchronizing
        self._asked = False  # RoomNeeded was returned for it; its octets may come
        self._literal = io.BytesIO()  # its octets so far
        self._discard: CommandError | None = None  # skipping a command, then this error
        self._closed = False

    def feed(self, data: bytes) -> None:
        """Add bytes from the client (any split is fine); ignored after a fatal error."""
        if not self._closed:
            self._buf += data

    @property
    def buffered(self) -> bool:
        """Bytes are waiting that no event has consumed yet: the client sent more.

        A server about to start TLS refuses then (RFC 3501 6.2.1): those bytes
        came in the clear and must not be taken as sent over TLS.
        """
        return bool(self._buf)

    @property
    def in_command(self) -> bool:
        """True while part of a command has been read (a literal is pending)."""
        return bool(self._parts) or self._need >= 0

    def next_event(self) -> Event | None:
        """The next command, continuation request or error; None when more bytes are needed."""
        while not self._closed:
            if self._need >= 0:
                if self.ask_room and not self._asked and self._need and self._discard is None:
                    self._asked = True
                    return RoomNeeded(self._need)
                if not self._take_literal():
                    return None
                continue
            line = self._line(self._text_size)
            if line is None:
                return None
            if isinstance(line, ProtocolError):
                return line
            self._text_size += len(line) + 2
            marker = _literal_marker(line)
            if marker is None:
                self._parts.append(line)
                if self._discard is not None:
                    return self._abandon(self._discard)
                event = self._finish()
                if event is not None:
                    return event
                continue  # an empty line: ignored, as most servers do
            start, size, sync, eight = marker
            self._parts.append(line[:start])
            if size > MAX_NUMBER:
                return self._fatal("literal size is not a 32-bit number (RFC 3501 9)")
            if self._discard is not None:
                if sync:
                    # The client waits for "+"; answering the command instead
                    # tells it not to send the octets (RFC 3501 7.5).
                    return self._abandon(self._discard)
            elif start > 0 and line[start - 1] not in b" (":
                what = "literal8 ~{n}" if eight else "literal {n}"
                problem = CommandError(f"a {what} must follow a space or '(' (RFC 3501 9)")
                if sync:
                    return self._abandon(problem)
                self._discard = problem
            elif self._literal_size + size > self.max_literal:
                text = f"literal too big: this server takes {self.max_literal} octets per command"
                if sync:
                    return self._abandon(CommandError(text, code=CODE_TOOBIG, status="NO"))
                self._discard = CommandError(text, code=CODE_TOOBIG)
            self._need = size
            self._eight = eight
            self._sync = sync
            if self._discard is None:
                self._literal_size += size
                if sync:
                    self._asked = True  # the server finds room before "+"
                    return ContinuationNeeded(size)
                self._asked = False
        return None

    def refuse(self, text: str, code: bytes | None = None) -> ProtocolError | None:
        """The server found no room for the literal just announced
        (:class:`ContinuationNeeded` or :class:`RoomNeeded`): the command is
        refused with ``NO [code] text``. A synchronizing literal's command
        ends now, and its reply is returned (the client sends no octets, RFC
        3501 7.5); a non-synchronizing literal's octets are dropped as they
        come, with the rest of its command, and ``next_event()`` returns the
        reply then (RFC 7888 4). Either way the literals the command had
        are let go of at once."""
        if self._need < 0 or self._discard is not None:
            raise RuntimeError("refuse() with no literal announced")
        error = CommandError(text, code=code, status="NO")
        if self._sync:
            return self._abandon(error)
        self._discard = error
        self._literals = []
        self._literal = io.BytesIO()
        return None

    def close(self) -> None:
        """The connection is over: let go of everything held, and read nothing more."""
        self._reset()
        self._closed = True
        self._buf = bytearray()

    def next_line(self) -> Line | ProtocolError | None:
        """A raw line, for IDLE's ``DONE`` and AUTHENTICATE responses; None for more bytes."""
        if self.in_command:
            raise RuntimeError("next_line() in the middle of a command")
        if self._closed:
            return None
        line = self._line(0)
        return Line(line) if isinstance(line, bytes) else line

    # -- internals --

    def _line(self, used: int) -> bytes | ProtocolError | None:
        buf = self._buf
        end = buf.find(b"\n", self._scan)
        if end < 0:
            if used + len(buf) > self.max_line:
                return self._fatal(f"line too long: this server takes {self.max_line} octets")
            self._scan = len(buf)
            return None
        self._scan = 0
        if used + end > self.max_line:
            return self._fatal(f"line too long: this server takes {self.max_line} octets")
        # RFC 3501 2.2 wants CRLF; a bare LF is taken too (Postel).
        line = bytes(buf[: end - 1 if end and buf[end - 1] == 0x0D else end])
        del buf[: end + 1]
        return line

    def _take_literal(self) -> bool:
        buf = self._buf
        taken = min(len(buf), self._need)
        if self._discard is None and taken:
            # Into the literal's own buffer, which grows in place: the command
            # text's buffer stays small, and the octets are copied once more
            # only when the literal is whole.
            with memoryview(buf) as view:
                self._literal.write(view[:taken])
        del buf[:taken]
        self._need -= taken
        if self._need:
            return False
        self._need = -1
        if self._discard is None:
            # getvalue() hands over the buffer itself (no copy while nothing
            # else views it); the grammar wants it marked as a literal.
            data = self._literal.getvalue()
            self._literal = io.BytesIO()
            self._literals.append(Literal8Data(data) if self._eight else LiteralData(data))
        return True

    def _reset(self) -> None:
        self._parts = []
        self._literals = []
        self._literal = io.BytesIO()
        self._text_size = 0
        self._literal_size = 0
        self._need = -1
        self._discard = None

    def _abandon(self, error: CommandError) -> ProtocolError:
        tag = tag_of(self._parts[0]) if self._parts else None
        self._reset()
        return ProtocolError(tag, error.text, code=error.code, status=error.status)

    def _fatal(self, text: str) -> ProtocolError:
        tag = tag_of(self._parts[0]) if self._parts else None
        self._reset()
        self._closed = True
        self._buf.clear()
        return ProtocolError(tag, text, fatal=True, code=CODE_TOOBIG)

    def _finish(self) -> Event | None:
        parts, literals = self._parts, self._literals
        self._reset()
        if len(parts) == 1 and not parts[0].strip(b" "):
            return None
        try:
            return parse_command(parts, literals)
        except CommandError as error:
            return ProtocolError(tag_of(parts[0]), error.text, code=error.code, status=error.status)
        except (ValueError, RecursionError, OverflowError):
            # Bytes or values no rule of the grammar names (an 8-bit byte
            # where only US-ASCII may be, a number past any bound): still
            # the client's command, never the server's exception.
            return ProtocolError(tag_of(parts[0]), "malformed command (RFC 3501 9)")
