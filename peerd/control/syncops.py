"""Replication and upkeep on demand: ``/v1/replicate``, ``/v1/synclog``,
``/v1/reconcile``, ``/v1/spool/sweep``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from aiohttp import web

from engine.errors import InvalidArgument, NotFound
from peerd.control.call import Call
from peerd.control.schema import Flag, Text, TextList, member
from peerd.replication.client import SyncClient
from peerd.replication.manual import queue, replicate_now, sync_target

__all__ = [
    "QueueBody",
    "ReconcileBody",
    "ReplicateBody",
    "SweepBody",
    "queue_route",
    "reconcile_route",
    "replicate_route",
    "sweep_route",
]

ACCOUNT = Text(max_length=255)


@dataclass(frozen=True, slots=True)
class ReplicateBody:
    account: str | None = member(ACCOUNT, default=None)
    all: bool = member(Flag(), default=False)
    mailboxes: tuple[str, ...] | None = member(TextList(), default=None)
    compress: bool | None = member(Flag(), default=None)
    target: str | None = member(Text(max_length=255), default=None)  # host[:port]
    # A backup channel ([sync.channels.NAME]) instead of the partner (sync_client -n).
    channel: str | None = member(Text(max_length=64), default=None)


@dataclass(frozen=True, slots=True)
class QueueBody:
    account: str = member(ACCOUNT)
    mailboxes: tuple[str, ...] | None = member(TextList(), default=None)


@dataclass(frozen=True, slots=True)
class ReconcileBody:
    account: str | None = member(ACCOUNT, default=None)


@dataclass(frozen=True, slots=True)
class SweepBody:
    force: bool = member(Flag(), default=False)


async def replicate_route(call: Call[ReplicateBody, None]) -> web.Response:
    body, node = call.body, call.node
    client = call.pair.client
    if body.channel is not None:
        if body.channel not in call.parts.channels:
            known = ", ".join(sorted(call.parts.channels)) or "none"
            raise NotFound(f"no backup channel {body.channel!r} ([sync.channels]: {known})")
        if body.target is not None:
            raise InvalidArgument("give a channel or a target, not both")
        client = call.parts.channels[body.channel].client
    elif body.target is not None:
        client = SyncClient(node, sync_target(node, body.target))
    try:
        result = await replicate_now(
            node,
            client,
            account=body.account,
            everything=body.all,
            mailboxes=list(body.mailboxes) if body.mailboxes is not None else None,
            compressed=body.compress,
        )
    finally:
        if body.target is not None:
            await client.close()
    # Per-account failures are part of the answer (peerctl exits non-zero on
    # them); the request itself succeeded.
    return web.json_response(result.to_json())


async def queue_route(call: Call[QueueBody, None]) -> web.Response:
    account = call.body.account
    rows = await queue(call.node, account, call.body.mailboxes or ())
    return web.json_response({"account": account, "queued": rows})


async def reconcile_route(call: Call[ReconcileBody, None]) -> web.Response:
    account = call.body.account
    result = await call.reconciler.run([account] if account else None)
    return web.json_response(result.to_json())


async def sweep_route(call: Call[SweepBody, None]) -> web.Response:
    result = await call.sweep.run(force=call.body.force)
    return web.json_response(asdict(result))
