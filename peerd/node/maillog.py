"""The mail log: one line per login, per delivery and per admin action,
on the ``peerd.mail`` logger.

Lines have a fixed shape so fail2ban and log scanners can read them
(``contrib/fail2ban/filter.d/peerd.conf``)::

    login failed: rip=203.0.113.9 proto=imap user="alice" account=alice
    login ok: rip=203.0.113.9 proto=pop3 user="bob" account=bob
    delivery stored: qid=4Q1x2Y3Z4z account=alice mailbox="INBOX" size=1234 guid=8f3e... reply="250 2.1.5 Ok" rcpt="alice@example.test"
    admin failover ok: via=cli rip=127.0.0.1 status=200 target=-

``rip`` (the client's address) comes first and what a client chose (the
user it typed, the recipient, quoted with JSON escapes) last, so it cannot
forge the fields before it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re

__all__ = ["admin", "delivery", "login", "peer_ip", "queue_id_of"]

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


# The queue id of the MTA that handed the message over: the ``id`` clause
# (RFC 5321 section 4.4, "ID") of the topmost Received header, which Postfix
# writes as "by mx.example.test (Postfix) with ESMTP id 4Q1x2Y3Z4z".
_RECEIVED_RE = re.compile(rb"^Received:(.*?)(?=\r?\n[^ \t]|\r?\n\r?\n|\Z)", re.I | re.M | re.S)
_ID_RE = re.compile(rb"\bid\s+([A-Za-z0-9._\-]{1,64})")


def queue_id_of(data: bytes) -> str | None:
    """The queue id in the message's topmost Received header, if it has one."""
    end = data.find(b"\r\n\r\n")
    header = data[: end + 2] if end >= 0 else data[:65536]
    received = _RECEIVED_RE.search(header)
    if received is None:
        return None
    found = _ID_RE.search(received.group(1))
    return found.group(1).decode("ascii") if found else None


def delivery(
    result: str,
    *,
    queue_id: str | None,
    recipient: str,
    account: str,
    mailbox: str,
    size: int,
    guid: str,
    reply: str,
) -> None:
    """Log one recipient's delivery. ``result``: stored, duplicate, discarded
    (a Sieve script kept nothing), deferred (4xx) or refused (5xx)."""
    log.info(
        "delivery %s: qid=%s account=%s mailbox=%s size=%d guid=%s reply=%s rcpt=%s",
        result,
        queue_id or "-",
        account or "-",
        json.dumps(mailbox) if mailbox else "-",
        size,
        guid or "-",
        json.dumps(reply),
        json.dumps(recipient),
        extra={"event": "delivery", "account": account or None, "mailbox": mailbox or None},
    )


def admin(action: str, *, ok: bool, via: str, rip: str, target: str, status: int) -> None:
    """Log one admin action: what, on what, who asked through which interface
    (``api``, or ``cli`` for peerctl), from which address, and the answer."""
    log.info(
        "admin %s %s: via=%s rip=%s status=%d target=%s",
        action,
        "ok" if ok else "failed",
        via,
        rip or "-",
        status,
        json.dumps(target) if target else "-",
        extra={"event": "admin_" + action.replace(" ", "_")},
    )
