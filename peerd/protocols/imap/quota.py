"""QUOTA (RFC 9208, and the RFC 2087 forms): commands and responses, without I/O.

How this works: GETQUOTA, GETQUOTAROOT and SETQUOTA are dataclasses built
from the wire by :data:`BUILDERS`. Each account has one quota root,
:data:`ROOT` (``""``), holding every mailbox of the account, with the
STORAGE resource in units of 1024 octets (RFC 9208 5.1): usage rounded up,
the limit rounded down; and the MESSAGE resource, the count of messages
(RFC 9208 5.2), when the account has a limit on it. An account without a limit has no quota root (a
QUOTA response must list at least one resource, RFC 9208 6.2). SETQUOTA is
for administrators (RFC 9208 4.1.3); IMAP users are not, so it is ``NO``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from peerd.protocols.imap.args import Args
from peerd.protocols.imap.commands import Command
from peerd.protocols.imap.responses import CommandError, mailbox, string

__all__ = [
    "BUILDERS",
    "COMMANDS",
    "ROOT",
    "GetQuota",
    "GetQuotaRoot",
    "SetQuota",
    "quota_response",
    "quotaroot_response",
    "storage_units",
]

ROOT: Final = ""
"""The one quota root of an account."""
_KIB: Final = 1024
_MAX_RESOURCES: Final = 20
_MAX_LIMIT: Final = 2**63 - 1


@dataclass(frozen=True, slots=True)
class GetQuota(Command):
    """RFC 9208 4.1.1: ``GETQUOTA quota-root``."""

    root: str
    name: ClassVar[str] = "GETQUOTA"


@dataclass(frozen=True, slots=True)
class GetQuotaRoot(Command):
    """RFC 9208 4.1.2: ``GETQUOTAROOT mailbox``."""

    mailbox: str
    name: ClassVar[str] = "GETQUOTAROOT"


@dataclass(frozen=True, slots=True)
class SetQuota(Command):
    """RFC 9208 4.1.3: ``SETQUOTA quota-root (resource limit ...)``."""

    root: str
    limits: tuple[tuple[str, int], ...]
    name: ClassVar[str] = "SETQUOTA"


def _getquota(tag: str, args: Args) -> Command:
    root = args.text("quota root")
    args.end()
    return GetQuota(tag, root)


def _getquotaroot(tag: str, args: Args) -> Command:
    box = args.mailbox()
    args.end()
    return GetQuotaRoot(tag, box)


def _setquota(tag: str, args: Args) -> Command:
    root = args.text("quota root")
    items = args.list("resource limits")
    args.end()
    if len(items) % 2 or len(items) > 2 * _MAX_RESOURCES:
        raise CommandError("SETQUOTA: resource limits are (name number ...)")
    limits = []
    for resource, number in zip(items[::2], items[1::2], strict=True):
        if (
            not isinstance(resource, str)
            or not isinstance(number, str)
            or not (number.isascii() and number.isdigit())
        ):
            raise CommandError("SETQUOTA: resource limits are (name number ...)")
        # number64 (RFC 9208 4.1.3); no int() of more than 4300 digits (a ValueError).
        if len(number) > 20 or int(number) > _MAX_LIMIT:
            raise CommandError("SETQUOTA: a limit is at most 2^63-1 (RFC 9208 4.1.3)")
        limits.append((resource.upper(), int(number)))
    return SetQuota(tag, root, tuple(limits))


BUILDERS: Final = {
    "GETQUOTA": _getquota,
    "GETQUOTAROOT": _getquotaroot,
    "SETQUOTA": _setquota,
}
COMMANDS: Final[frozenset[type[Command]]] = frozenset({GetQuota, GetQuotaRoot, SetQuota})
"""Valid when authenticated and when selected (RFC 9208 4.1)."""


def storage_units(used: int, limit: int) -> tuple[int, int]:
    """STORAGE usage and limit in units of 1024 octets (RFC 9208 5.1)."""
    return -(-used // _KIB), limit // _KIB


def quota_response(
    used: int, limit: int | None, messages: int = 0, message_limit: int | None = None
) -> bytes:
    """``* QUOTA "" (STORAGE used limit MESSAGE count limit)`` (RFC 9208
    4.2.1): each resource that has a limit; storage from bytes."""
    resources = []
    if limit is not None:
        resources.append(b"STORAGE %d %d" % storage_units(used, limit))
    if message_limit is not None:
        resources.append(b"MESSAGE %d %d" % (messages, message_limit))
    return b"* QUOTA %b (%b)\r\n" % (string(ROOT), b" ".join(resources))


def quotaroot_response(name: str, limited: bool) -> bytes:
    """``* QUOTAROOT mailbox [""]`` (RFC 9208 4.2.2): the root only when there is a limit."""
    root = b" " + string(ROOT) if limited else b""
    return b"* QUOTAROOT " + mailbox(name) + root + b"\r\n"
