"""The full-text index on demand: ``POST /v1/index/rebuild`` and ``GET /v1/index``."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from engine.errors import InvalidArgument
from peerd.control.call import Call
from peerd.control.schema import Flag, Text, member

__all__ = ["IndexQuery", "RebuildBody", "index_route", "rebuild_route"]


@dataclass(frozen=True, slots=True)
class RebuildBody:
    account: str | None = member(Text(max_length=255), default=None)
    all: bool = member(Flag(), default=False)


@dataclass(frozen=True, slots=True)
class IndexQuery:
    account: str | None = member(Text(min_length=0), default=None)


async def rebuild_route(call: Call[RebuildBody, None]) -> web.Response:
    """Extract again the text of one account's messages (or every account's),
    and answer with what was done."""
    body = call.body
    if (body.account is None) == (not body.all):
        raise InvalidArgument("give an account or all, not both")
    result = await call.indexer.rebuild(None if body.all else body.account)
    return web.json_response(result.to_json())


async def index_route(call: Call[None, IndexQuery]) -> web.Response:
    """How much of one account's mail (or the node's) the index holds."""
    account = call.query.account or None
    counts = await call.indexer.counts(account)
    return web.json_response(
        {
            "account": account,
            "messages": counts.guids,
            "indexed": counts.indexed,
            "pending": counts.guids - counts.indexed,
            "indexer": call.indexer.status(),
        }
    )
