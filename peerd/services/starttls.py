"""STARTTLS on an asyncio stream with nothing carried across the handshake.

How this works: bytes a client sends after ``STARTTLS``/``STLS`` and before
its TLS handshake are plaintext, and a man in the middle can inject them
(the CVE-2011-0411 class: RFC 3207 4.2, RFC 2595 3.1, RFC 3501 6.2.1 say the
server must discard them). When the server upgrades, such bytes can sit in
two places: the protocol core's buffer, which the caller counts, and the
:class:`asyncio.StreamReader`'s, which survives ``start_tls`` and would be
read afterwards as if they had come over TLS. :func:`injected` counts both;
a service refuses the command when it is non-zero before its ``OK``, and
:func:`upgrade` checks again after the ``OK`` and closes instead of
upgrading when something slipped in meanwhile. Between that last check and
the moment the loop stops reading the plain socket nothing yields (the
drain in :meth:`asyncio.StreamWriter.start_tls` returns at once when the
``OK`` is flushed), so whatever arrives later reaches the TLS layer, where it
is not a TLS record and fails the handshake.

:func:`same_host` is what a login in the clear needs when plaintext logins
are off (``allow_plaintext_auth``): the client is on this host.

A handshake that fails (a client that speaks plaintext on, a scanner, a
bad certificate on the client's side) ends the connection with one log
line, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Final

__all__ = ["HANDSHAKE_TIMEOUT", "TlsFailed", "injected", "same_host", "upgrade"]

log = logging.getLogger("peerd.services.starttls")

# How long a client has to finish its handshake.
HANDSHAKE_TIMEOUT: Final = 30.0


class TlsFailed(Exception):
    """The upgrade did not happen: the connection must be closed."""


def same_host(writer: asyncio.StreamWriter | asyncio.BaseTransport) -> bool:
    """The client connects from this host's own address (the local and remote
    IPs are the same): as safe as TLS for a login, and what a proxy on the
    same host (nginx terminating TLS) looks like."""
    local = writer.get_extra_info("sockname")
    peer = writer.get_extra_info("peername")
    if not isinstance(local, tuple) or not isinstance(peer, tuple):
        return isinstance(peer, str)  # a Unix socket: local by definition
    return bool(local[0] == peer[0])


def injected(reader: asyncio.StreamReader, core_buffered: int) -> int:
    """Bytes already received after the STARTTLS command: the core's and the stream's."""
    # StreamReader has no public count of what it holds; its buffer is a
    # bytearray in every CPython since 3.4.
    held = getattr(reader, "_buffer", b"")
    return core_buffered + len(held)


async def upgrade(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    context: ssl.SSLContext,
    *,
    core_buffered: int,
    service: str,
) -> None:
    """Start TLS on ``writer`` after the ``OK`` went out; :class:`TlsFailed` if it cannot."""
    peer = writer.get_extra_info("peername")
    where = peer[0] if isinstance(peer, tuple) else "?"
    if injected(reader, core_buffered):
        log.warning("%s: %s sent data between STARTTLS and the handshake; closed", service, where)
        raise TlsFailed("plaintext after STARTTLS")
    try:
        await writer.start_tls(context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
    except (OSError, TimeoutError, EOFError) as exc:  # ssl.SSLError is an OSError
        reason = getattr(exc, "reason", None) or type(exc).__name__
        log.info("%s: TLS handshake with %s failed: %s", service, where, reason)
        raise TlsFailed(str(reason)) from exc
