"""The mail log: one line per login and per admin action, on the ``peerd.mail`` logger.

Lines have a fixed shape so fail2ban and log scanners can read them
(``contrib/fail2ban/filter.d/peerd.conf``)::

    login failed: rip=203.0.113.9 proto=imap user="alice" account=alice
    login ok: rip=203.0.113.9 proto=pop3 user="bob" account=bob

``rip`` (the client's address) comes first and ``user`` (what the client
typed, quoted with JSON escapes) last, so a user name cannot forge the
address a filter bans.

An admin action through the control API writes one ``admin`` line: what was
done, to which account, who asked (``via``: ``peerctl`` or ``api``, and the
caller's address)::

    admin rename: rip=127.0.0.1 via=peerctl account="alice" new="alice.smith" result=ok
"""

from __future__ import annotations

import asyncio
import json
import logging

__all__ = ["admin", "login", "peer_ip"]

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


def admin(
    action: str, rip: str, via: str, account: str, result: str = "ok", **details: str
) -> None:
    """Log one admin action (``details``: more ``key="value"`` fields, e.g. ``new``)."""
    extra = "".join(f" {key}={json.dumps(value)}" for key, value in details.items())
    log.info(
        "admin %s: rip=%s via=%s account=%s%s result=%s",
        action,
        rip or "-",
        via,
        json.dumps(account),
        extra,
        result,
        extra={"event": f"admin_{action}", "account": account},
    )


def peer_ip(writer: asyncio.StreamWriter) -> str:
    """The client's address on a connection ("" when there is none, e.g. a socketpair)."""
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""
