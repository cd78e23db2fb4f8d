"""The control API: HTTP/JSON under ``/v1`` (aiohttp).

How this works: every route but ``/v1/health`` and ``/v1/openapi.json``
needs ``Authorization: Bearer <[api] token>``. Handlers call the store
through the node and return JSON; any error becomes an RFC 9457
``application/problem+json`` body in one middleware, with the status chosen
by :mod:`peerd.node.errormap`. ``peerctl`` is a client of exactly this API.
Later parts (replication, ownership, routing) add their routes to the same
application through :func:`add_routes`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session

from engine import accounts as engine_accounts
from engine import mailbox as engine_mailbox
from engine import synclog
from engine.errors import AlreadyExists, EngineError, InvalidArgument
from engine.flags import parse_flags
from engine.models import Account
from ownership import table as ownership_table
from ownership.errors import NotCaughtUp, OwnershipError, UnknownNode
from peerd.control.openapi import OPERATIONS, Operation
from peerd.node.errormap import http_status
from peerd.node.node import Node

__all__ = [
    "NODE_KEY",
    "account_json",
    "add_routes",
    "build_app",
    "json_body",
    "pending_json",
    "problem",
]

log = logging.getLogger("peerd.control.api")

NODE_KEY: web.AppKey[Node] = web.AppKey("node", Node)
# nginx's auth_http sends no token: that route checks its own shared secret.
PUBLIC = frozenset({"/v1/health", "/v1/openapi.json", "/metrics", "/v1/route/nginx"})
MAX_BODY = 1 << 20
# How long DELETE /v1/accounts waits for the partner to take a deletion.
DELETE_WAIT = 5.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(
    status: int,
    title: str,
    detail: str = "",
    code: str = "",
    extensions: dict[str, Any] | None = None,
) -> web.Response:
    """An RFC 9457 body; ``extensions`` are extra members (RFC 9457 3.2)."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if code:
        body["code"] = code
    body.update(extensions or {})
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/problem+json"
    )


def _title(exc: Exception) -> str:
    """The error's class name, or its first public base's (never ``_Refused``)."""
    return next(c.__name__ for c in type(exc).__mro__ if not c.__name__.startswith("_"))


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except (EngineError, OwnershipError) as exc:
        status = http_status(exc)
        # A refused failback says what is still pending, for scripts too.
        extensions = {"pending": exc.pending} if isinstance(exc, NotCaughtUp) else None
        return problem(status, _title(exc), exc.message, exc.code, extensions)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem(exc.status, exc.reason)
    except Exception:
        log.exception("control API error on %s %s", request.method, request.path)
        return problem(500, "Internal Server Error", "see the node's log")


def auth_middleware(token: str) -> Any:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC or not request.path.startswith("/v1/"):
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        if not token or not hmac.compare_digest(given, expected):
            response = problem(401, "Unauthorized", "a valid bearer token is required")
            response.headers["WWW-Authenticate"] = 'Bearer realm="peerd"'
            return response
        return await handler(request)

    return check


async def json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise InvalidArgument("request body too large")
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"the body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidArgument("the body must be a JSON object")
    return data


def _opt_int(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise InvalidArgument(f"{key} must be an integer from 0 to 2**63-1")
    return value


def _str(data: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{key} must be a non-empty string")
    return value


def account_json(session: Session, account: Account) -> dict[str, Any]:
    row = ownership_table.get(session, account.name)
    return {
        "name": account.name,
        "quota_limit": account.quota_limit,
        "quota_used": account.quota_used,
        "owner": row.owner if row else None,
        "home": row.home if row else None,
        "epoch": row.epoch if row else 0,
        "state": row.state if row else "normal",
        "created_at": account.created_at.isoformat(),
    }


async def health(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    return web.json_response({"status": "ok", "node": node.name})


def _iso(stamp: dt.datetime | None) -> str | None:
    return stamp.isoformat() if stamp else None


def _lag(oldest: dt.datetime | None) -> float:
    """Seconds since the oldest change not yet on the partner (0: it has all)."""
    return round((dt.datetime.now(dt.UTC) - oldest).total_seconds(), 3) if oldest else 0.0


async def account_status(node: Node, account: str) -> dict[str, Any]:
    """One account: who serves it, and what of it the partner does not have yet."""

    def read(session: Session) -> dict[str, Any]:
        name = engine_accounts.get_account(session, account).name
        row = ownership_table.get(session, name)
        oldest = synclog.oldest(session, name)
        return {
            "node": node.name,
            "partner": node.partner,
            "account": name,
            "owner": row.owner if row else node.name,
            "home": row.home if row else node.name,
            "epoch": row.epoch if row else 0,
            "state": row.state if row else "normal",
            "sync_log_depth": synclog.depth(session, name),
            "oldest_pending": _iso(oldest),
            "lag_seconds": _lag(oldest),
        }

    body = await node.store.read(read)
    # Replication adds the partner's side: reachable, last success, last error.
    for provider in node.account_status:
        body.update(await provider(body["account"]))
    return body


async def status(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    account = request.query.get("account")
    if account is not None:
        return web.json_response(await account_status(node, account))

    def read(session: Session) -> dict[str, Any]:
        oldest = synclog.oldest(session)
        return {
            "accounts": len(engine_accounts.list_accounts(session)),
            "owned": ownership_table.count_by_owner(session),
            "sync_log_depth": synclog.depth(session),
            "sync_log_oldest": _iso(oldest),
        }

    body: dict[str, Any] = {"node": node.name, "partner": node.partner}
    body.update(await node.store.read(read))
    body["inflight_deliveries"] = node.inflight
    if node.startup_note:
        body["startup"] = node.startup_note
    body["counters"] = dict(node.counters.values)
    body["store"] = {
        "batches": node.store.stats.batches,
        "writes": node.store.stats.writes,
        "largest_batch": node.store.stats.largest_batch,
    }
    for name, provider in node.extra_status.items():
        body[name] = await provider()
    return web.json_response(body)


def pending_json(session: Session, accounts: list[str] | None = None) -> list[dict[str, Any]]:
    """The sync log coalesced per account: what the partner does not have yet."""
    return [
        {
            "account": p.account,
            "changes": len(p.rows),
            "kinds": sorted(p.kinds),
            "oldest": p.oldest.isoformat(),
        }
        for p in synclog.pending(session, accounts)
    ]


async def list_synclog(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    account = request.query.get("account")
    pending = await node.store.read(
        lambda s: pending_json(s, [account] if account is not None else None)
    )
    return web.json_response({"node": node.name, "pending": pending})


async def list_accounts(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    owner = request.query.get("owner")

    def read(session: Session) -> list[dict[str, Any]]:
        out = [account_json(session, a) for a in engine_accounts.list_accounts(session)]
        return [a for a in out if owner is None or a["owner"] == owner]

    return web.json_response({"accounts": await node.store.read(read)})


async def create_account(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    data = await json_body(request)
    name = engine_accounts.normalize_account_name(_str(data, "name") or "")
    password = _str(data, "password", required=False)
    password_hash = _str(data, "password_hash", required=False)
    if (password is None) == (password_hash is None):
        raise InvalidArgument("give exactly one of password and password_hash")
    quota = _opt_int(data, "quota_limit")
    owner = _str(data, "owner", required=False) or node.name
    if owner not in (node.name, node.partner):
        raise UnknownNode(f"{owner} is neither this node ({node.name}) nor its partner")

    def create(session: Session) -> dict[str, Any]:
        if engine_accounts.find_account(session, name) is None:
            ownership_table.prune_deleted(session, [name])
            row = ownership_table.get(session, name)
            if row is not None and row.owner == node.name and synclog.depth(session, name):
                # Its deletion has not reached the partner: an account made now
                # would be merged with the old one's mail there (nothing is
                # dropped to make two sides agree), bringing it back.
                raise AlreadyExists(
                    f"{name} was deleted and {node.partner} has not taken the deletion "
                    "yet; create it again once it has"
                )
        account = engine_accounts.create_account(
            session, name, password=password, password_hash=password_hash, quota_limit=quota
        )
        if ownership_table.get(session, name) is None:
            ownership_table.create(session, name, owner)
        session.flush()
        return account_json(session, account)

    body = await node.store.write(create)
    return web.json_response(body, status=201)


async def get_account(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    name = request.match_info["name"]

    def read(session: Session) -> dict[str, Any]:
        account = engine_accounts.get_account(session, name)
        body = account_json(session, account)
        body["mailboxes"] = len(engine_mailbox.list_mailboxes(session, account))
        return body

    return web.json_response(await node.store.read(read))


async def delete_account(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    name = request.match_info["name"]
    replicated = node.config.sync_partner is not None

    def delete(session: Session, row: Account) -> str:
        account = row.name
        engine_accounts.delete_account(session, account)
        if not replicated:
            ownership_table.delete(session, account)
        # With a partner the row stays until it has the deletion: the sync
        # that pushes it must show the partner's fence our epoch.
        return account

    deleted = await node.write_owned(name, delete)
    body: dict[str, Any] = {"deleted": deleted}
    if replicated:
        body["replicated"] = await _deletion_replicated(node, deleted)
    return web.json_response(body)


async def _deletion_replicated(node: Node, account: str) -> bool:
    """Wait a little for the deletion to reach the partner, then drop the row.

    The rolling worker pushes it within milliseconds when the partner is up;
    otherwise (False) the row stays, and the sync that later delivers the
    deletion is followed by a prune at the next reconcile or start.
    """
    deadline = time.monotonic() + DELETE_WAIT
    while await node.store.read(lambda s: synclog.depth(s, account)):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    await node.store.write(lambda s: ownership_table.prune_deleted(s, [account]))
    return True


async def set_password(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    name = request.match_info["name"]
    password = _str(await json_body(request), "password") or ""

    def write(session: Session, row: Account) -> None:
        engine_accounts.set_password(session, row.name, password)

    await node.write_owned(name, write)
    return web.json_response({"account": name, "password": "changed"})


async def set_quota(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    name = request.match_info["name"]
    limit = _opt_int(await json_body(request), "quota_limit")

    def write(session: Session, row: Account) -> None:
        engine_accounts.set_quota(session, row.name, limit)

    await node.write_owned(name, write)
    return web.json_response({"account": name, "quota_limit": limit})


def mailbox_json(mailbox: Any) -> dict[str, Any]:
    return {
        "name": mailbox.name,
        "uniqueid": mailbox.uniqueid,
        "uidvalidity": mailbox.uidvalidity,
        "last_uid": mailbox.last_uid,
        "highestmodseq": mailbox.highestmodseq,
        "exists": mailbox.exists,
        "checksum": f"{mailbox.checksum & 0xFFFFFFFFFFFFFFFF:016x}",
        "acl": json.loads(mailbox.acl),
    }


async def list_mailboxes(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    name = request.match_info["name"]

    def read(session: Session) -> dict[str, Any]:
        account = engine_accounts.get_account(session, name)
        return {
            "account": account.name,
            "mailboxes": [mailbox_json(m) for m in engine_mailbox.list_mailboxes(session, account)],
            "subscriptions": engine_mailbox.subscriptions(session, account),
        }

    return web.json_response(await node.store.read(read))


async def show_mailbox(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    name = request.match_info["name"]
    mailbox_name = request.match_info["mailbox"]
    with_expunged = request.query.get("expunged") in ("1", "true", "yes")

    def read(session: Session) -> dict[str, Any]:
        from sqlalchemy import select

        from engine.models import Message

        account = engine_accounts.get_account(session, name)
        mailbox = engine_mailbox.get_mailbox(session, account, mailbox_name)
        query = select(Message).where(Message.mailbox_id == mailbox.id).order_by(Message.uid)
        if not with_expunged:
            query = query.where(Message.expunged.is_(False))
        body = mailbox_json(mailbox)
        body["messages"] = [
            {
                "uid": m.uid,
                "guid": m.guid,
                "flags": sorted(parse_flags(m.flags)),
                "modseq": m.modseq,
                "size": m.size,
                "internaldate": m.internaldate.isoformat(),
                "expunged": m.expunged,
            }
            for m in session.scalars(query)
        ]
        return body

    return web.json_response(await node.store.read(read))


async def openapi(request: web.Request) -> web.Response:
    from peerd.control.openapi import document

    return web.json_response(document())


def add_routes(app: web.Application) -> None:
    from peerd.control.metrics import metrics_route

    app.router.add_get("/metrics", metrics_route)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/openapi.json", openapi)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/synclog", list_synclog)
    app.router.add_get("/v1/accounts", list_accounts)
    app.router.add_post("/v1/accounts", create_account)
    app.router.add_get("/v1/accounts/{name}", get_account)
    app.router.add_delete("/v1/accounts/{name}", delete_account)
    app.router.add_put("/v1/accounts/{name}/password", set_password)
    app.router.add_put("/v1/accounts/{name}/quota", set_quota)
    app.router.add_get("/v1/accounts/{name}/mailboxes", list_mailboxes)
    app.router.add_get("/v1/accounts/{name}/mailboxes/{mailbox:.+}", show_mailbox)


OPERATIONS.append(
    Operation(
        "get",
        "/v1/synclog",
        "Changes not yet replicated, per account (all, or one)",
        query=(("account", "string"),),
    )
)


def build_app(node: Node) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware(node.config.api.token)],
        client_max_size=MAX_BODY,
    )
    app[NODE_KEY] = node
    add_routes(app)
    return app
