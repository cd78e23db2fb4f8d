"""Reading IMAP commands from bytes, without I/O (RFC 3501 2.2, 4, 9).

How this works, in three layers:

1. **Framing** (:class:`CommandReader`). ``feed()`` bytes as they arrive and
   pull events with ``next_event()`` until it returns None. A command is a
   line, unless the line ends in a literal announcement ``{n}`` (or ``{n+}``,
   RFC 7888 LITERAL+): then ``n`` octets follow, then the rest of the command,
   which may announce more literals. For a synchronizing ``{n}`` the reader
   returns :class:`ContinuationNeeded` and the server must write
   ``event.reply()`` (``+ Ready for literal data``) before the client sends the
   octets (RFC 3501 7.5); ``{n+}`` needs nothing.

2. **Tokens** (:func:`tokenize`). The framed command becomes a list of
   :data:`Token`: an atom is ``str``, a quoted string or literal is ``bytes``
   (so ``NIL`` and ``"NIL"`` differ, and 8-bit data stays untouched), a
   parenthesised list is a ``tuple``. FETCH's ``BODY[...]<...>`` is kept as one
   atom even though the brackets may hold spaces and parentheses.

3. **Grammar**. Each command's arguments are read from the tokens into a
   :mod:`~peerd.protocols.imap.commands` dataclass; FETCH items and SEARCH criteria go to
   :mod:`~peerd.protocols.imap.fetchatt` and :mod:`~peerd.protocols.imap.searchkey`.

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
- Parentheses nest at most :data:`MAX_DEPTH` deep.

Raw lines: during IDLE (RFC 2177, the client ends it with ``DONE``) and
AUTHENTICATE (RFC 3501 6.2.2, base64 responses to ``+`` challenges) the client
sends lines that are not commands. The server then pulls ``next_line()``
instead of ``next_event()``; bytes already buffered are kept across the
switch, so pipelined input is never lost. :func:`decode_sasl_response`
decodes an AUTHENTICATE response line.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from peerd.protocols.imap import commands as c
from peerd.protocols.imap.fetchatt import Item, parse_fetch_atts
from peerd.protocols.imap.responses import (
    CODE_TOOBIG,
    CommandError,
    continuation,
    tagged,
    untagged_status,
)
from peerd.protocols.imap.searchkey import MAX_MODSEQ, check_charset, parse_search_key
from peerd.protocols.imap.sequence import MAX_NUMBER, SequenceSet

__all__ = [
    "MAX_DEPTH",
    "CommandReader",
    "ContinuationNeeded",
    "Event",
    "Line",
    "ProtocolError",
    "Token",
    "decode_sasl_response",
    "parse_command",
    "plain_credentials",
    "tokenize",
]

Token: TypeAlias = "str | bytes | tuple[Token, ...]"
"""An atom (``str``), a quoted string or literal (``bytes``), or a list (``tuple``)."""

MAX_DEPTH: Final = 32


# -- events -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContinuationNeeded:
    """A synchronizing literal of ``size`` octets was announced: write :meth:`reply`."""

    size: int

    def reply(self) -> bytes:
        return continuation("Ready for literal data")


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


Event: TypeAlias = c.Command | ContinuationNeeded | ProtocolError


# -- framing ------------------------------------------------------------------------

# tag = 1*<any ASTRING-CHAR except "+"> (RFC 3501 9)
_TAG: Final = re.compile(rb"[\x21\x23-\x24\x26-\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+")


def _tag_of(head: bytes) -> str | None:
    tag = head.split(b" ", 1)[0]
    return tag.decode("ascii") if _TAG.fullmatch(tag) else None


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
    if not digits.isdigit():
        return None
    eight = start > 0 and body[start - 1 : start] == b"~"  # literal8, RFC 3516 4.2
    return (start - 1 if eight else start), int(digits), sync, eight


class CommandReader:
    """Incremental reader: ``feed(data)``, then ``next_event()`` until None.

    See the module docstring for literals, limits and raw lines.
    """

    def __init__(self, max_line: int = 64 * 1024, max_literal: int = 64 * 1024 * 1024) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self._buf = bytearray()
        self._scan = 0  # the newline search resumes here
        self._parts: list[bytes] = []  # the command's text, split at its literals
        self._literals: list[bytes] = []
        self._text_size = 0
        self._literal_size = 0
        self._need = -1  # literal octets still to come, -1 when reading text
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
                return self._fatal(f"literal size {size} is not a 32-bit number (RFC 3501 9)")
            if self._discard is not None:
                if sync:
                    # The client waits for "+"; answering the command instead
                    # tells it not to send the octets (RFC 3501 7.5).
                    return self._abandon(self._discard)
            elif eight or (start > 0 and line[start - 1] not in b" ("):
                problem = CommandError(
                    "literal8 (~{n}) needs BINARY, not offered (RFC 3516)"
                    if eight
                    else "a literal {n} must follow a space or '(' (RFC 3501 9)"
                )
                if sync:
                    return self._abandon(problem)
                self._discard = problem
            elif self._literal_size + size > self.max_literal:
                text = f"literal too big: this server takes {self.max_literal} octets per command"
                if sync:
                    return self._abandon(CommandError(text, code=CODE_TOOBIG, status="NO"))
                self._discard = CommandError(text, code=CODE_TOOBIG)
            self._need = size
            if self._discard is None:
                self._literal_size += size
                if sync:
                    return ContinuationNeeded(size)
        return None

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
        if self._discard is not None:
            dropped = min(len(buf), self._need)
            del buf[:dropped]
            self._need -= dropped
        else:
            if len(buf) < self._need:
                return False
            self._literals.append(bytes(buf[: self._need]))
            del buf[: self._need]
            self._need = 0
        if self._need:
            return False
        self._need = -1
        return True

    def _reset(self) -> None:
        self._parts = []
        self._literals = []
        self._text_size = 0
        self._literal_size = 0
        self._need = -1
        self._discard = None

    def _abandon(self, error: CommandError) -> ProtocolError:
        tag = _tag_of(self._parts[0]) if self._parts else None
        self._reset()
        return ProtocolError(tag, error.text, code=error.code, status=error.status)

    def _fatal(self, text: str) -> ProtocolError:
        tag = _tag_of(self._parts[0]) if self._parts else None
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
            return ProtocolError(
                _tag_of(parts[0]), error.text, code=error.code, status=error.status
            )


# -- tokens -------------------------------------------------------------------------

# Atom bytes as real clients send them: ATOM-CHAR (RFC 3501 9) plus "\" (flags),
# "%" and "*" (LIST patterns, sequence sets) and "]" (ASTRING-CHAR).
_ATOM: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){"]+')
_SECTION_PREFIXES: Final = frozenset({b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK"})
_MARK: Final = 0  # a literal's place in the joined command text


def tokenize(text: bytes, literals: Sequence[bytes] = ()) -> list[Token]:
    """Arguments as tokens; NUL (0x00) in ``text`` marks where the next literal goes."""
    stack: list[list[Token]] = [[]]
    i, n, used = 0, len(text), 0
    after_token = False  # a token just ended: only SP or ")" may follow
    literal_end = -1  # where the last literal ended in ``text``
    while i < n:
        ch = text[i]
        if ch == 0x20:
            i += 1
            after_token = False
            continue
        if ch == 0x29:  # ")"
            if len(stack) == 1:
                raise CommandError("unbalanced ')'")
            inner = tuple(stack.pop())
            stack[-1].append(inner)
            i += 1
            after_token = True
            continue
        if after_token:
            if i == literal_end:
                # The octets after a literal are command text again (RFC 3501
                # 4.3); text glued to it means the count and the data disagree.
                size = len(literals[used - 1])
                raise CommandError(
                    f"text follows a {{{size}}} literal without a space: "
                    f"were fewer than {size} octets sent?"
                )
            raise CommandError("arguments must be separated by a space")
        if ch == 0x28:  # "("
            if len(stack) > MAX_DEPTH:
                raise CommandError("parentheses nest too deeply")
            stack.append([])
            i += 1
            continue
        if ch == 0x22:  # '"'
            value, i = _quoted(text, i + 1)
            stack[-1].append(value)
        elif ch == _MARK:
            if used >= len(literals):
                raise CommandError("NUL is not allowed in commands (RFC 3501 9, CHAR)")
            stack[-1].append(literals[used])
            used += 1
            i += 1
            literal_end = i
        else:
            atom, i = _atom(text, i)
            stack[-1].append(atom)
        after_token = True
    if len(stack) != 1:
        raise CommandError("unbalanced '('")
    return stack[0]


def _quoted(text: bytes, i: int) -> tuple[bytes, int]:
    """A quoted string's value and the index after its closing quote (RFC 3501 4.3)."""
    end = text.find(b'"', i)
    if end < 0:
        raise CommandError("unterminated quoted string")
    chunk = text[i:end]
    if b"\\" not in chunk and _MARK not in chunk:
        return chunk, end + 1
    out = bytearray()
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == 0x22:
            return bytes(out), i + 1
        if ch == _MARK:
            break
        if ch == 0x5C:  # "\": only \\ and \" are escapes (quoted-specials)
            if i + 1 >= n or text[i + 1] not in b'"\\':
                raise CommandError('bad escape in quoted string (only \\\\ and \\")')
            i += 1
            ch = text[i]
        out.append(ch)
        i += 1
    raise CommandError("unterminated quoted string")


def _atom(text: bytes, i: int) -> tuple[str, int]:
    match = _ATOM.match(text, i)
    if match is None:
        what = text[i : i + 1]
        if what == b"{":
            raise CommandError("a literal {n} must end its line (RFC 3501 4.3)")
        raise CommandError(f"unexpected byte {what!r} (atoms are printable US-ASCII)")
    j = match.end()
    atom = text[i:j]
    bracket = atom.find(b"[")
    if bracket >= 0 and b"]" not in atom[bracket:] and atom[:bracket].upper() in _SECTION_PREFIXES:
        # BODY[HEADER.FIELDS (A "B")]<0.5>: the section holds spaces, parentheses
        # and quoted strings; keep it all in the atom for fetchatt to read.
        j = _section_end(text, j) + 1
        more = _ATOM.match(text, j)
        if more is not None:
            j = more.end()
    return text[i:j].decode("ascii"), j


def _section_end(text: bytes, i: int) -> int:
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == 0x5D:  # "]"
            return i
        if ch == 0x22:
            _, i = _quoted(text, i + 1)
            continue
        if ch == _MARK:
            raise CommandError("literals inside a FETCH section are not supported")
        i += 1
    raise CommandError("FETCH section without ']'")


# -- grammar --------------------------------------------------------------------------


class _Args:
    """A cursor over a command's argument tokens."""

    __slots__ = ("name", "pos", "tokens")

    def __init__(self, name: str, tokens: Sequence[Token]) -> None:
        self.name = name
        self.tokens = tokens
        self.pos = 0

    def more(self) -> bool:
        return self.pos < len(self.tokens)

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def next(self, what: str) -> Token:
        if self.pos >= len(self.tokens):
            raise CommandError(f"{self.name}: missing {what}")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def end(self) -> None:
        if self.pos < len(self.tokens):
            raise CommandError(f"{self.name}: unexpected extra arguments")

    def atom(self, what: str) -> str:
        token = self.next(what)
        if not isinstance(token, str):
            raise CommandError(f"{self.name}: {what} must be an atom")
        return token

    def astring(self, what: str) -> bytes:
        token = self.next(what)
        if isinstance(token, tuple):
            raise CommandError(f"{self.name}: {what} must be a string, not a list")
        return token.encode("ascii") if isinstance(token, str) else token

    def text(self, what: str) -> str:
        try:
            return self.astring(what).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CommandError(f"{self.name}: {what} is not UTF-8") from exc

    def mailbox(self, what: str = "mailbox name") -> str:
        return c.mailbox_name(self.astring(what))

    def list(self, what: str) -> tuple[Token, ...]:
        token = self.next(what)
        if not isinstance(token, tuple):
            raise CommandError(f"{self.name}: {what} must be a parenthesised list")
        return token

    def seqset(self) -> SequenceSet:
        return SequenceSet.parse(self.atom("sequence set"))

    def flags(self, tokens: Sequence[Token]) -> tuple[str, ...]:
        out = []
        for token in tokens:
            if not isinstance(token, str):
                raise CommandError(f"{self.name}: flags are atoms")
            out.append(c.normalize_flag(token))
        return tuple(dict.fromkeys(out))


def _number(token: Token, what: str, limit: int, low: int = 0) -> int:
    if not isinstance(token, str) or not (token.isascii() and token.isdigit()) or len(token) > 20:
        raise CommandError(f"{what} must be a number")
    value = int(token)
    if not low <= value <= limit:
        raise CommandError(f"{what} out of range")
    return value


def _options(tokens: Sequence[Token], what: str) -> tuple[str, ...]:
    out = []
    for token in tokens:
        if not isinstance(token, str):
            raise CommandError(f"{what} are atoms")
        out.append(token.upper())
    return tuple(out)


_MONTHS: Final = {
    month: i + 1
    for i, month in enumerate(b"JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())
}
_DATE_TIME: Final = re.compile(
    rb"([ \d]?\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"
)


def _date_time(raw: bytes) -> dt.datetime:
    """``"17-Jul-1996 02:44:25 -0700"`` (RFC 3501 9, ``date-time``), tz-aware."""
    match = _DATE_TIME.fullmatch(raw)
    month = _MONTHS.get(match.group(2).upper()) if match else None
    if match is None or month is None:
        raise CommandError('APPEND: bad date-time, want "dd-Mon-yyyy hh:mm:ss +zzzz"')
    day, _, year, hh, mm, ss, sign, zh, zm = match.groups()
    offset = dt.timedelta(hours=int(zh), minutes=int(zm)) * (-1 if sign == b"-" else 1)
    try:
        return dt.datetime(
            int(year), month, int(day), int(hh), int(mm), int(ss), tzinfo=dt.timezone(offset)
        )
    except ValueError as exc:
        raise CommandError("APPEND: no such date-time") from exc


def _no_args(cls: Callable[[str], c.Command]) -> Callable[[str, _Args], c.Command]:
    def build(tag: str, args: _Args) -> c.Command:
        args.end()
        return cls(tag)

    return build


def _login(tag: str, args: _Args) -> c.Command:
    user = args.text("user name")
    password = args.text("password")
    args.end()
    return c.Login(tag, user, password)


def _authenticate(tag: str, args: _Args) -> c.Command:
    mechanism = args.atom("SASL mechanism").upper()
    initial: bytes | None = None
    if args.more():
        # RFC 4959 SASL-IR: base64, or "=" for an empty initial response.
        initial = _base64(args.atom("initial response").encode("ascii"))
    args.end()
    return c.Authenticate(tag, mechanism, initial)


def _base64(data: bytes) -> bytes:
    if data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise CommandError("AUTHENTICATE: response is not base64 (RFC 3501 6.2.2)") from exc


def _enable(tag: str, args: _Args) -> c.Command:
    caps = [args.atom("capability").upper()]
    while args.more():
        caps.append(args.atom("capability").upper())
    return c.Enable(tag, tuple(caps))


def _id(tag: str, args: _Args) -> c.Command:
    token = args.next("parameter list")
    args.end()
    if isinstance(token, str) and token.upper() == "NIL":
        return c.Id(tag, None)
    if not isinstance(token, tuple) or len(token) % 2:
        raise CommandError("ID: want NIL or a list of field/value pairs (RFC 2971 3.1)")
    pairs = _Args("ID", token)
    params: list[tuple[str, str | None]] = []
    while pairs.more():
        key = pairs.text("field")
        value_token = pairs.peek()
        if isinstance(value_token, str) and value_token.upper() == "NIL":
            pairs.next("value")
            params.append((key, None))
        else:
            params.append((key, pairs.text("value")))
    return c.Id(tag, tuple(params))


def _open(cls: type[c.Select] | type[c.Examine]) -> Callable[[str, _Args], c.Command]:
    def build(tag: str, args: _Args) -> c.Command:
        mailbox = args.mailbox()
        condstore = False
        qresync: c.QResync | None = None
        if args.more():
            params = _Args(cls.name, args.list("select parameters"))
            while params.more():
                word = params.atom("select parameter").upper()
                if word == "CONDSTORE":
                    condstore = True
                elif word == "QRESYNC":
                    qresync = _qresync(params.list("QRESYNC parameters"))
                else:
                    raise CommandError(f"{cls.name}: unknown parameter {word[:40]}")
        args.end()
        return cls(tag, mailbox, condstore, qresync)

    return build


def _qresync(tokens: tuple[Token, ...]) -> c.QResync:
    # QRESYNC (uidvalidity modseq [known-uids] [(known-seqs known-uids)]), RFC 7162 3.2.5
    params = _Args("QRESYNC", tokens)
    uidvalidity = _number(params.next("uidvalidity"), "UIDVALIDITY", MAX_NUMBER, 1)
    modseq = _number(params.next("modseq"), "MODSEQ", MAX_MODSEQ, 1)
    known: SequenceSet | None = None
    match: tuple[SequenceSet, SequenceSet] | None = None
    if isinstance(params.peek(), str):
        known = params.seqset()
    if params.more():
        pair = _Args("QRESYNC", params.list("sequence match data"))
        match = (pair.seqset(), pair.seqset())
        pair.end()
    params.end()
    return c.QResync(uidvalidity, modseq, known, match)


def _create(tag: str, args: _Args) -> c.Command:
    mailbox = args.mailbox()
    uses: tuple[str, ...] = ()
    if args.more():
        # RFC 6154 3: CREATE name (USE (\Drafts \Sent))
        params = _Args("CREATE", args.list("create parameters"))
        while params.more():
            word = params.atom("create parameter").upper()
            if word != "USE":
                raise CommandError(f"CREATE: unknown parameter {word[:40]}")
            uses += params.flags(params.list("USE attributes"))
    args.end()
    return c.Create(tag, mailbox, uses)


def _one_mailbox(
    cls: type[c.Delete] | type[c.Subscribe] | type[c.Unsubscribe],
) -> Callable[[str, _Args], c.Command]:
    def build(tag: str, args: _Args) -> c.Command:
        mailbox = args.mailbox()
        args.end()
        return cls(tag, mailbox)

    return build


def _rename(tag: str, args: _Args) -> c.Command:
    old = args.mailbox("old name")
    new = args.mailbox("new name")
    args.end()
    return c.Rename(tag, old, new)


def _list(tag: str, args: _Args) -> c.Command:
    select: tuple[str, ...] = ()
    if isinstance(args.peek(), tuple):
        select = _options(args.list("selection options"), "LIST selection options")
    reference = args.mailbox("reference")
    patterns: tuple[str, ...]
    if isinstance(args.peek(), tuple):  # RFC 5258: several patterns in a list
        group = _Args("LIST", args.list("patterns"))
        patterns = tuple(group.mailbox("pattern") for _ in group.tokens)
    else:
        patterns = (args.mailbox("pattern"),)
    returns: tuple[str, ...] = ()
    status_items: tuple[str, ...] = ()
    if args.more():
        if args.atom("RETURN").upper() != "RETURN":
            raise CommandError("LIST: expected RETURN (options) (RFC 5258)")
        options = _Args("LIST RETURN", args.list("return options"))
        found = []
        while options.more():
            word = options.atom("return option").upper()
            found.append(word)
            if word == "STATUS":  # RFC 5819
                status_items = _options(options.list("STATUS items"), "STATUS items")
        returns = tuple(found)
    args.end()
    return c.List(tag, reference, patterns, select, returns, status_items)


def _lsub(tag: str, args: _Args) -> c.Command:
    reference = args.mailbox("reference")
    pattern = args.mailbox("pattern")
    args.end()
    return c.Lsub(tag, reference, pattern)


def _status(tag: str, args: _Args) -> c.Command:
    mailbox = args.mailbox()
    items = _options(args.list("status items"), "STATUS items")
    args.end()
    return c.Status(tag, mailbox, items)


def _append(tag: str, args: _Args) -> c.Command:
    mailbox = args.mailbox()
    flags: tuple[str, ...] = ()
    if isinstance(args.peek(), tuple):
        flags = args.flags(args.list("flags"))
    rest = len(args.tokens) - args.pos
    when: dt.datetime | None = None
    if rest == 2:
        when = _date_time(args.astring("date-time"))
    elif rest > 2:
        raise CommandError("APPEND: one message per command (MULTIAPPEND is not offered)")
    message = args.next("message literal")
    if not isinstance(message, bytes):
        raise CommandError("APPEND: the message must be a literal")
    args.end()
    return c.Append(tag, mailbox, flags, when, message)


def _search(tag: str, args: _Args, uid: bool) -> c.Command:
    returns: tuple[str, ...] | None = None
    charset = "US-ASCII"
    first = args.peek()
    if isinstance(first, str) and first.upper() == "RETURN":  # RFC 4731 ESEARCH
        args.next("RETURN")
        returns = _options(args.list("return options"), "SEARCH return options")
    first = args.peek()
    if isinstance(first, str) and first.upper() == "CHARSET":
        args.next("CHARSET")
        charset = check_charset(args.text("charset"))
    key = parse_search_key(args.tokens[args.pos :], charset=charset)
    return c.Search(tag, key, uid, charset, returns)


def _fetch(tag: str, args: _Args, uid: bool) -> c.Command:
    seqset = args.seqset()
    items = parse_fetch_atts(args.next("items"))
    changedsince: int | None = None
    vanished = False
    if args.more():
        modifiers = _Args("FETCH", args.list("modifiers"))
        while modifiers.more():
            word = modifiers.atom("modifier").upper()
            if word == "CHANGEDSINCE":  # RFC 7162 3.1.4
                changedsince = _number(modifiers.next("mod-sequence"), "CHANGEDSINCE", MAX_MODSEQ)
            elif word == "VANISHED":  # RFC 7162 3.2.6
                vanished = True
            else:
                raise CommandError(f"FETCH: unknown modifier {word[:40]}")
    args.end()
    # UID FETCH always answers with UIDs (RFC 3501 6.4.8); CHANGEDSINCE implies
    # MODSEQ (RFC 7162 3.3.1). Added here so no session can forget them.
    if uid and Item.UID not in items:
        items += (Item.UID,)
    if changedsince is not None and Item.MODSEQ not in items:
        items += (Item.MODSEQ,)
    return c.Fetch(tag, seqset, items, uid, changedsince, vanished)


def _store(tag: str, args: _Args, uid: bool) -> c.Command:
    seqset = args.seqset()
    unchangedsince: int | None = None
    if isinstance(args.peek(), tuple):
        modifiers = _Args("STORE", args.list("modifiers"))
        while modifiers.more():
            word = modifiers.atom("modifier").upper()
            if word != "UNCHANGEDSINCE":  # RFC 7162 3.1.3
                raise CommandError(f"STORE: unknown modifier {word[:40]}")
            unchangedsince = _number(modifiers.next("mod-sequence"), "UNCHANGEDSINCE", MAX_MODSEQ)
    item = args.atom("FLAGS, +FLAGS or -FLAGS").upper()
    mode: Literal["+", "-", ""] = ""
    if item[:1] in ("+", "-"):
        mode = "+" if item[0] == "+" else "-"
        item = item[1:]
    silent = item == "FLAGS.SILENT"
    if item not in ("FLAGS", "FLAGS.SILENT"):
        raise CommandError("STORE: the item is FLAGS, +FLAGS or -FLAGS (with .SILENT)")
    if isinstance(args.peek(), tuple):
        flags = args.flags(args.list("flags"))
        args.end()
    else:
        # flag *(SP flag) without parentheses is allowed too (RFC 3501 9, store-att-flags)
        flags = args.flags(args.tokens[args.pos :])
        if not flags:
            raise CommandError("STORE: missing flags")
    return c.Store(tag, seqset, mode, flags, silent, uid, unchangedsince)


def _transfer(cls: type[c.Copy] | type[c.Move]) -> Callable[[str, _Args, bool], c.Command]:
    def build(tag: str, args: _Args, uid: bool) -> c.Command:
        seqset = args.seqset()
        mailbox = args.mailbox()
        args.end()
        return cls(tag, seqset, mailbox, uid)

    return build


def _uid_expunge(tag: str, args: _Args, uid: bool) -> c.Command:
    seqset = args.seqset()
    args.end()
    return c.UidExpunge(tag, seqset)


_PLAIN: Final[dict[str, Callable[[str, _Args], c.Command]]] = {
    "CAPABILITY": _no_args(c.Capability),
    "NOOP": _no_args(c.Noop),
    "LOGOUT": _no_args(c.Logout),
    "STARTTLS": _no_args(c.StartTLS),
    "NAMESPACE": _no_args(c.Namespace),
    "CHECK": _no_args(c.Check),
    "CLOSE": _no_args(c.Close),
    "UNSELECT": _no_args(c.Unselect),
    "EXPUNGE": _no_args(c.Expunge),
    "IDLE": _no_args(c.Idle),
    "LOGIN": _login,
    "AUTHENTICATE": _authenticate,
    "ENABLE": _enable,
    "ID": _id,
    "SELECT": _open(c.Select),
    "EXAMINE": _open(c.Examine),
    "CREATE": _create,
    "DELETE": _one_mailbox(c.Delete),
    "SUBSCRIBE": _one_mailbox(c.Subscribe),
    "UNSUBSCRIBE": _one_mailbox(c.Unsubscribe),
    "RENAME": _rename,
    "LIST": _list,
    "LSUB": _lsub,
    "STATUS": _status,
    "APPEND": _append,
}
# Commands that also come as "UID <command>" (RFC 3501 6.4.8; UID EXPUNGE RFC 4315).
_UID: Final[dict[str, Callable[[str, _Args, bool], c.Command]]] = {
    "SEARCH": _search,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _transfer(c.Copy),
    "MOVE": _transfer(c.Move),
}


def parse_command(parts: Sequence[bytes], literals: Sequence[bytes] = ()) -> c.Command:
    """One framed command: its text split where the literals were announced
    (``parts`` has one more item than ``literals``), e.g.
    ``parse_command([b"a LOGIN ", b" ", b""], [b"alice", b"password"])``."""
    if any(b"\x00" in part for part in parts):
        raise CommandError("NUL is not allowed in commands (RFC 3501 9, CHAR)")
    head = parts[0]
    tag_bytes, space, rest = head.partition(b" ")
    if not _TAG.fullmatch(tag_bytes):
        raise CommandError("missing or bad tag")
    tag = tag_bytes.decode("ascii")
    name_bytes, space, rest = rest.partition(b" ")
    if not space and len(parts) > 1:
        raise CommandError("expected a space before the literal")
    name = name_bytes.decode("ascii", "replace").upper()
    text = bytes([_MARK]).join([rest, *parts[1:]])
    uid = name == "UID"
    if uid:
        sub, space, text = text.partition(b" ")
        name = sub.decode("ascii", "replace").upper()
    if not name:
        raise CommandError("missing command name")
    tokens = tokenize(text, literals)
    if uid:
        if name == "EXPUNGE":
            return _uid_expunge(tag, _Args("UID EXPUNGE", tokens), True)
        with_uid = _UID.get(name)
        if with_uid is None:
            raise CommandError(f"unknown command UID {name[:40]}")
        return with_uid(tag, _Args(f"UID {name}", tokens), True)
    plain = _PLAIN.get(name)
    if plain is not None:
        return plain(tag, _Args(name, tokens))
    selected = _UID.get(name)
    if selected is not None:
        return selected(tag, _Args(name, tokens), False)
    raise CommandError(f"unknown command {name[:40]}")


def decode_sasl_response(line: bytes) -> bytes | None:
    """An AUTHENTICATE response line: the decoded bytes, or None when the client
    cancelled with ``*`` (RFC 3501 6.2.2: answer the command BAD)."""
    if line == b"*":
        return None
    return _base64(line) if line else b""


def plain_credentials(data: bytes) -> tuple[str, str]:
    """``(user, password)`` from a decoded SASL PLAIN response (RFC 4616 2).

    The message is ``[authzid] NUL authcid NUL passwd`` in UTF-8. Acting as
    another identity (an authzid other than the authcid) is not offered, so it
    is refused like a malformed response.
    """
    parts = data.split(b"\0")
    if len(parts) != 3:
        raise CommandError("AUTHENTICATE PLAIN: want [authzid] NUL user NUL password (RFC 4616)")
    try:
        authzid, user, password = (part.decode("utf-8") for part in parts)
    except UnicodeDecodeError as exc:
        raise CommandError("AUTHENTICATE PLAIN: the response is not UTF-8 (RFC 4616)") from exc
    if not user or not password:
        raise CommandError("AUTHENTICATE PLAIN: empty user name or password")
    if authzid not in ("", user):
        raise CommandError("AUTHENTICATE PLAIN: acting as another user is not offered")
    return user, password
