"""nginx mail ``auth_http``, sans-I/O: the request nginx sends, the headers it reads back.

How this works (see shared/recipes/proxies.md): nginx sends a GET with
``Auth-Method``, ``Auth-User``, ``Auth-Pass``, ``Auth-Protocol``,
``Auth-Login-Attempt``, ``Client-IP`` and any configured header (a shared
secret). User and password are percent-encoded only for space, ``%`` and
control characters — ``+`` stays ``+`` — so they are decoded with
``unquote_to_bytes``, never ``unquote_plus``. nginx reads only the answer's
headers: ``Auth-Status: OK`` with ``Auth-Server`` (an IP literal) and
``Auth-Port``, or a failure text with ``Auth-Wait``.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["AuthRequest", "failure", "parse_request", "success"]

PROTOCOLS = ("imap", "pop3", "smtp")


@dataclass(frozen=True, slots=True)
class AuthRequest:
    method: str
    user: str
    password: str
    protocol: str
    attempt: int
    client_ip: str


def _decode(value: str) -> str:
    return urllib.parse.unquote_to_bytes(value.encode("latin-1")).decode("utf-8", "replace")


def parse_request(headers: Mapping[str, str]) -> AuthRequest:
    protocol = headers.get("Auth-Protocol", "").lower()
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown Auth-Protocol {protocol!r}")
    try:
        attempt = int(headers.get("Auth-Login-Attempt", "1"))
    except ValueError:
        attempt = 1
    return AuthRequest(
        method=headers.get("Auth-Method", "plain").lower(),
        user=_decode(headers.get("Auth-User", "")),
        password=_decode(headers.get("Auth-Pass", "")),
        protocol=protocol,
        attempt=attempt,
        client_ip=headers.get("Client-IP", ""),
    )


def success(server: str, port: int) -> dict[str, str]:
    ipaddress.ip_address(server)  # nginx rejects a hostname here
    if not 0 < port < 65536:
        raise ValueError(f"bad port {port}")
    return {"Auth-Status": "OK", "Auth-Server": server, "Auth-Port": str(port)}


def failure(reason: str, wait: int, protocol: str) -> dict[str, str]:
    headers = {
        "Auth-Status": reason[:200].replace("\r", " ").replace("\n", " "),
        "Auth-Wait": str(wait),
    }
    if protocol == "smtp":
        headers["Auth-Error-Code"] = "535 5.7.8"
    return headers
