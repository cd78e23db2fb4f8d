"""The mail log: one line per login, on the ``peerd.mail`` logger.

Lines have a fixed shape so fail2ban and log scanners can read them
(``contrib/fail2ban/filter.d/peerd.conf``)::

    login failed: rip=203.0.113.9 proto=imap user="alice" account=alice
    login ok: rip=203.0.113.9 proto=pop3 user="bob" account=bob

``rip`` (the client's address) comes first and ``user`` (what the client
typed, quoted with JSON escapes) last, so a user name cannot forge the
address a filter bans.
"""

from __future__ import annotations

import asyncio
import json
import logging

__all__ = ["login", "peer_ip"]

log = logging.getLogger("peerd.mail")


def login(ok: bool, rip: str, protocol: str, user: str, account: str = "") -> None:
    """Log one login attempt; ``rip`` empty when the address is unknown."""
    log.info(
        "login %s: rip=%s proto=%s user=%s account=%s",
        "ok" if ok else "failed",
        rip or "-",
        protocol,
        json.dumps(user),
        account or "-",
        extra={"event": "login_ok" if ok else "login_failed", "account": account or None},
    )


def peer_ip(writer: asyncio.StreamWriter) -> str:
    """The client's address on a connection ("" when there is none, e.g. a socketpair)."""
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""
