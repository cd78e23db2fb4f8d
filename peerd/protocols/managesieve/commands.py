"""ManageSieve commands (RFC 5804 section 2): one frozen dataclass each, built from a line's words.

How this works: :func:`parse_command` takes a :class:`~.wire.Line` and gives
a command, or raises :class:`CommandSyntaxError` with the text for ``NO``.
Command names are case-insensitive (section 4: ABNF strings); arguments
are strings (quoted or literal) except HAVESPACE's size, a number. Script
names are checked here (section 1.6): UTF-8 without control characters,
U+2028 or U+2029, in Unicode NFC, not empty, at most :data:`MAX_NAME` octets.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Final, TypeAlias

from .wire import Atom, Line, Str

__all__ = [
    "MAX_NAME",
    "Authenticate",
    "Capability",
    "CheckScript",
    "Command",
    "CommandSyntaxError",
    "DeleteScript",
    "GetScript",
    "HaveSpace",
    "ListScripts",
    "Logout",
    "Noop",
    "PutScript",
    "RenameScript",
    "SetActive",
    "StartTls",
    "Unauthenticate",
    "check_name",
    "parse_command",
]

MAX_NAME: Final = 512


class CommandSyntaxError(ValueError):
    """The line is not a valid command; its text goes back in ``NO``."""


def check_name(name: str) -> None:
    """RFC 5804 section 1.6; raises :class:`ValueError` with the reason."""
    if not name:
        raise ValueError("script name is empty")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME:
        raise ValueError(f"script name longer than {MAX_NAME} octets")
    for char in name:
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F or code in (0x2028, 0x2029):
            raise ValueError("script name holds a control character")
        if 0xD800 <= code <= 0xDFFF:
            raise ValueError("script name is not valid UTF-8")
    if unicodedata.normalize("NFC", name) != name:
        raise ValueError("script name is not in Unicode NFC")


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Section 2.1; ``initial`` is the still base64-encoded initial response."""

    mechanism: str
    initial: str | None = None

    def __repr__(self) -> str:
        return (
            f"Authenticate(mechanism={self.mechanism!r}, initial={'***' if self.initial else None})"
        )


@dataclass(frozen=True, slots=True)
class StartTls:
    """Section 2.2."""


@dataclass(frozen=True, slots=True)
class Logout:
    """Section 2.3."""


@dataclass(frozen=True, slots=True)
class Capability:
    """Section 2.4."""


@dataclass(frozen=True, slots=True)
class HaveSpace:
    """Section 2.5."""

    name: str
    size: int


@dataclass(frozen=True, slots=True)
class PutScript:
    """Section 2.6."""

    name: str
    content: str

    def __repr__(self) -> str:
        return f"PutScript(name={self.name!r}, content=<{len(self.content)} chars>)"


@dataclass(frozen=True, slots=True)
class ListScripts:
    """Section 2.7."""


@dataclass(frozen=True, slots=True)
class SetActive:
    """Section 2.8; ``name`` "" makes no script active."""

    name: str


@dataclass(frozen=True, slots=True)
class GetScript:
    """Section 2.9."""

    name: str


@dataclass(frozen=True, slots=True)
class DeleteScript:
    """Section 2.10."""

    name: str


@dataclass(frozen=True, slots=True)
class RenameScript:
    """Section 2.11."""

    old: str
    new: str


@dataclass(frozen=True, slots=True)
class CheckScript:
    """Section 2.12."""

    content: str


@dataclass(frozen=True, slots=True)
class Noop:
    """Section 2.13; ``tag`` comes back in ``OK (TAG ...)``."""

    tag: str | None = None


@dataclass(frozen=True, slots=True)
class Unauthenticate:
    """Section 2.14.1."""


Command: TypeAlias = (
    Authenticate
    | StartTls
    | Logout
    | Capability
    | HaveSpace
    | PutScript
    | ListScripts
    | SetActive
    | GetScript
    | DeleteScript
    | RenameScript
    | CheckScript
    | Noop
    | Unauthenticate
)

_NO_ARGUMENTS: Final[
    dict[str, type[StartTls | Logout | Capability | ListScripts | Unauthenticate]]
] = {
    "STARTTLS": StartTls,
    "LOGOUT": Logout,
    "CAPABILITY": Capability,
    "LISTSCRIPTS": ListScripts,
    "UNAUTHENTICATE": Unauthenticate,
}
# Name -> (strings wanted, optional trailing strings)
_STRING_ARGUMENTS: Final = {
    "AUTHENTICATE": (1, 1),
    "PUTSCRIPT": (2, 0),
    "SETACTIVE": (1, 0),
    "GETSCRIPT": (1, 0),
    "DELETESCRIPT": (1, 0),
    "RENAMESCRIPT": (2, 0),
    "CHECKSCRIPT": (1, 0),
    "NOOP": (0, 1),
}


def _name(value: str, *, empty_ok: bool = False) -> str:
    if empty_ok and value == "":
        return value
    try:
        check_name(value)
    except ValueError as exc:
        raise CommandSyntaxError(str(exc)) from None
    return value


def parse_command(line: Line) -> Command:
    words = line.words
    if not words or not isinstance(words[0], Atom):
        raise CommandSyntaxError("expected a command name")
    name = words[0].value.upper()
    arguments = words[1:]
    if name in _NO_ARGUMENTS:
        if arguments:
            raise CommandSyntaxError(f"{name} takes no arguments")
        return _NO_ARGUMENTS[name]()
    if name == "HAVESPACE":
        if (
            len(arguments) != 2
            or not isinstance(arguments[0], Str)
            or not isinstance(arguments[1], Atom)
            or not (arguments[1].value.isascii() and arguments[1].value.isdigit())
            or len(arguments[1].value) > 10
        ):
            raise CommandSyntaxError("HAVESPACE takes a script name and a number")
        return HaveSpace(_name(arguments[0].value), int(arguments[1].value))
    if name not in _STRING_ARGUMENTS:
        raise CommandSyntaxError("unknown command")
    wanted, optional = _STRING_ARGUMENTS[name]
    if not wanted <= len(arguments) <= wanted + optional:
        raise CommandSyntaxError(f"{name}: wrong number of arguments")
    strings: list[str] = []
    for argument in arguments:
        if not isinstance(argument, Str):
            raise CommandSyntaxError(f"{name}: arguments must be strings")
        strings.append(argument.value)
    if name == "AUTHENTICATE":
        return Authenticate(strings[0].upper(), strings[1] if len(strings) > 1 else None)
    if name == "PUTSCRIPT":
        return PutScript(_name(strings[0]), strings[1])
    if name == "SETACTIVE":
        return SetActive(_name(strings[0], empty_ok=True))
    if name == "GETSCRIPT":
        return GetScript(_name(strings[0]))
    if name == "DELETESCRIPT":
        return DeleteScript(_name(strings[0]))
    if name == "RENAMESCRIPT":
        return RenameScript(_name(strings[0]), _name(strings[1]))
    if name == "CHECKSCRIPT":
        return CheckScript(strings[0])
    return Noop(strings[0] if strings else None)
