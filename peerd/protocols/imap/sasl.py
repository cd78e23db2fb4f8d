"""SASL for IMAP AUTHENTICATE (RFC 3501 6.2.2, RFC 4959 SASL-IR, RFC 4616 PLAIN), without I/O.

How this works: a client's responses to ``+`` challenges (and a SASL-IR
initial response) are base64 lines; :func:`decode_base64` and
:func:`decode_sasl_response` decode them, and :func:`plain_credentials` reads
the user name and password out of a PLAIN response. The server does the
exchange (it writes the ``+`` and reads the line).
"""

from __future__ import annotations

import base64
import binascii

from peerd.protocols.imap.responses import CommandError

__all__ = ["decode_base64", "decode_sasl_response", "plain_credentials"]


def decode_base64(data: bytes) -> bytes:
    """A base64 SASL response; ``=`` is the empty response (RFC 4959 3)."""
    if data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise CommandError("AUTHENTICATE: response is not base64 (RFC 3501 6.2.2)") from exc


def decode_sasl_response(line: bytes) -> bytes | None:
    """An AUTHENTICATE response line: the decoded bytes, or None when the client
    cancelled with ``*`` (RFC 3501 6.2.2: answer the command BAD)."""
    if line == b"*":
        return None
    return decode_base64(line) if line else b""


def plain_credentials(data: bytes) -> tuple[str, str]:
    """``(user, password)`` from a decoded SASL PLAIN response (RFC 4616 2).

    The message is ``[authzid] NUL authcid NUL passwd`` in UTF-8. Acting as
    another identity (an authzid other than the authcid) is not offered, so it
    is refused like a malformed response.
    """
    parts = data.split(b"\0")
    if len(parts) != 3:
        raise CommandError("AUTHENTICATE PLAIN: want [authzid] NUL user NUL password (RFC 4616)")
    try:
        authzid, user, password = (part.decode("utf-8") for part in parts)
    except UnicodeDecodeError as exc:
        raise CommandError("AUTHENTICATE PLAIN: the response is not UTF-8 (RFC 4616)") from exc
    if not user or not password:
        raise CommandError("AUTHENTICATE PLAIN: empty user name or password")
    if authzid not in ("", user):
        raise CommandError("AUTHENTICATE PLAIN: acting as another user is not offered")
    return user, password
