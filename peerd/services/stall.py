"""A client that reads nothing of what we send: the bound on each write.

How this works: a session writes into its transport and waits
(``StreamWriter.drain``) until the transport's buffer is below its
low-water mark. A client that never reads would hold that wait, and the
connection's slot with it, for ever: the kernel's buffers fill, then the
transport's, and the wait never ends. :func:`drain` bounds each such wait:
when the buffer has not come down within ``seconds`` the connection is
aborted (``close()`` would wait for the buffer to empty, which it never
does) and the wait ends in :class:`ConnectionResetError`, which every
session takes as the client gone. Each wait is one step of progress: a
slow reader that takes something every ``seconds`` is never cut.

The services choose ``seconds`` as they do for reads: before login the
time left to log in (``login_timeout``), after it the idle timeout.
:func:`close` ends a connection whose client may not read: what is still
buffered gets ``seconds`` to go, then the socket is aborted, so a session
that ended never leaves its socket open behind it.
"""

from __future__ import annotations

import asyncio
import logging

__all__ = ["close", "drain", "guard"]

log = logging.getLogger("peerd.services.stall")

# However little time is left to log in, a reply that is read gets this long.
_LEAST = 1.0


def _stalled(transport: asyncio.BaseTransport, service: str, seconds: float) -> None:
    peer = transport.get_extra_info("peername")
    where = peer[0] if isinstance(peer, tuple) else "?"
    log.info("%s: %s read nothing we sent for %.0f s; connection aborted", service, where, seconds)
    _abort(transport)


def _abort(transport: asyncio.BaseTransport) -> None:
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    else:  # pragma: no cover - stream transports are write transports
        transport.close()


def guard(transport: asyncio.BaseTransport, seconds: float, service: str) -> asyncio.TimerHandle:
    """A timer that aborts ``transport`` in ``seconds`` (at least a second)
    unless cancelled first: the caller cancels it when its write has moved."""
    seconds = max(seconds, _LEAST)
    return asyncio.get_running_loop().call_later(seconds, _stalled, transport, service, seconds)


async def drain(writer: asyncio.StreamWriter, seconds: float, service: str) -> None:
    """``writer.drain()``, aborting the connection when the client has not
    taken enough of what is buffered within ``seconds`` (see the module's
    docstring); raises :class:`ConnectionError` then."""
    if not writer.transport.get_write_buffer_size():
        await writer.drain()  # nothing buffered: returns at once (no timer to arm)
        return
    timer = guard(writer.transport, seconds, service)
    try:
        await writer.drain()
    finally:
        timer.cancel()


def close(writer: asyncio.StreamWriter, seconds: float) -> None:
    """Close the connection; what is still buffered gets ``seconds`` (at
    least a second) to reach the client before the socket is aborted."""
    transport = writer.transport
    left = transport.get_write_buffer_size()
    writer.close()
    if left:
        asyncio.get_running_loop().call_later(max(seconds, _LEAST), _abort, transport)
