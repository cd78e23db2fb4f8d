"""The server side of STARTTLS, for the IMAP, POP3 and LMTP services.

Each service upgrades a plain connection in place (IMAP ``STARTTLS``, RFC 3501
6.2.1; POP3 ``STLS``, RFC 2595 4; LMTP ``STARTTLS``, RFC 3207) with the node's
one ``[tls]`` certificate; this module builds that context, so no service
reaches into another.
"""

from __future__ import annotations

import ssl

from peerd.node.config import Config

__all__ = ["server_context", "starttls_context"]


def starttls_context(config: Config) -> ssl.SSLContext | None:
    """The ``[tls]`` certificate as a server context; None when there is none or
    ``[imap] starttls`` is off.

    POP3's STLS follows the same switch (the config has no ``[pop3] starttls``
    key), and one certificate serves both services.
    """
    if not config.imap.starttls:
        return None
    return server_context(config)


def server_context(config: Config) -> ssl.SSLContext | None:
    """The ``[tls]`` certificate as a server context; None when there is none.

    LMTP uses it under its own switch, ``[lmtp] starttls``.
    """
    tls = config.tls
    if tls.cert is None or tls.key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    return context
