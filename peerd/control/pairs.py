"""``GET /v1/pairs``: every pair in the routing directory, its nodes and health.

A node is ``up`` when its last heartbeat is at most three
``[routing] directory_heartbeat`` intervals old (the heartbeat of the node
answering is as recent as its writer's last tick). Without a directory the
route answers 404: there is only this pair, and ``status`` shows it.
"""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from engine.errors import NotFound
from peerd.control.call import Call

__all__ = ["UP_WITHIN_BEATS", "list_pairs"]

UP_WITHIN_BEATS = 3


async def list_pairs(call: Call[None, None]) -> web.Response:
    directory = call.parts.directory
    if directory is None:
        raise NotFound("no routing directory is configured ([routing] directory_url)")
    pairs = await directory.pairs()
    now = dt.datetime.now(dt.UTC)
    up_within = call.node.config.routing.directory_heartbeat * UP_WITHIN_BEATS
    writer = call.parts.directory_writer
    return web.json_response(
        {
            "pair": directory.pair,
            "writer": writer.to_json() if writer is not None else None,
            "cache": {
                "entries": len(directory.cache),
                "hits": directory.cache.hits,
                "misses": directory.cache.misses,
                "ttl_seconds": directory.cache.ttl,
            },
            "pairs": [p.to_json(now, up_within) for p in pairs],
        }
    )
