"""Integrity on demand: ``/v1/scrub`` (read every body, heal from the partner)
and ``/v1/check-db`` (the database's own integrity check)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from engine.dbcheck import check_database
from peerd.control.call import Call
from peerd.control.schema import Flag, Integer, Text, member

__all__ = ["CheckDbBody", "ScrubBody", "check_db_route", "scrub_route"]


@dataclass(frozen=True, slots=True)
class ScrubBody:
    account: str | None = member(Text(max_length=255), default=None)
    background: bool = member(Flag(), default=False)
    rate: int | None = member(Integer(nullable=True), default=None)  # bytes/s; 0: full speed


@dataclass(frozen=True, slots=True)
class CheckDbBody:
    full: bool = member(Flag(), default=False)


async def scrub_route(call: Call[ScrubBody, None]) -> web.Response:
    """Scrub now and answer with the result, or (``background``) start it and
    answer 202 at once (``status`` shows it running, then its result)."""
    scrubber = call.scrubber
    if call.body.background:
        started = scrubber.start_background(call.body.account, call.body.rate)
        return web.json_response(
            {"started": started, "running": True}, status=202 if started else 200
        )
    result = await scrubber.run(call.body.account, rate=call.body.rate)
    return web.json_response(result.to_json())


async def check_db_route(call: Call[CheckDbBody, None]) -> web.Response:
    node = call.node
    result = await asyncio.to_thread(check_database, node.config.database_url, full=call.body.full)
    node.db_check = result
    return web.json_response(result.to_json())
