"""sd_notify(3) without libsystemd: one datagram to ``$NOTIFY_SOCKET``.

systemd's ``Type=notify`` waits for ``READY=1`` before it calls the service
started, and ``STOPPING=1`` tells it a clean shutdown has begun. An abstract
socket is written with a leading ``@`` in the variable.
"""

from __future__ import annotations

import os
import socket

__all__ = ["sd_notify"]


def sd_notify(message: str) -> bool:
    """Send ``message``; False when not run under systemd (no socket set)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True
