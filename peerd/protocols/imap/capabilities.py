"""What the server says it can do (RFC 3501 6.1.1, 7.2.1).

How this works: :data:`CAPABILITIES` lists every extension the server
offers; :func:`capabilities` adds STARTTLS while the connection may still
switch to TLS (RFC 3501 6.2.1). Advertise only what is complete: a new
extension is added here when its handlers are in. Where a login may not be
sent in the clear, the list says LOGINDISABLED and drops AUTH=PLAIN until TLS
is on.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ADMIN_CAPABILITIES", "CAPABILITIES", "MESSAGE_EXTENSIONS", "capabilities"]

# ACL with the RFC 4314 rights (RFC 4314 2.1), QUOTA with the STORAGE and
# MESSAGE resources (RFC 9208 3.1, 5.1, 5.2; no QUOTASET: users may not set quotas),
# METADATA on mailboxes and the server (RFC 5464 1).
ADMIN_CAPABILITIES: Final = "ACL RIGHTS=texk QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE METADATA"

CAPABILITIES: Final = (
    "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS MOVE UNSELECT CHILDREN "
    "LIST-EXTENDED LIST-STATUS SPECIAL-USE CONDSTORE QRESYNC ESEARCH SORT SORT=DISPLAY "
    "THREAD=ORDEREDSUBJECT THREAD=REFERENCES LOGIN-REFERRALS " + ADMIN_CAPABILITIES + " AUTH=PLAIN"
)
# Extensions on messages and searches (issue 10), each once it is complete:
# RFC 3502, RFC 5182, RFC 5267, RFC 3516, RFC 4469, RFC 9394.
MESSAGE_EXTENSIONS: Final = " MULTIAPPEND SEARCHRES ESORT BINARY CATENATE PARTIAL"


def capabilities(*, starttls: bool, logindisabled: bool = False) -> str:
    """The capability list; ``starttls``: TLS is configured, not on yet, and
    the client has not logged in; ``logindisabled``: no login in the clear
    here (RFC 3501 6.2.3 LOGINDISABLED; no ``AUTH=PLAIN`` either, RFC 4616 6)."""
    caps = CAPABILITIES + MESSAGE_EXTENSIONS
    if logindisabled:
        caps = caps.replace(" AUTH=PLAIN", "") + " LOGINDISABLED"
    return caps + " STARTTLS" if starttls else caps
