"""The LMTP service (RFC 2033) on aiosmtpd.

How this works: aiosmtpd speaks the protocol (LHLO, MAIL, RCPT, RSET,
PIPELINING, 8BITMIME, SIZE); :class:`LmtpHandler` holds the hooks. At RCPT
the recipient is resolved and fenced (``550 5.1.1`` unknown, ``451`` when
another node owns the account). After DATA the bytes are spooled once, and
one delivery per accepted recipient goes to the store, where they share a
group commit with whatever else is being delivered. Then one reply per
accepted recipient is sent, in RCPT order (RFC 2033 4.2): some may succeed
while others fail (over quota, ownership moved in between).

Two departures from aiosmtpd's own DATA handling, in :class:`LmtpServer`:
the message is read in large blocks rather than line by line (a 400 KB
message is ~5,000 lines; reading them one await at a time costs more than
storing the message), and an oversized message gets one ``552`` per
recipient, not one reply for all (aiosmtpd issue 517).

A delivery in progress is shielded from the connection going away and from
shutdown: it either commits (and its 250 is sent if the client is still
there) or fails as a whole; nothing is half-stored.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import re
import time
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope
from aiosmtpd.smtp import Session as SmtpSession
from sqlalchemy.orm import Session

from engine.delivery import (
    Delivery,
    DeliveryOptions,
    DeliveryResult,
    DeliveryRunner,
    Recipient,
    message_id_of,
    parse_recipient,
    resolve_account,
)
from engine.errors import EngineError, TemporaryFailure
from engine.spool import Staged
from ownership.errors import OwnershipError
from peerd.errormap import (
    S250_OK,
    S250_OK_DUPLICATE,
    S250_RCPT_OK,
    S451_LOCAL_ERROR,
    S452_TOO_MANY_RCPTS,
    S501_BAD_ADDRESS,
    S552_TOO_BIG,
    S554_NUL,
    lmtp_reply,
)
from peerd.node import Node

__all__ = ["LmtpHandler", "LmtpServer", "start_lmtp"]

log = logging.getLogger("peerd.lmtp")

_BARE_LF = re.compile(rb"(?<!\r)\n")
RCPT_CACHE_SECONDS = 2.0
_TERMINATOR = b"\r\n.\r\n"


class LmtpHandler:
    """aiosmtpd hooks: recipient checks and delivery into the store."""

    def __init__(self, node: Node) -> None:
        self.node = node
        lmtp = node.config.lmtp
        self.options = DeliveryOptions(
            local_domains=frozenset(d.lower() for d in node.config.node.local_domains),
            duplicate_window=lmtp.duplicate_window if lmtp.duplicate_suppression else None,
        )
        self.runner = DeliveryRunner(self.options, node.guard, node.prefetch_guard)
        self.max_recipients = lmtp.max_recipients
        self.max_size = lmtp.max_message_size
        self._accepted: dict[tuple[str, ...], float] = {}

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
        recipients: list[Recipient] = envelope.__dict__.setdefault("peerd_recipients", [])
        if len(recipients) >= self.max_recipients:
            return S452_TOO_MANY_RCPTS
        try:
            recipient = parse_recipient(address, self.options.local_domains)
        except EngineError:
            return S501_BAD_ADDRESS

        def check(session: Session) -> None:
            self.node.guard(session, resolve_account(session, recipient).name)

        # Recipients that passed recently skip the database: the same check
        # runs again inside the delivery's own transaction, so a stale "yes"
        # costs at worst a 4xx after DATA. A "no" is never cached (a new
        # account must not bounce).
        now = time.monotonic()
        if self._accepted.get(recipient.candidates, 0.0) < now:
            try:
                await self.node.store.read(check)
            except (EngineError, OwnershipError) as exc:
                self.node.counters.inc("lmtp_rcpt_refused")
                return lmtp_reply(exc)
            if len(self._accepted) > 100_000:
                self._accepted.clear()
            self._accepted[recipient.candidates] = now + RCPT_CACHE_SECONDS
        recipients.append(recipient)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return S250_RCPT_OK

    async def handle_DATA(self, server: Any, session: SmtpSession, envelope: Envelope) -> str:
        recipients: list[Recipient] = envelope.__dict__.get("peerd_recipients", [])
        data = envelope.original_content
        assert isinstance(data, bytes)
        self.node.begin()
        try:
            # Shielded: once the bytes are here, the delivery runs to its end
            # even if the client hangs up or the daemon is asked to stop.
            replies = await asyncio.shield(self._deliver_all(recipients, data))
        finally:
            self.node.end()
        return "\r\n".join(replies)

    async def _deliver_all(self, recipients: list[Recipient], data: bytes) -> list[str]:
        count = len(recipients)
        if b"\0" in data:
            # RFC 5322 2.3 forbids NUL; Cyrus refuses such mail the same way.
            return [S554_NUL] * count
        if len(data) > self.max_size:
            return [S552_TOO_BIG] * count
        # Two counts run at memchr speed; the regex only when there is a bare LF.
        if data.count(b"\n") != data.count(b"\r\n"):
            data = _BARE_LF.sub(b"\r\n", data)
        store = self.node.store
        indexer = self.node.indexer

        def spool() -> tuple[Staged, bytes | None]:
            # Written and fsynced in a thread of its own: concurrent
            # deliveries' fsyncs overlap (the journal commits them together)
            # and overlap the committer's work on the batch before.
            staged = store.spool.stage(data, sync=True)
            return staged, indexer(data) if indexer is not None else None

        try:
            staged, meta = await store.run_blocking(spool)
        except EngineError as exc:
            self.node.counters.inc("lmtp_temp_failures", count)
            return [lmtp_reply(exc)] * count
        internaldate = dt.datetime.now(dt.UTC)
        message_id = message_id_of(data)
        # One grouped write per recipient: they share the group commit with
        # every other delivery in flight, and each gets its own outcome (one
        # over quota or moved away does not undo the others).
        writes = [
            store.write_grouped(
                self.runner,
                Delivery(recipient, staged.guid, len(data), internaldate, message_id, meta),
                staged=[staged],
            )
            for recipient in recipients
        ]
        results: list[Any] = await asyncio.gather(*writes, return_exceptions=True)
        if all(isinstance(r, BaseException) for r in results):
            store.spool.discard([staged])
        delivered = [
            r.account for r in results if isinstance(r, DeliveryResult) and not r.duplicate
        ]
        for hook in self.node.after_delivery:
            await hook(delivered)
        replies: list[str] = []
        for result in results:
            if isinstance(result, DeliveryResult):
                self.node.counters.inc("lmtp_delivered")
                replies.append(S250_OK_DUPLICATE if result.duplicate else S250_OK)
            elif isinstance(result, (EngineError, OwnershipError)):
                temporary = isinstance(result, TemporaryFailure)
                self.node.counters.inc("lmtp_temp_failures" if temporary else "lmtp_refused")
                replies.append(lmtp_reply(result))
            else:
                log.error("delivery failed unexpectedly: %r", result)
                self.node.counters.inc("lmtp_temp_failures")
                replies.append(S451_LOCAL_ERROR)
        return replies


# A plain reverse- or forward-path: <dot-atom@dot-atom> (RFC 5321 4.1.2) and
# what follows it (the parameters). Anything else goes to aiosmtpd's parser.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(
    rf"\s*<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(.*)\Z", re.DOTALL
)


class LmtpServer(LMTP):
    """aiosmtpd's LMTP with block-wise DATA and per-recipient size errors."""

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


async def start_lmtp(node: Node, host: str, port: int) -> asyncio.Server:
    handler = LmtpHandler(node)
    loop = asyncio.get_running_loop()
    max_size = node.config.lmtp.max_message_size

    max_line = node.config.lmtp.max_line
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
            data_size_limit=max_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=node.config.node.hostname,
            ident="peerd LMTP",
            timeout=300,
            loop=loop,
        )
        server.command_size_limits = collections.defaultdict(lambda: max_line)
        return server

    return await loop.create_server(factory, host, port, reuse_address=True)
