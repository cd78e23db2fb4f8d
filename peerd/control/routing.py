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
(:func:`start_socketmap`). The listener caps its connections
(``[socketmap] max_connections``, ``max_connections_per_ip``: one over a cap
is closed at once, and Postfix defers the lookup), gives each request
``[socketmap] idle_timeout`` to arrive whole (a byte at a time does not
hold a connection open) and cuts off a client that reads none of its
replies for as long (:mod:`peerd.services.stall`).

With a routing directory (``[routing] directory_url``, docs/directory.md)
each lookup is answered locally first; an account this node does not hold is
looked up in the directory (through its cache, ``[routing]
directory_cache_ttl``), so any node answers for an account of any pair.
``auth_http`` for such an account is forwarded to a node of the account's
pair (its owner first), which verifies the password and names the address;
the forwarded request carries ``X-Peerd-Forwarded`` and is never forwarded
again. The directory unavailable: 503, ``TEMP``, a temporary failure.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from engine.accounts import find_any, lookup_names
from engine.delivery import parse_recipient, resolve_account
from engine.errors import EngineError, InvalidArgument, NoSuchAccount, TemporaryFailure
from ownership import authhttp, socketmap
from ownership import table as ownership_table
from ownership.errors import OwnershipError
from peerd.control.call import Call
from peerd.directory import Directory, Found
from peerd.node.config import Address
from peerd.node.errormap import client_text
from peerd.node.httplimits import header_octets
from peerd.node.node import Node
from peerd.node.service import Service
from peerd.pair.hooks import AccountRoute, address_of, route_of
from peerd.services import stall
from peerd.services.gate import ConnectionGate, Refused

__all__ = ["FORWARDED", "SocketmapServer", "nginx_auth", "route", "start_socketmap"]

log = logging.getLogger("peerd.control.routing")

# The header a forwarded auth_http request carries (its value: the sender).
FORWARDED = "X-Peerd-Forwarded"
# What a forwarded auth_http request passes on, and what comes back.
_AUTH_IN = (
    "Auth-User",
    "Auth-Pass",
    "Auth-Protocol",
    "Auth-Method",
    "Auth-Login-Attempt",
    "Auth-Salt",
    "Client-IP",
    "Client-Host",
)
_AUTH_OUT = ("Auth-Status", "Auth-Server", "Auth-Port", "Auth-Wait", "Auth-Error-Code")
FORWARD_TIMEOUT = 5.0


def _foreign(node: Node, owner: str) -> bool:
    """An owner of another pair: the account moved there (docs/directory.md),
    and this node's copy only waits for its deletion; the directory routes it."""
    return owner not in (node.name, node.partner)


def _held_here(session: Session, node: Node, names: tuple[str, ...]) -> bool:
    account = find_any(session, names)
    return account is not None and not _foreign(node, _owner_of(session, node, account.name)[0])


def _owner_of(session: Session, node: Node, account: str) -> tuple[str, int, str]:
    row = ownership_table.get(session, account)
    if row is None:
        return node.name, 0, "normal"
    return row.owner, row.epoch, row.state


def _remote_route(found: Found) -> dict[str, Any]:
    """``/v1/route/{account}``'s answer from the directory."""
    entry = found.entry
    return {
        "account": entry.account,
        "owner": entry.owner,
        "epoch": entry.epoch,
        "state": entry.ownership,
        "imap": found.address("imap"),
        "pop3": found.address("pop3"),
        "lmtp": found.address("lmtp"),
        "pair": entry.pair,
        "source": "directory",
    }


async def route(call: Call[None, None]) -> web.Response:
    node = call.node
    lowercase = node.config.accounts.lowercase_names
    names = lookup_names(call.path("account"), lowercase)
    name = names[0]

    def read(session: Session) -> AccountRoute | None:
        account = find_any(session, names)
        if account is None:
            return None
        owner, epoch, state = _owner_of(session, node, account.name)
        if _foreign(node, owner):
            return None
        return route_of(node, account.name, owner, epoch, state)

    local = await node.store.read(read)
    if local is not None:
        pair = node.config.routing.pair or None
        return web.json_response({**local.to_json(), "pair": pair, "source": "local"})
    directory = call.parts.directory
    found = await directory.find(name) if directory is not None else None
    if found is None:
        raise NoSuchAccount(f"no such account: {name}")
    return web.json_response(_remote_route(found))


async def _elsewhere(node: Node, directory: Directory, user: str) -> Found | None:
    """The directory's entry for a login this node cannot check itself: an
    account it does not hold, served by another node (of any pair)."""
    try:
        names = lookup_names(user, node.config.accounts.lowercase_names)
    except InvalidArgument:
        return None
    if await node.store.read(lambda s: _held_here(s, node, names)):
        return None
    name = names[0]
    found = await directory.find(name)
    if found is None:
        return None
    if found.entry.pair == directory.pair and found.entry.owner == node.name:
        return None  # ours, not here yet: nobody else can check it either
    return found


async def _forward(call: Call[None, None], found: Found) -> dict[str, str] | None:
    """Ask the account's pair (its owner's API first) to answer nginx; its
    headers, or None when no node of the pair answered."""
    request, node = call.request, call.node
    headers = {k: request.headers[k] for k in _AUTH_IN if k in request.headers}
    if "Client-IP" not in headers and request.remote:
        headers["Client-IP"] = request.remote
    headers[FORWARDED] = node.name
    if node.config.routing.auth_http_secret:
        headers["X-Auth-Key"] = node.config.routing.auth_http_secret
    timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for api in found.apis():
            try:
                async with session.get(f"{api}/v1/route/nginx", headers=headers) as answer:
                    got = {k: answer.headers[k] for k in _AUTH_OUT if k in answer.headers}
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning(
                    "auth_http: %s of pair %s did not answer: %s", api, found.entry.pair, exc
                )
                continue
            if "Auth-Status" in got:
                return got
    return None


async def nginx_auth(call: Call[None, None]) -> web.Response:
    """nginx reads headers only; the status code and body are ignored."""
    node, request = call.node, call.request
    routing = node.config.routing
    if routing.auth_http_secret:
        given = header_octets(request, "X-Auth-Key")
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
    directory = call.parts.directory
    if directory is not None and FORWARDED not in request.headers:
        try:
            found = await _elsewhere(node, directory, auth.user)
        except EngineError:  # the directory or the store unavailable
            return web.Response(
                headers=authhttp.failure(
                    "Temporary server problem, try again later", wait, auth.protocol
                )
            )
        if found is not None:
            answer = await _forward(call, found)
            if answer is None:
                answer = authhttp.failure(
                    "Temporary server problem, try again later", wait, auth.protocol
                )
            return web.Response(headers=answer)
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
    if _foreign(node, owner):  # moving to another pair this very moment
        return web.Response(
            headers=authhttp.failure(
                "Temporary server problem, try again later", wait, auth.protocol
            )
        )
    service = "lmtp" if auth.protocol == "smtp" else auth.protocol
    where = address_of(node, owner, service)
    if where is None:
        return web.Response(
            headers=authhttp.failure("No route to the mailbox server", wait, auth.protocol)
        )
    return web.Response(headers=authhttp.success(where.host, where.port))


class SocketmapServer:
    def __init__(self, node: Node, directory: Directory | None = None) -> None:
        self.node = node
        self.directory = directory
        config = node.config.socketmap
        self.gate = ConnectionGate(
            "socketmap", config.max_connections, config.max_connections_per_ip
        )

    def lookup(
        self, session: Session, query: socketmap.Lookup
    ) -> socketmap.Reply | tuple[str, ...]:
        """The reply from this node's store; with a directory, the candidate
        account names to ask it when this node holds none of them."""
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
            if self.directory is not None:
                return recipient.candidates
            return socketmap.not_found()
        owner, _, _ = _owner_of(session, self.node, account.name)
        if _foreign(self.node, owner):
            if self.directory is not None:
                return recipient.candidates
            return socketmap.temp(f"{account.name} moved to another pair")
        if query.map_name == "mailbox":
            return socketmap.ok(account.name)
        where = address_of(self.node, owner, "lmtp")
        if where is None:
            return socketmap.temp(f"no LMTP address known for {owner}")
        return socketmap.ok(f"lmtp:inet:{where.host}:{where.port}")

    async def answer(self, query: socketmap.Lookup) -> socketmap.Reply:
        local = await self.node.store.read(lambda s: self.lookup(s, query))
        if isinstance(local, socketmap.Reply):
            return local
        assert self.directory is not None  # lookup names candidates only with one
        found = await self.directory.find_first(local)
        if found is None:
            return socketmap.not_found()
        if query.map_name == "mailbox":
            return socketmap.ok(found.entry.account)
        where = found.address("lmtp")
        if where is None:
            return socketmap.temp(f"no LMTP address known for {found.entry.owner}")
        return socketmap.ok(f"lmtp:inet:{where}")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            counted = self.gate.admit(writer)
        except Refused:
            # No greeting to refuse in: the connection ends, and Postfix
            # defers what it wanted to look up (a temporary failure).
            writer.close()
            return
        idle = self.node.config.socketmap.idle_timeout.total_seconds()
        loop = asyncio.get_running_loop()
        decoder = socketmap.NetstringReader()
        try:
            # The next request must be whole by then: a byte now and then
            # is no progress (see the module's docstring).
            deadline = loop.time() + idle
            while True:
                data = await asyncio.wait_for(reader.read(4096), max(deadline - loop.time(), 0.0))
                if not data:
                    break
                for query in decoder.feed(data):
                    try:
                        reply = await self.answer(query)
                    except TemporaryFailure as exc:
                        reply = socketmap.temp(client_text(exc, "socketmap"))
                    except (EngineError, OwnershipError, DBAPIError) as exc:
                        # A lookup the store could not answer: Postfix defers
                        # this mail, and the lookups queued behind it on the
                        # connection are still answered.
                        log.warning("socketmap: %r failed: %s", query.key[:100], exc)
                        reply = socketmap.temp("lookup failed")
                    writer.write(reply.encode())
                    deadline = loop.time() + idle
                await stall.drain(writer, idle, "socketmap")
        except socketmap.NetstringError as exc:
            log.warning("socketmap: %s; closing", exc)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self.gate.release(counted)
            stall.close(writer, idle)


async def start_socketmap(
    node: Node, where: Address, directory: Directory | None = None
) -> Service:
    server = await asyncio.start_server(
        SocketmapServer(node, directory).handle, where.host, where.port
    )
    log.info("socketmap listening on %s", where)

    async def stop() -> None:
        server.close()

    return Service("socketmap", stop)
