"""SEARCH criteria to a small AST (RFC 3501 6.4.4 and 9, ``search-key``).

How this works: :func:`parse_search_key` walks the tokens the reader produced
for the criteria (atoms as ``str``, strings as ``bytes``, groups as ``tuple``)
with a cursor, one key at a time, recursing for ``NOT``, ``OR`` and groups
(depth-capped: hostile input must not exhaust the stack). A list of keys
means all of them (:class:`And`). It only parses; evaluating is the store's.
An ``And`` inside an ``And`` is merged into it and a key given again (the
same test: strings compared case folded, as they match) is dropped; past
:data:`MAX_KEYS` keys left the search is ``NO [LIMIT]``: a search tests
every key against every message, and a 64 KiB command holds thousands.

The AST is deliberately small so an evaluator has few cases. Keys that are
shorthand are written out when parsed:

- ``SEEN``/``UNSEEN``, ``KEYWORD x``/``UNKEYWORD x`` etc. are :class:`Flag`;
  ``RECENT``, ``OLD`` (= NOT RECENT) and ``NEW`` (= RECENT UNSEEN) use the
  ``\\Recent`` pseudo-flag;
- ``FROM``/``TO``/``CC``/``BCC``/``SUBJECT x`` are :class:`Header` with that
  field name (RFC 3501 defines them on the envelope, which holds the same
  fields);
- ``SINCE``/``BEFORE``/``ON`` and ``SENT*`` are :class:`Date`.

Strings are decoded with the command's charset: :func:`check_charset`
accepts UTF-8 and US-ASCII (decoded as UTF-8, its superset) and refuses any
other with ``NO [BADCHARSET (UTF-8 US-ASCII)]`` (RFC 3501 6.4.4).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from peerd.protocols.imap.responses import CODE_BADCHARSET, CODE_LIMIT, CommandError
from peerd.protocols.imap.sequence import MAX_NUMBER, SequenceSet
from peerd.protocols.imap.tokens import Token

__all__ = [
    "CHARSETS",
    "MAX_KEYS",
    "All",
    "And",
    "Body",
    "Date",
    "Flag",
    "Header",
    "ModSeq",
    "Not",
    "Or",
    "SearchKey",
    "Seq",
    "Size",
    "Text",
    "Uid",
    "check_charset",
    "parse_date",
    "parse_search_key",
    "uses_modseq",
]

CHARSETS: Final = ("UTF-8", "US-ASCII")
MAX_DEPTH: Final = 64
MAX_MODSEQ: Final = 2**63 - 1  # RFC 7162 7, mod-sequence-value
# A search string sent as a literal may be as long as [imap] max_literal; one
# no longer than a command line is plenty. A 20 MB TEXT string held the
# full-text index's query for minutes and gigabytes.
MAX_STRING: Final = 64 << 10
# The keys one search may hold once repeats are dropped (NOT, OR and the
# keys under them each count). Each is a test of every message: 5,000 keys
# over a mailbox of 2,000 messages were ten million tests (seconds of a
# thread), and 100,000 messages make that minutes. Clients send a handful.
MAX_KEYS: Final = 500


@dataclass(frozen=True, slots=True)
class All:
    """Every message."""


@dataclass(frozen=True, slots=True)
class Flag:
    """The message has (``present``) or lacks the flag or keyword ``name``."""

    name: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class Header:
    """The header ``field`` (upper case) contains ``value``; ``""`` matches any such header."""

    field: str
    value: str


@dataclass(frozen=True, slots=True)
class Body:
    """The body (after the header) contains ``value``."""

    value: str


@dataclass(frozen=True, slots=True)
class Text:
    """The header or the body contains ``value``."""

    value: str


@dataclass(frozen=True, slots=True)
class Date:
    """Internal date (``INTERNAL``) or Date: header (``SENT``) before/on/since ``date``,
    comparing dates only (RFC 3501 6.4.4)."""

    field: Literal["INTERNAL", "SENT"]
    op: Literal["BEFORE", "ON", "SINCE"]
    date: dt.date


@dataclass(frozen=True, slots=True)
class Size:
    """RFC822.SIZE larger or smaller than ``size`` octets."""

    op: Literal["LARGER", "SMALLER"]
    size: int


@dataclass(frozen=True, slots=True)
class Seq:
    """Message sequence numbers."""

    set: SequenceSet


@dataclass(frozen=True, slots=True)
class Uid:
    """UIDs."""

    set: SequenceSet


@dataclass(frozen=True, slots=True)
class ModSeq:
    """MODSEQ at least ``modseq`` (RFC 7162 3.1.5); ``entry`` like ``/flags/\\Seen``
    and ``entry_type`` (priv/shared/all) when given."""

    modseq: int
    entry: str | None = None
    entry_type: Literal["priv", "shared", "all"] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.modseq <= MAX_MODSEQ:
            raise CommandError("MODSEQ out of range (RFC 7162 7)")


@dataclass(frozen=True, slots=True)
class Not:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class Or:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class And:
    """All of ``keys`` (a parenthesised group, or several keys in a row)."""

    keys: tuple[SearchKey, ...]


SearchKey: TypeAlias = (
    All | Flag | Header | Body | Text | Date | Size | Seq | Uid | ModSeq | Not | Or | And
)


def uses_modseq(key: SearchKey) -> bool:
    """Whether ``key`` holds a MODSEQ criterion anywhere (RFC 7162 3.1.5: then
    the answer carries the highest mod-sequence found)."""
    match key:
        case ModSeq():
            return True
        case Not(inner):
            return uses_modseq(inner)
        case Or(left, right):
            return uses_modseq(left) or uses_modseq(right)
        case And(keys):
            return any(uses_modseq(k) for k in keys)
    return False


# Keys without arguments.
_FLAGS: Final[dict[str, SearchKey]] = {
    "ALL": All(),
    "ANSWERED": Flag("\\Answered"),
    "DELETED": Flag("\\Deleted"),
    "DRAFT": Flag("\\Draft"),
    "FLAGGED": Flag("\\Flagged"),
    "SEEN": Flag("\\Seen"),
    "RECENT": Flag("\\Recent"),
    "UNANSWERED": Flag("\\Answered", False),
    "UNDELETED": Flag("\\Deleted", False),
    "UNDRAFT": Flag("\\Draft", False),
    "UNFLAGGED": Flag("\\Flagged", False),
    "UNSEEN": Flag("\\Seen", False),
    "OLD": Flag("\\Recent", False),
    "NEW": And((Flag("\\Recent"), Flag("\\Seen", False))),
}
_HEADERS: Final = frozenset({"FROM", "TO", "CC", "BCC", "SUBJECT"})
_DATES: Final[dict[str, tuple[Literal["INTERNAL", "SENT"], Literal["BEFORE", "ON", "SINCE"]]]] = {
    "BEFORE": ("INTERNAL", "BEFORE"),
    "ON": ("INTERNAL", "ON"),
    "SINCE": ("INTERNAL", "SINCE"),
    "SENTBEFORE": ("SENT", "BEFORE"),
    "SENTON": ("SENT", "ON"),
    "SENTSINCE": ("SENT", "SINCE"),
}
_ENTRY_TYPES: Final[dict[str, Literal["priv", "shared", "all"]]] = {
    "priv": "priv",
    "shared": "shared",
    "all": "all",
}
_MONTHS: Final = {
    name: i + 1
    for i, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
    )
}


def check_charset(name: str) -> str:
    """The canonical charset name, or ``NO [BADCHARSET (UTF-8 US-ASCII)]``."""
    # ASCII case only: "us-a\u017fcii".upper() (long s) is "US-ASCII" too.
    upper = name.upper() if name.isascii() else ""
    if upper not in CHARSETS:
        raise CommandError(
            f"charset {name[:40]!r} is not supported",
            code=CODE_BADCHARSET + b" (" + " ".join(CHARSETS).encode() + b")",
            status="NO",
        )
    return upper


def parse_date(token: Token) -> dt.date:
    """``1-Feb-1994`` or ``"01-Feb-1994"`` (RFC 3501 9, ``date``)."""
    text = token.decode("ascii", "replace") if isinstance(token, bytes) else token
    if not isinstance(text, str):
        raise CommandError("expected a date like 1-Feb-1994")
    day, month, year = text.split("-") if text.count("-") == 2 else ("", "", "")
    if (
        not (1 <= len(day) <= 2 and day.isascii() and day.isdigit())
        or month.upper() not in _MONTHS
        or not (len(year) == 4 and year.isascii() and year.isdigit())
    ):
        raise CommandError(f"bad date {text[:40]!r}, want d-Mon-yyyy")
    try:
        return dt.date(int(year), _MONTHS[month.upper()], int(day))
    except ValueError as exc:
        raise CommandError(f"no such date {text[:40]!r}") from exc


def parse_search_key(tokens: Sequence[Token], *, charset: str = "US-ASCII") -> SearchKey:
    """The criteria of a SEARCH command (everything after CHARSET) as one key."""
    check_charset(charset)
    cursor = _Cursor(tokens)
    keys = cursor.keys(0)
    key = _simplified(keys[0] if len(keys) == 1 else And(keys))
    if _count(key) > MAX_KEYS:
        raise CommandError(
            f"a search holds at most {MAX_KEYS} different keys", code=CODE_LIMIT, status="NO"
        )
    return key


def _same(key: SearchKey) -> object:
    """What makes two keys the same test: strings match case folded."""
    match key:
        case Header(field, value):
            return Header, field, value.casefold()
        case Body(value) | Text(value):
            return type(key), value.casefold()
    return key


def _simplified(key: SearchKey) -> SearchKey:
    """``key`` with nested ``And`` merged and repeated keys dropped."""
    match key:
        case Not(inner):
            return Not(_simplified(inner))
        case Or(left, right):
            return Or(_simplified(left), _simplified(right))
        case And(keys):
            merged: dict[object, SearchKey] = {}
            for inner in keys:
                simple = _simplified(inner)
                for part in simple.keys if isinstance(simple, And) else (simple,):
                    merged.setdefault(_same(part), part)
            parts = tuple(merged.values())
            return parts[0] if len(parts) == 1 else And(parts)
    return key


def _count(key: SearchKey) -> int:
    match key:
        case Not(inner):
            return 1 + _count(inner)
        case Or(left, right):
            return 1 + _count(left) + _count(right)
        case And(keys):
            return sum(_count(k) for k in keys)
    return 1


class _Cursor:
    __slots__ = ("pos", "tokens")

    def __init__(self, tokens: Sequence[Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def keys(self, depth: int) -> tuple[SearchKey, ...]:
        if not self.tokens:
            raise CommandError("SEARCH needs at least one key")
        keys = []
        while self.pos < len(self.tokens):
            keys.append(self.key(depth))
        return tuple(keys)

    def next(self, what: str) -> Token:
        if self.pos >= len(self.tokens):
            raise CommandError(f"SEARCH key is missing its {what}")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def string(self, what: str) -> str:
        token = self.next(what)
        if isinstance(token, str):
            return token
        if isinstance(token, bytes) and len(token) > MAX_STRING:
            raise CommandError(
                f"{what}: a search string is at most {MAX_STRING} octets",
                code=CODE_LIMIT,
                status="NO",
            )
        if isinstance(token, bytes):
            try:
                return token.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CommandError(f"{what} is not valid in the charset") from exc
        raise CommandError(f"expected a string for {what}")

    def atom(self, what: str) -> str:
        token = self.next(what)
        if not isinstance(token, str):
            raise CommandError(f"expected an atom for {what}")
        return token

    def number(self, what: str, limit: int) -> int:
        text = self.atom(what)
        if not (text.isascii() and text.isdigit()) or len(text) > 20 or int(text) > limit:
            raise CommandError(f"bad number {text[:20]!r} for {what}")
        return int(text)

    def key(self, depth: int) -> SearchKey:
        if depth > MAX_DEPTH:
            raise CommandError("SEARCH nests too deeply")
        token = self.next("key")
        if isinstance(token, tuple):
            return And(_Cursor(token).keys(depth + 1))
        if isinstance(token, bytes):
            raise CommandError("a SEARCH key is an atom, not a string")
        upper = token.upper()
        simple = _FLAGS.get(upper)
        if simple is not None:
            return simple
        if upper in _HEADERS:
            return Header(upper, self.string(upper))
        if upper in _DATES:
            field, op = _DATES[upper]
            return Date(field, op, parse_date(self.next("date")))
        if upper == "KEYWORD" or upper == "UNKEYWORD":
            return Flag(_keyword(self.atom(upper)), upper == "KEYWORD")
        if upper == "HEADER":
            name = self.string("header name")
            return Header(name.upper(), self.string("header value"))
        if upper == "BODY":
            return Body(self.string(upper))
        if upper == "TEXT":
            return Text(self.string(upper))
        if upper == "LARGER":
            return Size("LARGER", self.number(upper, MAX_NUMBER))
        if upper == "SMALLER":
            return Size("SMALLER", self.number(upper, MAX_NUMBER))
        if upper == "UID":
            return Uid(SequenceSet.parse(self.atom("UID set")))
        if upper == "NOT":
            return Not(self.key(depth + 1))
        if upper == "OR":
            left = self.key(depth + 1)
            return Or(left, self.key(depth + 1))
        if upper == "MODSEQ":
            return self.modseq()
        if token[:1] in ("*", "$") or token[:1].isdigit():
            return Seq(SequenceSet.parse(token))
        raise CommandError(f"unknown SEARCH key {token[:40]!r}")

    def modseq(self) -> ModSeq:
        # MODSEQ [entry-name entry-type-req] mod-sequence-valzer (RFC 7162 3.1.5)
        if self.pos < len(self.tokens) and isinstance(self.tokens[self.pos], bytes):
            entry = self.string("MODSEQ entry name")
            kind = _ENTRY_TYPES.get(self.atom("MODSEQ entry type").lower())
            if kind is None:
                raise CommandError("MODSEQ entry type is priv, shared or all")
            return ModSeq(self.number("MODSEQ", MAX_MODSEQ), entry, kind)
        return ModSeq(self.number("MODSEQ", MAX_MODSEQ))


def _keyword(text: str) -> str:
    # flag-keyword is an atom (RFC 3501 9): no backslash, nothing special.
    if "\\" in text or not text:
        raise CommandError(f"bad keyword {text[:40]!r}")
    return text
