"""Postfix socketmap (socketmap_table(5)), sans-I/O: netstrings in, lookups out.

How this works: a request is the netstring ``<len>:<name> <key>,``; the
reply is a netstring holding ``OK <data>``, ``NOTFOUND `` (with the space),
``TEMP <reason>``, ``TIMEOUT <reason>`` or ``PERM <reason>``, at most 100,000
characters. Postfix keeps the connection and sends many requests on it, so
:class:`NetstringReader` is incremental. Requests are small: anything longer
than ``max_request`` is a protocol error, and the connection is closed.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Lookup",
    "NetstringError",
    "NetstringReader",
    "Reply",
    "encode_netstring",
    "not_found",
    "ok",
    "temp",
]

MAX_REPLY = 100_000


class NetstringError(ValueError):
    """A malformed or oversized netstring: the connection cannot go on."""


@dataclass(frozen=True, slots=True)
class Lookup:
    map_name: str
    key: str


@dataclass(frozen=True, slots=True)
class Reply:
    status: str
    data: str = ""

    def __post_init__(self) -> None:
        if self.status not in ("OK", "NOTFOUND", "TEMP", "TIMEOUT", "PERM"):
            raise ValueError(f"bad socketmap status {self.status}")

    def encode(self) -> bytes:
        text = f"{self.status} {self.data}".encode()[:MAX_REPLY]
        return encode_netstring(text)


def ok(data: str) -> Reply:
    return Reply("OK", data)


def not_found() -> Reply:
    return Reply("NOTFOUND", "")


def temp(reason: str) -> Reply:
    return Reply("TEMP", reason)


def encode_netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


class NetstringReader:
    def __init__(self, max_request: int = 10_000) -> None:
        self.max_request = max_request
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Lookup]:
        self._buffer += data
        out: list[Lookup] = []
        while True:
            colon = self._buffer.find(b":")
            if colon < 0:
                if len(self._buffer) > 10:
                    raise NetstringError("netstring length is missing or too long")
                return out
            digits = bytes(self._buffer[:colon])
            if not digits.isdigit() or len(digits) > 7:
                raise NetstringError(f"bad netstring length {digits[:12]!r}")
            length = int(digits)
            if length > self.max_request:
                raise NetstringError(f"request of {length} bytes exceeds {self.max_request}")
            end = colon + 1 + length
            if len(self._buffer) < end + 1:
                return out
            if self._buffer[end : end + 1] != b",":
                raise NetstringError("netstring does not end with a comma")
            payload = bytes(self._buffer[colon + 1 : end])
            del self._buffer[: end + 1]
            name, space, key = payload.decode("utf-8", "replace").partition(" ")
            if not space or not name:
                raise NetstringError("a request is '<map name> <key>'")
            out.append(Lookup(name, key))
