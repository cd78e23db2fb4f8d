"""What the node reports: ``/v1/health``, ``/v1/status``, ``/v1/synclog``, ``/metrics``."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from peerd.control import metrics
from peerd.control.call import Call
from peerd.control.schema import Text, member
from peerd.control.status import account_status, node_status
from peerd.replication.manual import pending_changes

__all__ = ["AccountQuery", "health", "list_synclog", "prometheus", "status"]


@dataclass(frozen=True, slots=True)
class AccountQuery:
    account: str | None = member(Text(min_length=0), default=None)


async def health(call: Call[None, None]) -> web.Response:
    return web.json_response({"status": "ok", "node": call.node.name})


async def status(call: Call[None, AccountQuery]) -> web.Response:
    if call.query.account is not None:
        return web.json_response((await account_status(call.parts, call.query.account)).to_json())
    return web.json_response((await node_status(call.parts)).to_json())


async def list_synclog(call: Call[None, AccountQuery]) -> web.Response:
    account = call.query.account
    pending = await pending_changes(call.node, [account] if account is not None else None)
    return web.json_response({"node": call.node.name, "pending": [p.to_json() for p in pending]})


async def prometheus(call: Call[None, None]) -> web.Response:
    text = metrics.render(await node_status(call.parts))
    return web.Response(text=text, content_type="text/plain", charset="utf-8")
