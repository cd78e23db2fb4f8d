"""Sieve text to a syntax tree (RFC 5228 section 8), with hard limits.

How this works: :class:`_Lexer` cuts the text into tokens with anchored
regular expressions that cannot backtrack (each is a run of one character
class, or the unrolled ``[^"\\]*(?:\\.[^"\\]*)*`` for quoted strings), so
lexing is linear in the script size. :class:`_Parser` is a recursive-descent
reader of the section 8.2 grammar; its recursion is bounded by
``Limits.max_depth`` (blocks and nested tests count alike), so a script of a
thousand ``not not not ...`` is refused before Python's stack is at risk.

Line endings: CRLF and bare LF are both taken (scripts edited on Unix
arrive with LF); string values always carry CRLF, as RFC 5228 section 2.4.2
describes multi-line strings and as mail (a vacation reason) needs. A bare CR
outside a string or comment is a syntax error.

Why not a library: the Sieve parsers on PyPI were judged for this (see
:mod:`peerd.protocols.sieve`); none evaluates scripts, so peerd has its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .errors import ScriptTooBig, SieveSyntaxError
from .limits import DEFAULT_LIMITS, Limits
from .tree import Argument, Command, Number, Script, String, StringList, Tag, Test

__all__ = ["parse"]

_WHITESPACE: Final = re.compile(r"[ \t\n]+")
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER: Final = re.compile(r"([0-9]+)([KkMmGg]?)")
_QUOTED: Final = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"', re.DOTALL)
_ESCAPE: Final = re.compile(r"\\(.)", re.DOTALL)
# "text:" *(SP / HTAB) (hash-comment / CRLF), RFC 5228 section 8.1.
_TEXT_START: Final = re.compile(r"[ \t]*(?:#[^\n]*)?\n")

# RFC 5228 section 2.4.1: K = 2^10, M = 2^20, G = 2^30.
_QUANTIFIERS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
# Section 2.4.1 asks for at least 2^31 - 1; numbers past 2^63 serve nothing
# (sizes, days) and would only cost arithmetic on huge integers.
_MAX_NUMBER: Final = (1 << 63) - 1
_MAX_DIGITS: Final = 20

# Token kinds; punctuation tokens are their own character.
_IDENT: Final = "identifier"
_TAG: Final = "tag"
_NUM: Final = "number"
_STR: Final = "string"
_EOF: Final = "end of script"
_PUNCTUATION: Final = frozenset(";,()[]{}")


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str  # identifier/tag name (lower-cased), string value, or punctuation
    line: int
    number: int = 0

    def describe(self) -> str:
        if self.kind in (_IDENT, _TAG):
            return f"{self.kind} {self.text!r}"
        if self.kind == _NUM:
            return f"number {self.number}"
        if self.kind == _STR:
            return "a string"
        if self.kind == _EOF:
            return _EOF
        return repr(self.text)


class _Lexer:
    def __init__(self, text: str, limits: Limits) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.limits = limits

    def _advance(self, end: int) -> None:
        self.line += self.text.count("\n", self.pos, end)
        self.pos = end

    def _skip_blank(self) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\n":
                match = _WHITESPACE.match(text, self.pos)
                assert match is not None
                self._advance(match.end())
            elif char == "#":
                end = text.find("\n", self.pos)
                self._advance(len(text) if end < 0 else end)
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise SieveSyntaxError("unterminated /* comment", self.line)
                self._advance(end + 2)
            else:
                return

    def next(self) -> _Token:
        self._skip_blank()
        text, pos, line = self.text, self.pos, self.line
        if pos >= len(text):
            return _Token(_EOF, "", line)
        char = text[pos]
        if char in _PUNCTUATION:
            self.pos += 1
            return _Token(char, char, line)
        if char == '"':
            match = _QUOTED.match(text, pos)
            if match is None:
                raise SieveSyntaxError("unterminated quoted string", line)
            raw = match.group(1)
            self._check_string(len(raw), line)
            self._advance(match.end())
            value = _ESCAPE.sub(r"\1", raw).replace("\n", "\r\n")
            self._check_string(len(value), line)
            return _Token(_STR, value, line)
        if char == ":":
            match = _IDENTIFIER.match(text, pos + 1)
            if match is None:
                raise SieveSyntaxError("':' must start a tag such as :is", line)
            self._advance(match.end())
            return _Token(_TAG, match.group().lower(), line)
        if char.isascii() and char.isdigit():
            match = _NUMBER.match(text, pos)
            assert match is not None
            digits, unit = match.groups()
            if len(digits) > _MAX_DIGITS:
                raise SieveSyntaxError("number too large", line)
            number = int(digits) * _QUANTIFIERS[unit.lower()]
            if number > _MAX_NUMBER:
                raise SieveSyntaxError("number too large", line)
            self._advance(match.end())
            if self.pos < len(text) and (text[self.pos].isalnum() or text[self.pos] == "_"):
                raise SieveSyntaxError("a number must not run into letters", line)
            return _Token(_NUM, digits, line, number)
        match = _IDENTIFIER.match(text, pos)
        if match is None:
            shown = char if char.isprintable() else f"U+{ord(char):04X}"
            raise SieveSyntaxError(f"unexpected character {shown!r}", line)
        word = match.group().lower()
        if word == "text" and text.startswith(":", match.end()):
            return self._multi_line(match.end() + 1, line)
        self._advance(match.end())
        return _Token(_IDENT, word, line)

    def _multi_line(self, start: int, line: int) -> _Token:
        # RFC 5228 section 2.4.2: "text:" up to the end of its line, then
        # lines up to one holding only "."; a line starting ".." loses one dot.
        text = self.text
        head = _TEXT_START.match(text, start)
        if head is None:
            raise SieveSyntaxError('"text:" must be followed by the end of the line', line)
        pos = head.end()
        lines: list[str] = []
        size = 0
        while True:
            end = text.find("\n", pos)
            if end < 0:
                raise SieveSyntaxError('multi-line string not ended by a "." line', line)
            piece = text[pos:end]
            pos = end + 1
            if piece == ".":
                break
            if piece.startswith(".."):
                piece = piece[1:]
            size += len(piece) + 2
            self._check_string(size, line)
            lines.append(piece)
        self._advance(pos)
        return _Token(_STR, "".join(f"{piece}\r\n" for piece in lines), line)

    def _check_string(self, size: int, line: int) -> None:
        if size > self.limits.max_string:
            raise ScriptTooBig(f"string longer than {self.limits.max_string} characters", line)


class _Parser:
    def __init__(self, text: str, limits: Limits) -> None:
        self.lexer = _Lexer(text, limits)
        self.limits = limits
        self.token = self.lexer.next()
        self.nodes = 0

    def _take(self) -> _Token:
        token = self.token
        self.token = self.lexer.next()
        return token

    def _expect(self, kind: str, what: str) -> _Token:
        if self.token.kind != kind:
            raise SieveSyntaxError(
                f"expected {what}, found {self.token.describe()}", self.token.line
            )
        return self._take()

    def _count(self, depth: int, line: int) -> None:
        self.nodes += 1
        if self.nodes > self.limits.max_commands:
            raise ScriptTooBig(f"more than {self.limits.max_commands} commands and tests", line)
        if depth > self.limits.max_depth:
            raise ScriptTooBig(f"nested deeper than {self.limits.max_depth}", line)

    def script(self) -> Script:
        commands = self._commands(0)
        if self.token.kind != _EOF:
            raise SieveSyntaxError(f"unexpected {self.token.describe()}", self.token.line)
        return Script(commands)

    def _commands(self, depth: int) -> tuple[Command, ...]:
        out: list[Command] = []
        while self.token.kind == _IDENT:
            out.append(self._command(depth))
        return tuple(out)

    def _command(self, depth: int) -> Command:
        name = self._take()
        self._count(depth, name.line)
        arguments, tests, test_list = self._arguments(depth)
        if self.token.kind == ";":
            self._take()
            return Command(name.text, arguments, tests, None, name.line, test_list)
        if self.token.kind == "{":
            self._take()
            block = self._commands(depth + 1)
            self._expect("}", "'}' or a command")
            return Command(name.text, arguments, tests, block, name.line, test_list)
        raise SieveSyntaxError(
            f"expected ';' or '{{' after {name.text}, found {self.token.describe()}",
            self.token.line,
        )

    def _arguments(self, depth: int) -> tuple[tuple[Argument, ...], tuple[Test, ...], bool]:
        arguments: list[Argument] = []
        while True:
            token = self.token
            if token.kind == _TAG:
                self._take()
                arguments.append(Tag(token.text, token.line))
            elif token.kind == _NUM:
                self._take()
                arguments.append(Number(token.number, token.line))
            elif token.kind == _STR:
                self._take()
                arguments.append(String(token.text, token.line))
            elif token.kind == "[":
                arguments.append(self._string_list())
            else:
                break
        if self.token.kind == _IDENT:
            return tuple(arguments), (self._test(depth + 1),), False
        if self.token.kind == "(":
            self._take()
            tests = [self._test(depth + 1)]
            while self.token.kind == ",":
                self._take()
                tests.append(self._test(depth + 1))
            self._expect(")", "',' or ')' in a test list")
            return tuple(arguments), tuple(tests), True
        return tuple(arguments), (), False

    def _string_list(self) -> StringList:
        start = self._take()
        values = [self._expect(_STR, "a string in the list").text]
        while self.token.kind == ",":
            self._take()
            values.append(self._expect(_STR, "a string after ','").text)
            if len(values) > self.limits.max_list:
                raise ScriptTooBig(f"string list longer than {self.limits.max_list}", start.line)
        self._expect("]", "',' or ']' in a string list")
        return StringList(tuple(values), start.line)

    def _test(self, depth: int) -> Test:
        name = self._expect(_IDENT, "a test")
        self._count(depth, name.line)
        arguments, tests, test_list = self._arguments(depth)
        return Test(name.text, arguments, tests, name.line, test_list)


def parse(script: str | bytes, limits: Limits = DEFAULT_LIMITS) -> Script:
    """Script text (UTF-8 bytes or str) to its syntax tree; :class:`ScriptError` if refused."""
    if isinstance(script, bytes):
        if len(script) > limits.max_script_size:
            raise ScriptTooBig(f"script larger than {limits.max_script_size} octets")
        try:
            text = script.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = script.count(b"\n", 0, exc.start) + 1
            raise SieveSyntaxError("script is not valid UTF-8", line) from None
    else:
        text = script
        if len(text) > limits.max_script_size or (
            len(text.encode("utf-8", "surrogatepass")) > limits.max_script_size
        ):
            raise ScriptTooBig(f"script larger than {limits.max_script_size} octets")
    # RFC 5228 section 8.1: no production takes NUL (octet-not-crlf and its
    # kin start at %x01). Refused here, for every caller: PostgreSQL cannot
    # store it in text either, and its refusal came as a failed write.
    nul = text.find("\0")
    if nul >= 0:
        raise SieveSyntaxError("a script cannot hold NUL", text.count("\n", 0, nul) + 1)
    # RFC 5228 section 2.2 wants CRLF; LF alone is taken as well (see above).
    text = text.replace("\r\n", "\n")
    # A BOM some editors add is not part of the script.
    text = text.removeprefix("\ufeff")
    return _Parser(text, limits).script()
