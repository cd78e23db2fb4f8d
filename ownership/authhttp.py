"""nginx mail ``auth_http``, sans-I/O: the request nginx sends in, the headers it reads out.

How this works (shared/recipes/proxies.md; nginx's ngx_mail_auth_http_module):
for every login nginx sends a GET whose headers are the request:
``Auth-Method``, ``Auth-User``, ``Auth-Pass``, ``Auth-Protocol``,
``Auth-Login-Attempt``, ``Client-IP`` (``Client-Host`` for SMTP,
``Auth-Salt`` for APOP/CRAM-MD5) and any ``auth_http_header`` configured, one
of which can be a shared secret. :func:`parse_request` turns a mapping of
those headers into an :class:`AuthRequest`. User and password are
percent-encoded only for space, ``%`` and control characters, so ``+`` stays
``+`` and non-ASCII arrives as raw UTF-8: they are decoded with
``unquote_to_bytes``, never ``unquote_plus``.

nginx reads only the answer's headers. :func:`success` gives ``Auth-Status:
OK``, ``Auth-Server`` (an IP literal: nginx refuses a name) and ``Auth-Port``,
and may override the user and password nginx logs in with;
:func:`failure` gives the text the client sees, ``Auth-Wait`` and, for SMTP,
``Auth-Error-Code``. nginx reads the whole answer, status line and the HTTP
server's own headers included, into one 1024-byte buffer, so ours are kept
to :data:`MAX_HEADER_BYTES`.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from ownership.errors import OwnershipError

__all__ = [
    "MAX_HEADER_BYTES",
    "METHODS",
    "PROTOCOLS",
    "SMTP_AUTH_FAILED",
    "SMTP_TEMP_FAILURE",
    "STATUS_OK",
    "AuthHttpError",
    "AuthRequest",
    "failure",
    "parse_request",
    "success",
]

STATUS_OK: Final = "OK"
# nginx 1.19+ reads "Auth-Status: WAIT" as "ask again after Auth-Wait",
# so neither word can be a failure text.
_RESERVED_STATUS: Final = frozenset({STATUS_OK, "WAIT"})

# RFC 4954 section 6: bad credentials, and a temporary failure.
SMTP_AUTH_FAILED: Final = "535 5.7.8"
SMTP_TEMP_FAILURE: Final = "454 4.7.0"

PROTOCOLS: Final = frozenset({"imap", "pop3", "smtp"})
# What nginx puts in Auth-Method (LOGIN arrives as "plain").
METHODS: Final = frozenset({"plain", "login", "apop", "cram-md5", "external", "none"})

# 1024 octets less room for "HTTP/1.1 200 OK", Date, Server, Content-Length
# and Content-Type as aiohttp or any other server writes them.
MAX_HEADER_BYTES: Final = 640
_FAILURE_TEXT_MAX: Final = 200

_HEADER_NAME: Final = re.compile(r"[A-Za-z0-9-]+")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")

_H_STATUS: Final = "Auth-Status"
_H_SERVER: Final = "Auth-Server"
_H_PORT: Final = "Auth-Port"
_H_USER: Final = "Auth-User"
_H_PASS: Final = "Auth-Pass"
_H_WAIT: Final = "Auth-Wait"
_H_ERROR_CODE: Final = "Auth-Error-Code"


class AuthHttpError(OwnershipError, ValueError):
    """A request nginx would not send, or an answer nginx could not use."""

    code = "auth_http_invalid"


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """One login as nginx reports it; user and password already decoded."""

    method: str
    user: str
    password: str = field(repr=False)
    protocol: str
    attempt: int = 1
    client_ip: str = ""
    client_host: str | None = None
    salt: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise AuthHttpError(f"unknown Auth-Protocol {self.protocol!r}")
        if self.method not in METHODS:
            raise AuthHttpError(f"unknown Auth-Method {self.method!r}")
        if isinstance(self.attempt, bool) or self.attempt < 1:
            raise AuthHttpError("Auth-Login-Attempt must be a number from 1")
        # The decoded name may reach a log line or an IMAP literal; a control
        # character has no business in either.
        if _CONTROL.search(self.user):
            raise AuthHttpError("Auth-User holds a control character")

    def secret_matches(self, expected: str) -> bool:
        """The shared ``auth_http_header`` value, compared in constant time."""
        if self.secret is None or not expected:
            return False
        given = self.secret.encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, expected.encode())


def _decode(name: str, value: str, encoding: str) -> str:
    # Undo the HTTP server's decoding to get nginx's octets back, then undo
    # nginx's percent-escaping (recipe: unquote_to_bytes, never unquote_plus).
    try:
        raw = value.encode(encoding, "surrogateescape")
        return urllib.parse.unquote_to_bytes(raw).decode("utf-8")
    except UnicodeError:
        raise AuthHttpError(
            f"{name} is not UTF-8 (or not {encoding} from the HTTP server)"
        ) from None


def _client_ip(value: str | None) -> str:
    # nginx writes the client's address as an IP literal. It goes into the
    # failed-login line fail2ban reads (``rip=<HOST>``) and names the
    # throttle's per-address count: anything else there could make that line
    # name another host ("192.0.2.1 proto=imap") or count as no one's.
    text = (value or "").strip(" \t")
    if not text:
        return ""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise AuthHttpError(f"Client-IP is not an IP address: {text[:60]!r}") from None


def parse_request(
    headers: Mapping[str, str],
    *,
    secret_header: str | None = None,
    header_encoding: str = "latin-1",
) -> AuthRequest:
    """nginx's request headers (names in any case) to an :class:`AuthRequest`.

    ``header_encoding`` is how the HTTP server turned header octets into
    ``str``: ``latin-1`` for WSGI and ``http.server``, ``utf-8`` for aiohttp
    (which decodes header values as UTF-8 with surrogateescape).
    ``secret_header`` names the ``auth_http_header`` carrying the shared
    secret; its value lands in :attr:`AuthRequest.secret`.
    """
    lower = {name.lower(): value for name, value in headers.items()}

    def get(name: str) -> str | None:
        return lower.get(name.lower())

    protocol = get("Auth-Protocol")
    if protocol is None:
        raise AuthHttpError("Auth-Protocol is missing: not a request from nginx")
    attempt_text = get("Auth-Login-Attempt") or "1"
    # ASCII digits, and few of them: int() refuses more than 4,300 with a
    # ValueError of its own (nginx counts attempts of one connection).
    if not (attempt_text.isascii() and attempt_text.isdigit() and len(attempt_text) <= 9):
        raise AuthHttpError(f"Auth-Login-Attempt is not a number: {attempt_text[:20]!r}")
    return AuthRequest(
        method=(get("Auth-Method") or "plain").strip().lower(),
        user=_decode("Auth-User", get("Auth-User") or "", header_encoding),
        password=_decode("Auth-Pass", get("Auth-Pass") or "", header_encoding),
        protocol=protocol.strip().lower(),
        attempt=int(attempt_text),
        client_ip=_client_ip(get("Client-IP")),
        client_host=get("Client-Host"),
        salt=get("Auth-Salt"),
        secret=get(secret_header) if secret_header else None,
    )


def _check(headers: dict[str, str]) -> dict[str, str]:
    size = 0
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise AuthHttpError(f"header name {name!r} is not [A-Za-z0-9-]")
        if _CONTROL.search(value):
            raise AuthHttpError(f"{name} holds a control character")
        size += len(name) + len(": \r\n") + len(value.encode())
    if size > MAX_HEADER_BYTES:
        raise AuthHttpError(f"auth_http answer of {size} octets exceeds {MAX_HEADER_BYTES}")
    return headers


def _verbatim(name: str, value: str) -> str:
    # nginx copies Auth-User/Auth-Pass as they are (no unescaping) after
    # trimming spaces at both ends: a value that has them cannot pass through.
    if not value or value != value.strip(" "):
        raise AuthHttpError(f"{name} cannot be empty or start or end with a space")
    return value


def success(
    server: str, port: int, *, user: str | None = None, password: str | None = None
) -> dict[str, str]:
    """Send the client to ``server``:``port``; ``user``/``password`` override the login."""
    try:
        address = ipaddress.ip_address(server)
    except ValueError:
        raise AuthHttpError(f"Auth-Server must be an IP address, not {server!r}") from None
    # ngx_parse_addr knows no IPv6 zone ("%eth0").
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise AuthHttpError(f"Auth-Server cannot carry an IPv6 zone: {server!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise AuthHttpError(f"Auth-Port must be 1-65535, not {port!r}")
    headers = {_H_STATUS: STATUS_OK, _H_SERVER: str(address), _H_PORT: str(port)}
    if user is not None:
        headers[_H_USER] = _verbatim(_H_USER, user)
    if password is not None:
        headers[_H_PASS] = _verbatim(_H_PASS, password)
    return _check(headers)


def failure(
    reason: str, wait: int | None, protocol: str, *, error_code: str | None = None
) -> dict[str, str]:
    """Refuse the login; the client sees ``reason`` (POP3 ``-ERR``, IMAP ``NO``).

    With ``wait`` > 0 nginx keeps the session and lets the client try again
    after that many seconds; with None or 0 it closes the connection. For
    SMTP ``error_code`` (default :data:`SMTP_AUTH_FAILED`) precedes the text.
    """
    if protocol not in PROTOCOLS:
        raise AuthHttpError(f"unknown protocol {protocol!r}")
    # Cut by octets, not characters, and never inside a UTF-8 sequence.
    text_bytes = " ".join(_CONTROL.sub(" ", reason).split()).encode()
    text = text_bytes[:_FAILURE_TEXT_MAX].decode("utf-8", "ignore").rstrip()
    if not text or text in _RESERVED_STATUS:
        raise AuthHttpError(f"a failure needs a text other than OK or WAIT, not {reason!r}")
    headers = {_H_STATUS: text}
    if wait is not None:
        if isinstance(wait, bool) or not isinstance(wait, int) or wait < 0:
            raise AuthHttpError(f"Auth-Wait must be a whole number of seconds, not {wait!r}")
        headers[_H_WAIT] = str(wait)
    if protocol == "smtp":
        code = error_code or SMTP_AUTH_FAILED
        # RFC 3463: "<3-digit reply> <class.subject.detail>".
        if not re.fullmatch(r"[245]\d\d [245]\.\d{1,3}\.\d{1,3}", code):
            raise AuthHttpError(f"Auth-Error-Code must be like '535 5.7.8', not {code!r}")
        headers[_H_ERROR_CODE] = code
    elif error_code is not None:
        raise AuthHttpError("Auth-Error-Code is for SMTP only")
    return _check(headers)
