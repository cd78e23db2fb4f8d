"""Who may do what to a mailbox (RFC 4314 4), and where other accounts' mailboxes are named.

How this works: :data:`REQUIRED` is the one table of the rights each command
needs, by command class: for each mailbox the command touches (:class:`Of`:
the one it names, the superior of a new name, the selected one, or a COPY's
destination) the letters it must hold, all of them. The service resolves the
mailboxes, reads the rights the user holds on each (the owner of a mailbox
holds every right, :data:`~peerd.protocols.imap.acl.OWNER_RIGHTS`; anyone
else what the ACL gives its name and ``anyone``, :func:`held`) and asks
:func:`refusal` before the command runs; no handler checks a right itself.

Rights that change what a command does rather than whether it runs are here
too, as functions of the held rights: STORE needs ``s`` for ``\\Seen``,
``t`` for ``\\Deleted`` and ``w`` for any other flag (:func:`store_rights`);
a FETCH of a body without ``s`` does not set ``\\Seen``; CLOSE without
``e`` expunges nothing (RFC 4314 4).

A refusal says ``NO [NOPERM]`` (RFC 5530 3), except that a user who may not
even see the mailbox (no ``l`` and no ``r``) is told it does not exist,
``NO [NONEXISTENT]``: the answer must not reveal it (RFC 4314 6).

Other accounts' mailboxes are named under :data:`OTHER_USERS` (RFC 2342 5,
"Other Users' Namespace"): ``Other Users/bob/Shared`` is bob's ``Shared``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from peerd.protocols.imap import acl, metadata, quota
from peerd.protocols.imap import commands as c
from peerd.protocols.imap.responses import CODE_NONEXISTENT, CommandError

__all__ = [
    "ANY",
    "ANYONE",
    "OTHER_USERS",
    "PREFIX",
    "REQUIRED",
    "Need",
    "Of",
    "held",
    "namespace_response",
    "permitted_flags",
    "refusal",
    "split_other",
    "store_rights",
]

OTHER_USERS: Final = "Other Users"
PREFIX: Final = OTHER_USERS + "/"
ANYONE: Final = "anyone"
"""RFC 4314 2: the identifier every user matches."""
ANY: Final = "*"
"""In :class:`Need`: at least one right, whichever (MYRIGHTS, RFC 4314 4)."""


class Of(enum.Enum):
    """Which mailbox a :class:`Need` is about."""

    MAILBOX = "mailbox"  # the one the command names
    PARENT = "parent"  # the superior of the name the command creates (CREATE)
    NEW_PARENT = "new_parent"  # the superior of RENAME's new name
    SELECTED = "selected"
    DESTINATION = "destination"  # COPY/MOVE's target


@dataclass(frozen=True, slots=True)
class Need:
    of: Of
    rights: str
    """Letters all required, or :data:`ANY`."""


def _need(of: Of, rights: str) -> tuple[Need, ...]:
    return (Need(of, rights),)


REQUIRED: Final[Mapping[type[c.Command], tuple[Need, ...]]] = MappingProxyType(
    {
        # RFC 4314 4, the table: authenticated state.
        c.Select: _need(Of.MAILBOX, "r"),
        c.Examine: _need(Of.MAILBOX, "r"),
        c.Status: _need(Of.MAILBOX, "r"),
        c.Create: _need(Of.PARENT, "k"),
        c.Delete: _need(Of.MAILBOX, "x"),
        c.Rename: (Need(Of.MAILBOX, "x"), Need(Of.NEW_PARENT, "k")),
        c.Append: _need(Of.MAILBOX, "i"),
        acl.SetAcl: _need(Of.MAILBOX, "a"),
        acl.DeleteAcl: _need(Of.MAILBOX, "a"),
        acl.GetAcl: _need(Of.MAILBOX, "a"),
        acl.ListRights: _need(Of.MAILBOX, "a"),
        acl.MyRights: _need(Of.MAILBOX, ANY),
        # RFC 9208 4.1.2 names no right; the quota of a mailbox one cannot read is not told.
        quota.GetQuotaRoot: _need(Of.MAILBOX, "r"),
        # RFC 5464 3.2: reading needs "r" (here: lookup and read), writing "w".
        metadata.GetMetadata: _need(Of.MAILBOX, "r"),
        metadata.SetMetadata: _need(Of.MAILBOX, "w"),
        # Selected state.
        c.Copy: _need(Of.DESTINATION, "i"),
        # RFC 6851 4.3: MOVE needs what COPY, STORE \Deleted and EXPUNGE need.
        c.Move: (Need(Of.DESTINATION, "i"), Need(Of.SELECTED, "te")),
        c.Expunge: _need(Of.SELECTED, "e"),
        c.UidExpunge: _need(Of.SELECTED, "e"),
        c.Store: (),  # by flag: store_rights
    }
)
"""Command class to the rights it needs, on which mailbox (RFC 4314 4)."""


def held(user: str, owner: str, acl_entries: Mapping[str, str]) -> str:
    """The rights ``user`` holds on a mailbox of ``owner`` with this ACL."""
    if user == owner:
        return acl.OWNER_RIGHTS
    letters = acl_entries.get(user, "") + acl_entries.get(ANYONE, "")
    return "".join(r for r in acl.RIGHTS if r in letters)


def store_rights(flags: tuple[str, ...], mode: str) -> str:
    """What a STORE of ``flags`` needs (RFC 4314 4): ``s`` for ``\\Seen``, ``t``
    for ``\\Deleted``, ``w`` for any other. Replacing the flags (no ``+``/``-``)
    may clear any flag, so it needs all three."""
    if mode == "":
        return "stw"
    needed = set()
    for flag in flags:
        low = flag.lower()
        needed.add("s" if low == "\\seen" else "t" if low == "\\deleted" else "w")
    return "".join(sorted(needed))


def permitted_flags(flags: tuple[str, ...], rights: str) -> tuple[str, ...]:
    """The flags an APPEND may set with ``rights``; the others are left out
    without an error (RFC 4314 4: APPEND's ``s``, ``w``, ``t``)."""
    return tuple(f for f in flags if store_rights((f,), "+") in rights)


def refusal(rights: str, need: str, what: str) -> CommandError | None:
    """The refusal for a command needing ``need`` on a mailbox where ``rights``
    are held, or None if it may run."""
    if need == ANY:
        missing = "" if rights else acl.RIGHTS
    else:
        missing = "".join(r for r in need if r not in rights)
    if not missing:
        return None
    if "l" not in rights and "r" not in rights:
        # RFC 4314 6: no answer may tell that the mailbox exists.
        return CommandError(f"no such mailbox: {what}", code=CODE_NONEXISTENT, status="NO")
    return CommandError(
        f"you lack the right(s) {missing!r} on {what} (RFC 4314)",
        code=acl.CODE_NOPERM,
        status="NO",
    )


def split_other(name: str) -> tuple[str, str] | None:
    """``(account, rest)`` for a name under :data:`OTHER_USERS` (``rest`` may be
    empty: the account's level itself, no mailbox); None for one's own names."""
    if not name.startswith(PREFIX):
        return None
    account, _, rest = name[len(PREFIX) :].partition("/")
    return account, rest


def namespace_response() -> bytes:
    """RFC 2342 5: personal ``""``, other users ``"Other Users/"``, no shared."""
    return b'* NAMESPACE (("" "/")) (("' + PREFIX.encode() + b'" "/")) NIL\r\n'
