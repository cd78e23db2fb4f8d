"""ManageSieve command framing (RFC 5804 section 4), sans-I/O: bytes in, lines of words out.

How this works: :class:`Reader` is fed bytes (:meth:`~Reader.receive_data`)
and hands out one :class:`Line` (a command's words: atoms and strings) at a
time from :meth:`~Reader.next_event`, or a :class:`Bad` for input it
refused, :data:`NEED_DATA`, or :class:`Closed` at end of input. A string is
a quoted string (``"..."``, with ``\\"`` and ``\\\\`` the only escapes) or a
literal: ``{n+}`` CRLF and n octets (RFC 5804 section 4, literal-c2s). A
synchronising ``{n}`` is taken the same way: ManageSieve has no
continuation for it, so clients that send it send the octets at once.

Caps, all in the reader so memory stays bounded whatever the client sends:

- ``max_line``: one line of a command (between literals), CRLF included.
  A longer line is dropped up to its end and reported once.
- ``max_literal``: a literal's size. The session lowers it before login
  (a few KiB: only AUTHENTICATE takes strings there) and raises it to the
  script size cap after. A literal over the cap is skipped without being
  kept (its octets are on their way anyway) and reported as too big, with
  the command's name so PUTSCRIPT can answer ``NO (QUOTA/MAXSIZE)``; one
  over ``SKIP_FACTOR`` times the cap is fatal (the session says BYE), and so
  is any oversized literal while ``skip_oversized`` is off (before login).
- ``MAX_WORDS`` words per command.

Room for literals: with ``ask_room`` set (the service sets it), the reader
returns :class:`RoomNeeded` before it keeps a literal's octets, so the
service can first find room in the node's input budget (reading nothing
meanwhile: the client's octets wait in the socket). None found:
:meth:`Reader.refuse_literal` skips the literal and the rest of its command
like an oversized one, and reports it as ``busy`` (``NO (TRYLATER)``).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final, TypeAlias

__all__ = [
    "DEFAULT_MAX_LINE",
    "MAX_WORDS",
    "NEED_DATA",
    "SKIP_FACTOR",
    "Atom",
    "Bad",
    "Closed",
    "Line",
    "NeedData",
    "Reader",
    "RoomNeeded",
    "Str",
    "Word",
]

DEFAULT_MAX_LINE: Final = 8192
MAX_WORDS: Final = 8
SKIP_FACTOR: Final = 16
# RFC 5804 section 4: number = 1*DIGIT, below 4294967296.
_LITERAL: Final = re.compile(rb"\{([0-9]{1,10})(\+?)\}\Z")
_ATOM: Final = re.compile(rb"[!#-'*-z|~]+")  # printable ASCII but SP " ( ) { }


@dataclass(frozen=True, slots=True)
class Atom:
    """A bare word: a command name or a number."""

    value: str


@dataclass(frozen=True, slots=True)
class Str:
    """A quoted string or a literal, decoded from UTF-8."""

    value: str
    literal: bool = False

    def __repr__(self) -> str:  # may be a password or a whole script
        return f"Str(<{len(self.value)} chars>)"


Word: TypeAlias = Atom | Str


@dataclass(frozen=True, slots=True)
class Line:
    words: tuple[Word, ...]


@dataclass(frozen=True, slots=True)
class Bad:
    """Refused input; answer NO (or BYE when ``fatal``) with ``text``."""

    text: str
    command: str = ""  # the command's name when it was read (upper-case)
    too_big: bool = False  # a literal over the cap (PUTSCRIPT: QUOTA/MAXSIZE)
    fatal: bool = False
    busy: bool = False  # no room for a literal now (TRYLATER)


@dataclass(frozen=True, slots=True)
class RoomNeeded:
    """A literal of ``size`` octets comes next (only with ``ask_room``): find
    room for it, then ask again, or call :meth:`Reader.refuse_literal`."""

    size: int


@dataclass(frozen=True, slots=True)
class Closed:
    pass


class NeedData(enum.Enum):
    NEED_DATA = "need data"


NEED_DATA: Final = NeedData.NEED_DATA

Event: TypeAlias = Line | Bad | Closed | NeedData | RoomNeeded


class _Refused(Exception):
    pass


def _quoted(segment: bytes, start: int) -> tuple[str, int]:
    out = bytearray()
    position = start + 1
    while position < len(segment):
        byte = segment[position]
        if byte == 0x22:  # closing quote
            try:
                return out.decode("utf-8"), position + 1
            except UnicodeDecodeError:
                raise _Refused("string is not valid UTF-8") from None
        if byte == 0x5C:  # backslash: only \" and \\ (QUOTED-SPECIALS)
            if position + 1 >= len(segment) or segment[position + 1] not in b'"\\':
                raise _Refused("bad escape in quoted string")
            out.append(segment[position + 1])
            position += 2
            continue
        if byte == 0:
            raise _Refused("NUL in quoted string")
        out.append(byte)
        position += 1
    raise _Refused("unterminated quoted string")


def _tokens(segment: bytes) -> tuple[list[Word], int | None]:
    """The words of one line segment, and the size of the literal it announces."""
    words: list[Word] = []
    position = 0
    while position < len(segment):
        byte = segment[position]
        if byte in b" \t":
            position += 1
        elif byte == 0x22:
            value, position = _quoted(segment, position)
            words.append(Str(value))
        elif byte == 0x7B:  # "{": a literal header ends the segment
            match = _LITERAL.match(segment, position)
            if match is None:
                raise _Refused("bad literal")
            size = int(match.group(1))
            if size >= 1 << 32:
                raise _Refused("bad literal")
            return words, size
        else:
            match = _ATOM.match(segment, position)
            if match is None:
                raise _Refused("unexpected character")
            words.append(Atom(match.group().decode("ascii")))
            position = match.end()
    return words, None


class Reader:
    def __init__(self, max_line: int = DEFAULT_MAX_LINE, max_literal: int = 4096) -> None:
        if max_line < 64 or max_literal < 0:
            raise ValueError("max_line must be at least 64 and max_literal not negative")
        self.max_line = max_line
        self.max_literal = max_literal
        self.skip_oversized = False
        self.ask_room = False
        self._asked = False  # RoomNeeded was returned for the literal waited for
        self._buffer = bytearray()
        self._scanned = 0
        self._words: list[Word] = []
        self._literal: int | None = None  # octets of a literal being waited for
        self._skip = 0  # octets of a refused literal still to drop
        self._discard = False  # drop up to the end of the current line
        self._pending: Bad | None = None  # reported when the discarded line ends
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        """More bytes from the client; ``b""`` means end of input."""
        if self._eof and data:
            raise RuntimeError("data after end of input")
        if not data:
            self._eof = True
        self._buffer += data

    def clear(self) -> None:
        """Drop everything buffered (STARTTLS: bytes sent in the clear, RFC 5804 section 2.2)."""
        self._buffer.clear()
        self._scanned = 0
        self._words = []
        self._literal = None
        self._skip = 0
        self._discard = False
        self._pending = None

    @property
    def buffered(self) -> bool:
        return bool(self._buffer)

    def _command_name(self) -> str:
        first = self._words[0] if self._words else None
        return first.value.upper() if isinstance(first, Atom) else ""

    def _refuse(self, text: str, *, too_big: bool = False, fatal: bool = False) -> Bad:
        bad = Bad(text, self._command_name(), too_big, fatal)
        self._words = []
        self._literal = None
        return bad

    def next_event(self) -> Event:
        while True:
            if self._skip:
                dropped = min(self._skip, len(self._buffer))
                del self._buffer[:dropped]
                self._skip -= dropped
                if self._skip:
                    return Closed() if self._eof else NEED_DATA
                self._discard = True  # the rest of that command's line goes too
            if self._discard:
                newline = self._buffer.find(b"\n")
                if newline < 0:
                    self._buffer.clear()
                    return Closed() if self._eof else NEED_DATA
                del self._buffer[: newline + 1]
                self._discard = False
                self._scanned = 0
                if self._pending is not None:
                    pending, self._pending = self._pending, None
                    return pending
                continue
            if self._literal is not None:
                if self.ask_room and not self._asked and self._literal:
                    self._asked = True
                    return RoomNeeded(self._literal)
                if len(self._buffer) < self._literal:
                    return Closed() if self._eof else NEED_DATA
                data = bytes(self._buffer[: self._literal])
                del self._buffer[: self._literal]
                self._literal = None
                try:
                    self._words.append(Str(data.decode("utf-8"), literal=True))
                except UnicodeDecodeError:
                    self._pending = self._refuse("literal is not valid UTF-8")
                    self._discard = True
                continue
            newline = self._buffer.find(b"\n", self._scanned)
            if newline < 0:
                if len(self._buffer) >= self.max_line:
                    self._buffer.clear()
                    self._scanned = 0
                    self._discard = True
                    return self._refuse("line too long")
                self._scanned = len(self._buffer)
                if self._eof:
                    self._buffer.clear()
                    return Closed()
                return NEED_DATA
            segment = bytes(self._buffer[:newline])
            del self._buffer[: newline + 1]
            self._scanned = 0
            if len(segment) + 1 > self.max_line:
                return self._refuse("line too long")
            segment = segment.removesuffix(b"\r")
            try:
                words, literal = _tokens(segment)
            except _Refused as exc:
                return self._refuse(str(exc))
            self._words.extend(words)
            if len(self._words) + (literal is not None) > MAX_WORDS:
                return self._refuse("too many arguments")
            if literal is None:
                line = Line(tuple(self._words))
                self._words = []
                return line
            if literal > self.max_literal:
                fatal = not self.skip_oversized or literal > self.max_literal * SKIP_FACTOR
                bad = self._refuse(
                    f"literal of {literal} octets is over the limit of {self.max_literal}",
                    too_big=True,
                    fatal=fatal,
                )
                if fatal:
                    self._buffer.clear()
                    return bad
                self._skip = literal
                self._pending = bad
                continue
            self._literal = literal
            self._asked = False

    def refuse_literal(self, text: str) -> None:
        """No room for the literal :class:`RoomNeeded` announced: its octets
        are dropped as they come, with the rest of its command, and the
        command is reported as a ``busy`` :class:`Bad`."""
        if self._literal is None:
            raise RuntimeError("refuse_literal() with no literal announced")
        skip = self._literal
        self._pending = Bad(text, self._command_name(), busy=True)
        self._words = []
        self._literal = None
        self._skip = skip
        if not skip:
            self._discard = True
