"""ManageSieve responses (RFC 5804 sections 1.3, 1.7, 4), values in, bytes out.

How this works: :class:`Response` is ``OK``, ``NO`` or ``BYE`` with an
optional response code and text; :func:`string` picks a quoted string when
the value allows it and a literal ``{n}`` otherwise (CR, LF, NUL, or long).
Response codes are named constants (section 1.3); ``TAG`` and ``SASL``
carry a string, ``REFERRAL`` a URL, the rest nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ACTIVE",
    "ALREADYEXISTS",
    "AUTH_TOO_WEAK",
    "BYE",
    "ENCRYPT_NEEDED",
    "NO",
    "NONEXISTENT",
    "OK",
    "QUOTA",
    "QUOTA_MAXSCRIPTS",
    "QUOTA_MAXSIZE",
    "TAG",
    "TRANSITION_NEEDED",
    "TRYLATER",
    "WARNINGS",
    "Response",
    "capability_lines",
    "listing",
    "script_body",
    "string",
]

OK: Final = "OK"
NO: Final = "NO"
BYE: Final = "BYE"

# RFC 5804 section 1.3.
AUTH_TOO_WEAK: Final = "AUTH-TOO-WEAK"
ENCRYPT_NEEDED: Final = "ENCRYPT-NEEDED"
QUOTA: Final = "QUOTA"
QUOTA_MAXSCRIPTS: Final = "QUOTA/MAXSCRIPTS"
QUOTA_MAXSIZE: Final = "QUOTA/MAXSIZE"
REFERRAL: Final = "REFERRAL"
SASL: Final = "SASL"
TRANSITION_NEEDED: Final = "TRANSITION-NEEDED"
TRYLATER: Final = "TRYLATER"
ACTIVE: Final = "ACTIVE"
NONEXISTENT: Final = "NONEXISTENT"
ALREADYEXISTS: Final = "ALREADYEXISTS"
WARNINGS: Final = "WARNINGS"
TAG: Final = "TAG"

_CODES: Final = frozenset(
    {
        AUTH_TOO_WEAK,
        ENCRYPT_NEEDED,
        QUOTA,
        QUOTA_MAXSCRIPTS,
        QUOTA_MAXSIZE,
        REFERRAL,
        SASL,
        TRANSITION_NEEDED,
        TRYLATER,
        ACTIVE,
        NONEXISTENT,
        ALREADYEXISTS,
        WARNINGS,
        TAG,
    }
)
_CODES_WITH_ARGUMENT: Final = frozenset({TAG, SASL, REFERRAL})
# A quoted string longer than this goes as a literal (section 4 sets no
# limit; clients read long lines badly).
_MAX_QUOTED: Final = 1024


def string(value: str) -> bytes:
    """A string as the server sends it: quoted when it can be, else ``{n}`` CRLF octets."""
    data = value.encode("utf-8")
    if len(data) <= _MAX_QUOTED and not any(b in data for b in b"\r\n\0"):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


@dataclass(frozen=True, slots=True)
class Response:
    status: str  # OK, NO, BYE
    text: str = ""
    code: str | None = None
    code_argument: str | None = None

    def __post_init__(self) -> None:
        if self.status not in (OK, NO, BYE):
            raise ValueError("status must be OK, NO or BYE")
        if self.code is not None and self.code not in _CODES:
            raise ValueError(f"unknown response code {self.code}")
        # TAG, SASL and REFERRAL carry an argument; the others none.
        if (self.code_argument is not None) != (self.code in _CODES_WITH_ARGUMENT):
            raise ValueError(f"response code {self.code} and its argument do not agree")

    def encode(self) -> bytes:
        out = self.status.encode()
        if self.code is not None:
            out += b" (" + self.code.encode()
            if self.code_argument is not None:
                out += b" " + (
                    self.code_argument.encode()
                    if self.code == REFERRAL
                    else string(self.code_argument)
                )
            out += b")"
        if self.text:
            out += b" " + string(self.text)
        return out + b"\r\n"


def capability_lines(capabilities: Iterable[tuple[str, str | None]]) -> bytes:
    """``"NAME" "value"`` lines (RFC 5804 section 1.7), without the closing OK."""
    out = bytearray()
    for name, value in capabilities:
        out += string(name)
        if value is not None:
            out += b" " + string(value)
        out += b"\r\n"
    return bytes(out)


def listing(entries: Iterable[tuple[str, bool]]) -> bytes:
    """LISTSCRIPTS lines (section 2.7): each name, `` ACTIVE`` after the active one."""
    out = bytearray()
    for name, active in entries:
        out += string(name) + (b" ACTIVE" if active else b"") + b"\r\n"
    return bytes(out)


def script_body(content: str) -> bytes:
    """GETSCRIPT's script (section 2.9): always a literal, then CRLF."""
    data = content.encode("utf-8")
    return b"{%d}\r\n" % len(data) + data + b"\r\n"
