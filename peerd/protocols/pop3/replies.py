"""POP3 replies (RFC 1939, RFC 2449, RFC 3206, RFC 5034), sans-I/O: values in, bytes out.

How this works: a status line is an :class:`Ok` or an :class:`Err`, each with
an optional response code (``-ERR [SYS/TEMP] ...``; RFC 2449 section 8, RFC
3206), checked when built and encoded by ``.encode()``. Multi-line replies
(CAPA, LIST, UIDL, RETR, TOP) are the status line, the lines with any leading
``.`` doubled, and ``.CRLF`` (RFC 1939 section 3). :func:`dot_stuff` does a
whole message with two ``bytes.replace`` passes, so a message of many
megabytes costs a few memory copies and no Python loop over its lines.

:func:`uidl` names a message by its mailbox's uniqueid and its UID only:
both are replicated unchanged, so the name survives failover and a client
that leaves mail on the server never downloads it twice.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CODE_AUTH",
    "CODE_IN_USE",
    "CODE_LOGIN_DELAY",
    "CODE_SYS_PERM",
    "CODE_SYS_TEMP",
    "MAX_REPLY_LINE",
    "Continuation",
    "Err",
    "Ok",
    "dot_stuff",
    "dot_unstuff",
    "message_reply",
    "multiline",
    "top_text",
    "uidl",
]

# RFC 2449 section 8.1: the mailbox is locked by another session.
CODE_IN_USE: Final = "IN-USE"
# RFC 2449 section 8.1.2: logging in again too soon.
CODE_LOGIN_DELAY: Final = "LOGIN-DELAY"
# RFC 3206 section 4: a temporary problem; the client should retry later.
CODE_SYS_TEMP: Final = "SYS/TEMP"
# RFC 3206 section 4: a permanent problem; retrying will not help.
CODE_SYS_PERM: Final = "SYS/PERM"
# RFC 3206 section 5: the credentials were wrong (not a system problem).
CODE_AUTH: Final = "AUTH"

# RFC 2449 section 4: "Responses may be up to 512 characters long, including
# the terminating CRLF."
MAX_REPLY_LINE: Final = 512

# RFC 2449 section 9 (ABNF): resp-level = 1*rchar; rchar excludes "/" and "]".
_RESP_CODE: Final = re.compile(
    r"[\x21-\x2e\x30-\x5c\x5e-\x7e]+(?:/[\x21-\x2e\x30-\x5c\x5e-\x7e]+)*"
)

# RFC 1939 section 7 (UIDL): 1 to 70 characters in the range 0x21 to 0x7E.
_UIDL_MAX: Final = 70
_UID_MAX: Final = 2**32 - 1  # IMAP UIDs are 32-bit (RFC 3501 section 2.3.1.1)
# Room for "." and a 10-digit UID.
_UNIQUEID_MAX: Final = _UIDL_MAX - 11


def _status(indicator: bytes, text: str, code: str | None) -> bytes:
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError("a reply text cannot hold CR, LF or NUL")
    if code is not None and not _RESP_CODE.fullmatch(code):
        raise ValueError(f"bad response code {code!r} (RFC 2449 section 9)")
    parts = [indicator]
    if code is not None:
        parts.append(b"[" + code.encode("ascii") + b"]")
    if text:
        parts.append(text.encode("utf-8"))
    line = b" ".join(parts) + b"\r\n"
    if len(line) > MAX_REPLY_LINE:
        raise ValueError(f"reply line of {len(line)} octets exceeds {MAX_REPLY_LINE}")
    return line


@dataclass(frozen=True, slots=True)
class Ok:
    """``+OK [code] text``."""

    text: str = ""
    code: str | None = None

    def __post_init__(self) -> None:
        _status(b"+OK", self.text, self.code)

    def encode(self) -> bytes:
        return _status(b"+OK", self.text, self.code)


@dataclass(frozen=True, slots=True)
class Err:
    """``-ERR [code] text``; give a code from the CODE_* constants where one fits."""

    text: str
    code: str | None = None

    def __post_init__(self) -> None:
        _status(b"-ERR", self.text, self.code)

    def encode(self) -> bytes:
        return _status(b"-ERR", self.text, self.code)


@dataclass(frozen=True, slots=True)
class Continuation:
    """``+ <base64 challenge>`` during AUTH (RFC 5034 section 4).

    PLAIN has no challenge: the line is ``+ `` with its space, which some
    clients need to see.
    """

    challenge: bytes = b""

    def encode(self) -> bytes:
        return b"+ " + base64.b64encode(self.challenge) + b"\r\n"


def _crlf(data: bytes) -> bytes:
    # RFC 1939 section 3: lines end in CRLF. A bare LF would end a line for
    # many clients (poplib among them), so ".\n" inside a message could end
    # the reply early; normalising first means every line is stuffed.
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _stuffed(data: bytes) -> list[bytes]:
    # Pieces joined once by the caller: a multi-megabyte message is copied by
    # the replace and by that join, not again for each piece added.
    body = _crlf(data).replace(b"\r\n.", b"\r\n..")
    parts = [b".", body] if body.startswith(b".") else [body]
    if body and not body.endswith(b"\r\n"):
        parts.append(b"\r\n")
    parts.append(b".\r\n")
    return parts


def dot_stuff(data: bytes) -> bytes:
    """A message as the body of a multi-line reply, ``.CRLF`` included (RFC 1939 section 3)."""
    return b"".join(_stuffed(data))


def dot_unstuff(body: bytes) -> bytes:
    """The inverse of :func:`dot_stuff`, as a client reads it; ``body`` ends in ``.CRLF``."""
    if body == b".\r\n":
        return b""
    if not body.endswith(b"\r\n.\r\n"):
        raise ValueError("a multi-line body ends with CRLF . CRLF")
    data = body[: -len(b".\r\n")].replace(b"\r\n..", b"\r\n.")
    return data[1:] if data.startswith(b"..") else data


def multiline(status: Ok, lines: Iterable[str | bytes]) -> bytes:
    """``+OK`` then one line per item (CAPA, LIST, UIDL), dot-stuffed, then ``.CRLF``."""
    out = [status.encode()]
    for item in lines:
        line = item.encode("utf-8") if isinstance(item, str) else item
        if b"\r" in line or b"\n" in line:
            raise ValueError("a listing line cannot hold CR or LF")
        out.append((b"." + line if line.startswith(b".") else line) + b"\r\n")
    out.append(b".\r\n")
    return b"".join(out)


def message_reply(data: bytes, status: Ok | None = None) -> bytes:
    """The reply to RETR (or TOP, given :func:`top_text`): status, stuffed message, ``.CRLF``."""
    head = (status or Ok(f"{len(data)} octets")).encode()
    return b"".join([head, *_stuffed(data)])


def top_text(data: bytes, lines: int) -> bytes:
    """What TOP msg n sends (RFC 1939 section 7): the headers, the blank line, n body lines.

    A message without a blank line is all header and is sent whole; n past
    the end of the body sends the whole message.
    """
    if lines < 0:
        raise ValueError("TOP line count cannot be negative")
    data = _crlf(data)
    if data.startswith(b"\r\n"):  # no headers at all: the body starts at once
        end = 2
    else:
        blank = data.find(b"\r\n\r\n")
        if blank < 0:
            return data
        end = blank + 4
    after = _after_lines(data, end, lines)
    return data if after < 0 else data[:after]


def _after_lines(data: bytes, start: int, lines: int) -> int:
    """Where the ``lines``-th line from ``start`` ends (after its CRLF); -1
    when fewer lines end. Halving with ``bytes.count``: a line at a time
    in Python was 3.5 s on the event loop for ``TOP 1 24999999`` of a
    message of empty lines."""
    lo, hi = start, len(data)
    if lines > data.count(b"\r\n", lo, hi):
        return -1
    while lines and hi - lo > 4096:  # count(lo, hi) >= lines all along
        mid = (lo + hi) // 2
        if data[mid - 1 : mid + 1] == b"\r\n":
            mid += 1  # a CRLF is never cut in two
        found = data.count(b"\r\n", lo, mid)
        if found >= lines:
            hi = mid
        else:
            lines -= found
            lo = mid
    for _ in range(lines):
        lo = data.find(b"\r\n", lo) + 2
    return lo


def uidl(uniqueid: str, uid: int) -> str:
    """The unique-id listing of message ``uid`` in mailbox ``uniqueid`` (RFC 1939 section 7).

    ``<uniqueid>.<uid>`` whenever that fits RFC 1939's 70 characters of
    0x21-0x7E, as it does for peerd's 32-hex uniqueids; it is the form peerd
    has always served, so clients keep recognising their messages. Any other
    uniqueid (too long, or imported with other characters) is replaced by a
    SHA-256 digest of itself, still a function of the two values alone.
    """
    if isinstance(uid, bool) or not 1 <= uid <= _UID_MAX:
        raise ValueError(f"a UID is 1-{_UID_MAX}")
    if not uniqueid:
        raise ValueError("a mailbox uniqueid cannot be empty")
    if len(uniqueid) > _UNIQUEID_MAX or not all("\x21" <= ch <= "\x7e" for ch in uniqueid):
        uniqueid = "H" + hashlib.sha256(uniqueid.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return f"{uniqueid}.{uid}"
