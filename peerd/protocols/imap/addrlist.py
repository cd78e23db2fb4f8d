"""Address fields split into (display name, address) pairs, as
:func:`email.utils.getaddresses` splits them, with a fast path for the
common shapes.

How this works: ENVELOPE (RFC 3501 7.4.2) and the SORT keys (RFC 5256)
read the From and To of every stored message, and ``email.utils``'s parser
walks each field a character at a time in Python. Most fields are one
plain mailbox (RFC 5322 3.4): ``addr@example.org``, ``<addr@example.org>``
or ``Display Name <addr@example.org>`` whose name is atoms alone. Those are
recognised by one regular expression and answered as ``email.utils``
answers them (``tests/test_imap_addrlist.py`` holds the two to the same
answers); anything else (quoted strings, comments, groups, routes, several
addresses, dots or specials in a name) goes to ``email.utils``.

Pure: no I/O.
"""

from __future__ import annotations

import email.utils
import re
from typing import Final

__all__ = ["getaddresses"]

# RFC 5322 3.2.3 atext; a dot-atom for each side of the address.
_ATOM: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM: Final = rf"{_ATOM}(?:\.{_ATOM})*"
_PLAIN: Final = re.compile(
    rf"[ \t]*(?:(?P<name>{_ATOM}(?: {_ATOM})*) ?)?<(?P<angle>{_DOT_ATOM}@{_DOT_ATOM})>[ \t]*"
    rf"|[ \t]*(?P<bare>{_DOT_ATOM}@{_DOT_ATOM})[ \t]*"
)


def getaddresses(value: str) -> list[tuple[str, str]]:
    """``email.utils.getaddresses([value])``: one (name, address) per mailbox."""
    plain = _PLAIN.fullmatch(value)
    if plain is None:
        return email.utils.getaddresses([value])
    bare = plain["bare"]
    if bare is not None:
        return [("", bare)]
    return [(plain["name"] or "", plain["angle"])]
