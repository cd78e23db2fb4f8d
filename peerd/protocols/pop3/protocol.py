"""POP3 commands (RFC 1939, RFC 2449, RFC 2595, RFC 5034), sans-I/O: bytes in, events out.

How this works: :class:`CommandReader` is fed bytes as they arrive
(:meth:`~CommandReader.receive_data`) and hands out one event at a time
(:meth:`~CommandReader.next_event`): a command dataclass, a
:class:`CommandError` carrying the ``-ERR`` text for a line it refused,
:data:`NEED_DATA` when no full line is buffered, or :class:`ConnectionClosed`
after end of input. Events are produced lazily, one line each, so a server
that answers ``AUTH PLAIN`` with ``+ `` calls
:meth:`~CommandReader.expect_sasl_response` and the *next* line is read as a
SASL response (:class:`SaslResponse` or :class:`SaslCancel`), even when the
client pipelined it in the same packet.

Lines are capped (``max_line``, 255 octets by default: RFC 2449 section 4
limits commands to 255 octets including CRLF). A longer line is thrown away
up to its end and reported once as a :class:`CommandError`; the session goes
on. Keywords are case-insensitive (RFC 1939 section 3). Which commands a
session state allows is :mod:`.states`' table, not this module's business.
"""

from __future__ import annotations

import binascii
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeAlias

__all__ = [
    "DEFAULT_MAX_LINE",
    "DEFAULT_MAX_SASL_LINE",
    "NEED_DATA",
    "Auth",
    "Capa",
    "Command",
    "CommandError",
    "CommandReader",
    "ConnectionClosed",
    "Dele",
    "Event",
    "List",
    "NeedData",
    "Noop",
    "Pass",
    "Quit",
    "Retr",
    "Rset",
    "SaslCancel",
    "SaslResponse",
    "Stat",
    "Stls",
    "Top",
    "Uidl",
    "User",
    "parse_command",
    "plain_credentials",
]

# RFC 2449 section 4: "Commands ... may be up to 255 octets, including the
# terminating CRLF".
DEFAULT_MAX_LINE: Final = 255
# A SASL response line is not a command, and RFC 5034 section 4 only asks the
# client to drop the initial response when AUTH would outgrow the command
# limit: responses get their own, larger cap.
DEFAULT_MAX_SASL_LINE: Final = 8192

# Error texts, without the "-ERR " prefix (replies.py adds it).
TEXT_LINE_TOO_LONG: Final = "line too long"
TEXT_UNKNOWN: Final = "unknown command"
TEXT_NOT_UTF8: Final = "argument is not valid UTF-8"
TEXT_BAD_BASE64: Final = "invalid base64 in SASL response"
TEXT_BAD_PLAIN: Final = "bad SASL PLAIN response"


def _positive(word: str, what: str) -> int:
    # RFC 1939 section 3: message numbers are decimal and start at 1; only
    # ASCII digits (int() would also take "+1", " 1", "1_0" and Arabic digits).
    if not (word.isascii() and word.isdigit()) or int(word) == 0:
        raise ValueError(f"{what} must be a positive number")
    return int(word)


def _number(value: int, what: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}")


def _text(value: str, what: str) -> None:
    # A value with CR or LF could never have come off one command line.
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"{what} holds CR, LF or NUL")


@dataclass(frozen=True, slots=True)
class User:
    """RFC 1939 section 7, USER name."""

    name: str

    def __post_init__(self) -> None:
        _text(self.name, "USER name")
        if not self.name:
            raise ValueError("USER needs a name")


@dataclass(frozen=True, slots=True)
class Pass:
    """RFC 1939 section 7, PASS string: everything after the first space.

    RFC 1939 section 7 (PASS, discussion): the server may treat spaces in
    the argument as part of the password, so they are kept.
    """

    password: str = ""

    def __post_init__(self) -> None:
        _text(self.password, "PASS string")

    def __repr__(self) -> str:  # never a password in logs
        return "Pass(password=***)"


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Stat:
    pass


@dataclass(frozen=True, slots=True)
class List:
    """LIST [msg]: ``msg`` None lists every message."""

    msg: int | None = None

    def __post_init__(self) -> None:
        if self.msg is not None:
            _number(self.msg, "message number", minimum=1)


@dataclass(frozen=True, slots=True)
class Retr:
    msg: int

    def __post_init__(self) -> None:
        _number(self.msg, "message number", minimum=1)


@dataclass(frozen=True, slots=True)
class Dele:
    msg: int

    def __post_init__(self) -> None:
        _number(self.msg, "message number", minimum=1)


@dataclass(frozen=True, slots=True)
class Noop:
    pass


@dataclass(frozen=True, slots=True)
class Rset:
    pass


@dataclass(frozen=True, slots=True)
class Top:
    """RFC 1939 section 7, TOP msg n: headers, blank line, ``lines`` body lines."""

    msg: int
    lines: int

    def __post_init__(self) -> None:
        _number(self.msg, "message number", minimum=1)
        _number(self.lines, "line count", minimum=0)


@dataclass(frozen=True, slots=True)
class Uidl:
    """UIDL [msg]: ``msg`` None lists every message."""

    msg: int | None = None

    def __post_init__(self) -> None:
        if self.msg is not None:
            _number(self.msg, "message number", minimum=1)


@dataclass(frozen=True, slots=True)
class Capa:
    """RFC 2449 section 5."""


@dataclass(frozen=True, slots=True)
class Stls:
    """RFC 2595 section 4."""


@dataclass(frozen=True, slots=True)
class Auth:
    """RFC 5034 section 4, AUTH mechanism [initial-response].

    ``mechanism`` is upper-cased (SASL names are case-insensitive);
    ``initial`` is the decoded initial response, ``b""`` for ``=``, None
    when the client sent none (the server then answers ``+ ``).
    """

    mechanism: str
    initial: bytes | None = None

    def __post_init__(self) -> None:
        # RFC 4422 section 3.1: 1-20 characters of [A-Z0-9-_].
        name = self.mechanism
        if (
            not (
                1 <= len(name) <= 20
                and name.isascii()
                and all(ch.isalnum() or ch in "-_" for ch in name)
            )
            or name != name.upper()
        ):
            raise ValueError("AUTH mechanism must be a SASL name (1-20 of A-Z 0-9 - _)")

    def __repr__(self) -> str:  # the initial response holds a password
        shown = "None" if self.initial is None else "***"
        return f"Auth(mechanism={self.mechanism!r}, initial={shown})"


Command: TypeAlias = (
    User | Pass | Quit | Stat | List | Retr | Dele | Noop | Rset | Top | Uidl | Capa | Stls | Auth
)
_Parser: TypeAlias = Callable[[str, list[str], str], Command]


@dataclass(frozen=True, slots=True)
class SaslResponse:
    """A SASL response line after ``+ ``, base64-decoded (RFC 5034 section 4)."""

    data: bytes

    def __repr__(self) -> str:
        return "SaslResponse(data=***)"


@dataclass(frozen=True, slots=True)
class SaslCancel:
    """The client sent ``*``: the exchange is over, answer ``-ERR`` (RFC 5034 section 4)."""


@dataclass(frozen=True, slots=True)
class CommandError:
    """A line that is not a valid command; answer ``-ERR <text>`` and go on.

    ``keyword`` is the upper-cased keyword when one was read ("" otherwise),
    so a server can count or log what clients try.
    """

    text: str
    keyword: str = ""

    def __post_init__(self) -> None:
        _text(self.text, "error text")
        if not self.text:
            raise ValueError("an error needs a text")


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """End of input; any unfinished last line is dropped (it had no CRLF)."""


class NeedData(enum.Enum):
    NEED_DATA = "need data"


NEED_DATA: Final = NeedData.NEED_DATA

Event: TypeAlias = Command | SaslResponse | SaslCancel | CommandError | ConnectionClosed


def _no_args(cls: type[Quit | Stat | Noop | Rset | Capa | Stls]) -> _Parser:
    def parse(keyword: str, args: list[str], rest: str) -> Command:
        if args:
            raise ValueError(f"{keyword} takes no arguments")
        return cls()

    return parse


def _optional_msg(cls: type[List | Uidl]) -> _Parser:
    def parse(keyword: str, args: list[str], rest: str) -> Command:
        if len(args) > 1:
            raise ValueError(f"{keyword} takes at most one argument: a message number")
        return cls(_positive(args[0], "message number") if args else None)

    return parse


def _required_msg(cls: type[Retr | Dele]) -> _Parser:
    def parse(keyword: str, args: list[str], rest: str) -> Command:
        if len(args) != 1:
            raise ValueError(f"{keyword} takes one argument: a message number")
        return cls(_positive(args[0], "message number"))

    return parse


def _user(keyword: str, args: list[str], rest: str) -> Command:
    if len(args) != 1:
        raise ValueError("USER takes one argument: a mailbox name")
    return User(args[0])


def _pass(keyword: str, args: list[str], rest: str) -> Command:
    if not rest:
        raise ValueError("PASS takes one argument: the password")
    return Pass(rest)


def _top(keyword: str, args: list[str], rest: str) -> Command:
    if len(args) != 2:
        raise ValueError("TOP takes two arguments: a message number and a line count")
    lines = args[1]
    if not (lines.isascii() and lines.isdigit()):
        raise ValueError("TOP line count must be a non-negative number")
    return Top(_positive(args[0], "message number"), int(lines))


def _decode_base64(word: str) -> bytes:
    try:
        return binascii.a2b_base64(word.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(TEXT_BAD_BASE64) from None


def _auth(keyword: str, args: list[str], rest: str) -> Command:
    if not 1 <= len(args) <= 2:
        raise ValueError("AUTH takes a mechanism and an optional initial response")
    initial: bytes | None = None
    if len(args) == 2:
        # RFC 5034 section 4: "=" is an initial response of zero length.
        initial = b"" if args[1] == "=" else _decode_base64(args[1])
    return Auth(args[0].upper(), initial)


_PARSERS: Final[dict[str, _Parser]] = {
    "USER": _user,
    "PASS": _pass,
    "QUIT": _no_args(Quit),
    "STAT": _no_args(Stat),
    "LIST": _optional_msg(List),
    "RETR": _required_msg(Retr),
    "DELE": _required_msg(Dele),
    "NOOP": _no_args(Noop),
    "RSET": _no_args(Rset),
    "TOP": _top,
    "UIDL": _optional_msg(Uidl),
    "CAPA": _no_args(Capa),
    "STLS": _no_args(Stls),
    "AUTH": _auth,
}


def parse_command(line: bytes) -> Command | CommandError:
    """One command line, without its line ending, to a command or an error."""
    keyword_bytes, _, rest_bytes = line.partition(b" ")
    keyword = keyword_bytes.decode("ascii", "replace").upper()
    parser = _PARSERS.get(keyword)
    if parser is None:
        # Echo a short, printable keyword only: it goes back on the wire.
        shown = keyword if keyword.isalnum() and len(keyword) <= 8 else ""
        return CommandError(f"{TEXT_UNKNOWN} {shown}".rstrip(), shown)
    try:
        rest = rest_bytes.decode("utf-8")
    except UnicodeDecodeError:
        return CommandError(TEXT_NOT_UTF8, keyword)
    # RFC 1939 section 3 separates arguments by a single space; runs of
    # spaces and a trailing space are common enough in the wild to accept.
    # Spaces only: split() with no argument also cuts at U+001C-U+001F and
    # U+0085, so "USER \x85alice" named alice.
    args = [arg for arg in rest.split(" ") if arg]
    try:
        return parser(keyword, args, rest)
    except ValueError as exc:
        return CommandError(str(exc), keyword)


class CommandReader:
    """Incremental reader: :meth:`receive_data`, then :meth:`next_event` until NEED_DATA."""

    def __init__(
        self, max_line: int = DEFAULT_MAX_LINE, max_sasl_line: int = DEFAULT_MAX_SASL_LINE
    ) -> None:
        if max_line < 8 or max_sasl_line < 8:
            raise ValueError("line caps must be at least 8 octets")
        self.max_line = max_line
        self.max_sasl_line = max_sasl_line
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer already known to hold no LF
        self._discarding = False  # inside an over-long line, dropping to its LF
        self._sasl = False
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        """More bytes from the client; ``b""`` means end of input."""
        if self._eof and data:
            raise RuntimeError("data after end of input")
        if not data:
            self._eof = True
        self._buffer += data

    def expect_sasl_response(self) -> None:
        """The server sent ``+ ``: the next line is a SASL response, not a command."""
        self._sasl = True

    @property
    def awaiting_sasl(self) -> bool:
        return self._sasl

    @property
    def buffered(self) -> bool:
        """Bytes are waiting past the last event: the client sent more already.

        A server about to start TLS (STLS, RFC 2595 section 4) refuses then:
        those bytes came in the clear and must not be taken as sent over TLS.
        """
        return bool(self._buffer) and not self._discarding

    def next_event(self) -> Event | NeedData:
        cap = self.max_sasl_line if self._sasl else self.max_line
        while True:
            newline = self._buffer.find(b"\n", self._scanned)
            if newline < 0:
                if self._discarding:
                    self._buffer.clear()
                    self._scanned = 0
                elif len(self._buffer) >= cap:
                    # Refuse as soon as the cap is passed, not when (if ever)
                    # the line ends: memory stays bounded by the cap.
                    self._buffer.clear()
                    self._scanned = 0
                    self._discarding = True
                    self._sasl = False
                    return CommandError(TEXT_LINE_TOO_LONG)
                else:
                    self._scanned = len(self._buffer)
                if self._eof:
                    self._buffer.clear()
                    return ConnectionClosed()
                return NEED_DATA
            line = bytes(self._buffer[:newline])
            del self._buffer[: newline + 1]
            self._scanned = 0
            if self._discarding:
                self._discarding = False
                continue
            if len(line) + 1 > cap:
                self._sasl = False
                return CommandError(TEXT_LINE_TOO_LONG)
            # RFC 1939 section 3 wants CRLF; a bare LF (telnet, scripts) is
            # taken too, as most servers do.
            if line.endswith(b"\r"):
                line = line[:-1]
            if self._sasl:
                self._sasl = False
                return self._sasl_event(line)
            return parse_command(line)

    def events(self) -> list[Event]:
        """Every event buffered now (for tests and servers that never use SASL)."""
        out: list[Event] = []
        while not isinstance(event := self.next_event(), NeedData):
            out.append(event)
            if isinstance(event, ConnectionClosed):
                break
        return out

    @staticmethod
    def _sasl_event(line: bytes) -> SaslResponse | SaslCancel | CommandError:
        # RFC 5034 section 4: "*" cancels the exchange.
        if line.strip() == b"*":
            return SaslCancel()
        try:
            return SaslResponse(_decode_base64(line.decode("ascii").strip()))
        except (ValueError, UnicodeDecodeError):
            return CommandError(TEXT_BAD_BASE64, "AUTH")


def plain_credentials(data: bytes) -> tuple[str, str]:
    """``(user, password)`` from a decoded SASL PLAIN response (RFC 4616 section 2).

    The message is ``[authzid] NUL authcid NUL passwd``, UTF-8. Acting for
    another identity (an authzid other than the authcid) is not offered, so
    it is refused like any malformed response: :class:`ValueError`.
    """
    parts = data.split(b"\0")
    if len(parts) != 3:
        raise ValueError(TEXT_BAD_PLAIN)
    try:
        authzid, user, password = (part.decode("utf-8") for part in parts)
    except UnicodeDecodeError:
        raise ValueError(TEXT_BAD_PLAIN) from None
    if not user or not password or authzid not in ("", user):
        raise ValueError(TEXT_BAD_PLAIN)
    return user, password
