"""The LMTP service (RFC 2033): the protocol core on asyncio, and the spool.

How this works: each connection is an :class:`LmtpSession`, an asyncio
protocol that feeds what the socket reads to the sans-I/O core
(:class:`peerd.protocols.lmtp.LmtpConnection`) and writes what the core
says is due. The core speaks the protocol (LHLO, MAIL, RCPT, DATA,
PIPELINING, SIZE, STARTTLS, every limit); the session only moves bytes,
keeps the idle timer, runs the TLS handshake, and answers the two events
that need the node, through :class:`LmtpHandler` (the front's state shared
by its sessions):

- a recipient (``RCPT``): checked by the backend's ``check_rcpt(address)``;
- a message (after ``DATA``): its SHA-1 and the spool's temp file are made
  here (durable later, with the other files of its group commit), then the
  backend's ``deliver(message)`` answers one reply per recipient, in RCPT
  order (RFC 2033 4.2).

The backend is :class:`peerd.services.lmtp.backend.StoreBackend` itself
when the front runs in the daemon (``[lmtp] workers = 0``), or a client of
it over a pipe when the front runs in LMTP worker processes
(:mod:`peerd.services.lmtp.worker`): then the protocol's Python work runs
beside the store's group commit instead of taking turns with it for one
interpreter lock.

A recipient that passed recently skips the backend at RCPT: the same check
runs again inside the delivery's own transaction, so a stale "yes" costs at
worst a 4xx after DATA. A "no" is never cached (a new account must not
bounce). Every "yes" is forgotten (:meth:`LmtpHandler.forget_recipients`)
when an ownership row changes, so a node that has just lost an account
refuses it at the next RCPT.

The idle timer (``[lmtp] idle_timeout``, RFC 5321 4.5.3.2.7) counts from the
session's last progress: a command line read whole, or, in DATA, bytes of
the message. Bytes of a command line that never ends are no progress, so a
client that dribbles a byte now and then is closed like a silent one. A
client that reads none of our replies (the socket's buffers full: writing
paused) for as long is cut off too: its connection is aborted, since a
``421`` could not reach it.

The ``250`` replies of a pipelined group go out in one write with the reply
that ends the group (the core holds them, RFC 2920 3.1); at shutdown every
open session gets what was held and ``421`` (:meth:`LmtpHandler.goodbye`).
STARTTLS is offered when ``[tls]`` has a certificate and ``[lmtp]
starttls`` is on; the switch to TLS happens before any byte the client sent
after STARTTLS is read, and the core has thrown away what was read before.

Memory: every LMTP process has its own input budget (``[limits]
lmtp_input_memory``, :mod:`peerd.node.inputbudget`), since the core holds
a message whole until its final dot. A session in DATA takes room for the
whole message at once when MAIL said its ``SIZE=`` (RFC 1870; Postfix
does), else as it grows (256 KiB at a time, past the 64 KiB any command
has free), and stops reading the socket while it has none (TCP
backpressure: the MTA's writes wait). Taking it all at once keeps
messages from each holding part of the budget and waiting for each other. No room within ``[limits] input_wait``: the message is read
to its end keeping nothing (:meth:`~peerd.protocols.lmtp.LmtpConnection.refuse_data`)
and every recipient gets ``452 4.3.1`` (the MTA keeps it and retries). The
room goes back once the message is answered, and when the session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, cast

from engine.errors import EngineError
from engine.msgid import message_id_of
from engine.recipients import parse_recipient
from engine.spool import Spool
from peerd.node import maillog
from peerd.node.config import Config
from peerd.node.errormap import (
    S421_SHUTTING_DOWN,
    S451_LOCAL_ERROR,
    S501_BAD_ADDRESS,
    lmtp_reply,
)
from peerd.node.inputbudget import UNCOUNTED, InputBudget, NoRoom
from peerd.node.tls import server_context
from peerd.protocols.lmtp import (
    NEED_DATA,
    S250_RCPT_OK,
    S421_BUSY,
    S421_IDLE,
    LmtpConnection,
    MessageReceived,
    RcptRequested,
    Settings,
    StartTlsRequested,
    State,
)
from peerd.services.gate import ConnectionGate, Refused
from peerd.services.lmtp.message import Message

__all__ = ["Backend", "FrontSettings", "LmtpHandler", "LmtpSession", "serve_lmtp"]

log = logging.getLogger("peerd.services.lmtp.front")

RCPT_CACHE_SECONDS = 2.0
# Messages up to this size are hashed and written on the event loop
# (cheaper than a trip to a thread and back); larger ones in a thread.
INLINE_STAGE = 1 << 20
TLS_HANDSHAKE_TIMEOUT = 30.0
# While the session is busy (a recipient check, a delivery) it stops reading
# once this much is buffered; in DATA the core's message limit bounds it.
_PAUSE_AT = 1 << 20
# RFC 5321 4.5.3.1.4: a server accepts command lines of at least 512 octets.
_MIN_LINE = 512
# In DATA, room is taken this much at a time, and kept this far ahead of
# what is buffered (one read of the transport brings at most 256 KiB).
_ROOM_STEP: Final = 256 << 10


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
    idle_timeout: float = 300.0  # RFC 5321 4.5.3.2.7: at least five minutes
    max_connections: int = 0  # 0: no cap
    max_connections_per_ip: int = 0
    # This process's input budget ([limits] lmtp_input_memory, input_wait).
    input_memory: int = 512 << 20
    input_wait: float = 20.0
    # The server context STARTTLS uses; None: STARTTLS is not offered.
    tls: ssl.SSLContext | None = field(default=None, compare=False)

    @classmethod
    def of(cls, config: Config) -> FrontSettings:
        return cls(
            hostname=config.node.hostname,
            local_domains=frozenset(d.lower() for d in config.node.local_domains),
            max_message_size=config.lmtp.max_message_size,
            max_recipients=config.lmtp.max_recipients,
            max_line=max(config.lmtp.max_line, _MIN_LINE),
            idle_timeout=config.lmtp.idle_timeout.total_seconds(),
            max_connections=config.lmtp.max_connections,
            max_connections_per_ip=config.lmtp.max_connections_per_ip,
            input_memory=config.limits.lmtp_input_memory,
            input_wait=config.limits.input_wait.total_seconds(),
            tls=server_context(config) if config.lmtp.starttls else None,
        )

    def core(self) -> Settings:
        """The protocol core's settings."""
        return Settings(
            hostname=self.hostname,
            max_message_size=self.max_message_size,
            max_recipients=self.max_recipients,
            max_line=self.max_line,
            starttls=self.tls is not None,
        )


class LmtpHandler:
    """The front: what its sessions share (recipient cache, spool, backend)."""

    def __init__(
        self,
        settings: FrontSettings,
        spool: Spool,
        backend: Backend,
        *,
        count: Callable[[str], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.core_settings = settings.core()
        self.spool = spool
        self.backend = backend
        self._accepted: dict[tuple[str, ...], float] = {}
        self._generation = 0  # forget_recipients calls so far
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.sessions: set[LmtpSession] = set()
        self.gate = ConnectionGate(
            "lmtp", settings.max_connections, settings.max_connections_per_ip
        )
        # ``count``: where this process's waits and refusals are counted.
        self.budget = InputBudget(
            settings.input_memory,
            wait=settings.input_wait,
            name="lmtp_input_memory",
            count=count,
        )
        # Beyond this much a message is over max_message_size: the core drops it.
        self.most_room = settings.max_message_size + 2 * _ROOM_STEP

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

    async def rcpt_reply(self, address: str) -> str:
        """The reply to ``RCPT TO:<address>``: 250, or the backend's refusal."""
        try:
            recipient = parse_recipient(address, self.settings.local_domains)
        except EngineError:
            return S501_BAD_ADDRESS
        now = time.monotonic()
        if self._accepted.get(recipient.candidates, 0.0) >= now:
            return S250_RCPT_OK
        generation = self._generation
        try:
            refusal = await self.backend.check_rcpt(address)
        except Exception:
            log.exception("recipient check failed")
            return S451_LOCAL_ERROR
        if refusal is not None:
            return refusal
        if len(self._accepted) > 100_000:
            self._accepted.clear()
        # A forget while the check was out may have come after its read:
        # then this "yes" is not cached.
        if generation == self._generation:
            self._accepted[recipient.candidates] = now + RCPT_CACHE_SECONDS
        return S250_RCPT_OK

    async def deliver(self, message: MessageReceived) -> list[str]:
        """One reply per recipient of ``message``, in RCPT order."""
        self.inflight += 1
        self.idle.clear()
        try:
            # Shielded: once the bytes are here, the delivery runs to its end
            # even if the client hangs up; nothing is half-stored.
            return await asyncio.shield(
                self._deliver(message.recipients, message.data, message.sender)
            )
        except Exception:
            log.exception("delivery failed")
            return [S451_LOCAL_ERROR] * len(message.recipients)
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self.idle.set()

    async def _deliver(self, recipients: tuple[str, ...], data: bytes, sender: str) -> list[str]:
        try:
            # Hashed and written to a temp file here (page cache); the group
            # commit makes the batch's files durable together.
            if len(data) <= INLINE_STAGE:
                staged = self.spool.stage(data)
            else:
                loop = asyncio.get_running_loop()
                staged = await loop.run_in_executor(None, self.spool.stage, data)
        except EngineError as exc:
            return [lmtp_reply(exc)] * len(recipients)
        return await self.backend.deliver(
            Message(
                recipients,
                staged,
                len(data),
                message_id_of(data),
                mail_from=sender,
                queue_id=maillog.queue_id_of(data),
            )
        )


class LmtpSession(asyncio.Protocol):
    """One LMTP connection: bytes between the socket and the core."""

    def __init__(self, front: LmtpHandler) -> None:
        self.front = front
        self.core = LmtpConnection(front.core_settings)
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.peer = "?"
        self._input: asyncio.Future[None] | None = None  # the run loop waits for bytes
        self._fresh = False  # bytes or the end came since the core last looked
        self._writable: asyncio.Future[None] | None = None  # writing is paused
        self._reading_paused = False
        self._tls_pending = False  # start_tls called; the first bytes come over TLS
        self._upgrading = False  # start_tls has not returned: self.transport is the raw one
        self._task: asyncio.Task[None] | None = None
        # The last progress (see the module's docstring) and when writing paused.
        self._progress = self.loop.time()
        self._lines = 0
        self._paused_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._counted: str | None = None  # the gate's key while admitted
        self.hold = front.budget.hold()  # room for the message in DATA

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but are one.
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
        try:
            self._counted = self.front.gate.admit(transport)
        except Refused:
            # Before the greeting (RFC 5321 3.1): the client tries again later.
            transport.write(S421_BUSY.encode() + b"\r\n")
            transport.close()
            return
        self.front.sessions.add(self)
        idle = self.front.settings.idle_timeout
        self._timer = self.loop.call_at(self._progress + idle, self._check_idle)
        self._task = self.loop.create_task(self._run())

    def data_received(self, data: bytes) -> None:
        if self._tls_pending:
            # Only the TLS layer calls us once start_tls has begun, and only
            # after the handshake: these are the first bytes over TLS.
            self._tls_pending = False
            self.core.tls_started()
        self.core.receive_data(data)
        if self.core.state is State.DATA:
            self._progress = self.loop.time()
        self._fresh = True
        waiter = self._input
        if waiter is not None:
            self._input = None
            if not waiter.done():
                waiter.set_result(None)
        elif (
            not self._reading_paused
            and self.transport is not None
            and not self._upgrading
            and (
                self.core.buffered > self._room()
                if self.core.state is State.DATA
                else self.core.buffered > _PAUSE_AT
            )
        ):
            # Busy, or in DATA past the room it has: read on when it has more.
            self._reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._end()
        # Plain TCP: stay open to answer what came before the end (asyncio
        # ignores, and warns about, True on a TLS transport).
        return not self.core.tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        writable = self._writable
        if writable is not None and not writable.done():
            writable.set_result(None)
        self.front.sessions.discard(self)
        if self._counted is not None:
            self.front.gate.release(self._counted)
            self._counted = None
        if self._timer is not None:
            self._timer.cancel()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self.loop.create_future()
            self._paused_at = self.loop.time()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    # -- the session ---------------------------------------------------------

    def close_with(self, reply: str) -> bool:
        """Send what is held and ``reply``, then close; False if already closing."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        out = self.core.close_with(reply)
        if not self._upgrading:  # in mid-handshake the socket speaks TLS only
            transport.write(out)
        transport.close()
        if transport.get_write_buffer_size():
            # A client that reads nothing would keep the socket open for ever.
            self.loop.call_later(self.front.settings.idle_timeout, transport.abort)
        return True

    def _end(self) -> None:
        self.core.receive_data(b"")
        self._fresh = True
        waiter, self._input = self._input, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _send(self) -> None:
        out = self.core.data_to_send()
        transport = self.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out)

    def _room(self) -> int:
        """What the message in DATA may hold now (the free octets and the room taken)."""
        return UNCOUNTED + self.hold.reserved

    async def _find_room(self) -> None:
        """In DATA, room for what is buffered and a read more (for all the
        message at once when MAIL said its SIZE: messages do not split the
        budget between them and wait for each other), before reading on;
        none in time: the message is refused (452 4.3.1 per recipient). A
        connection that ends meanwhile stops the wait."""
        core = self.core
        if core.state is not State.DATA or core.refusing:
            return
        expected = max(core.buffered, core.declared_size or 0)
        short = expected + _ROOM_STEP - self._room()
        if short <= 0:
            return
        want = min(max(short, _ROOM_STEP), self.front.most_room - self._room())
        if want <= 0:
            return  # as much as a message may be: the core refuses more itself
        try:
            if not await self.hold.take_before(want, lambda: asyncio.shield(self.closed)):
                self._fresh = True  # the connection is gone: the core sees the end
        except NoRoom as exc:
            self.hold.release()
            core.refuse_data(lmtp_reply(exc))
            self._fresh = True  # the core drops what it holds at its next look

    async def _more_input(self) -> None:
        """Wait for bytes (or the end) unless some came already."""
        if self._writable is not None:
            await self._writable
        await self._find_room()
        if self._fresh:
            return
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        self._input = self.loop.create_future()
        await self._input

    async def _run(self) -> None:
        core = self.core
        try:
            while True:
                self._fresh = False
                event = core.next_event()
                if core.lines != self._lines:
                    self._lines = core.lines
                    self._progress = self.loop.time()
                if core.state is not State.DATA and core.state is not State.DELIVERING:
                    # No message held (answered, or refused by the core): its room goes.
                    self.hold.release()
                if event is NEED_DATA:
                    self._send()
                    await self._more_input()
                elif isinstance(event, RcptRequested):
                    self._send()
                    core.answer_rcpt(await self.front.rcpt_reply(event.address))
                    self._progress = self.loop.time()  # the wait was ours, not the client's
                elif isinstance(event, MessageReceived):
                    self._send()
                    core.answer_message(await self.front.deliver(event))
                    self._progress = self.loop.time()
                elif isinstance(event, StartTlsRequested):
                    if not await self._start_tls(event):
                        return
                else:  # Closing, ConnectionClosed
                    self._send()
                    return
        except Exception:
            log.exception("LMTP session with %s failed", self.peer)
        finally:
            self.hold.release()
            self.core.forget_input()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

    async def _start_tls(self, event: StartTlsRequested) -> bool:
        """RFC 3207: the 220 out, then the handshake; False if it failed."""
        context = self.front.settings.tls
        transport = self.transport
        assert context is not None and transport is not None
        if event.discarded:
            log.warning(
                "LMTP %s sent %d bytes after STARTTLS before the handshake; discarded",
                self.peer,
                event.discarded,
            )
        self._send()
        # start_tls pauses reading and takes the socket's bytes for TLS before
        # it first yields: nothing more is read in the clear.
        self._reading_paused = False
        self._tls_pending = True
        self._upgrading = True
        try:
            upgraded = await self.loop.start_tls(
                transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.info("LMTP %s: TLS handshake failed: %s", self.peer, exc or type(exc).__name__)
            transport.close()
            return False
        finally:
            self._upgrading = False
        if upgraded is None:
            transport.close()
            return False
        self.transport = upgraded
        if self._tls_pending:
            self._tls_pending = False
            self.core.tls_started()
        return True

    def _check_idle(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        now = self.loop.time()
        idle = self.front.settings.idle_timeout
        if self._writable is not None:
            # The client reads none of our replies: a 421 would not reach it either.
            due = self._paused_at + idle
            if now >= due:
                log.info("LMTP %s read nothing we sent for %.0f s; aborted", self.peer, idle)
                transport.abort()
                return
        else:
            due = self._progress + idle
            if self._input is not None and now >= due:
                log.info("LMTP %s idle for %.0f s; closing", self.peer, now - self._progress)
                self.close_with(S421_IDLE)
                return
        # Busy (the backend is answering) or not idle long enough yet.
        self._timer = self.loop.call_at(max(due, now + 1.0), self._check_idle)


async def serve_lmtp(handler: LmtpHandler, **where: Any) -> asyncio.Server:
    """Serve LMTP through ``handler``; ``where`` is ``host=, port=`` or ``sock=``."""
    loop = asyncio.get_running_loop()

    def factory() -> LmtpSession:
        return LmtpSession(handler)

    if "sock" in where:
        return await loop.create_server(factory, sock=where["sock"])
    return await loop.create_server(factory, where["host"], where["port"], reuse_address=True)
