"""Moving an account to another pair over the API (``peerctl account move
USER --to-pair NAME``): start or continue it, and read how far it got.

``POST /v1/accounts/{name}/transfer`` starts the move on the node that owns
the account (or continues an unfinished one) and answers 202 at once with
the move's record; the move runs in the node (:mod:`peerd.directory.transfer`)
and survives restarts. ``GET`` the same path for its step and progress.
``DELETE`` abandons a move that has not cut over (on the source node): the
target's copy is deleted, the directory keeps the account here; 409
``transfer_committed`` once the cut-over committed. Without a routing
directory all three answer 404.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from engine.errors import NotFound
from peerd.control.call import Call, Parts
from peerd.control.schema import Text, member
from peerd.directory.transfer import Mover

__all__ = ["TransferBody", "transfer_abort_route", "transfer_route", "transfer_status_route"]


@dataclass(frozen=True, slots=True)
class TransferBody:
    to_pair: str = member(Text())


def _mover(parts: Parts) -> Mover:
    mover = parts.mover
    if mover is None:
        raise NotFound("no routing directory is configured ([routing] directory_url)")
    return mover


async def transfer_route(call: Call[TransferBody, None]) -> web.Response:
    mover = _mover(call.parts)
    account = call.path("name")
    await mover.begin(account, call.body.to_pair)
    status = await mover.status(account)
    return web.json_response(status, status=202)


async def transfer_status_route(call: Call[None, None]) -> web.Response:
    mover = _mover(call.parts)
    account = call.path("name")
    status = await mover.status(account)
    if status is None:
        raise NotFound(f"no move of {account} is recorded")
    return web.json_response(status)


async def transfer_abort_route(call: Call[None, None]) -> web.Response:
    mover = _mover(call.parts)
    move = await mover.abort(call.path("name"))
    return web.json_response({**move.to_json(), "aborted": True})
