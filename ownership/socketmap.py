"""Postfix socketmap (socketmap_table(5)), sans-I/O: netstrings in, lookups out; replies in, bytes out.

How this works: every request and reply is a netstring, ``<len>:<payload>,``
(D. J. Bernstein's netstrings: decimal length, no leading zeros). A request's
payload is ``<map name> <key>``; a reply's is ``OK <data>``, ``NOTFOUND ``
(the space is part of it), ``TEMP <reason>``, ``TIMEOUT <reason>`` or
``PERM <reason>``, at most 100,000 characters. Postfix keeps a connection and
sends many requests on it, so :class:`NetstringDecoder` is incremental and
hands back every complete netstring in what it was fed.

Input is hostile until proven otherwise: the length is checked against the
cap as soon as its digits are read (requests are small, 10,000 octets by
default), a non-digit where a length belongs is refused at once, and any
malformed netstring raises :class:`NetstringError`; the stream cannot be
resynchronised after that, so the listener closes the connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ownership.errors import OwnershipError

__all__ = [
    "MAX_REPLY",
    "MAX_REQUEST",
    "STATUS_NOTFOUND",
    "STATUS_OK",
    "STATUS_PERM",
    "STATUS_TEMP",
    "STATUS_TIMEOUT",
    "Lookup",
    "NetstringDecoder",
    "NetstringError",
    "NetstringReader",
    "Reply",
    "encode_netstring",
    "not_found",
    "ok",
    "parse_reply",
    "perm",
    "temp",
    "timeout",
]

# socketmap_table(5): "The maximum length of a reply is 100000 characters."
MAX_REPLY: Final = 100_000
# Requests are a map name and an address; anything near this is an attack.
MAX_REQUEST: Final = 10_000

# socketmap_table(5) reply status words.
STATUS_OK: Final = "OK"
STATUS_NOTFOUND: Final = "NOTFOUND"
STATUS_TEMP: Final = "TEMP"
STATUS_TIMEOUT: Final = "TIMEOUT"
STATUS_PERM: Final = "PERM"
_STATUSES: Final = frozenset({STATUS_OK, STATUS_NOTFOUND, STATUS_TEMP, STATUS_TIMEOUT, STATUS_PERM})


class NetstringError(OwnershipError, ValueError):
    """A malformed or oversized netstring: the connection cannot go on."""

    code = "socketmap_protocol"


def encode_netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


class NetstringDecoder:
    """Incremental netstring decoder: :meth:`feed` bytes, get complete payloads.

    After a :class:`NetstringError` the decoder is spent: every later call
    raises the same error.
    """

    def __init__(self, max_length: int) -> None:
        if max_length < 0:
            raise ValueError("max_length cannot be negative")
        self.max_length = max_length
        # A length above the cap has at most this many digits; more is refused
        # before the colon arrives.
        self._max_digits = len(str(max_length))
        self._buffer = bytearray()
        self._error: NetstringError | None = None

    def feed(self, data: bytes) -> list[bytes]:
        if self._error is not None:
            raise self._error
        self._buffer += data
        out: list[bytes] = []
        try:
            while (payload := self._next()) is not None:
                out.append(payload)
        except NetstringError as exc:
            self._error = exc
            self._buffer.clear()
            raise
        return out

    @property
    def pending(self) -> int:
        """Octets held for a netstring not yet complete (0 between netstrings)."""
        return len(self._buffer)

    def _next(self) -> bytes | None:
        buffer = self._buffer
        colon = buffer.find(b":", 0, self._max_digits + 1)
        digits = bytes(buffer[: self._max_digits + 1] if colon < 0 else buffer[:colon])
        if not digits.isdigit():
            if digits:
                raise NetstringError(
                    f"netstring length must be decimal digits, got {digits[:12]!r}"
                )
            if colon == 0:
                raise NetstringError("netstring length is missing")
            return None  # nothing buffered yet
        if len(digits) > 1 and digits.startswith(b"0"):
            raise NetstringError("netstring length has a leading zero")
        if int(digits) > self.max_length:
            raise NetstringError(
                f"netstring of {int(digits)} octets exceeds the limit of {self.max_length}"
            )
        if colon < 0:
            return None  # the colon has not arrived yet
        length = int(digits)
        end = colon + 1 + length
        if len(buffer) <= end:
            return None
        if buffer[end] != ord(","):
            raise NetstringError(f"netstring of {length} octets does not end with a comma")
        payload = bytes(buffer[colon + 1 : end])
        del buffer[: end + 1]
        return payload


@dataclass(frozen=True, slots=True)
class Lookup:
    """One request: look ``key`` up in the map Postfix calls ``map_name``."""

    map_name: str
    key: str

    def __post_init__(self) -> None:
        name = self.map_name
        if not name or not name.isprintable() or " " in name:
            raise ValueError(f"bad socketmap name {name!r}")

    @classmethod
    def parse(cls, payload: bytes) -> Lookup:
        name, space, key = payload.partition(b" ")
        if not space or not name:
            raise NetstringError("a socketmap request is '<map name> <key>'")
        # Keys are addresses and may carry any octet (SMTPUTF8 or worse).
        # Invalid UTF-8 is replaced: such a key matches no account and gets
        # NOTFOUND, where refusing it would fail every lookup on the connection.
        try:
            return cls(name.decode("ascii"), key.decode("utf-8", "replace"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise NetstringError(f"bad socketmap name {name[:40]!r}") from exc

    def encode(self) -> bytes:
        """The request as Postfix sends it (for tests and health checks)."""
        return encode_netstring(f"{self.map_name} {self.key}".encode())


@dataclass(frozen=True, slots=True)
class Reply:
    """``<status> <data>``; build with :func:`ok`, :func:`not_found`, :func:`temp`, ..."""

    status: str
    data: str = ""

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise ValueError(f"bad socketmap status {self.status!r}")
        if self.status == STATUS_NOTFOUND and self.data:
            raise ValueError("NOTFOUND carries no data")
        # Postfix keeps the reply in a C string: a NUL would cut it short.
        if "\0" in self.data:
            raise ValueError("socketmap reply data cannot hold NUL")
        if len(self.payload()) > MAX_REPLY:
            raise ValueError(f"socketmap reply longer than {MAX_REPLY} characters")

    def payload(self) -> bytes:
        # "NOTFOUND " keeps its space: socketmap_table(5) spells it so.
        return f"{self.status} {self.data}".encode()

    def encode(self) -> bytes:
        return encode_netstring(self.payload())


def ok(data: str) -> Reply:
    """Found: ``data`` is the value (``lmtp:inet:HOST:PORT`` for transport_maps)."""
    return Reply(STATUS_OK, data)


def not_found() -> Reply:
    return Reply(STATUS_NOTFOUND)


def _reason(reason: str) -> str:
    # A reason is for logs; cut it rather than fail to answer at all.
    return reason.replace("\0", " ")[:1000]


def temp(reason: str) -> Reply:
    """A temporary failure: Postfix defers (``451 4.3.0`` at RCPT time)."""
    return Reply(STATUS_TEMP, _reason(reason))


def timeout(reason: str) -> Reply:
    return Reply(STATUS_TIMEOUT, _reason(reason))


def perm(reason: str) -> Reply:
    return Reply(STATUS_PERM, _reason(reason))


def parse_reply(payload: bytes) -> Reply:
    """A reply's payload (the netstring's content) back to a :class:`Reply`."""
    status, space, data = payload.decode("utf-8").partition(" ")
    if not space:
        raise NetstringError(f"a socketmap reply is '<status> <data>', got {payload[:40]!r}")
    try:
        return Reply(status, data)
    except ValueError as exc:
        raise NetstringError(str(exc)) from exc


class NetstringReader:
    """Requests off one Postfix connection: :meth:`feed` bytes, get :class:`Lookup` s."""

    def __init__(self, max_request: int = MAX_REQUEST) -> None:
        self.max_request = max_request
        self._decoder = NetstringDecoder(max_request)
        self._error: NetstringError | None = None

    def feed(self, data: bytes) -> list[Lookup]:
        """Every complete request in what has arrived; a bad one spoils the stream."""
        if self._error is not None:
            raise self._error
        try:
            return [Lookup.parse(payload) for payload in self._decoder.feed(data)]
        except NetstringError as exc:
            self._error = exc
            raise
