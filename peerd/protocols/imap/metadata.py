"""METADATA (RFC 5464): commands, entry names, what GETMETADATA returns, without I/O.

How this works: GETMETADATA and SETMETADATA are dataclasses built from the
wire by :data:`BUILDERS`; an entry name is checked when built (RFC 5464
3.2: it starts with ``/private`` or ``/shared``, has no ``*``, ``%``, empty
level, trailing ``/``, control or 8-bit character; else ``BAD``) and kept
in lower case (entry names are case-insensitive). The mailbox ``""`` names
the server's entries (RFC 5464 3.1).

:func:`select_entries` is GETMETADATA's rule: each asked entry, and with
DEPTH 1 its children or with DEPTH infinity all its descendants (4.2.2);
an asked entry that has no value is returned as NIL; a value longer than
MAXSIZE is left out and the longest such length is told in
``[METADATA LONGENTRIES n]`` (4.2.1). The refusals of SETMETADATA
(``[METADATA MAXSIZE n]``, ``[METADATA TOOMANY]``) come from the store's
limits, mapped in :mod:`peerd.node.errormap`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, Literal

from peerd.protocols.imap.args import Args
from peerd.protocols.imap.commands import Command
from peerd.protocols.imap.responses import CommandError, astring, mailbox, nstring

__all__ = [
    "BUILDERS",
    "COMMANDS",
    "Depth",
    "GetMetadata",
    "SetMetadata",
    "check_entry",
    "longentries_code",
    "metadata_response",
    "select_entries",
]

Depth = Literal["0", "1", "infinity"]
_PREFIXES: Final = ("/private", "/shared")
_MAX_ENTRY: Final = 1024
_MAX_ENTRIES: Final = 1000


def check_entry(entry: str, *, settable: bool = False) -> str:
    """``entry`` in lower case if it is a valid entry name (RFC 5464 3.2), else BAD.
    ``settable``: SETMETADATA's, which names one entry below ``/private`` or ``/shared``."""
    low = entry.lower()
    if (
        not low
        or len(low) > _MAX_ENTRY
        or not all(" " <= ch < "\x7f" for ch in low)
        or "*" in low
        or "%" in low
        or "//" in low
        or low.endswith("/")
        or not any(low == p or low.startswith(p + "/") for p in _PREFIXES)
    ):
        raise CommandError(f"bad METADATA entry name {entry[:60]!r} (RFC 5464 3.2)")
    if settable and low in _PREFIXES:
        raise CommandError(f"{entry} is not an entry that can hold a value (RFC 5464 3.2)")
    return low


@dataclass(frozen=True, slots=True)
class GetMetadata(Command):
    """RFC 5464 4.2: ``GETMETADATA [(MAXSIZE n DEPTH d)] mailbox entries``."""

    mailbox: str
    entries: tuple[str, ...]
    maxsize: int | None = None
    depth: Depth = "0"
    name: ClassVar[str] = "GETMETADATA"


@dataclass(frozen=True, slots=True)
class SetMetadata(Command):
    """RFC 5464 4.3: ``SETMETADATA mailbox (entry value ...)``; a NIL value removes."""

    mailbox: str
    values: tuple[tuple[str, bytes | None], ...]
    name: ClassVar[str] = "SETMETADATA"


def _options(
    tokens: Sequence[object], maxsize: int | None, depth: Depth
) -> tuple[int | None, Depth]:
    if len(tokens) % 2:
        raise CommandError("GETMETADATA: options are (MAXSIZE n DEPTH d)")
    for word, value in zip(tokens[::2], tokens[1::2], strict=True):
        if not isinstance(word, str) or not isinstance(value, str):
            raise CommandError("GETMETADATA: options are (MAXSIZE n DEPTH d)")
        if word.upper() == "MAXSIZE" and value.isascii() and value.isdigit() and len(value) <= 10:
            maxsize = int(value)
        elif word.upper() == "DEPTH" and value.lower() in ("0", "1", "infinity"):
            depth = "infinity" if value.lower() == "infinity" else "0" if value == "0" else "1"
        else:
            raise CommandError(f"GETMETADATA: bad option {word[:20]} {value[:20]}")
    return maxsize, depth


def _is_options(token: object) -> bool:
    return (
        isinstance(token, tuple)
        and bool(token)
        and isinstance(token[0], str)
        and token[0].upper() in ("MAXSIZE", "DEPTH")
    )


def _entry_text(token: object) -> str:
    if isinstance(token, tuple):
        raise CommandError("GETMETADATA: an entry is a string")
    raw = token.encode("ascii") if isinstance(token, str) else token
    if not isinstance(raw, bytes):
        raise CommandError("GETMETADATA: an entry is a string")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise CommandError("METADATA entry names are ASCII (RFC 5464 3.2)") from exc


def _getmetadata(tag: str, args: Args) -> Command:
    maxsize: int | None = None
    depth: Depth = "0"
    if isinstance(args.peek(), tuple):
        maxsize, depth = _options(args.list("options"), maxsize, depth)
    box = args.mailbox()
    rest = [args.next("entries")]
    while args.more():
        rest.append(args.next("entries"))
    # Options after the mailbox: what some clients send (Dovecot accepts it too).
    if len(rest) == 2 and isinstance(rest[0], tuple) and _is_options(rest[0]):
        maxsize, depth = _options(rest.pop(0), maxsize, depth)
    if len(rest) != 1:
        raise CommandError("GETMETADATA: entries are one entry or a list (RFC 5464 5)")
    token = rest[0]
    items = token if isinstance(token, tuple) else (token,)
    if not items or len(items) > _MAX_ENTRIES:
        raise CommandError("GETMETADATA: one to 1000 entries")
    entries = tuple(dict.fromkeys(check_entry(_entry_text(t)) for t in items))
    return GetMetadata(tag, box, entries, maxsize, depth)


def _setmetadata(tag: str, args: Args) -> Command:
    box = args.mailbox()
    items = args.list("entry values")
    args.end()
    if not items or len(items) % 2 or len(items) > 2 * _MAX_ENTRIES:
        raise CommandError("SETMETADATA: values are (entry value ...)")
    values: dict[str, bytes | None] = {}
    for entry, value in zip(items[::2], items[1::2], strict=True):
        name = check_entry(_entry_text(entry), settable=True)
        if isinstance(value, tuple):
            raise CommandError("SETMETADATA: a value is a string or NIL")
        if isinstance(value, str):
            if value.upper() != "NIL":
                raise CommandError("SETMETADATA: a value is a string or NIL")
            values[name] = None
        else:
            values[name] = value
    return SetMetadata(tag, box, tuple(values.items()))


BUILDERS: Final = {"GETMETADATA": _getmetadata, "SETMETADATA": _setmetadata}
COMMANDS: Final[frozenset[type[Command]]] = frozenset({GetMetadata, SetMetadata})
"""Valid when authenticated and when selected (RFC 5464 4)."""


def select_entries(
    stored: Mapping[str, bytes], cmd: GetMetadata
) -> tuple[list[tuple[str, bytes | None]], int | None]:
    """What GETMETADATA returns from ``stored`` (entry to value), and the
    length of the longest value left out for MAXSIZE (None if none was)."""
    out: dict[str, bytes | None] = {}
    for entry in cmd.entries:
        out.setdefault(entry, stored.get(entry))
        if cmd.depth == "0":
            continue
        below = entry + "/"
        for name in sorted(stored):
            if name.startswith(below) and (
                cmd.depth == "infinity" or "/" not in name[len(below) :]
            ):
                out.setdefault(name, stored[name])
    longest: int | None = None
    kept = []
    for name, value in out.items():
        if value is not None and cmd.maxsize is not None and len(value) > cmd.maxsize:
            longest = max(longest or 0, len(value))
            continue
        if value is None and name not in cmd.entries:
            continue
        kept.append((name, value))
    return kept, longest


def metadata_response(name: str, values: Sequence[tuple[str, bytes | None]]) -> bytes:
    """``* METADATA mailbox (entry value ...)`` (RFC 5464 4.4.1)."""
    # An entry name is an astring (RFC 5464 5): one with a space, a quote or a
    # parenthesis, which check_entry lets through, is quoted or a literal.
    body = b" ".join(astring(entry) + b" " + nstring(value) for entry, value in values)
    return b"* METADATA " + mailbox(name) + b" (" + body + b")\r\n"


def longentries_code(longest: int) -> bytes:
    """``METADATA LONGENTRIES n`` (RFC 5464 4.2.1)."""
    return b"METADATA LONGENTRIES %d" % longest
