"""The syntax tree of a Sieve script (RFC 5228 section 8.2), before meaning.

How this works: :func:`~.parser.parse` builds these frozen values from the
text; :func:`~.validate.validate` checks them against the table of known
commands and tests and turns them into a :class:`~.program.Program`. Names
and tags are lower-cased here (RFC 5228 section 2.9: identifiers and tags are
case-insensitive); every node keeps the line it started on for error texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

__all__ = ["Argument", "Command", "Number", "Script", "String", "StringList", "Tag", "Test"]


@dataclass(frozen=True, slots=True)
class Tag:
    """``:name`` (RFC 5228 section 2.6.2), stored without the colon."""

    name: str
    line: int


@dataclass(frozen=True, slots=True)
class Number:
    """A number with its K/M/G quantifier applied (RFC 5228 section 2.4.1)."""

    value: int
    line: int


@dataclass(frozen=True, slots=True)
class String:
    """A quoted or ``text:`` string, escapes removed (RFC 5228 section 2.4.2)."""

    value: str
    line: int


@dataclass(frozen=True, slots=True)
class StringList:
    """``[ "a", "b" ]`` (RFC 5228 section 2.4.2.1)."""

    values: tuple[str, ...]
    line: int


Argument: TypeAlias = Tag | Number | String | StringList


@dataclass(frozen=True, slots=True)
class Test:
    name: str
    arguments: tuple[Argument, ...]
    tests: tuple[Test, ...]
    line: int
    # True when the tests came in "( ... )" (a test-list), as anyof/allof want.
    test_list: bool = False


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    arguments: tuple[Argument, ...]
    tests: tuple[Test, ...]
    # None when the command ended with ";", else the commands of its block.
    block: tuple[Command, ...] | None
    line: int
    test_list: bool = False


@dataclass(frozen=True, slots=True)
class Script:
    commands: tuple[Command, ...]
