"""``/v1/accounts``: create, list, show, delete accounts; passwords, quotas, mailboxes.

How this works: every write for an existing account goes through
:meth:`~peerd.node.node.Node.write_owned` (the fence runs in the same
transaction, so a replica refuses with 409 ``not_owner``). Creating an
account creates its ownership row too (owner: this node); one whose
``owner`` names the partner is forwarded to the partner's API, which creates
it and replicates it here (a node without a sync partner just records the
row, as when accounts are set up before the pair is). Deleting one on a node with a partner keeps the row
until the partner has the deletion (the sync that pushes it must show the
partner's fence our epoch): the answer waits up to :data:`DELETE_WAIT` for it.

Renaming one (Cyrus's RENAME of a user) is one transaction on the owner,
behind the fence: the account row, its ownership row (same epoch) and its
pending sync-log rows take the new name; mailboxes, Sieve scripts and
vacation records hang off the account and follow. The rename is kept in
``account_renames`` until the partner has taken it (the sync client sends it
before anything else for the new name), sessions under the old name are
closed, and the proxy hooks are told the new name's route. A rename asked of
the node that does not own the account is forwarded to its owner.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from aiohttp import web
from sqlalchemy.orm import Session

from engine import accounts as engine_accounts
from engine import inventory, synclog
from engine.errors import AlreadyExists, InvalidArgument
from engine.passwords import hash_problem
from ownership import table as ownership_table
from ownership.errors import UnknownNode
from ownership.rows import OwnershipView
from peerd.control.call import Call, Parts
from peerd.control.schema import Integer, Size, Text, member
from peerd.pair.hooks import routes_for
from peerd.pair.partner import partner_api

__all__ = [
    "AccountsQuery",
    "MailboxQuery",
    "NewAccount",
    "NewName",
    "NewPassword",
    "NewQuota",
    "create_account",
    "delete_account",
    "get_account",
    "list_accounts",
    "list_mailboxes",
    "rename_account",
    "set_password",
    "set_quota",
    "show_mailbox",
]

# How long DELETE /v1/accounts (and a rename) waits for the partner to take
# a deletion; not at all once the sync client has found the partner down.
DELETE_WAIT = 5.0

ACCOUNT_NAME = Text(pattern=r"^[A-Za-z0-9._%+\-=]{1,64}(@[A-Za-z0-9.\-]{1,64})?$")
PASSWORD = Text(max_length=1024)


@dataclass(frozen=True, slots=True)
class NewAccount:
    name: str = member(ACCOUNT_NAME)
    password: str | None = member(PASSWORD, default=None)
    password_hash: str | None = member(Text(max_length=255), default=None)
    quota_limit: int | None = member(Size(nullable=True), default=None)
    owner: str | None = member(Text(max_length=64), default=None)

    def __post_init__(self) -> None:
        if (self.password is None) == (self.password_hash is None):
            raise InvalidArgument("give exactly one of password and password_hash")
        problem = None if self.password_hash is None else hash_problem(self.password_hash)
        if problem is not None:
            raise InvalidArgument(problem)


@dataclass(frozen=True, slots=True)
class NewPassword:
    password: str = member(PASSWORD)


@dataclass(frozen=True, slots=True)
class NewName:
    new_name: str = member(ACCOUNT_NAME)


_KEEP = -1
"""``message_limit`` left out of a quota request: the limit stays as it is."""


@dataclass(frozen=True, slots=True)
class NewQuota:
    quota_limit: int | None = member(Size(nullable=True), default=None)
    # RFC 9208 5.2 (QUOTA MESSAGE): live messages; null for none.
    message_limit: int | None = member(Integer(nullable=True), default=_KEEP)


@dataclass(frozen=True, slots=True)
class AccountsQuery:
    owner: str | None = member(Text(min_length=0), default=None)


@dataclass(frozen=True, slots=True)
class MailboxQuery:
    expunged: str | None = member(Text(min_length=0), default=None)  # 1, true, yes: tombstones too


def account_json(info: inventory.AccountInfo, row: OwnershipView | None) -> dict[str, Any]:
    return {
        "name": info.name,
        "quota_limit": info.quota_limit,
        "quota_used": info.quota_used,
        "owner": row.owner if row else None,
        "home": row.home if row else None,
        "epoch": row.epoch if row else 0,
        "state": row.state if row else "normal",
        "created_at": info.created_at.isoformat(),
    }


def _described(session: Session, name: str) -> dict[str, Any]:
    info = inventory.account_info(session, name)
    return account_json(info, ownership_table.view(session, info.name))


async def list_accounts(call: Call[None, AccountsQuery]) -> web.Response:
    owner = call.query.owner

    def read(session: Session) -> list[dict[str, Any]]:
        out = [
            account_json(info, ownership_table.view(session, info.name))
            for info in inventory.account_infos(session)
        ]
        return [a for a in out if owner is None or a["owner"] == owner]

    return web.json_response({"accounts": await call.node.store.read(read)})


async def create_account(call: Call[NewAccount, None]) -> web.Response:
    node, body = call.node, call.body
    name = engine_accounts.normalize_account_name(body.name, node.config.accounts.lowercase_names)
    owner = body.owner or node.name
    if owner not in (node.name, node.partner):
        raise UnknownNode(f"{owner} is neither this node ({node.name}) nor its partner")
    if owner != node.name and node.config.sync_partner is not None:
        # The owner creates it (and replicates it here): an account made
        # here for the partner would be unknown to its owner and its epoch
        # 0 refused by the partner's fence.
        forward = {
            "name": name,
            "password": body.password,
            "password_hash": body.password_hash,
            "quota_limit": body.quota_limit,
            "owner": owner,
        }
        answer = await partner_api(
            node, "POST", "/v1/accounts", {k: v for k, v in forward.items() if v is not None}
        )
        return web.json_response({**answer, "forwarded_to": owner}, status=201)

    password_hash = body.password_hash
    if password_hash is None:
        assert body.password is not None  # NewAccount: exactly one of the two
        password_hash = await node.hash_password(body.password)

    def create(session: Session) -> dict[str, Any]:
        if engine_accounts.find_account(session, name) is None:
            if ownership_table.renamed_away(session, name) is not None:
                # The partner still has the account under this name: the
                # rename it is owed would take this one's place.
                raise AlreadyExists(
                    f"{name} was renamed and {node.partner} has not taken that rename yet; "
                    "create it again once it has"
                )
            ownership_table.prune_deleted(session, [name])
            row = ownership_table.view(session, name)
            if row is not None and row.owner == node.name and synclog.depth(session, name):
                # Its deletion has not reached the partner: an account made now
                # would be merged with the old one's mail there (nothing is
                # dropped to make two sides agree), bringing it back.
                raise AlreadyExists(
                    f"{name} was deleted and {node.partner} has not taken the deletion "
                    "yet; create it again once it has"
                )
        engine_accounts.create_account(
            session, name, password_hash=password_hash, quota_limit=body.quota_limit
        )
        if ownership_table.get(session, name) is None:
            ownership_table.create(session, name, owner)
        session.flush()
        return _described(session, name)

    return web.json_response(await node.store.write(create), status=201)


async def get_account(call: Call[None, None]) -> web.Response:
    name = call.path("name")

    def read(session: Session) -> dict[str, Any]:
        body = _described(session, name)
        body["mailboxes"] = len(inventory.mailboxes(session, name).mailboxes)
        return body

    return web.json_response(await call.node.store.read(read))


async def delete_account(call: Call[None, None]) -> web.Response:
    node = call.node
    replicated = node.config.sync_partner is not None

    def delete(session: Session, row: Any) -> str:
        account: str = row.name
        engine_accounts.delete_account(session, account)
        if not replicated:
            ownership_table.delete(session, account)
        # With a partner the row stays until it has the deletion: the sync
        # that pushes it must show the partner's fence our epoch.
        return account

    deleted = await node.write_owned(call.path("name"), delete)
    body: dict[str, Any] = {"deleted": deleted}
    if replicated:
        body["replicated"] = await _deletion_replicated(call.parts, deleted)
    return web.json_response(body)


def _partner_down(parts: Parts) -> bool:
    """The sync client's last request found the partner unreachable: the
    rolling worker is backing off, so waiting for it would only run out."""
    return parts.pair is not None and parts.pair.client.reachable is False


async def _deletion_replicated(parts: Parts, account: str) -> bool:
    """Wait a little for the deletion to reach the partner, then drop the row.

    The rolling worker pushes it within milliseconds when the partner is up;
    otherwise (False, at once when the partner is known down) the row stays,
    and the sync that later delivers the deletion is followed by a prune at
    the next reconcile or start.
    """
    node = parts.node
    deadline = time.monotonic() + DELETE_WAIT
    while await node.store.read(lambda s: synclog.depth(s, account)):
        if time.monotonic() >= deadline or _partner_down(parts):
            return False
        await asyncio.sleep(0.05)
    await node.store.write(lambda s: ownership_table.prune_deleted(s, [account]))
    return True


async def rename_account(call: Call[NewName, None]) -> web.Response:
    node = call.node
    old = call.path("name")
    new = engine_accounts.normalize_account_name(call.body.new_name)
    row = await node.store.read(lambda s: ownership_table.view(s, old))
    if (
        row is not None
        and row.owner == node.partner
        and row.state != "moving"
        and node.config.sync_partner is not None
    ):
        # The owner renames it (and replicates the rename here), as
        # ``account add --owner`` is created by its owner.
        answer = await partner_api(
            node, "POST", f"/v1/accounts/{quote(old, safe='')}/rename", {"new_name": new}
        )
        return web.json_response({**answer, "forwarded_to": row.owner})
    remember = node.config.sync_partner is not None

    def rename(session: Session, account: Any) -> dict[str, Any]:
        if ownership_table.renamed_away(session, new) is not None:
            raise AlreadyExists(
                f"{new} was renamed and {node.partner} has not taken that rename yet; "
                "try again once it has"
            )
        ownership_table.prune_deleted(session, [new])
        if ownership_table.get(session, new) is not None:
            # A deleted account whose deletion the partner has not taken
            # yet, or an account that exists: the name is not free.
            raise AlreadyExists(f"account {new} exists (or its deletion is not replicated yet)")
        was = account.name
        engine_accounts.rename_account(session, was, new)
        ownership_table.rename(session, was, new, node.name, remember=remember)
        session.flush()
        return _described(session, new)

    if call.parts.pair is not None:
        # Not in the middle of a sync of the old name: it would read the
        # account gone and its sync-log rows half moved.
        async with call.parts.pair.client.lock(old):
            body = await node.write_owned(old, rename)
    else:
        body = await node.write_owned(old, rename)
    if remember:
        body["replicated"] = await _rename_replicated(call.parts, new)
    # Sessions logged in under the old name end (their name is gone);
    # proxies that take pushed routes learn the new name's.
    await node.close_sessions([old])
    if call.parts.pair is not None:
        hooks = await call.parts.pair.hooks.notify(
            await routes_for(node, [new]), renamed={old: new}
        )
        body["hooks"] = [h.to_json() for h in hooks]
    return web.json_response({**body, "renamed_from": old})


async def _rename_replicated(parts: Parts, new: str) -> bool:
    """Wait a little for the partner to take the rename (the rolling worker
    sends it at once when the partner is up); False: it will when it answers
    (at once when the partner is known down)."""
    node = parts.node
    deadline = time.monotonic() + DELETE_WAIT
    while await node.store.read(lambda s: ownership_table.renames_to(s, new)):
        if time.monotonic() >= deadline or _partner_down(parts):
            return False
        await asyncio.sleep(0.05)
    return True


async def set_password(call: Call[NewPassword, None]) -> web.Response:
    name, node = call.path("name"), call.node
    password_hash = await node.hash_password(call.body.password)
    await node.write_owned(
        name, lambda s, row: engine_accounts.set_password_hash(s, row.name, password_hash)
    )
    return web.json_response({"account": name, "password": "changed"})


async def set_quota(call: Call[NewQuota, None]) -> web.Response:
    name, limit, messages = call.path("name"), call.body.quota_limit, call.body.message_limit

    def write(s: Session, row: Any) -> int | None:
        engine_accounts.set_quota(s, row.name, limit)
        if messages != _KEEP:
            engine_accounts.set_message_limit(s, row.name, messages)
        return row.message_limit  # type: ignore[no-any-return]

    now = await call.node.write_owned(name, write)
    return web.json_response({"account": name, "quota_limit": limit, "message_limit": now})


def mailbox_json(mailbox: inventory.MailboxInfo) -> dict[str, Any]:
    return {
        "name": mailbox.name,
        "uniqueid": mailbox.uniqueid,
        "uidvalidity": mailbox.uidvalidity,
        "last_uid": mailbox.last_uid,
        "highestmodseq": mailbox.highestmodseq,
        "exists": mailbox.exists,
        "checksum": f"{mailbox.checksum & 0xFFFFFFFFFFFFFFFF:016x}",
        "acl": mailbox.acl,
    }


async def list_mailboxes(call: Call[None, None]) -> web.Response:
    name = call.path("name")
    found = await call.node.store.read(lambda s: inventory.mailboxes(s, name))
    return web.json_response(
        {
            "account": found.account,
            "mailboxes": [mailbox_json(m) for m in found.mailboxes],
            "subscriptions": list(found.subscriptions),
        }
    )


async def show_mailbox(call: Call[None, MailboxQuery]) -> web.Response:
    name, mailbox = call.path("name"), call.path("mailbox")
    expunged = call.query.expunged in ("1", "true", "yes")
    box, records = await call.node.store.read(
        lambda s: inventory.mailbox_records(s, name, mailbox, expunged=expunged)
    )
    body = mailbox_json(box)
    body["messages"] = [
        {
            "uid": r.uid,
            "guid": r.guid,
            "flags": list(r.flags),
            "modseq": r.modseq,
            "size": r.size,
            "internaldate": r.internaldate.isoformat(),
            "expunged": r.expunged,
        }
        for r in records
    ]
    return web.json_response(body)
