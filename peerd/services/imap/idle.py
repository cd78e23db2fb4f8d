"""IMAP IDLE (RFC 2177): changes told as they happen until the client says DONE.

How this works: after ``+ idling`` the session alternates between telling
what changed (the core decides what, :meth:`Session.report`) and waiting for
whichever comes first: bytes from the client (``DONE``), a change the store
reports (:meth:`Session.wake` resolves the future :meth:`Session.arm` gave),
or the idle timeout (``[imap] idle_timeout``; RFC 2177 asks clients to
re-issue IDLE within 29 minutes). An account that moves to another node ends
the wait too.

An idle session costs no work while nothing happens: it polls nothing, and
waits on one read of its socket (kept across wake-ups) and one future, not
on tasks made per wait. While it waits it is *parked*: when its mailbox
changes, the server's wake-up (:mod:`peerd.services.imap.wakeup`) reads
every changed mailbox once for all its parked sessions, claims the new
``\\Recent`` UIDs in one write, and writes each session's untagged
responses (its own core decides them; sessions in the same state share
them) straight to its socket, without waking its task. A session that is not
parked (it is reading the mailbox, or its client is slow to read) is woken
instead and reports for itself, sharing the read and the claim of the
sessions woken with it (:mod:`peerd.services.imap.fanout`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

from peerd.protocols.imap import commands as c
from peerd.protocols.imap.parser import Line, ProtocolError
from peerd.protocols.imap.responses import CODE_UNAVAILABLE, continuation, untagged_status
from peerd.services.imap.session import Closed, Handler, Reply, Session

__all__ = ["HANDLERS"]


async def idle(session: Session, cmd: c.Idle) -> Reply | None:
    await session.send(continuation("idling"))  # RFC 2177 3
    await session.poll()
    deadline = time.monotonic() + session.node.config.imap.idle_timeout.total_seconds()
    read: asyncio.Future[bytes] | None = None
    # The first report follows this session's own commands: it reads for
    # itself. Later ones answer a change and may share (see the docstring).
    shared = False
    try:
        while True:
            wake = session.arm()
            await session.report(cmd, shared=shared)
            shared = True
            line = session.core.next_line()
            if isinstance(line, ProtocolError):
                await session.send(line.reply())
                raise Closed
            if isinstance(line, Line):
                if line.data.strip().upper() == b"DONE":
                    return Reply("IDLE terminated")
                return Reply("expected DONE", None, "BAD")
            if session.closing:
                return None
            if read is None:
                read = asyncio.ensure_future(session.read_some())
            waits: set[asyncio.Future[Any]] = {read, wake}
            # Parked: changes are written to the client by the server's
            # fan-out, without waking this task (see the docstring).
            session.parked = not wake.done()
            try:
                done, _ = await asyncio.wait(
                    waits,
                    timeout=max(0.0, deadline - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                session.parked = False
            if read in done:
                data = read.result()
                read = None
                if not data:
                    raise Closed
                session.core.feed(data)
            elif not done:
                await session.send(untagged_status("BYE", "IDLE timed out", CODE_UNAVAILABLE))
                raise Closed
    finally:
        session.disarm()
        if read is not None and not read.done():
            read.cancel()
            # The reader takes another read only once this one has ended.
            await asyncio.wait({read})


HANDLERS: Final[dict[type[c.Command], Handler]] = {c.Idle: idle}
