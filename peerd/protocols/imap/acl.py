"""ACL (RFC 4314): the commands, what rights mean, and the responses, without I/O.

How this works: SETACL, DELETEACL, GETACL, LISTRIGHTS and MYRIGHTS are
dataclasses built from the wire by :data:`BUILDERS` (the grammar joins
them into its table). Rights are letters (RFC 4314 2.1): the standard ones
of :data:`RIGHTS`, and the obsolete ``c`` and ``d`` of RFC 2086, which a
SETACL turns into the rights they stand for (2.1.1: ``c`` is ``k`` and
``x``, ``d`` is ``e`` and ``t``) and a response shows again when all of
those are held. :func:`modify` applies a SETACL's ``+``/``-``/replace
to an identifier's rights; an unknown letter is ``BAD`` (RFC 4314 3.1).

A mailbox's owner always holds every right (:data:`OWNER_RIGHTS`) and
cannot lose one; the rights given to other identifiers are what those
accounts may do with it (:mod:`peerd.protocols.imap.rights` holds the table
of which command needs which right).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from peerd.protocols.imap.args import Args
from peerd.protocols.imap.commands import Command
from peerd.protocols.imap.responses import CommandError, astring, mailbox

__all__ = [
    "BUILDERS",
    "CODE_NOPERM",
    "COMMANDS",
    "OWNER_RIGHTS",
    "RIGHTS",
    "DeleteAcl",
    "GetAcl",
    "ListRights",
    "MyRights",
    "SetAcl",
    "acl_response",
    "listrights_response",
    "modify",
    "myrights_response",
    "shown",
]

RIGHTS: Final = "lrswipkxtea"
"""RFC 4314 2.1, in the order responses show them."""
OWNER_RIGHTS: Final = RIGHTS
_OBSOLETE: Final = {"c": "kx", "d": "et"}  # RFC 4314 2.1.1
CODE_NOPERM: Final = b"NOPERM"  # RFC 5530 3
_MAX_IDENTIFIER: Final = 255


def canonical(letters: str) -> str:
    """Rights as stored: the obsolete letters expanded, each right once, in order."""
    wanted: set[str] = set()
    for letter in letters:
        if letter in _OBSOLETE:
            wanted.update(_OBSOLETE[letter])
        elif letter in RIGHTS:
            wanted.add(letter)
        else:
            raise CommandError(f"unknown right {letter!r} (RFC 4314 2.1)")
    return "".join(r for r in RIGHTS if r in wanted)


def shown(rights: str) -> str:
    """Rights as a response shows them: with ``c``/``d`` where all they stand for are
    held; a letter that is no right (not from this server) is left out."""
    have = canonical("".join(r for r in rights if r in RIGHTS or r in _OBSOLETE))
    extra = "".join(old for old, new in _OBSOLETE.items() if all(r in have for r in new))
    return have + extra


def modify(current: str, mod: str) -> str:
    """A SETACL's ``mod`` (``+rights``, ``-rights`` or ``rights``) applied to ``current``."""
    if mod.startswith("+"):
        return canonical(current + mod[1:])
    if mod.startswith("-"):
        remove = set(canonical(mod[1:]))
        return "".join(r for r in canonical(current) if r not in remove)
    return canonical(mod)


def _identifier(args: Args) -> str:
    ident = args.text("identifier")
    if not ident or len(ident) > _MAX_IDENTIFIER or any(ch < " " for ch in ident):
        raise CommandError(f"{args.name}: bad identifier")
    return ident


@dataclass(frozen=True, slots=True)
class SetAcl(Command):
    """RFC 4314 3.1: ``SETACL mailbox identifier mod-rights``."""

    mailbox: str
    identifier: str
    rights: str
    name: ClassVar[str] = "SETACL"

    def __post_init__(self) -> None:
        Command.__post_init__(self)
        canonical(self.rights.removeprefix("+").removeprefix("-"))


@dataclass(frozen=True, slots=True)
class DeleteAcl(Command):
    """RFC 4314 3.2."""

    mailbox: str
    identifier: str
    name: ClassVar[str] = "DELETEACL"


@dataclass(frozen=True, slots=True)
class GetAcl(Command):
    """RFC 4314 3.3."""

    mailbox: str
    name: ClassVar[str] = "GETACL"


@dataclass(frozen=True, slots=True)
class ListRights(Command):
    """RFC 4314 3.4."""

    mailbox: str
    identifier: str
    name: ClassVar[str] = "LISTRIGHTS"


@dataclass(frozen=True, slots=True)
class MyRights(Command):
    """RFC 4314 3.5."""

    mailbox: str
    name: ClassVar[str] = "MYRIGHTS"


def _setacl(tag: str, args: Args) -> Command:
    box = args.mailbox()
    ident = _identifier(args)
    rights = args.text("rights")
    args.end()
    return SetAcl(tag, box, ident, rights)


def _deleteacl(tag: str, args: Args) -> Command:
    box = args.mailbox()
    ident = _identifier(args)
    args.end()
    return DeleteAcl(tag, box, ident)


def _getacl(tag: str, args: Args) -> Command:
    box = args.mailbox()
    args.end()
    return GetAcl(tag, box)


def _listrights(tag: str, args: Args) -> Command:
    box = args.mailbox()
    ident = _identifier(args)
    args.end()
    return ListRights(tag, box, ident)


def _myrights(tag: str, args: Args) -> Command:
    box = args.mailbox()
    args.end()
    return MyRights(tag, box)


BUILDERS: Final = {
    "SETACL": _setacl,
    "DELETEACL": _deleteacl,
    "GETACL": _getacl,
    "LISTRIGHTS": _listrights,
    "MYRIGHTS": _myrights,
}
COMMANDS: Final[frozenset[type[Command]]] = frozenset(
    {SetAcl, DeleteAcl, GetAcl, ListRights, MyRights}
)
"""Valid when authenticated and when selected (RFC 4314 3)."""


def acl_response(name: str, acl: dict[str, str], owner: str) -> bytes:
    """``* ACL mailbox identifier rights ...`` (RFC 4314 3.6); the owner first, with every right."""
    parts = [b"* ACL ", mailbox(name), b" ", astring(owner), b" ", shown(OWNER_RIGHTS).encode()]
    for ident in sorted(acl):
        if ident != owner:
            parts += [b" ", astring(ident), b" ", astring(shown(acl[ident]))]
    return b"".join(parts) + b"\r\n"


def listrights_response(name: str, identifier: str, owner: str) -> bytes:
    """``* LISTRIGHTS mailbox identifier required optional...`` (RFC 4314 3.7): the
    owner's rights are all required; anyone else may be given any of them."""
    if identifier == owner:
        tail = shown(OWNER_RIGHTS).encode()
    else:
        tail = b'"" ' + b" ".join(r.encode() for r in RIGHTS + "".join(_OBSOLETE))
    return b"* LISTRIGHTS " + mailbox(name) + b" " + astring(identifier) + b" " + tail + b"\r\n"


def myrights_response(name: str, rights: str) -> bytes:
    """``* MYRIGHTS mailbox rights`` (RFC 4314 3.8)."""
    return b"* MYRIGHTS " + mailbox(name) + b" " + astring(shown(rights)) + b"\r\n"
