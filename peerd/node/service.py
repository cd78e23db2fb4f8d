"""A started part of the daemon and how to stop it.

Every part the daemon starts (a listener, a background worker, the control
API) hands back a :class:`Service`: its name and a coroutine that stops it.
The daemon stops listeners first, then the rest, newest first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["LISTENERS", "Service", "server_service"]

# Stopped first at shutdown, so no new work arrives while the rest winds down.
LISTENERS = frozenset({"lmtp", "imap", "pop3", "managesieve", "socketmap"})


@dataclass(frozen=True, slots=True)
class Service:
    """A started part of the daemon and how to stop it."""

    name: str
    stop: Callable[[], Awaitable[None]]

    @property
    def listener(self) -> bool:
        return self.name in LISTENERS


def server_service(name: str, server: asyncio.Server) -> Service:
    """An :class:`asyncio.Server` as a service: close it, wait a second for it."""

    async def stop() -> None:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)

    return Service(name, stop)
