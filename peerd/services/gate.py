"""How many connections a listener keeps open: in all, and per client address.

How this works: a service asks :meth:`ConnectionGate.admit` for each new
connection before it reads a byte; the gate counts open connections in all
and per remote IP and refuses past either cap (``0`` turns a cap off), with
the reason the service puts in its one-line refusal. The service calls
:meth:`ConnectionGate.release` when the connection ends, whatever ended it.
Clients on this host (the local and remote addresses are the same: a proxy
on the same machine) are counted in all but not per address, since every
user behind such a proxy shares its address.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from peerd.services.starttls import same_host

__all__ = ["ConnectionGate", "Refused"]

log = logging.getLogger("peerd.services.gate")

# One warning per listener per this many seconds while it refuses.
_WARN_EVERY = 60.0


class Refused(Exception):
    """The connection is over a cap; ``str()`` says which."""


@dataclass(slots=True)
class ConnectionGate:
    service: str
    total: int
    per_ip: int
    open: int = 0
    by_ip: dict[str, int] = field(default_factory=dict)
    refused: int = 0
    _warned: float = 0.0

    def admit(self, writer: asyncio.StreamWriter | asyncio.BaseTransport) -> str:
        """Count the connection in, and return the key :meth:`release` takes;
        :class:`Refused` when a cap is reached."""
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) else ""
        counted = "" if same_host(writer) else ip
        if self.total and self.open >= self.total:
            self._refuse(f"too many connections (at most {self.total})", ip)
        if counted and self.per_ip and self.by_ip.get(counted, 0) >= self.per_ip:
            self._refuse(f"too many connections from {ip} (at most {self.per_ip})", ip)
        self.open += 1
        if counted:
            self.by_ip[counted] = self.by_ip.get(counted, 0) + 1
        return counted

    def release(self, counted: str) -> None:
        self.open -= 1
        if counted:
            left = self.by_ip[counted] - 1
            if left:
                self.by_ip[counted] = left
            else:
                del self.by_ip[counted]

    def _refuse(self, reason: str, ip: str) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY:
            self._warned = now
            log.warning("%s: refused a connection from %s: %s", self.service, ip or "?", reason)
        raise Refused(reason)
