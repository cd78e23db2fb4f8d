"""FETCH data items: what a client asks for, typed (RFC 3501 6.4.5 and 9, ``fetch-att``).

How this works: :func:`parse_fetch_atts` takes the FETCH argument as the
reader tokenized it (one atom, or a parenthesised list of atoms; the reader
keeps ``BODY[HEADER.FIELDS (A B)]<0.100>`` together as one atom) and returns a
tuple of :data:`FetchAtt`: an :class:`Item` for the simple items, a
:class:`BodySection` for ``BODY[...]`` and ``BODY.PEEK[...]``. The macros ALL,
FAST and FULL are expanded here (they may only appear alone, RFC 3501 6.4.5).

:func:`response_name` gives the name a FETCH response uses for an item,
which is not always what the client sent: ``BODY.PEEK[HEADER]<0.100>`` is
answered as ``BODY[HEADER]<0>`` (RFC 3501 7.4.2: no ``.PEEK``, only the origin
octet of a partial). :func:`sets_seen` says which items set ``\\Seen``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, TypeAlias

from peerd.protocols.imap.responses import CommandError, astring
from peerd.protocols.imap.sequence import MAX_NUMBER
from peerd.protocols.imap.tokens import Token

__all__ = [
    "BinarySection",
    "BodySection",
    "FetchAtt",
    "Item",
    "SectionKind",
    "parse_fetch_att",
    "parse_fetch_atts",
    "response_name",
    "sets_seen",
]


class Item(enum.Enum):
    """The FETCH items without a section; the value is the wire name."""

    FLAGS = "FLAGS"
    UID = "UID"
    INTERNALDATE = "INTERNALDATE"
    RFC822_SIZE = "RFC822.SIZE"
    ENVELOPE = "ENVELOPE"
    BODY = "BODY"  # the non-extensible BODYSTRUCTURE
    BODYSTRUCTURE = "BODYSTRUCTURE"
    MODSEQ = "MODSEQ"  # RFC 7162 3.1.4.1
    RFC822 = "RFC822"  # = BODY[], but named RFC822 in the response
    RFC822_HEADER = "RFC822.HEADER"  # = BODY.PEEK[HEADER]
    RFC822_TEXT = "RFC822.TEXT"  # = BODY[TEXT]


class SectionKind(enum.Enum):
    """What part of a (sub)message a section names (RFC 3501 6.4.5, ``section-text``)."""

    ALL = ""  # BODY[] or BODY[1.2]: the whole message or part
    HEADER = "HEADER"
    HEADER_FIELDS = "HEADER.FIELDS"
    HEADER_FIELDS_NOT = "HEADER.FIELDS.NOT"
    TEXT = "TEXT"
    MIME = "MIME"  # only after a part number


@dataclass(frozen=True, slots=True)
class BodySection:
    """``BODY[<part>.<kind> (<fields>)]<<origin>.<length>>``, or ``BODY.PEEK[...]``.

    ``part`` is the MIME part path (``()`` for the top level); ``fields`` the
    header names for HEADER.FIELDS(.NOT) as the client spelt them (compare them
    case-insensitively, RFC 5322 1.2.2); ``partial`` is ``(origin, length)``.
    """

    part: tuple[int, ...] = ()
    kind: SectionKind = SectionKind.ALL
    fields: tuple[str, ...] = ()
    partial: tuple[int, int] | None = None
    peek: bool = False

    def __post_init__(self) -> None:
        if any(not 1 <= n <= MAX_NUMBER for n in self.part):
            raise CommandError("section part numbers start at 1")
        if self.kind is SectionKind.MIME and not self.part:
            raise CommandError("MIME needs a part number (RFC 3501 6.4.5)")
        wants_fields = self.kind in (SectionKind.HEADER_FIELDS, SectionKind.HEADER_FIELDS_NOT)
        if wants_fields != bool(self.fields):
            raise CommandError(f"{self.kind.value or 'this section'} takes a header field list")
        for name in self.fields:
            # A field name is printable ASCII without ":" (RFC 5322 3.6.8, ftext).
            if (
                not name
                or not (name.isascii() and name.isprintable())
                or ":" in name
                or " " in name
            ):
                raise CommandError(f"bad header field name {name[:40]!r}")
        if self.partial is not None:
            origin, length = self.partial
            if not (0 <= origin <= MAX_NUMBER and 1 <= length <= MAX_NUMBER):
                raise CommandError("partial is <origin.length> with length above 0")


@dataclass(frozen=True, slots=True)
class BinarySection:
    """``BINARY[<part>]<<origin>.<length>>``, ``BINARY.PEEK[...]`` or
    ``BINARY.SIZE[<part>]`` (RFC 3516 4): the part with its content transfer
    encoding undone, or (``size``) the length of that."""

    part: tuple[int, ...] = ()
    partial: tuple[int, int] | None = None
    peek: bool = False
    size: bool = False

    def __post_init__(self) -> None:
        if any(not 1 <= n <= MAX_NUMBER for n in self.part):
            raise CommandError("section part numbers start at 1")
        if self.partial is not None:
            origin, length = self.partial
            if self.size or not (0 <= origin <= MAX_NUMBER and 1 <= length <= MAX_NUMBER):
                raise CommandError("partial is <origin.length> with length above 0")


FetchAtt: TypeAlias = Item | BodySection | BinarySection

_ITEMS: Final = {item.value: item for item in Item}
_MACROS: Final = {
    # RFC 3501 6.4.5
    "ALL": (Item.FLAGS, Item.INTERNALDATE, Item.RFC822_SIZE, Item.ENVELOPE),
    "FAST": (Item.FLAGS, Item.INTERNALDATE, Item.RFC822_SIZE),
    "FULL": (Item.FLAGS, Item.INTERNALDATE, Item.RFC822_SIZE, Item.ENVELOPE, Item.BODY),
}
_KINDS: Final = {kind.value: kind for kind in SectionKind}


def parse_fetch_atts(arg: Token) -> tuple[FetchAtt, ...]:
    """The items of a FETCH command: a macro, one item, or a list of items.

    Duplicates are dropped (the response names each item once), order kept.
    """
    if isinstance(arg, str):
        macro = _MACROS.get(arg.upper())
        return macro if macro is not None else (parse_fetch_att(arg),)
    if isinstance(arg, tuple):
        if not arg:
            raise CommandError("empty FETCH item list")
        atts: list[FetchAtt] = []
        for token in arg:
            if not isinstance(token, str):
                raise CommandError("FETCH items are atoms")
            if token.upper() in _MACROS:
                raise CommandError(f"{token.upper()} may only be used alone (RFC 3501 6.4.5)")
            atts.append(parse_fetch_att(token))
        return tuple(dict.fromkeys(atts))
    raise CommandError("FETCH items are atoms, not strings")


def parse_fetch_att(text: str) -> FetchAtt:
    """One item: ``FLAGS``, ``BODY.PEEK[1.2.HEADER]``, ``BODY[]<0.2048>``..."""
    upper = text.upper()
    item = _ITEMS.get(upper)
    if item is not None:
        return item
    if upper.startswith("BODY.PEEK["):
        return _section(text, len("BODY.PEEK["), peek=True)
    if upper.startswith("BODY["):
        return _section(text, len("BODY["), peek=False)
    for prefix, peek, size in (
        ("BINARY.PEEK[", True, False),
        ("BINARY.SIZE[", True, True),
        ("BINARY[", False, False),
    ):
        if upper.startswith(prefix):
            return _binary(text, len(prefix), peek=peek, size=size)
    raise CommandError(f"unknown FETCH item {text[:40]!r}")


def _close_bracket(text: str, start: int) -> int:
    """Index of the "]" ending the section, skipping quoted field names."""
    i = start
    while i < len(text):
        ch = text[i]
        if ch == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif ch == "]":
            return i
        i += 1
    raise CommandError(f"section without ']' in {text[:40]!r}")


def _section(text: str, start: int, *, peek: bool) -> BodySection:
    end = _close_bracket(text, start)
    spec, space, field_list = text[start:end].partition(" ")
    part: list[int] = []
    kind = SectionKind.ALL
    if spec:
        pieces = spec.split(".")
        i = 0
        while i < len(pieces) and pieces[i].isascii() and pieces[i].isdigit():
            part.append(_part_number(pieces[i]))
            i += 1
        found = _KINDS.get(".".join(pieces[i:]).upper()) if i < len(pieces) else SectionKind.ALL
        if found is None or (found is SectionKind.ALL and i < len(pieces)):
            raise CommandError(f"bad section {spec[:40]!r}")
        kind = found
    fields: tuple[str, ...] = ()
    if space:
        fields = _field_names(field_list)
    partial = _partial(text[end + 1 :])
    return BodySection(tuple(part), kind, fields, partial, peek)


def _part_number(digits: str) -> int:
    """A section part (ASCII digits): an nz-number (RFC 3501 9). More than ten
    digits is past 2^32-1, and never given to int(), which refuses 4300."""
    if digits[0] == "0":
        raise CommandError("section part numbers start at 1 (RFC 3501 9)")
    if len(digits) > 10 or int(digits) > MAX_NUMBER:
        raise CommandError(f"section part number {digits[:20]} is above 2^32-1")
    return int(digits)


def _binary(text: str, start: int, *, peek: bool, size: bool) -> BinarySection:
    # RFC 3516 5: section-binary = "[" [section-part] "]": part numbers only.
    end = text.find("]", start)
    if end < 0:
        raise CommandError(f"section without ']' in {text[:40]!r}")
    spec = text[start:end]
    part: list[int] = []
    for piece in spec.split(".") if spec else ():
        if not (piece.isascii() and piece.isdigit()):
            raise CommandError(f"bad BINARY section {spec[:40]!r}: part numbers only (RFC 3516)")
        part.append(_part_number(piece))
    partial = _partial(text[end + 1 :])
    if size and partial is not None:
        raise CommandError("BINARY.SIZE takes no partial (RFC 3516 5)")
    return BinarySection(tuple(part), partial, peek, size)


def _field_names(text: str) -> tuple[str, ...]:
    """``(FROM "X-Spam" TO)``: header-list, names are astrings (RFC 3501 9)."""
    if len(text) < 3 or text[0] != "(" or text[-1] != ")":
        raise CommandError("header field list must be '(' names ')'")
    names: list[str] = []
    body = text[1:-1]
    i = 0
    while i < len(body):
        if body[i] == '"':
            out: list[str] = []
            i += 1
            while i < len(body) and body[i] != '"':
                if body[i] == "\\" and i + 1 < len(body):
                    i += 1
                out.append(body[i])
                i += 1
            if i >= len(body):
                raise CommandError("unterminated quoted field name")
            names.append("".join(out))
            i += 1
        else:
            j = body.find(" ", i)
            j = len(body) if j < 0 else j
            names.append(body[i:j])
            i = j
        if i < len(body):
            if body[i] != " " or i + 1 == len(body):
                raise CommandError("field names are separated by one space")
            i += 1
    return tuple(names)


def _partial(text: str) -> tuple[int, int] | None:
    """``<origin.length>`` after the section, or nothing (RFC 3501 6.4.5)."""
    if not text:
        return None
    origin, dot, length = text[1:-1].partition(".")
    if (
        text[0] != "<"
        or text[-1] != ">"
        or not dot
        or not (origin.isascii() and origin.isdigit())
        or not (length.isascii() and length.isdigit())
    ):
        raise CommandError(f"bad partial {text[:40]!r}: want <origin.length>")
    if len(origin) > 10 or len(length) > 10:
        raise CommandError("partial out of range")
    return int(origin), int(length)


def _section_text(section: BodySection) -> bytes:
    text = ".".join(str(n) for n in section.part)
    if section.kind is not SectionKind.ALL:
        text += ("." if text else "") + section.kind.value
    out = text.encode("ascii")
    if section.fields:
        out += b" (" + b" ".join(astring(name) for name in section.fields) + b")"
    return out


def response_name(att: FetchAtt) -> bytes:
    """The item's name in a FETCH response (RFC 3501 7.4.2): ``BODY[1.MIME]``,
    ``BODY[HEADER.FIELDS (SUBJECT)]<0>``, ``RFC822.SIZE``..."""
    if isinstance(att, Item):
        return att.value.encode("ascii")
    if isinstance(att, BinarySection):
        text = ".".join(str(n) for n in att.part).encode("ascii")
        if att.size:
            return b"BINARY.SIZE[" + text + b"]"
        name = b"BINARY[" + text + b"]"
        return name if att.partial is None else name + b"<%d>" % att.partial[0]
    name = b"BODY[" + _section_text(att) + b"]"
    if att.partial is not None:
        name += b"<%d>" % att.partial[0]
    return name


def sets_seen(atts: Iterable[FetchAtt]) -> bool:
    """Whether fetching these sets ``\\Seen`` (RFC 3501 6.4.5: BODY[...] without
    .PEEK, RFC822 and RFC822.TEXT do, and BINARY[...], RFC 3516 4.1; the session ignores it on a read-only mailbox)."""
    for att in atts:
        if isinstance(att, BodySection | BinarySection):
            if not att.peek:
                return True
        elif att in (Item.RFC822, Item.RFC822_TEXT):
            return True
    return False
