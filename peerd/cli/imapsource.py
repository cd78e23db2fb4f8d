"""The old IMAP server, as ``peerctl import-imap`` reads it.

How this works: :class:`Source` wraps :mod:`imaplib` (plain, TLS, or
STARTTLS; LOGIN, or SASL PLAIN with an admin as the authentication identity
and the user as the authorization identity, RFC 4616 2, which is how a
Dovecot master user or a Cyrus admin logs in as someone else). Everything is
read-only: mailboxes are opened with EXAMINE and bodies fetched with
``BODY.PEEK[]``, so the import sets no ``\\Seen`` on the old server.

imaplib hands back untagged data as lines and ``(head, literal)`` pairs;
:func:`values` puts them back into the wire form and parses that into
Python values (RFC 3501 9: atoms, quoted strings, literals, NIL and
parenthesized lists), from which LIST, NAMESPACE and FETCH are read. A
failure the admin can act on (cannot connect, login refused, a command
refused) is a :class:`RemoteError`, whose text names the server.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import imaplib
import re
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from engine.msgid import message_id_of
from peerd.protocols.imap.responses import CommandError, decode_mailbox

__all__ = [
    "Fetched",
    "Folder",
    "RemoteError",
    "RemoteUnreachable",
    "Source",
    "parse_internaldate",
    "values",
]

Value = int | bytes | None | list[Any]


class RemoteError(ValueError):
    """The old server refused something (a login, a command): exit status 2."""


class RemoteUnreachable(ConnectionError):
    """The old server cannot be reached."""


@dataclass(frozen=True, slots=True)
class Folder:
    """One mailbox of the LIST answer: its name as the server spells it
    (modified UTF-7), decoded, its hierarchy separator and attributes."""

    raw: str
    name: str
    separator: str | None
    attributes: frozenset[str]  # lower case: \\noselect, \\sent, ...


@dataclass(frozen=True, slots=True)
class Fetched:
    uid: int
    flags: tuple[str, ...]
    internaldate: dt.datetime
    size: int
    data: bytes | None = None  # BODY[] when asked for
    message_id: str | None = None  # from BODY[HEADER.FIELDS (MESSAGE-ID)] when asked for


# -- the response grammar (RFC 3501 9) -------------------------------------------


def _wire(data: Iterable[Any]) -> bytes:
    """imaplib's untagged data back as the lines the server sent."""
    out = bytearray()
    continuing = False
    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):
            head, literal = item
            out += head + b"\r\n" + literal
            continuing = True
        else:
            out += item + b"\r\n"
            continuing = False
    if continuing:
        out += b"\r\n"
    return bytes(out)


_ATOM_END = frozenset(b" ()\r\n")
_LITERAL_RE = re.compile(rb"~?\{(\d+)\+?\}\r\n")  # RFC 3501 literal, RFC 3516 literal8


class _Parser:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def lines(self) -> list[list[Value]]:
        out: list[list[Value]] = []
        while self.at < len(self.data):
            line: list[Value] = []
            while self.at < len(self.data) and self.data[self.at : self.at + 2] != b"\r\n":
                if self.data[self.at] == 0x20:
                    self.at += 1
                    continue
                line.append(self.value())
            self.at += 2
            out.append(line)
        return out

    def value(self) -> Value:
        data, at = self.data, self.at
        char = data[at : at + 1]
        if char == b"(":
            self.at += 1
            items: list[Any] = []
            while True:
                while data[self.at : self.at + 1] == b" ":
                    self.at += 1
                if self.at >= len(data):
                    raise RemoteError("the server's answer ends inside a list")
                if data[self.at : self.at + 1] == b")":
                    self.at += 1
                    return items
                items.append(self.value())
        if char == b'"':
            out = bytearray()
            at += 1
            while at < len(data) and data[at : at + 1] != b'"':
                if data[at : at + 1] == b"\\":
                    at += 1
                out += data[at : at + 1]
                at += 1
            self.at = at + 1
            return bytes(out)
        match = _LITERAL_RE.match(data, at)
        if match is not None:
            size = int(match.group(1))
            start = match.end()
            self.at = start + size
            return data[start : start + size]
        # An atom; a section in brackets (BODY[HEADER.FIELDS (MESSAGE-ID)]) may hold spaces.
        depth = 0
        while at < len(data):
            byte = data[at]
            if byte == 0x5B:  # [
                depth += 1
            elif byte == 0x5D:  # ]
                depth -= 1
            elif depth <= 0 and byte in _ATOM_END:
                break
            at += 1
        atom = data[self.at : at]
        self.at = at
        if not atom:
            raise RemoteError(f"cannot read the server's answer near {data[at : at + 40]!r}")
        if atom.upper() == b"NIL":
            return None
        if atom.isdigit():
            return int(atom)
        return atom


def values(data: Iterable[Any]) -> list[list[Value]]:
    """Each untagged line of imaplib's ``data`` as a list of values."""
    return _Parser(_wire(data)).lines()


_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}
_DATE_RE = re.compile(
    r"\s*(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\s*\Z"
)


def parse_internaldate(text: str) -> dt.datetime:
    """``date-time`` of RFC 3501 9 (``" 7-Jul-1996 02:44:25 -0700"``), aware."""
    match = _DATE_RE.match(text)
    if match is None or match.group(2).lower() not in _MONTHS:
        raise RemoteError(f"the server sent an INTERNALDATE that is not one: {text!r}")
    day, month, year, hh, mm, ss, sign, oh, om = match.groups()
    offset = dt.timedelta(hours=int(oh), minutes=int(om)) * (1 if sign == "+" else -1)
    return dt.datetime(
        int(year),
        _MONTHS[month.lower()],
        int(day),
        int(hh),
        int(mm),
        int(ss),
        tzinfo=dt.timezone(offset),
    )


def _text(value: Value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _decoded(raw: str) -> str:
    try:
        return decode_mailbox(raw)
    except CommandError:
        return raw  # not canonical modified UTF-7: keep the name as given


# -- the connection ------------------------------------------------------------------


class Source:
    """One logged-in connection to the old server."""

    def __init__(
        self,
        host: str,
        port: int | None = None,
        *,
        security: str = "plain",  # plain, tls or starttls
        cafile: str | None = None,
        insecure: bool = False,
        timeout: float = 60.0,
    ) -> None:
        self.where = f"{host}:{port or (993 if security == 'tls' else 143)}"
        self._caps: frozenset[str] | None = None
        context: ssl.SSLContext | None = None
        if security != "plain":
            try:
                context = ssl.create_default_context(cafile=cafile)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"--cafile {cafile}: cannot load CA certificates from it"
                    f" ({getattr(exc, 'strerror', None) or exc})"
                ) from exc
            if insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        try:
            if security == "tls":
                self.imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                    host, port or 993, ssl_context=context, timeout=timeout
                )
            else:
                self.imap = imaplib.IMAP4(host, port or 143, timeout=timeout)
                if security == "starttls":
                    self.imap.starttls(context)
        except ssl.SSLCertVerificationError as exc:
            raise RemoteError(
                f"IMAP server {self.where}: {exc.verify_message or exc}: its certificate is not"
                " trusted (give its CA with --cafile, or --insecure)"
            ) from exc
        except (OSError, imaplib.IMAP4.error) as exc:
            if isinstance(exc, (ConnectionError, socket.timeout, socket.gaierror)):
                raise RemoteUnreachable(
                    f"cannot reach the IMAP server {self.where}: {exc}"
                ) from exc
            raise RemoteError(f"IMAP server {self.where}: {exc}") from exc

    def login(self, user: str, password: str, admin: str | None = None) -> None:
        try:
            if admin is None:
                self.imap.login(user, password)
            else:
                # RFC 4616 2: authzid NUL authcid NUL passwd; the admin
                # authenticates, and acts as the user.
                message = f"{user}\0{admin}\0{password}".encode()
                self.imap.authenticate("PLAIN", lambda _challenge: message)
        except imaplib.IMAP4.error as exc:
            who = user if admin is None else f"{admin} as {user}"
            raise RemoteError(
                f"the IMAP server {self.where} refused the login of {who}: {_reason(exc)}"
            ) from exc
        # RFC 3501 6.2.3: the capabilities may change once logged in
        # (Dovecot adds BINARY, NAMESPACE, ... only then).
        status, data = self.imap.capability()
        if status == "OK" and data and isinstance(data[-1], bytes):
            self._caps = frozenset(c.upper() for c in data[-1].decode("ascii", "replace").split())

    def close(self) -> None:
        try:
            self.imap.logout()
        except (OSError, imaplib.IMAP4.error):
            pass

    def _ok(self, what: str, answer: tuple[str, Any]) -> Any:
        status, data = answer
        if status != "OK":
            raise RemoteError(
                f"IMAP server {self.where}: {what}: {_text(data[0] if data else b'')}"
            )
        return data

    def _run(self, what: str, command: Any, *args: Any) -> Any:
        try:
            return self._ok(what, command(*args))
        except imaplib.IMAP4.abort as exc:
            raise RemoteUnreachable(f"IMAP server {self.where} went away: {exc}") from exc
        except imaplib.IMAP4.error as exc:
            raise RemoteError(f"IMAP server {self.where}: {what}: {_reason(exc)}") from exc

    @property
    def capabilities(self) -> frozenset[str]:
        if self._caps is not None:
            return self._caps
        return frozenset(c.upper() for c in self.imap.capabilities)

    def namespaces(self) -> tuple[tuple[str, str | None], list[str]]:
        """The personal namespace (prefix, separator) and the other
        namespaces' prefixes (RFC 2342 5); ``("", None)`` without NAMESPACE."""
        if "NAMESPACE" not in self.capabilities:
            return ("", None), []
        data = self._run("NAMESPACE", self.imap.namespace)
        line = values(data)[0]
        personal: tuple[str, str | None] = ("", None)
        others: list[str] = []
        for index, group in enumerate(line[:3]):
            for entry in group if isinstance(group, list) else []:
                prefix, sep = _decoded(_text(entry[0])), entry[1]
                if index == 0 and personal == ("", None):
                    personal = (prefix, None if sep is None else _text(sep))
                elif prefix:
                    others.append(prefix)
        return personal, others

    def folders(self) -> list[Folder]:
        """Every mailbox (LIST "" "*"), with RFC 6154 special-use attributes
        when the server has them."""
        caps = self.capabilities
        pattern = "*"
        if "SPECIAL-USE" in caps or "LIST-EXTENDED" in caps:
            pattern = "* RETURN (SPECIAL-USE)"  # RFC 6154 5.1 / RFC 5258
        data = self._run("LIST", self.imap.list, '""', pattern)
        return [_folder(line) for line in values(data)]

    def subscribed(self) -> set[str]:
        data = self._run("LSUB", self.imap.lsub, '""', "*")
        return {_decoded(_text(line[2])) for line in values(data) if len(line) >= 3}

    def examine(self, raw: str) -> tuple[int, int, int]:
        """Open ``raw`` read-only: (UIDVALIDITY, UIDNEXT, EXISTS)."""
        data = self._run(f"EXAMINE {raw}", self.imap.select, _quoted(raw), True)
        exists = int(data[0] or 0)
        validity = self._response_code("UIDVALIDITY")
        uidnext = self._response_code("UIDNEXT")
        if validity is None:
            raise RemoteError(f"IMAP server {self.where}: {raw} has no UIDVALIDITY")
        return validity, uidnext or 0, exists

    def _response_code(self, name: str) -> int | None:
        found = self.imap.untagged_responses.get(name)
        if not found:
            return None
        last = found[-1]
        try:
            return int(last) if isinstance(last, (bytes, str)) else None
        except ValueError:
            return None

    def sizes(self, after: int) -> list[tuple[int, int]]:
        """(UID, RFC822.SIZE) of every message with a UID above ``after``."""
        data = self._run("UID FETCH", self.imap.uid, "FETCH", f"{after + 1}:*", "(UID RFC822.SIZE)")
        out = {f.uid: f.size for f in _fetched(data, with_dates=False) if f.uid > after}
        return sorted(out.items())

    def message_keys(self) -> list[Fetched]:
        """UID, size, INTERNALDATE and Message-ID of every message."""
        data = self._run(
            "UID FETCH",
            self.imap.uid,
            "FETCH",
            "1:*",
            "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])",
        )
        return _fetched(data)

    def messages(self, uids: Sequence[int]) -> list[Fetched]:
        """The messages ``uids``: flags, INTERNALDATE and bytes, by UID."""
        uid_set = ",".join(str(u) for u in uids)
        data = self._run(
            "UID FETCH",
            self.imap.uid,
            "FETCH",
            uid_set,
            "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])",
        )
        wanted = set(uids)
        found = [f for f in _fetched(data) if f.uid in wanted and f.data is not None]
        return self._with_nul(found)

    def _with_nul(self, found: list[Fetched]) -> list[Fetched]:
        """``found`` with the true bytes of messages that hold NUL octets.

        A literal carries no NUL (RFC 3501 4.3, CHAR8), so a server gives
        such a message's ``BODY[]`` with each NUL replaced (Dovecot by
        0x80). Where the server has BINARY (RFC 3516), the messages whose
        bytes hold 0x80 are fetched again as ``BINARY.PEEK[]`` (a literal8
        may hold NUL); when that holds NUL, it is what goes to the node,
        which refuses such a message as LMTP does, instead of storing
        altered bytes. Otherwise the ``BODY[]`` bytes are kept
        (``BINARY[]`` undoes a single-part message's transfer encoding)."""
        suspects = [f.uid for f in found if f.data is not None and b"\x80" in f.data]
        if not suspects or "BINARY" not in self.capabilities:
            return found
        try:
            binary = self._binary(suspects)
        except RemoteError:
            # One refused the whole FETCH (e.g. NO [UNKNOWN-CTE]): one by one.
            binary = {}
            for uid in suspects:
                with contextlib.suppress(RemoteError):
                    binary.update(self._binary([uid]))
        return [
            replace(f, data=binary[f.uid], size=len(binary[f.uid])) if f.uid in binary else f
            for f in found
        ]

    def _binary(self, uids: Sequence[int]) -> dict[int, bytes]:
        """``BINARY.PEEK[]`` of ``uids``, only those that hold NUL."""
        uid_set = ",".join(str(u) for u in uids)
        data = self._run("UID FETCH", self.imap.uid, "FETCH", uid_set, "(UID BINARY.PEEK[])")
        out: dict[int, bytes] = {}
        for line in values(data):
            if len(line) < 2 or not isinstance(line[-1], list):
                continue
            pairs = line[-1]
            got = dict(zip(pairs[::2], pairs[1::2], strict=False))
            uid, octets = got.get(b"UID"), got.get(b"BINARY[]")
            if isinstance(uid, int) and isinstance(octets, bytes) and b"\0" in octets:
                out[uid] = octets
        return out


def _reason(exc: BaseException) -> str:
    text = str(exc)
    match = re.fullmatch(r"b'(.*)'", text) or re.fullmatch(r'b"(.*)"', text)
    return match.group(1) if match else text


def _quoted(raw: str) -> str:
    return '"' + raw.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _folder(line: list[Value]) -> Folder:
    if len(line) < 3 or not isinstance(line[0], list):
        raise RemoteError(f"cannot read a LIST answer: {line!r}")
    attributes = frozenset(_text(a).lower() for a in line[0])
    sep = None if line[1] is None else _text(line[1])
    raw = _text(line[2])
    return Folder(raw, _decoded(raw), sep, attributes)


def _fetched(data: Any, *, with_dates: bool = True) -> list[Fetched]:
    """FETCH responses merged by UID (a server may split one message's
    items, or send unsolicited FETCHes of flags)."""
    items: dict[int, dict[str, Value]] = {}
    for line in values(data):
        if len(line) < 2 or not isinstance(line[-1], list):
            continue
        pairs = line[-1]
        found: dict[str, Value] = {}
        for at in range(0, len(pairs) - 1, 2):
            key = _text(pairs[at]).upper()
            if key.startswith("BODY[HEADER.FIELDS"):
                key = "HEADER"
            found[key] = pairs[at + 1]
        uid = found.get("UID")
        if isinstance(uid, int):
            items.setdefault(uid, {}).update(found)
    out: list[Fetched] = []
    for uid, found in sorted(items.items()):
        flags = found.get("FLAGS")
        date = found.get("INTERNALDATE")
        size = found.get("RFC822.SIZE")
        body = found.get("BODY[]")
        header = found.get("HEADER")
        out.append(
            Fetched(
                uid=uid,
                flags=tuple(_text(f) for f in flags) if isinstance(flags, list) else (),
                internaldate=parse_internaldate(_text(date))
                if with_dates and date is not None
                else dt.datetime.fromtimestamp(0, dt.UTC),
                size=size if isinstance(size, int) else 0,
                data=body if isinstance(body, bytes) else None,
                message_id=message_id_of(header) if isinstance(header, bytes) else None,
            )
        )
    return out
