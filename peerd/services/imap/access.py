"""Shared mailboxes: which account a name belongs to, and the rights check before every command.

How this works: a name under ``Other Users/`` (:mod:`peerd.protocols.imap.rights`)
is another account's mailbox: :func:`place` turns a name the client sent into
a :class:`Place` (the owning account, the name in that account's store, the
name as the client sees it). Handlers reach the mailbox through
:meth:`Session.mail_of(place.owner) <peerd.services.imap.session.Session.mail_of>`,
so every write goes through ``Node.write_owned`` of the account that owns the
mailbox: the fence is that account's, and the change replicates as that
account's write.

:func:`enforce` runs before every command (the session calls it from its
dispatch): it looks the command's class up in the one table of required
rights (:data:`~peerd.protocols.imap.rights.REQUIRED`), resolves each mailbox
the table names, and for a mailbox of another account reads its ACL, the
rights the user holds, and whether this node serves that account, in one
read. A mailbox of one's own needs no read: its owner holds every right. A
mailbox of an account this node does not own is not served here (``NO
[UNAVAILABLE]`` naming the node that serves it), as a login to that account
would be refused with a referral.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session as DbSession

from engine import acl as acl_store
from engine.errors import EngineError
from engine.mailview import normalize_mailbox_name
from peerd.protocols.imap import commands as c
from peerd.protocols.imap.acl import RIGHTS
from peerd.protocols.imap.responses import CODE_NONEXISTENT, CommandError
from peerd.protocols.imap.rights import (
    OTHER_USERS,
    PREFIX,
    REQUIRED,
    Of,
    held,
    refusal,
    split_other,
    store_rights,
)
from peerd.services.imap.session import Session

__all__ = [
    "Place",
    "enforce",
    "place",
    "rights_on",
    "selected_rights",
    "shown",
    "store_name",
]


@dataclass(frozen=True, slots=True)
class Place:
    """A mailbox name resolved: ``owner``'s mailbox ``name`` ("" when the name
    is a level of the namespace, not a mailbox)."""

    owner: str
    name: str


def store_name(decoded: str) -> str:
    """A decoded mailbox name in the store's form (INBOX's case, no empty levels)."""
    return normalize_mailbox_name(decoded)


def place(session: Session, decoded: str) -> Place:
    """The account and store name of a mailbox name the client sent."""
    if decoded == OTHER_USERS:
        return Place("", "")
    other = split_other(decoded)
    if other is None:
        return Place(session.account, store_name(decoded))
    account, rest = other
    rest = rest.rstrip("/")
    return Place(account, store_name(rest) if rest and account else "")


def shown(session: Session, owner: str, name: str) -> str:
    """The name the client uses for ``owner``'s mailbox ``name``."""
    return name if owner == session.account else f"{PREFIX}{owner}/{name}"


def _parent(where: Place) -> Place:
    # A new top-level mailbox of one's own account needs no right (the owner
    # holds every one); of another account's, none can be given: the account
    # itself has no ACL, only its mailboxes.
    return Place(where.owner, where.name.rpartition("/")[0])


async def rights_on(session: Session, where: Place) -> str:
    """The rights the user holds on ``where``: every one on its own mailboxes;
    on another account's, what its ACL gives (none if there is no such
    mailbox). Raises NotOwner (``NO [UNAVAILABLE]``) if this node does not
    serve the owning account."""
    if where.owner == session.account:
        return RIGHTS
    if not where.owner or not where.name:
        return ""
    user, node = session.account, session.node

    def read(s: DbSession) -> str:
        try:
            acl = acl_store.mailbox_acl(s, where.owner, where.name)
        except EngineError:
            return ""
        rights = held(user, where.owner, acl)
        if rights:
            node.guard(s, where.owner)
        return rights

    return await node.store.read(read)


async def selected_rights(session: Session) -> str:
    """The rights the user holds now on the selected mailbox."""
    selection = session.selected()
    if selection.owner == session.account:
        return RIGHTS
    user, owner, mailbox_id = session.account, selection.owner, selection.mailbox_id

    def read(s: DbSession) -> str:
        try:
            acl = acl_store.acl_of(s, mailbox_id)
        except EngineError:
            return ""
        return held(user, owner, acl)

    return await session.node.store.read(read)


def _what(session: Session, where: Place) -> str:
    return shown(session, where.owner, where.name) if where.name else OTHER_USERS


async def enforce(session: Session, cmd: c.Command) -> None:
    """Refuse ``cmd`` (CommandError) unless the user holds the rights it needs."""
    needs = REQUIRED.get(type(cmd))
    if needs is None:
        return
    if isinstance(cmd, c.Store):
        letters = store_rights(cmd.flags, cmd.mode)
        if session.selected().owner != session.account and letters:
            refused = refusal(await selected_rights(session), letters, session.selected().box.name)
            if refused is not None:
                raise refused
        return
    for need in needs:
        if need.of is Of.SELECTED:
            rights = await selected_rights(session)
            what = session.selected().box.name
        else:
            named = cmd.new_name if need.of is Of.NEW_PARENT else cmd.mailbox  # type: ignore[attr-defined]
            if named == "" and need.of is Of.MAILBOX:
                continue  # METADATA's server entries (RFC 5464 3.1): no mailbox
            where = place(session, named)
            if need.of in (Of.PARENT, Of.NEW_PARENT):
                if where.owner != session.account and not where.name:
                    raise CommandError(
                        f"no such mailbox: {named}", code=CODE_NONEXISTENT, status="NO"
                    )
                where = _parent(where)
            rights = await rights_on(session, where)
            what = _what(session, where)
        refused = refusal(rights, need.rights, what)
        if refused is not None:
            raise refused
