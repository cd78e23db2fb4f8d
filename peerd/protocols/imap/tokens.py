"""IMAP command text as tokens (RFC 3501 4 and 9), without I/O.

How this works: the framing layer (:mod:`~peerd.protocols.imap.parser`) hands over
a command's text with a NUL byte where each literal was announced, and the
literals themselves. :func:`tokenize` turns that into a list of :data:`Token`:
an atom is ``str``, a quoted string or literal is ``bytes`` (so ``NIL`` and
``"NIL"`` differ, and 8-bit data stays untouched; a literal is a
:class:`LiteralData`, a literal8 a :class:`Literal8Data`), a parenthesised list is a
``tuple``. FETCH's ``BODY[...]<...>`` is kept as one atom even though the
brackets may hold spaces and parentheses. Parentheses nest at most
:data:`MAX_DEPTH` deep.

This module is the bottom of the parser: the grammar
(:mod:`~peerd.protocols.imap.grammar`), FETCH items
(:mod:`~peerd.protocols.imap.fetchatt`) and SEARCH keys
(:mod:`~peerd.protocols.imap.searchkey`) all read :data:`Token`, and it imports
none of them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final, TypeAlias

from peerd.protocols.imap.responses import CommandError

__all__ = ["MARK", "MAX_DEPTH", "TAG", "Literal8Data", "LiteralData", "Token", "tag_of", "tokenize"]


class LiteralData(bytes):
    """A string sent as a literal ``{n}`` (RFC 3501 4.3): equal to the same
    bytes, but APPEND tells its message (a literal) from a quoted date-time."""

    __slots__ = ()


class Literal8Data(LiteralData):
    """A ``~{n}`` literal (RFC 3516 4.2): may hold any octet, NUL included."""

    __slots__ = ()


Token: TypeAlias = "str | bytes | tuple[Token, ...]"
"""An atom (``str``), a quoted string or literal (``bytes``), or a list (``tuple``)."""

MAX_DEPTH: Final = 32

# tag = 1*<any ASTRING-CHAR except "+"> (RFC 3501 9)
TAG: Final = re.compile(rb"[\x21\x23-\x24\x26-\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+")


def tag_of(head: bytes) -> str | None:
    """The tag a command line starts with, or None if it has no valid one."""
    tag = head.split(b" ", 1)[0]
    return tag.decode("ascii") if TAG.fullmatch(tag) else None


# Atom bytes as real clients send them: ATOM-CHAR (RFC 3501 9) plus "\" (flags),
# "%" and "*" (LIST patterns, sequence sets) and "]" (ASTRING-CHAR).
_ATOM: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){"]+')
_SECTION_PREFIXES: Final = frozenset({b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK"})
MARK: Final = 0  # a literal's place in the joined command text


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
        elif ch == MARK:
            if used >= len(literals):
                raise CommandError("NUL is not allowed in commands (RFC 3501 9, CHAR)")
            value = literals[used]
            stack[-1].append(value if isinstance(value, LiteralData) else LiteralData(value))
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
    if b"\\" not in chunk and MARK not in chunk:
        return chunk, end + 1
    out = bytearray()
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == 0x22:
            return bytes(out), i + 1
        if ch == MARK:
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
    atom = text[i:j]
    if not atom.isascii():
        raise CommandError("unexpected 8-bit byte in a section (atoms are US-ASCII)")
    return atom.decode("ascii"), j


def _section_end(text: bytes, i: int) -> int:
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == 0x5D:  # "]"
            return i
        if ch == 0x22:
            _, i = _quoted(text, i + 1)
            continue
        if ch == MARK:
            raise CommandError("literals inside a FETCH section are not supported")
        i += 1
    raise CommandError("FETCH section without ']'")
