"""Ownership over the API: ``/v1/owner``, failover, switchover, failback, moving a home.

Each handler reads its checked body and calls the pair operation
(:mod:`peerd.pair`); the operation's result renders itself as the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session

from engine.errors import InvalidArgument, NoSuchAccount
from ownership import table as ownership_table
from ownership.rows import row_view
from peerd.control.call import Call
from peerd.control.schema import Flag, Text, TextList, member
from peerd.pair.failback import failback
from peerd.pair.failover import failover
from peerd.pair.move import move_home
from peerd.pair.switchover import accounts_owned_by, switchover

__all__ = [
    "FailoverBody",
    "MoveBody",
    "SwitchoverBody",
    "failback_route",
    "failover_route",
    "move_route",
    "owner_route",
    "switchover_route",
]


@dataclass(frozen=True, slots=True)
class FailoverBody:
    force: bool = member(Flag(), default=False)


@dataclass(frozen=True, slots=True)
class SwitchoverBody:
    accounts: tuple[str, ...] | None = member(TextList(), default=None)
    all_from: str | None = member(Text(), default=None)
    to: str | None = member(Text(), default=None)

    def __post_init__(self) -> None:
        if self.accounts is not None and self.all_from is not None:
            raise InvalidArgument("give accounts or all_from, not both")
        if self.accounts is None and self.all_from is None:
            raise InvalidArgument("give accounts (a list) or all_from (a node name)")


@dataclass(frozen=True, slots=True)
class MoveBody:
    to: str = member(Text())


async def owner_route(call: Call[None, None]) -> web.Response:
    account = call.path("account")

    def read(session: Session) -> dict[str, Any]:
        row = ownership_table.get(session, account)
        if row is None:
            raise NoSuchAccount(f"no such account: {account}")
        body = row_view(row).to_json()
        body["reason"] = row.reason
        body["updated_at"] = row.updated_at.isoformat()
        return body

    return web.json_response(await call.node.store.read(read))


async def failover_route(call: Call[FailoverBody, None]) -> web.Response:
    return web.json_response((await failover(call.pair, force=call.body.force)).to_json())


async def switchover_route(call: Call[SwitchoverBody, None]) -> web.Response:
    body = call.body
    accounts: Sequence[str]
    if body.accounts is not None:
        accounts = body.accounts
    else:
        assert body.all_from is not None  # SwitchoverBody asks for one of the two
        accounts = await accounts_owned_by(call.pair, body.all_from)
    return web.json_response((await switchover(call.pair, accounts, to=body.to)).to_json())


async def failback_route(call: Call[None, None]) -> web.Response:
    return web.json_response((await failback(call.pair)).to_json())


async def move_route(call: Call[MoveBody, None]) -> web.Response:
    moved = await move_home(call.pair, call.path("name"), call.body.to)
    return web.json_response(moved.row.to_json())
