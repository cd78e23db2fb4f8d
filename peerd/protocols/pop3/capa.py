"""What this POP3 server offers, as the CAPA listing (RFC 2449 section 5).

How this works: :func:`capabilities` names the capabilities for a session's
state; :func:`capa_reply` is the whole multi-line reply. The list differs by
state, which RFC 2449 section 5 allows ("capabilities available in the
AUTHORIZATION state MUST be announced in both states"; the rest may change):

- ``STLS`` (RFC 2595 section 4) only while TLS can still be started: a
  certificate is configured, TLS is not on yet, and no one has logged in.
- ``USER`` and ``SASL PLAIN`` only before login: they are AUTHORIZATION
  commands, and after login no client can use them; and not while a password
  may not be sent on the connection (RFC 2595 section 4: only after STLS).
"""

from __future__ import annotations

from typing import Final

from .replies import Ok, multiline
from .states import State

__all__ = ["IMPLEMENTATION", "capa_reply", "capabilities"]

IMPLEMENTATION: Final = "peerd"


def capabilities(state: State, *, stls: bool, login: bool = True) -> list[str]:
    """The CAPA lines for ``state``; ``stls``: STLS could be started now;
    ``login``: a password may be sent on this connection now."""
    caps = [
        # RFC 2449 section 6: TOP, UIDL, PIPELINING, RESP-CODES, IMPLEMENTATION;
        # RFC 3206 section 6: AUTH-RESP-CODE.
        "TOP",
        "UIDL",
        "PIPELINING",
        "RESP-CODES",
        "AUTH-RESP-CODE",
    ]
    if state is State.AUTHORIZATION and login:
        caps[:0] = ["USER", "SASL PLAIN"]  # RFC 2449 section 6.3, RFC 5034 section 5
    if state is State.AUTHORIZATION and stls:
        caps.append("STLS")
    caps.append(f"IMPLEMENTATION {IMPLEMENTATION}")
    return caps


def capa_reply(state: State, *, stls: bool, login: bool = True) -> bytes:
    """``+OK`` and the capability lines, ``.CRLF`` last."""
    return multiline(Ok("capability list follows"), capabilities(state, stls=stls, login=login))
