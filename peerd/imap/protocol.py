"""IMAP4rev1 (RFC 3501) protocol core, sans-I/O: bytes in, commands out; values in, bytes out.

How this works: :class:`CommandReader` takes bytes as they arrive and yields
complete commands. A command line may carry literals (``{n}`` synchronizing:
the server must send a ``+`` continuation before the client sends the data;
``{n+}``, RFC 7888 LITERAL+: the data follows at once). The reader tells the
server when a continuation is needed (:class:`NeedContinuation`). Lines are
capped at ``max_line`` and literals at ``max_literal``: a synchronizing
literal over the cap is refused before its data is sent (the server answers
``NO [TOOBIG]`` and the client does not send it); a non-synchronizing one
is read and thrown away, then refused (RFC 7888 section 4).

:func:`tokenize` turns a command's arguments into Python values: ``str`` for
atoms and quoted strings, ``bytes`` for literals, ``list`` for parenthesised
lists, ``None`` for NIL. The serializer side (:func:`astring`, :func:`nstring`,
:func:`literal`) picks quoted or literal form so any value survives.

The session state table (RFC 3501 3) is :data:`ALLOWED`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ALLOWED",
    "Command",
    "CommandReader",
    "NeedContinuation",
    "ParseError",
    "ProtocolError",
    "SequenceSet",
    "astring",
    "decode_mailbox",
    "encode_mailbox",
    "literal",
    "nstring",
    "quoted",
    "tokenize",
]


class ProtocolError(Exception):
    """The client broke the protocol; ``tag`` is known when the line was read."""

    def __init__(self, message: str, tag: str = "*", code: str = "", fatal: bool = False) -> None:
        super().__init__(message)
        self.tag = tag
        self.code = code
        self.fatal = fatal


class ParseError(ProtocolError):
    pass


@dataclass(frozen=True, slots=True)
class Command:
    tag: str
    name: str
    args: bytes  # the raw argument text with literals spliced in as markers
    literals: tuple[bytes, ...] = ()
    uid: bool = False


@dataclass(frozen=True, slots=True)
class NeedContinuation:
    """Send ``+ Ready``: a synchronizing literal of ``size`` bytes is announced."""

    size: int


_LITERAL_AT_END = re.compile(rb"\{(\d{1,12})(\+?)\}\r?\n?$")
_TAG_RE = re.compile(rb"^[\x21-\x7e]+$")
# A literal inside the argument text becomes this marker: \x00<index>\x00.
_MARK = b"\x00"


@dataclass(slots=True)
class CommandReader:
    max_line: int = 65536
    max_literal: int = 64 << 20
    buffer: bytearray = field(default_factory=bytearray)
    _parts: list[bytes] = field(default_factory=list)
    _literals: list[bytes] = field(default_factory=list)
    _literal_left: int = -1
    _discard: bool = False
    _line_size: int = 0
    _announced: bool = False

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def read_line(self) -> bytes | None:
        """A raw line (for IDLE's DONE and AUTHENTICATE responses), or None."""
        end = self.buffer.find(b"\n")
        if end < 0:
            if len(self.buffer) > self.max_line:
                self.buffer.clear()
                raise ProtocolError("line too long", fatal=True)
            return None
        line = bytes(self.buffer[: end + 1])
        del self.buffer[: end + 1]
        return line.rstrip(b"\r\n")

    def next(self) -> Command | NeedContinuation | None:
        """The next complete command, a continuation request, or None for more bytes."""
        while True:
            if self._literal_left >= 0:
                if len(self.buffer) < self._literal_left:
                    return None
                data = bytes(self.buffer[: self._literal_left])
                del self.buffer[: self._literal_left]
                self._literal_left = -1
                if self._discard:
                    self._parts.clear()
                    self._literals.clear()
                    self._discard = False
                    raise ProtocolError("literal too large", code="TOOBIG")
                self._parts.append(_MARK + str(len(self._literals)).encode() + _MARK)
                self._literals.append(data)
                continue
            end = self.buffer.find(b"\n")
            if end < 0:
                if self._line_size + len(self.buffer) > self.max_line:
                    self.buffer.clear()
                    self._reset()
                    raise ProtocolError("command line too long", code="TOOBIG", fatal=True)
                return None
            line = bytes(self.buffer[: end + 1])
            del self.buffer[: end + 1]
            self._line_size += len(line)
            if self._line_size > self.max_line:
                self._reset()
                raise ProtocolError("command line too long", code="TOOBIG")
            match = _LITERAL_AT_END.search(line)
            if match is not None:
                size = int(match.group(1))
                plus = bool(match.group(2))
                self._parts.append(line[: match.start()])
                if size > self.max_literal:
                    if not plus:
                        tag = self._tag()
                        self._reset()
                        raise ProtocolError(
                            f"literal of {size} bytes is too large", tag=tag, code="TOOBIG"
                        )
                    self._discard = True
                self._literal_left = size
                if not plus:
                    return NeedContinuation(size)
                continue
            self._parts.append(line.rstrip(b"\r\n"))
            raw = b"".join(self._parts)
            literals = tuple(self._literals)
            self._reset()
            return self._command(raw, literals)

    def _tag(self) -> str:
        first = b"".join(self._parts).split(b" ", 1)[0]
        return first.decode("ascii", "replace") if _TAG_RE.match(first or b"-") else "*"

    def _reset(self) -> None:
        self._parts = []
        self._literals = []
        self._line_size = 0

    @staticmethod
    def _command(raw: bytes, literals: tuple[bytes, ...]) -> Command:
        pieces = raw.split(b" ", 2)
        if len(pieces) < 2 or not pieces[0] or not _TAG_RE.match(pieces[0]):
            tag = (
                pieces[0].decode("ascii", "replace")
                if pieces and pieces[0] and _TAG_RE.match(pieces[0])
                else "*"
            )
            raise ParseError("missing command", tag=tag)
        tag = pieces[0].decode("ascii")
        if any(c in tag for c in '+(){%*"\\]'):
            raise ParseError("invalid tag", tag="*")
        name = pieces[1].decode("ascii", "replace").upper()
        args = pieces[2] if len(pieces) > 2 else b""
        uid = False
        if name == "UID":
            sub = args.split(b" ", 1)
            name = sub[0].decode("ascii", "replace").upper()
            args = sub[1] if len(sub) > 1 else b""
            uid = True
        return Command(tag, name, args, literals, uid)


# -- argument tokens ----------------------------------------------------------------

_ATOM_END = b' ()[]{"\x00'


def tokenize(args: bytes, literals: tuple[bytes, ...] = ()) -> list[Any]:
    """Arguments as values: str (atom/quoted), bytes (literal), list, None (NIL)."""
    stack: list[list[Any]] = [[]]
    i = 0
    n = len(args)
    while i < n:
        c = args[i : i + 1]
        if c == b" ":
            i += 1
        elif c == b"(":
            stack.append([])
            i += 1
        elif c == b")":
            if len(stack) == 1:
                raise ParseError("unbalanced parenthesis")
            inner = stack.pop()
            stack[-1].append(inner)
            i += 1
        elif c == b'"':
            out = bytearray()
            i += 1
            while True:
                if i >= n:
                    raise ParseError("unterminated quoted string")
                ch = args[i : i + 1]
                if ch == b"\\":
                    if i + 1 >= n or args[i + 1 : i + 2] not in (b"\\", b'"'):
                        raise ParseError("bad escape in quoted string")
                    out += args[i + 1 : i + 2]
                    i += 2
                elif ch == b'"':
                    i += 1
                    break
                else:
                    out += ch
                    i += 1
            stack[-1].append(out.decode("utf-8", "replace"))
        elif c == _MARK:
            end = args.index(_MARK, i + 1)
            stack[-1].append(literals[int(args[i + 1 : end])])
            i = end + 1
        else:
            j = i
            depth = 0
            while j < n:
                ch = args[j : j + 1]
                if ch == b"[":
                    depth += 1
                elif ch == b"]":
                    depth -= 1
                elif depth <= 0 and ch in (b" ", b"(", b")", b'"', _MARK):
                    break
                j += 1
            atom = args[i:j].decode("utf-8", "replace")
            stack[-1].append(None if atom.upper() == "NIL" else atom)
            i = j
    if len(stack) != 1:
        raise ParseError("unbalanced parenthesis")
    return stack[0]


def as_text(value: Any, what: str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    raise ParseError(f"expected {what}")


# -- sequence sets (RFC 3501 9, sequence-set) ------------------------------------

_SEQ_RE = re.compile(r"^(\d+|\*)(?::(\d+|\*))?$")


@dataclass(frozen=True, slots=True)
class SequenceSet:
    ranges: tuple[tuple[int, int], ...]  # 0 stands for "*"

    @classmethod
    def parse(cls, text: str) -> SequenceSet:
        if not text or len(text) > 100_000:
            raise ParseError("bad sequence set")
        ranges = []
        for part in text.split(","):
            match = _SEQ_RE.match(part)
            if match is None:
                raise ParseError(f"bad sequence set {text[:40]!r}")
            lo = 0 if match.group(1) == "*" else int(match.group(1))
            hi = (
                lo
                if match.group(2) is None
                else (0 if match.group(2) == "*" else int(match.group(2)))
            )
            if (match.group(1) != "*" and lo == 0) or (
                match.group(2) not in (None, "*") and hi == 0
            ):
                raise ParseError("sequence numbers start at 1")
            ranges.append((lo, hi))
        return cls(tuple(ranges))

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        out = []
        for lo, hi in self.ranges:
            a = largest if lo == 0 else lo
            b = largest if hi == 0 else hi
            out.append((min(a, b), max(a, b)))
        return out

    def contains(self, value: int, largest: int) -> bool:
        return any(a <= value <= b for a, b in self.resolve(largest))


# -- serialising --------------------------------------------------------------------

_SAFE_QUOTED = re.compile(rb"^[\x20\x21\x23-\x5b\x5d-\x7e]*$")


def quoted(text: str) -> bytes:
    return b'"' + text.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def literal(data: bytes) -> bytes:
    return b"{" + str(len(data)).encode() + b"}\r\n" + data


def nstring(value: bytes | str | None) -> bytes:
    if value is None:
        return b"NIL"
    data = value.encode() if isinstance(value, str) else value
    if len(data) < 1000 and _SAFE_QUOTED.match(data):
        return b'"' + data + b'"'
    return literal(data)


def astring(value: str) -> bytes:
    data = value.encode()
    if data and re.match(rb"^[!#$&'+\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+$", data):
        return data
    return nstring(data)


# -- mailbox names: modified UTF-7 (RFC 3501 5.1.3) ------------------------------


def encode_mailbox(name: str) -> str:
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            import base64

            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def decode_mailbox(name: str) -> str:
    import base64

    out: list[str] = []
    i = 0
    while i < len(name):
        ch = name[i]
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i)
        if end < 0:
            raise ParseError("bad modified UTF-7 in mailbox name")
        chunk = name[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            b64 += "=" * (-len(b64) % 4)
            try:
                out.append(base64.b64decode(b64).decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise ParseError("bad modified UTF-7 in mailbox name") from exc
        i = end + 1
    return "".join(out)


# -- the state table (RFC 3501 3; RFC 2177 IDLE; RFC 6851 MOVE; RFC 3691 UNSELECT) --

_ANY = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "ID"})
_NOT_AUTH = _ANY | {"LOGIN", "AUTHENTICATE", "STARTTLS"}
_AUTH = _ANY | {
    "SELECT",
    "EXAMINE",
    "CREATE",
    "DELETE",
    "RENAME",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "LIST",
    "LSUB",
    "STATUS",
    "APPEND",
    "ENABLE",
    "NAMESPACE",
    "IDLE",
}
_SELECTED = _AUTH | {
    "CHECK",
    "CLOSE",
    "UNSELECT",
    "EXPUNGE",
    "SEARCH",
    "FETCH",
    "STORE",
    "COPY",
    "MOVE",
}

ALLOWED: dict[str, frozenset[str]] = {
    "not_authenticated": frozenset(_NOT_AUTH),
    "authenticated": frozenset(_AUTH),
    "selected": frozenset(_SELECTED),
    "logout": frozenset(),
}
