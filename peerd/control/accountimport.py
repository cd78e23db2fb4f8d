"""``POST /v1/accounts/import``: many accounts in one request (bulk provisioning).

How this works: up to :data:`MAX_BATCH` accounts per request, each as
``POST /v1/accounts`` takes one (a password, or a hash the node verifies:
``$scrypt$``, ``$5$``/``$6$`` SHA-crypt). Plain passwords are hashed first,
off the event loop and in parallel (scrypt is the whole cost of such an
import); then one transaction creates every account that does not exist
yet, with its INBOX, its ownership row (owner: this node) and its sync-log
row, and the rolling replicator takes them to the partner as usual. An
account that cannot be made (it exists, or its name is still owed to the
partner after a delete or a rename) is reported by index and skipped; the
others are created. ``peerctl account import FILE`` reads CSV and Dovecot
passwd-files and sends them in batches.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import accounts as engine_accounts
from engine.errors import AlreadyExists, InvalidArgument
from engine.models import Account
from engine.passwords import hash_password
from ownership import table as ownership_table
from peerd.control.accounts import NewAccount
from peerd.control.call import Call
from peerd.control.schema import ObjectList, member

__all__ = ["MAX_BATCH", "AccountBatch", "import_accounts"]

MAX_BATCH = 1000
# scrypt takes 32 MiB per hash: this many at once.
HASHING = 4


@dataclass(frozen=True, slots=True)
class AccountBatch:
    accounts: tuple[NewAccount, ...] = member(ObjectList(NewAccount, MAX_BATCH))


def _existing(session: Session, names: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        found.update(session.scalars(select(Account.name).where(Account.name.in_(chunk))))
    return found


async def import_accounts(call: Call[AccountBatch, None]) -> web.Response:
    node = call.node
    entries = call.body.accounts
    for index, entry in enumerate(entries):
        if entry.owner not in (None, node.name):
            raise InvalidArgument(f"accounts[{index}]: an import creates accounts on this node")
    names = [engine_accounts.normalize_account_name(e.name) for e in entries]
    limit = asyncio.Semaphore(HASHING)

    async def hashed(password: str | None, given: str | None) -> str:
        if given is not None:
            return given
        assert password is not None  # NewAccount: exactly one of the two
        async with limit:
            return await asyncio.to_thread(hash_password, password, node.config.auth.scrypt_cost)

    hashes = await asyncio.gather(*(hashed(e.password, e.password_hash) for e in entries))

    def create(session: Session) -> tuple[list[str], list[dict[str, Any]]]:
        existing = _existing(session, names)
        unavailable = ownership_table.unavailable(session, names, node.name)
        failed: list[dict[str, Any]] = []
        specs: list[tuple[str, str, int | None]] = []
        taken: set[str] = set()
        for index, (name, entry, password_hash) in enumerate(
            zip(names, entries, hashes, strict=True)
        ):
            why = (
                f"account {name} already exists"
                if name in existing or name in taken
                else unavailable.get(name)
            )
            if why is None and entry.quota_limit is not None and entry.quota_limit < 0:
                why = "quota must be >= 0 bytes"
            if why is not None:
                failed.append(
                    {"index": index, "name": name, "error": AlreadyExists.code, "detail": why}
                )
                continue
            taken.add(name)
            specs.append((name, password_hash, entry.quota_limit))
        engine_accounts.create_accounts(session, specs)
        created = [name for name, _, _ in specs]
        ownership_table.create_many(session, created, node.name)
        return created, failed

    created, failed = await node.store.write(create)
    return web.json_response({"created": created, "failed": failed}, status=200)
