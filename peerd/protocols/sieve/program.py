"""A validated Sieve script: one frozen value per command and test, ready to run.

How this works: :func:`~.validate.validate` builds a :class:`Program` from
the syntax tree, so every argument here has already been checked for type,
for its tag group and for its ``require``. Strings are kept as written;
when the script requires ``variables`` (RFC 5229), the interpreter expands
``${...}`` in them at run time (``Program.variables``). Every node keeps its
line for runtime error texts.

A :class:`Program` is plain data: the service may cache it per script (keyed
by the script's hash) and run it for many messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "AddressTest",
    "AllOf",
    "AnyOf",
    "BodyTest",
    "CommandNode",
    "Constant",
    "Discard",
    "EnvelopeTest",
    "Exists",
    "FileInto",
    "FlagAction",
    "HasFlag",
    "HeaderTest",
    "If",
    "Keep",
    "Match",
    "Not",
    "Program",
    "Redirect",
    "Reject",
    "Set",
    "Size",
    "Stop",
    "StringTest",
    "TestNode",
    "Vacation",
]


@dataclass(frozen=True, slots=True)
class Match:
    """Match type, comparator and relation of a test (RFC 5228 section 2.7, RFC 5231)."""

    match_type: str = "is"  # is, contains, matches, count, value
    comparator: str = "i;ascii-casemap"
    relation: str | None = None  # gt ge lt le eq ne, with count/value


# Tests


@dataclass(frozen=True, slots=True)
class Constant:
    """``true`` / ``false`` (RFC 5228 sections 5.6, 5.10)."""

    value: bool
    line: int


@dataclass(frozen=True, slots=True)
class Not:
    test: TestNode
    line: int


@dataclass(frozen=True, slots=True)
class AllOf:
    tests: tuple[TestNode, ...]
    line: int


@dataclass(frozen=True, slots=True)
class AnyOf:
    tests: tuple[TestNode, ...]
    line: int


@dataclass(frozen=True, slots=True)
class AddressTest:
    """RFC 5228 section 5.1; ``part`` is all, localpart, domain, user or detail."""

    match: Match
    part: str
    headers: tuple[str, ...]
    keys: tuple[str, ...]
    line: int


@dataclass(frozen=True, slots=True)
class EnvelopeTest:
    """RFC 5228 section 5.4; ``parts`` are "from" and/or "to"."""

    match: Match
    part: str
    parts: tuple[str, ...]
    keys: tuple[str, ...]
    line: int


@dataclass(frozen=True, slots=True)
class HeaderTest:
    """RFC 5228 section 5.7."""

    match: Match
    headers: tuple[str, ...]
    keys: tuple[str, ...]
    line: int


@dataclass(frozen=True, slots=True)
class MailboxExists:
    """RFC 5490 section 3.1: every named mailbox exists (and takes mail)."""

    mailboxes: tuple[str, ...]
    line: int


@dataclass(frozen=True, slots=True)
class Exists:
    """RFC 5228 section 5.5."""

    headers: tuple[str, ...]
    line: int


@dataclass(frozen=True, slots=True)
class Size:
    """RFC 5228 section 5.9: ``:over`` (True) or ``:under`` (False) a number of octets."""

    over: bool
    limit: int
    line: int


@dataclass(frozen=True, slots=True)
class BodyTest:
    """RFC 5173: ``transform`` is raw, content (with ``content_types``) or text."""

    match: Match
    transform: str
    content_types: tuple[str, ...]
    keys: tuple[str, ...]
    line: int


@dataclass(frozen=True, slots=True)
class StringTest:
    """RFC 5229 section 5."""

    match: Match
    sources: tuple[str, ...]
    keys: tuple[str, ...]
    line: int


@dataclass(frozen=True, slots=True)
class HasFlag:
    """RFC 5232 section 4; ``variables`` empty means the internal variable."""

    match: Match
    variables: tuple[str, ...]
    keys: tuple[str, ...]
    line: int


TestNode: TypeAlias = (
    Constant
    | Not
    | AllOf
    | AnyOf
    | AddressTest
    | EnvelopeTest
    | HeaderTest
    | Exists
    | Size
    | BodyTest
    | StringTest
    | HasFlag
    | MailboxExists
)


# Commands


@dataclass(frozen=True, slots=True)
class If:
    """if / elsif / else (RFC 5228 section 3.1) folded into one node."""

    branches: tuple[tuple[TestNode, tuple[CommandNode, ...]], ...]
    otherwise: tuple[CommandNode, ...]
    line: int


@dataclass(frozen=True, slots=True)
class Stop:
    line: int


@dataclass(frozen=True, slots=True)
class Keep:
    """RFC 5228 section 4.3; ``flags`` None: the internal flags variable (RFC 5232 section 5)."""

    flags: tuple[str, ...] | None
    line: int


@dataclass(frozen=True, slots=True)
class Discard:
    line: int


@dataclass(frozen=True, slots=True)
class FileInto:
    """RFC 5228 section 4.1, ``:copy`` (RFC 3894), ``:flags`` (RFC 5232 section 5),
    ``:create`` (RFC 5490 section 3.2)."""

    mailbox: str
    copy: bool
    flags: tuple[str, ...] | None
    line: int
    create: bool = False


@dataclass(frozen=True, slots=True)
class Redirect:
    """RFC 5228 section 4.2, ``:copy`` (RFC 3894)."""

    address: str
    copy: bool
    line: int


@dataclass(frozen=True, slots=True)
class Reject:
    """RFC 5429: ``extended`` for ereject."""

    reason: str
    extended: bool
    line: int


@dataclass(frozen=True, slots=True)
class Vacation:
    """RFC 5230 section 4."""

    reason: str
    days: int | None
    subject: str | None
    from_: str | None
    addresses: tuple[str, ...]
    mime: bool
    handle: str | None
    line: int


@dataclass(frozen=True, slots=True)
class FlagAction:
    """setflag / addflag / removeflag (RFC 5232 section 3); ``variable`` None: internal."""

    operation: str  # set, add, remove
    variable: str | None
    flags: tuple[str, ...]
    line: int


@dataclass(frozen=True, slots=True)
class Set:
    """RFC 5229 section 4; ``modifiers`` in the order they apply (highest precedence first)."""

    name: str
    value: str
    modifiers: tuple[str, ...]
    line: int


CommandNode: TypeAlias = (
    If | Stop | Keep | Discard | FileInto | Redirect | Reject | Vacation | FlagAction | Set
)


@dataclass(frozen=True, slots=True)
class Program:
    commands: tuple[CommandNode, ...]
    # The capabilities the script required (RFC 5228 section 3.2).
    required: frozenset[str]

    @property
    def variables(self) -> bool:
        return "variables" in self.required
