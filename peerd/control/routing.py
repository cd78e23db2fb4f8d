"""Routing lookups for proxies: JSON, nginx mail ``auth_http``, Postfix ``socketmap``.

How this works: both nodes hold the same ownership table, so both give the
same answer. ``GET /v1/route/{account}`` is JSON for scripts.
``GET /v1/route/nginx`` is nginx's ``auth_http``: the password is verified
against the store (a wrong one gets a failure with ``Auth-Wait``), and the
owner's IMAP or POP3 address comes back as ``Auth-Server``/``Auth-Port``; an
optional shared secret header (``[routing] auth_http_secret``, sent by
nginx's ``auth_http_header X-Auth-Key``) is checked. The socketmap listener
answers Postfix: ``transport`` → ``OK lmtp:inet:HOST:PORT`` of the owner,
``mailbox`` → ``OK <account>`` if it exists, ``NOTFOUND `` fast otherwise,
``TEMP`` when the database is unavailable; the daemon starts it
(:func:`start_socketmap`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from aiohttp import web
from sqlalchemy.orm import Session

from engine.accounts import find_any, lookup_names
from engine.delivery import parse_recipient, resolve_account
from engine.errors import EngineError, InvalidArgument, NoSuchAccount, TemporaryFailure
from ownership import authhttp, socketmap
from ownership import table as ownership_table
from peerd.control.call import Call
from peerd.node.config import Address
from peerd.node.node import Node
from peerd.node.service import Service
from peerd.pair.hooks import AccountRoute, address_of, route_of

__all__ = ["SocketmapServer", "nginx_auth", "route", "start_socketmap"]

log = logging.getLogger("peerd.control.routing")


def _owner_of(session: Session, node: Node, account: str) -> tuple[str, int, str]:
    row = ownership_table.get(session, account)
    if row is None:
        return node.name, 0, "normal"
    return row.owner, row.epoch, row.state


async def route(call: Call[None, None]) -> web.Response:
    node = call.node
    name = call.path("account")

    def read(session: Session) -> AccountRoute:
        account = find_any(session, lookup_names(name, node.config.accounts.lowercase_names))
        if account is None:
            raise NoSuchAccount(f"no such account: {name}")
        owner, epoch, state = _owner_of(session, node, account.name)
        return route_of(node, account.name, owner, epoch, state)

    return web.json_response((await node.store.read(read)).to_json())


async def nginx_auth(call: Call[None, None]) -> web.Response:
    """nginx reads headers only; the status code and body are ignored."""
    node, request = call.node, call.request
    routing = node.config.routing
    if routing.auth_http_secret:
        given = request.headers.get("X-Auth-Key", "").encode()
        if not hmac.compare_digest(given, routing.auth_http_secret.encode()):
            log.warning("auth_http: wrong or missing X-Auth-Key from %s", request.remote)
            return web.Response(
                headers=authhttp.failure("Temporary server problem, try again later", 5, "imap")
            )
    try:
        # aiohttp has already decoded header values as UTF-8 (not latin-1 as
        # a WSGI server would): say so, or non-ASCII user names break.
        auth = authhttp.parse_request(request.headers, header_encoding="utf-8")
    except ValueError as exc:
        return web.Response(headers=authhttp.failure(str(exc), routing.auth_http_wait, "imap"))
    wait = routing.auth_http_wait
    if auth.method not in ("plain", "login"):
        node.counters.inc("auth_http_failures")
        return web.Response(
            headers=authhttp.failure("Invalid login or password", wait, auth.protocol)
        )
    # The same check as IMAP and POP3: dummy hash for unknown users, the
    # shared failed-login throttle (by account and by the client's address
    # nginx reports), the bound on concurrent hashing and the log line.
    try:
        result = await node.authenticate(
            auth.user, auth.password, auth.protocol, auth.client_ip or request.remote or ""
        )
    except EngineError:
        return web.Response(
            headers=authhttp.failure(
                "Temporary server problem, try again later", wait, auth.protocol
            )
        )
    if not result.ok:
        node.counters.inc("auth_http_failures")
        return web.Response(
            headers=authhttp.failure("Invalid login or password", wait, auth.protocol)
        )
    owner = result.owner or node.name
    service = "lmtp" if auth.protocol == "smtp" else auth.protocol
    where = address_of(node, owner, service)
    if where is None:
        return web.Response(
            headers=authhttp.failure("No route to the mailbox server", wait, auth.protocol)
        )
    return web.Response(headers=authhttp.success(where.host, where.port))


class SocketmapServer:
    def __init__(self, node: Node) -> None:
        self.node = node

    def lookup(self, session: Session, query: socketmap.Lookup) -> socketmap.Reply:
        try:
            config = self.node.config
            recipient = parse_recipient(
                query.key,
                frozenset(d.lower() for d in config.node.local_domains),
                config.accounts.lowercase_names,
            )
        except InvalidArgument:
            return socketmap.not_found()
        if query.map_name not in ("transport", "mailbox") or "@" not in query.key:
            return socketmap.not_found()
        try:
            account = resolve_account(session, recipient)
        except NoSuchAccount:
            return socketmap.not_found()
        if query.map_name == "mailbox":
            return socketmap.ok(account.name)
        owner, _, _ = _owner_of(session, self.node, account.name)
        where = address_of(self.node, owner, "lmtp")
        if where is None:
            return socketmap.temp(f"no LMTP address known for {owner}")
        return socketmap.ok(f"lmtp:inet:{where.host}:{where.port}")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = socketmap.NetstringReader()
        try:
            while True:
                data = await asyncio.wait_for(reader.read(4096), 600)
                if not data:
                    break
                for query in decoder.feed(data):
                    try:
                        reply = await self.node.store.read(lambda s, q=query: self.lookup(s, q))  # type: ignore[misc]
                    except TemporaryFailure as exc:
                        reply = socketmap.temp(exc.message[:200])
                    writer.write(reply.encode())
                await writer.drain()
        except socketmap.NetstringError as exc:
            log.warning("socketmap: %s; closing", exc)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


async def start_socketmap(node: Node, where: Address) -> Service:
    server = await asyncio.start_server(SocketmapServer(node).handle, where.host, where.port)
    log.info("socketmap listening on %s", where)

    async def stop() -> None:
        server.close()

    return Service("socketmap", stop)
