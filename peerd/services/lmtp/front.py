"""The LMTP service (RFC 2033) on aiosmtpd: the protocol front.

How this works: aiosmtpd speaks the protocol (LHLO, MAIL, RCPT, RSET,
PIPELINING, 8BITMIME, SIZE); :class:`LmtpHandler` holds the hooks and does
the per-message byte work: NUL and size checks, bare LF repair, the SHA-1
and the spool's temp file (made durable by the group commit, with the other
files of its batch). What needs the database goes to a backend with two calls:
``check_rcpt(address)`` at RCPT and ``deliver(message)`` after DATA, which
answers one reply per accepted recipient, in RCPT order (RFC 2033 4.2). The
backend is :class:`peerd.services.lmtp.backend.StoreBackend` itself when the front
runs in the daemon (``[lmtp] workers = 0``), or a client of it over a pipe
when the front runs in LMTP worker processes (:mod:`peerd.services.lmtp.worker`):
then the protocol's Python work runs beside the store's group commit
instead of taking turns with it for one interpreter lock.

A recipient that passed recently skips the backend at RCPT: the same check
runs again inside the delivery's own transaction, so a stale "yes" costs at
worst a 4xx after DATA. A "no" is never cached (a new account must not
bounce). Every "yes" is forgotten (:meth:`LmtpHandler.forget_recipients`)
when an ownership row changes, so a node that has just lost an account
refuses it at the next RCPT.

Three departures from aiosmtpd, in :class:`LmtpServer`: the ``250`` replies
of a pipelined group go out in one write (see :meth:`LmtpServer.push`);
the message is read in large blocks rather than line by line (a 400 KB
message is ~5,000 lines; reading them one await at a time costs more than
storing the message), and an oversized message gets one ``552`` per
recipient, not one reply for all (aiosmtpd issue 517).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope
from aiosmtpd.smtp import Session as SmtpSession

from engine.delivery import message_id_of, parse_recipient
from engine.errors import EngineError
from engine.spool import Spool
from peerd.node.config import Config
from peerd.node.errormap import (
    S250_RCPT_OK,
    S421_SHUTTING_DOWN,
    S452_TOO_MANY_RCPTS,
    S501_BAD_ADDRESS,
    S552_TOO_BIG,
    S554_NUL,
    lmtp_reply,
)
from peerd.services.lmtp.backend import Message

__all__ = ["Backend", "FrontSettings", "LmtpHandler", "LmtpServer", "serve_lmtp"]

log = logging.getLogger("peerd.services.lmtp.front")

_BARE_LF = re.compile(rb"(?<!\r)\n")
RCPT_CACHE_SECONDS = 2.0
INLINE_STAGE = 1 << 20
_TERMINATOR = b"\r\n.\r\n"


class Backend(Protocol):
    async def check_rcpt(self, address: str) -> str | None: ...

    async def deliver(self, message: Message) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class FrontSettings:
    """What the protocol front needs of the node's configuration."""

    hostname: str
    local_domains: frozenset[str]
    max_message_size: int
    max_recipients: int
    max_line: int

    @classmethod
    def of(cls, config: Config) -> FrontSettings:
        return cls(
            hostname=config.node.hostname,
            local_domains=frozenset(d.lower() for d in config.node.local_domains),
            max_message_size=config.lmtp.max_message_size,
            max_recipients=config.lmtp.max_recipients,
            max_line=config.lmtp.max_line,
        )


class LmtpHandler:
    """aiosmtpd hooks: recipient checks and spooling; the rest is the backend's."""

    def __init__(self, settings: FrontSettings, spool: Spool, backend: Backend) -> None:
        self.settings = settings
        self.spool = spool
        self.backend = backend
        self._accepted: dict[tuple[str, ...], float] = {}
        self._generation = 0  # forget_recipients calls so far
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.sessions: set[LmtpServer] = set()

    def forget_recipients(self) -> None:
        """Drop every cached "yes": an ownership row changed (a failover, a
        switchover), so each recipient is asked about again."""
        self._accepted.clear()
        self._generation += 1

    async def goodbye(self, grace: float) -> None:
        """Stop: let the deliveries in progress end (up to ``grace``), then tell
        every open session ``421`` (RFC 5321 3.8: the MTA keeps the message and
        tries again) and close it. Returns once the 421s are written (a loop
        may write them on a later turn: uvloop does), or after a second."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), grace)
        closing = [s.closed for s in list(self.sessions) if s.close_with(S421_SHUTTING_DOWN)]
        if closing:
            await asyncio.wait(closing, timeout=1.0)

    async def handle_EHLO(
        self,
        server: Any,
        session: SmtpSession,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """LHLO: advertise PIPELINING and enhanced codes (RFC 2033 4.1, RFC 2920)."""
        session.host_name = hostname
        head = [r for r in responses if not r.startswith(("250-AUTH", "250 HELP"))]
        return [*head, "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250 HELP"]

    async def handle_RCPT(
        self,
        server: Any,
        session: SmtpSession,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return S452_TOO_MANY_RCPTS
        try:
            recipient = parse_recipient(address, self.settings.local_domains)
        except EngineError:
            return S501_BAD_ADDRESS
        now = time.monotonic()
        if self._accepted.get(recipient.candidates, 0.0) < now:
            generation = self._generation
            refusal = await self.backend.check_rcpt(address)
            if refusal is not None:
                return refusal
            if len(self._accepted) > 100_000:
                self._accepted.clear()
            # A forget while the check was out may have come after its read:
            # then this "yes" is not cached.
            if generation == self._generation:
                self._accepted[recipient.candidates] = now + RCPT_CACHE_SECONDS
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return S250_RCPT_OK

    async def handle_DATA(self, server: Any, session: SmtpSession, envelope: Envelope) -> str:
        data = envelope.original_content
        assert isinstance(data, bytes)
        self.inflight += 1
        self.idle.clear()
        try:
            # Shielded: once the bytes are here, the delivery runs to its end
            # even if the client hangs up; nothing is half-stored.
            replies = await asyncio.shield(self._deliver(tuple(envelope.rcpt_tos), data))
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self.idle.set()
        return "\r\n".join(replies)

    async def _deliver(self, recipients: tuple[str, ...], data: bytes) -> list[str]:
        count = len(recipients)
        if b"\0" in data:
            # RFC 5322 2.3 forbids NUL; Cyrus refuses such mail the same way.
            return [S554_NUL] * count
        if len(data) > self.settings.max_message_size:
            return [S552_TOO_BIG] * count
        # Two counts run at memchr speed; the regex only when there is a bare LF.
        if data.count(b"\n") != data.count(b"\r\n"):
            data = _BARE_LF.sub(b"\r\n", data)
        try:
            # Hashed and written to a temp file here (page cache; small ones
            # on the event loop, cheaper than a trip to a thread and back);
            # the group commit makes the batch's files durable together.
            if len(data) <= INLINE_STAGE:
                staged = self.spool.stage(data)
            else:
                loop = asyncio.get_running_loop()
                staged = await loop.run_in_executor(None, self.spool.stage, data)
        except EngineError as exc:
            return [lmtp_reply(exc)] * count
        message = Message(recipients, staged, len(data), message_id_of(data))
        return await self.backend.deliver(message)


# A plain reverse- or forward-path: <dot-atom@dot-atom> (RFC 5321 4.1.2) and
# what follows it (the parameters). Anything else goes to aiosmtpd's parser.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(
    rf"\s*<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(.*)\Z", re.DOTALL
)


class LmtpServer(LMTP):
    """aiosmtpd's LMTP with block-wise DATA, per-recipient size errors and
    pipelined replies sent together."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._held: list[bytes] = []
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.event_handler.sessions.add(self)

    async def push(self, status: str | bytes) -> None:
        """Send a reply, or hold a one-line ``250`` while the next pipelined
        command is already here: RFC 2920 3.1 lets a server send the replies
        of a pipelined group together, and a client that pipelines MAIL, RCPT
        and DATA then gets one write with the three replies instead of three.
        Anything else (the ``354``, every error, the per-recipient replies
        after DATA, ``221``) goes out at once with whatever was held before
        it, so nothing waits for input behind a held reply."""
        if isinstance(status, str):
            response = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        else:
            response = status
        self._held.append(response + b"\r\n")
        buffered = getattr(self._reader, "_buffer", b"")
        if response.startswith(b"250 ") and b"\n" not in response and b"\n" in buffered:
            return
        self.send_held()
        await self._writer.drain()

    def close_with(self, reply: str) -> bool:
        """Send what is held and ``reply``, then close; False if already closing."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        self._held.append(reply.encode() + b"\r\n")
        self.send_held()
        transport.close()
        return True

    def send_held(self) -> None:
        """Write the replies held back, if any."""
        if self._held:
            self._writer.write(b"".join(self._held))
            self._held.clear()

    def connection_lost(self, error: Exception | None) -> None:
        self.event_handler.sessions.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)
        super().connection_lost(error)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The common ``<local@domain>`` without the RFC 5322 header parser.

        aiosmtpd parses every MAIL and RCPT address with the email package's
        full header grammar, which costs more than storing a small message;
        a plain address gives the same answer from one regular expression.
        """
        match = _PLAIN_PATH.match(arg)
        if match is None:
            return super()._getaddr(arg)
        address, rest = match.group(1), match.group(2).lstrip()
        limit = self.local_part_limit
        if limit and len(address.rpartition("@")[0]) > limit:
            return None, None
        return address, rest

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        envelope = self.envelope
        assert envelope is not None
        if not envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        body = await self._read_body()
        if body is None:
            return  # the connection is gone; nothing was stored
        count = len(envelope.rcpt_tos)
        if body is _TOO_BIG:
            await self.push("\r\n".join([S552_TOO_BIG] * count))
        else:
            envelope.original_content = body
            envelope.content = body
            status = await self._call_handler_hook("DATA")
            await self.push(status)
        self._set_post_data_state()  # type: ignore[no-untyped-call]

    async def _read_body(self) -> bytes | None:
        """Read up to the lone dot; undo dot-stuffing (RFC 5321 4.5.2).

        A CRLF is put in front so that a terminator right at the start (an
        empty message) is found by the same search. What follows the
        terminator (pipelined commands) is handed back to the reader.
        """
        limit = self.data_size_limit or 0
        buf = bytearray(b"\r\n")
        searched = 0
        too_big = False
        while True:
            # read() with a huge size returns everything buffered, so the
            # reader is empty when we hand back what followed the dot.
            chunk = await self._reader.read(1 << 30)
            if not chunk:
                return None
            buf += chunk
            end = buf.find(_TERMINATOR, max(0, searched - 4))
            if end >= 0:
                rest = bytes(buf[end + 5 :])
                if rest:
                    self._reader.feed_data(rest)
                if too_big:
                    return _TOO_BIG
                del buf[end + 2 :]
                return bytes(buf).replace(b"\r\n..", b"\r\n.")[2:]
            if limit and len(buf) > limit + 64:
                # Over the limit: keep reading to the end, keep nothing but
                # the tail a terminator could straddle.
                too_big = True
                del buf[:-4]
            searched = len(buf)


_TOO_BIG = b"\0too big\0"


async def serve_lmtp(handler: LmtpHandler, **where: Any) -> asyncio.Server:
    """Serve LMTP through ``handler``; ``where`` is ``host=, port=`` or ``sock=``."""
    settings = handler.settings
    loop = asyncio.get_running_loop()
    max_line = settings.max_line
    # aiosmtpd reads the command-line cap from class attributes: a subclass
    # per configuration ([lmtp] max_line; RFC 5321 4.5.3.1.4 asks for >= 512).
    server_class = type(
        "ConfiguredLmtpServer",
        (LmtpServer,),
        {"line_length_limit": max(1001, max_line + 2), "command_size_limit": max_line},
    )

    def factory() -> LmtpServer:
        server: LmtpServer = server_class(
            handler,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=settings.hostname,
            ident="peerd LMTP",
            timeout=300,
            loop=loop,
        )
        server.command_size_limits = collections.defaultdict(lambda: max_line)
        return server

    if "sock" in where:
        return await loop.create_server(factory, sock=where["sock"])
    return await loop.create_server(factory, where["host"], where["port"], reuse_address=True)
