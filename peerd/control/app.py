"""The control API application: HTTP/JSON under ``/v1`` (aiohttp).

How this works: every route but the public ones (``/v1/health``,
``/v1/openapi.json``, ``/v1/route/nginx``, ``/metrics``) needs
``Authorization: Bearer <[api] token>``. Each route of the table
(:data:`peerd.control.routes.ROUTES`) is added with an endpoint that reads
the JSON body and the query, checks them against the route's classes
(:mod:`peerd.control.schema`) and calls the handler with a
:class:`~peerd.control.call.Call`. Any error becomes an RFC 9457
``application/problem+json`` body in one middleware, with the status chosen
by :mod:`peerd.node.errormap`. ``peerctl`` is a client of exactly this API.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from engine.errors import EngineError, InvalidArgument
from ownership.errors import NotCaughtUp, OwnershipError, TargetDamaged
from peerd.control.call import Call, Parts, Route
from peerd.control.routes import ROUTES
from peerd.control.schema import decode_body, parse
from peerd.node import maillog
from peerd.node.errormap import client_text, http_status, problem_title
from peerd.node.httplimits import body_deadline, body_room, header_octets, room_release
from peerd.node.inputbudget import InputBudget

__all__ = ["MAX_BODY", "NO_PARTNER", "build_app", "problem"]

log = logging.getLogger("peerd.control.app")

MAX_BODY = 1 << 20

Endpoint = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


@web.middleware
async def errors_middleware(request: web.Request, handler: Endpoint) -> web.StreamResponse:
    try:
        return await handler(request)
    except (EngineError, OwnershipError) as exc:
        # A refused failback says what is still pending, for scripts too.
        extensions: dict[str, Any] | None = None
        if isinstance(exc, NotCaughtUp):
            extensions = {"pending": exc.pending}
        elif isinstance(exc, TargetDamaged):
            extensions = {"damaged": exc.guids}
        detail = client_text(exc, "control API", admin=True)
        return problem(http_status(exc), problem_title(exc), detail, exc.code, extensions)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem(exc.status, exc.reason)
    except ConnectionResetError as exc:
        # The client left (or was cut off) while its body was being read:
        # one line; nobody reads the answer.
        log.info(
            "control API: %s %s from %s: %s", request.method, request.path, request.remote, exc
        )
        return web.Response(status=499)
    except Exception:
        log.exception("control API error on %s %s", request.method, request.path)
        return problem(500, "Internal Server Error", "see the node's log")


def auth_middleware(token: str, public: frozenset[str]) -> Any:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Endpoint) -> web.StreamResponse:
        if request.path in public or not request.path.startswith("/v1/"):
            return await handler(request)
        given = header_octets(request, "Authorization")
        if not token or not hmac.compare_digest(given, expected):
            response = problem(401, "Unauthorized", "a valid bearer token is required")
            response.headers["WWW-Authenticate"] = 'Bearer realm="peerd"'
            return response
        return await handler(request)

    return check


def refuse_content_encoding(request: web.Request) -> None:
    """Bodies are taken as sent: a compressed one (``Content-Encoding``) is
    refused with 415 rather than inflated to whatever size it unpacks to."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise web.HTTPUnsupportedMediaType(reason="Content-Encoding is not accepted")


async def json_body(
    request: web.Request, limit: int = MAX_BODY, budget: InputBudget | None = None
) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > limit:
        raise InvalidArgument("request body too large")
    refuse_content_encoding(request)
    if budget is not None:
        # Room for the body before a byte of it is read; chunked: the most it may be.
        length = request.content_length
        await body_room(request, budget, limit if length is None else length)
    if limit != MAX_BODY:  # a route that takes more than the application's cap
        request = request.clone(client_max_size=limit)
    return decode_body(await request.read())


def endpoint(route: Route, parts: Parts) -> Endpoint:
    """The aiohttp handler of ``route``: check the body and query, then call it."""

    async def checked(request: web.Request) -> Call[Any, Any]:
        limit = route.max_body or MAX_BODY
        budget = parts.node.input_budget
        body = (
            parse(route.body, await json_body(request, limit, budget))
            if route.body is not None
            else None
        )
        query = (
            parse(route.query, request.query, others_ok=True) if route.query is not None else None
        )
        return Call(parts, request, body, query)

    async def answer(request: web.Request) -> web.StreamResponse:
        return await route.handler(await checked(request))

    async def logged(request: web.Request) -> web.StreamResponse:
        status, target = 500, request.match_info.get("name", "")
        try:
            call = await checked(request)
            target = _target(call.body, target)
            response = await route.handler(call)
            status = response.status
            return response
        except (EngineError, OwnershipError) as exc:
            status = http_status(exc)
            raise
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            _log_action(route.action, request, target, status)

    return logged if route.action else answer


def _target(body: object, name: str = "") -> str:
    """What an admin action names: the account in the path (and the new name
    of a rename), or the body's account, accounts (a count for an import's
    objects) or node."""
    if name:
        new = getattr(body, "new_name", None)
        return f"{name} -> {new}" if new else name
    for member in ("name", "accounts", "all_from"):
        value = getattr(body, member, None)
        if value and isinstance(value, tuple):
            if all(isinstance(v, str) for v in value):
                return ",".join(value)
            return f"{len(value)} accounts"
        if value:
            return str(value)
    return ""


def _log_action(action: str, request: web.Request, target: str, status: int) -> None:
    """The mail log's line for an admin action: peerctl says who it is in its
    User-Agent; anything else is a plain API client."""
    agent = request.headers.get("User-Agent", "")
    maillog.admin(
        action,
        ok=status < 400,
        via="cli" if agent.startswith("peerctl/") else "api",
        rip=request.remote or "",
        target=target[:200],
        status=status,
    )


# What a backup node ([node] role = "backup") refuses: anything that would
# make it own an account (or change one it only holds a copy of).
BACKUP_REFUSES = frozenset(
    {
        "failover",
        "switchover",
        "failback",
        "account add",
        "account import",
        "account move",
        "account rename",
    }
)


def _backup_refuses(action: str) -> Endpoint:
    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "error": "backup_node",
                "detail": (
                    f'{action} refused: this is a backup node ([node] role = "backup"): it'
                    " holds a copy of every account and never owns one; to serve from it after"
                    ' losing the pair, promote it (docs/failover.md, "Promoting a backup node")'
                ),
            },
            status=409,
        )

    return refuse


# The problem's code when a route needs a partner and the node has none.
NO_PARTNER = "no_partner"


def _no_partner(route: Route, node: str) -> Endpoint:
    """The answer of a route that needs a partner, on a node configured
    without one: 409 saying so (an absent route was a bare 404, which read as
    if the command or the account did not exist)."""
    what = route.action or route.path.split("/")[2]
    detail = (
        f"this node ({node}) has no partner configured ([sync] sync_host is not set);"
        f" {what} needs one"
    )

    async def refuse(request: web.Request) -> web.StreamResponse:
        return problem(409, "No Partner", detail, NO_PARTNER)

    return refuse


def build_app(parts: Parts, routes: tuple[Route, ...] = ROUTES) -> web.Application:
    public = frozenset(r.path for r in routes if r.public)
    app = web.Application(
        middlewares=[
            body_deadline(parts.node.config.http, "control API"),
            errors_middleware,
            room_release,
            auth_middleware(parts.node.config.api.token, public),
        ],
        client_max_size=MAX_BODY,
    )
    backup = parts.node.config.node.role == "backup"
    for route in routes:
        if backup and route.action in BACKUP_REFUSES:
            app.router.add_route(route.method, route.path, _backup_refuses(route.action))
            continue
        if route.partner and parts.pair is None:
            app.router.add_route(route.method, route.path, _no_partner(route, parts.node.name))
            continue
        if route.method == "GET":
            app.router.add_get(route.path, endpoint(route, parts))  # and HEAD
        else:
            app.router.add_route(route.method, route.path, endpoint(route, parts))
    return app
