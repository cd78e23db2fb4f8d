"""Connection caps and read timeouts for the HTTP listeners (control API, sync).

How this works: :class:`GuardedSite` is an aiohttp ``TCPSite`` whose
listening socket hands each new connection to a :class:`_Guard` protocol
first. The guard counts connections globally and per client address
(``[http] max_connections``, ``max_connections_per_ip``) and aborts one over
either cap at once, with one log line; otherwise it passes everything through
to aiohttp's own handler. Until the first request's header block has ended
(an empty line, RFC 9112 section 2.1) it runs a timer of ``[http]
header_timeout``: a client that dribbles its headers is cut off, so slow
clients cannot hold the listener's connection slots. Under TLS the guard
takes the plain connection first (so the caps and the timer cover the
handshake too), runs the handshake itself (``loop.start_tls``) and then sees
plaintext; a handshake that fails is one log line naming the listener and
the client, never a traceback.

Past the header, :func:`body_deadline` (a middleware each listener's app
puts first) starts a timer of ``[http] body_timeout`` for a request whose body
has not all arrived: when it fires with the body still incomplete, the
connection is aborted with one log line, so a client that dribbles a body
cannot hold the slot either. Between requests, aiohttp's own keep-alive timer
(``keepalive_timeout``, from :func:`runner_options`) closes a connection that
sits idle, or whose next request header does not end, for ``[http]
keepalive_timeout``. Whenever the client takes none of what we send (the
transport pauses writing: the socket's buffers are full) the guard runs a
timer of ``[http] send_timeout``; it stops when writing resumes, and when
it fires the connection is aborted with one log line: a client that sends
requests and never reads the answers cannot hold a handler, and the slot,
for ever (aiohttp's keep-alive timer does not run while a handler writes).

A handler that reads a body into memory first takes room for it in the
node's input budget (:func:`body_room`, :mod:`peerd.node.inputbudget`):
its ``Content-Length``, or the most the route takes when the body is
chunked. Until there is room the body stays unread (aiohttp stops reading
the socket when its buffer is full: TCP backpressure); none within
``[limits] input_wait`` is a 503. :func:`room_release`, a middleware,
gives the room back when the request is answered, however it ends.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from peerd.node.config import HttpConfig
from peerd.node.inputbudget import Hold, InputBudget

__all__ = [
    "GuardedSite",
    "body_deadline",
    "body_room",
    "body_room_trim",
    "header_octets",
    "room_release",
    "runner_options",
]

log = logging.getLogger("peerd.node.httplimits")


def header_octets(request: web.Request, name: str) -> bytes:
    """The value of header ``name`` as the client sent its octets (b"" when
    absent). aiohttp decodes a value as UTF-8 with ``surrogateescape``, so one
    that is not UTF-8 holds lone surrogates: ``str.encode()`` raises on them
    (a 500 and a traceback for a credential of one byte 0xFF), this does not."""
    return request.headers.get(name, "").encode("utf-8", "surrogateescape")


def _abort(transport: asyncio.BaseTransport) -> None:
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    else:  # pragma: no cover - stream transports are write transports
        transport.close()


class _Counts:
    def __init__(self) -> None:
        self.total = 0
        self.per_ip: Counter[str] = Counter()


class _Guard(asyncio.Protocol):
    def __init__(
        self,
        inner: Callable[[], asyncio.Protocol],
        counts: _Counts,
        limits: HttpConfig,
        what: str,
        tls: ssl.SSLContext | None,
    ) -> None:
        self._make = inner
        self._tls = tls
        self._counted = False
        self._handshake: asyncio.Task[None] | None = None
        self._inner: asyncio.Protocol | None = None
        self._counts = counts
        self._limits = limits
        self._what = what
        self._ip = "-"
        self._timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._transport: asyncio.BaseTransport | None = None
        # Bytes the TLS layer decrypted before start_tls returned (a TLS 1.3
        # client sends its request right behind its Finished): kept for the
        # HTTP protocol, which exists only once the handshake is over.
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._ip = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
        counts, limits = self._counts, self._limits
        if counts.total >= limits.max_connections:
            reason = f"{counts.total} connections (max_connections)"
        elif counts.per_ip[self._ip] >= limits.max_connections_per_ip:
            reason = f"{counts.per_ip[self._ip]} from it (max_connections_per_ip)"
        else:
            reason = ""
        if reason:
            log.warning("%s: refused a connection from %s: %s", self._what, self._ip, reason)
            _abort(transport)
            return
        counts.total += 1
        counts.per_ip[self._ip] += 1
        self._counted = True
        self._transport = transport
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(limits.header_timeout.total_seconds(), self._too_slow)
        if self._tls is None or not isinstance(transport, asyncio.WriteTransport):
            self._start(transport)
        else:
            # Not a byte may reach this plain protocol before start_tls puts
            # the TLS layer in its place: a ClientHello read here would be
            # lost and the handshake would hang. start_tls resumes reading.
            if isinstance(transport, asyncio.ReadTransport):
                transport.pause_reading()
            self._handshake = loop.create_task(self._start_tls(transport, self._tls))

    def _start(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._inner = self._make()
        self._inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    async def _start_tls(self, transport: asyncio.WriteTransport, context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            secure = await loop.start_tls(
                transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self._limits.header_timeout.total_seconds(),
            )
        except (OSError, TimeoutError, EOFError) as exc:  # ssl.SSLError is an OSError
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            log.info("%s: TLS handshake with %s failed: %s", self._what, self._ip, reason)
            _abort(transport)
            self._release()
            return
        finally:
            self._handshake = None
        if secure is None or self._transport is None:
            if self._transport is not None:  # not cut off by the timer: the client left
                log.info(
                    "%s: TLS handshake with %s failed: connection closed", self._what, self._ip
                )
            self._release()
            return
        self._start(secure)

    def _too_slow(self) -> None:
        self._timer = None
        log.warning(
            "%s: closed a connection from %s: no complete request header within %gs",
            self._what,
            self._ip,
            self._limits.header_timeout.total_seconds(),
        )
        transport, self._transport = self._transport, None
        if transport is not None:
            _abort(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            if self._handshake is not None:
                self._early.append(data)  # decrypted before start_tls returned
            return
        if self._timer is not None:
            window = self._tail + data
            if b"\r\n\r\n" in window:
                self._timer.cancel()
                self._timer = None
            self._tail = window[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def _release(self) -> None:
        """Give back this connection's place in the counts (once)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._transport = None
        if not self._counted:
            return
        self._counted = False
        self._counts.total -= 1
        self._counts.per_ip[self._ip] -= 1
        if self._counts.per_ip[self._ip] <= 0:
            del self._counts.per_ip[self._ip]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handshake is not None:
            return  # the handshake failed: _start_tls logs it and releases
        self._release()
        if self._inner is None:
            return
        inner, self._inner = self._inner, None
        inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._send_timer is None and self._transport is not None:
            seconds = self._limits.send_timeout.total_seconds()
            self._send_timer = asyncio.get_running_loop().call_later(seconds, self._not_read)
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if self._inner is not None:
            self._inner.resume_writing()

    def _not_read(self) -> None:
        self._send_timer = None
        log.warning(
            "%s: closed a connection from %s: it read nothing we sent for %gs",
            self._what,
            self._ip,
            self._limits.send_timeout.total_seconds(),
        )
        transport, self._transport = self._transport, None
        if transport is not None:
            _abort(transport)


class GuardedSite(web.TCPSite):
    """A ``TCPSite`` with the caps and header timeout of ``limits``; ``what``
    names the listener in log lines."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        limits: HttpConfig,
        what: str,
        ssl_context: ssl.SSLContext | None = None,
        reuse_address: bool | None = None,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, reuse_address=reuse_address)
        self._limits = limits
        self._what = what
        self._counts = _Counts()

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        limits, counts, what = self._limits, self._counts, self._what

        def factory() -> asyncio.Protocol:
            return _Guard(server, counts, limits, what, tls)

        # The guard runs the TLS handshake itself (see the module's docstring).
        tls = self._ssl_context
        self._server = await asyncio.get_running_loop().create_server(
            factory,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
        )


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def body_deadline(limits: HttpConfig, what: str) -> Any:
    """The middleware that cuts a request whose body is not all in within
    ``limits.body_timeout`` of its header (see the module's docstring)."""
    seconds = limits.body_timeout.total_seconds()

    def cut(request: web.Request) -> None:
        if request.content.is_eof():
            return  # all of it arrived; the handler may still be reading
        log.warning(
            "%s: closed a connection from %s: request body not complete within %gs",
            what,
            request.remote or "-",
            seconds,
        )
        if request.transport is not None:
            _abort(request.transport)

    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if not request.body_exists or request.content.is_eof():
            return await handler(request)
        timer = asyncio.get_running_loop().call_later(seconds, cut, request)
        try:
            return await handler(request)
        finally:
            timer.cancel()

    return middleware


def runner_options(limits: HttpConfig) -> dict[str, Any]:
    """What each listener's ``web.AppRunner`` takes from ``[http]``."""
    return {"keepalive_timeout": limits.keepalive_timeout.total_seconds()}


_HOLD: Final = web.RequestKey("peerd.input_hold", Hold)


async def body_room(request: web.Request, budget: InputBudget, size: int) -> None:
    """Take room in ``budget`` for ``size`` more octets this request holds
    (:class:`~peerd.node.inputbudget.NoRoom` after the budget's wait); given
    back by :func:`room_release` when the request is answered."""
    hold = request.get(_HOLD)
    if not isinstance(hold, Hold):
        hold = request[_HOLD] = budget.hold()
    # One request never holds more than the whole budget (a compressed sync
    # request holds its bytes and, once inflated, theirs too): past it, it
    # waits for the budget to empty instead of being refused at every retry
    # for ever.
    await hold.take(max(0, min(size, budget.limit - hold.reserved)))


def body_room_trim(request: web.Request, held: int) -> None:
    """The request holds ``held`` octets, not the most its route takes (a
    chunked body, read): the rest of its room goes back."""
    hold = request.get(_HOLD)
    if isinstance(hold, Hold) and hold.reserved > held:
        hold.give_back(hold.reserved - held)


@web.middleware
async def room_release(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Give back the room :func:`body_room` took for the request, once it is answered."""
    try:
        return await handler(request)
    finally:
        hold = request.get(_HOLD)
        if isinstance(hold, Hold):
            hold.release()
