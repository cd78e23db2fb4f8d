"""IMAP IDLE (RFC 2177): changes told as they happen until the client says DONE.

How this works: after ``+ idling`` the session alternates between telling
what changed (the core decides what, :meth:`Session.report`) and waiting for
whichever comes first: bytes from the client (``DONE``), a change the store
reports (:attr:`Session.idle_wake`), or the idle timeout (``[imap]
idle_timeout``; RFC 2177 asks clients to re-issue IDLE within 29 minutes).
An account that moves to another node ends the wait too.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from peerd.protocols.imap import commands as c
from peerd.protocols.imap.parser import Line, ProtocolError
from peerd.protocols.imap.responses import CODE_UNAVAILABLE, continuation, untagged_status
from peerd.services.imap.session import Closed, Handler, Reply, Session

__all__ = ["HANDLERS"]


async def idle(session: Session, cmd: c.Idle) -> Reply | None:
    await session.send(continuation("idling"))  # RFC 2177 3
    await session.poll()
    deadline = time.monotonic() + session.node.config.imap.idle_timeout.total_seconds()
    while True:
        await session.report(cmd)
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
        session.idle_wake.clear()
        read = asyncio.ensure_future(session.read_some())
        wake = asyncio.ensure_future(session.idle_wake.wait())
        done, _ = await asyncio.wait(
            {read, wake},
            timeout=max(0.0, deadline - time.monotonic()),
            return_when=asyncio.FIRST_COMPLETED,
        )
        if read in done:
            data = read.result()
            if not data:
                wake.cancel()
                raise Closed
            session.core.feed(data)
        else:
            read.cancel()
            try:
                await read
            except asyncio.CancelledError:
                pass
        wake.cancel()
        if not done:
            await session.send(untagged_status("BYE", "IDLE timed out", CODE_UNAVAILABLE))
            raise Closed


HANDLERS: Final[dict[type[c.Command], Handler]] = {c.Idle: idle}
