"""IMAP QUOTA commands (RFC 9208): GETQUOTA, GETQUOTAROOT, SETQUOTA.

How this works: the account's quota is the store's (:mod:`engine.quota`:
a byte limit and a message limit per account, set with peerctl or the API,
and the usage of each); the core (:mod:`peerd.protocols.imap.quota`) names
the one quota root ``""`` and writes the responses. A write past the limit
is refused by the store with ``NO [OVERQUOTA]`` (RFC 9208 5.1, 5.2; APPEND
and COPY, through :mod:`peerd.node.errormap`). A shared mailbox counts
against its owner's quota. SETQUOTA is an
administrator's command and IMAP users are not administrators: ``NO``.
"""

from __future__ import annotations

from typing import Final

from engine import acl as acl_store
from engine import quota as quota_store
from peerd.protocols.imap import commands as c
from peerd.protocols.imap.acl import CODE_NOPERM
from peerd.protocols.imap.quota import (
    ROOT,
    GetQuota,
    GetQuotaRoot,
    SetQuota,
    quota_response,
    quotaroot_response,
)
from peerd.protocols.imap.responses import CODE_NONEXISTENT, CommandError
from peerd.services.imap.access import place, shown
from peerd.services.imap.session import Handler, Reply, Session

__all__ = ["HANDLERS"]


async def _usage(session: Session, account: str) -> quota_store.QuotaUsage:
    return await session.node.store.read(lambda s: quota_store.usage(s, account))


async def getquotaroot(session: Session, cmd: GetQuotaRoot) -> Reply:
    where = place(session, cmd.mailbox)
    account, name = where.owner, where.name
    # NO [NONEXISTENT] for a mailbox that is not there (RFC 9208 4.1.2).
    await session.node.store.read(lambda s: acl_store.mailbox_acl(s, account, name))
    usage = await _usage(session, account)
    # A shared mailbox counts against its owner's quota; that root is the
    # owner's, named for the user only as the mailbox's.
    out = quotaroot_response(shown(session, account, name), usage.limited)
    if usage.limited:
        out += quota_response(usage.used, usage.limit, usage.messages, usage.message_limit)
    await session.send(out)
    return Reply("GETQUOTAROOT completed")


async def getquota(session: Session, cmd: GetQuota) -> Reply:
    usage = await _usage(session, session.account)
    if cmd.root != ROOT or not usage.limited:
        raise CommandError("no such quota root", code=CODE_NONEXISTENT, status="NO")
    await session.send(quota_response(usage.used, usage.limit, usage.messages, usage.message_limit))
    return Reply("GETQUOTA completed")


async def setquota(session: Session, cmd: SetQuota) -> Reply:
    raise CommandError(
        "only an administrator sets quotas (peerctl or the control API)",
        code=CODE_NOPERM,
        status="NO",
    )


HANDLERS: Final[dict[type[c.Command], Handler]] = {
    GetQuota: getquota,
    GetQuotaRoot: getquotaroot,
    SetQuota: setquota,
}
