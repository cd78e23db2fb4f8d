"""IMAP URLs as CATENATE names them (RFC 4469 5; RFC 5092), without I/O.

How this works: a ``URL`` part of ``APPEND ... CATENATE (...)`` names a
message, or a section of one, that the server already holds for the same
user. :func:`parse_url` reads the URL into an :class:`ImapUrl` (mailbox,
UIDVALIDITY, UID, section, partial); the server looks the message up and
takes ``BODY[section]`` of it (:func:`cut`). Anything the server cannot
resolve is ``NO [BADURL url]`` (RFC 4469 5.1), so a client learns which part
failed.

Forms taken: an absolute ``imap://user@host/mailbox;UIDVALIDITY=v/;UID=n``
(the user, when given, must be the logged-in account: RFC 4469 5 lets a
server refuse URLs of other users, and there is no URLAUTH here) and the
path-absolute ``/mailbox;UIDVALIDITY=v/;UID=n``, each optionally followed by
``/;SECTION=s`` and ``/;PARTIAL=o.n``. The mailbox is percent-encoded UTF-8
(RFC 5092 6). A relative URL (``;UID=n`` alone) has no base here and is a
BADURL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from peerd.protocols.imap.commands import is_inbox
from peerd.protocols.imap.fetchatt import BodySection, parse_fetch_att
from peerd.protocols.imap.responses import CODE_BADURL, CommandError
from peerd.protocols.imap.structure import section

__all__ = ["ImapUrl", "bad_url", "cut", "parse_url"]

_URL: Final = re.compile(
    r"(?:imap://(?:(?P<user>[^@;/:]+)(?:;[^@/]*)?@)?[^/]+)?"
    r"/(?P<mailbox>[^;?]+)"
    r"(?:;UIDVALIDITY=(?P<uidvalidity>[1-9]\d{0,9}))?"
    r"/;UID=(?P<uid>[1-9]\d{0,9})"
    r"(?:/;SECTION=(?P<section>[^/]+))?"
    r"(?:/;PARTIAL=(?P<origin>\d{1,10})(?:\.(?P<length>[1-9]\d{0,9}))?)?",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class ImapUrl:
    """What a CATENATE URL names: ``BODY[section]<partial>`` of one message."""

    text: str  # as the client sent it, for BADURL
    mailbox: str
    uidvalidity: int | None
    uid: int
    section: BodySection
    partial: tuple[int, int | None] | None = None


def bad_url(url: str, why: str) -> CommandError:
    """``NO [BADURL url] why`` (RFC 4469 5.1); the URL text stays on one line."""
    text = "".join(ch for ch in url if ch not in "\r\n[]")[:200]
    return CommandError(f"{why}", code=CODE_BADURL + b" " + text.encode(), status="NO")


def parse_url(url: str, account: str) -> ImapUrl:
    """The URL as an :class:`ImapUrl`; BADURL if it is not one this server resolves."""
    found = _URL.fullmatch(url)
    if found is None:
        raise bad_url(url, "not an IMAP URL naming a message by UID (RFC 5092)")
    user = found.group("user")
    if user is not None and unquote(user) != account:
        raise bad_url(url, "URL of another user (no URLAUTH here)")
    try:
        mailbox = unquote(found.group("mailbox"), errors="strict")
        spec = unquote(found.group("section") or "", errors="strict")
        body = parse_fetch_att(f"BODY.PEEK[{spec}]")
    except (UnicodeDecodeError, CommandError) as exc:
        raise bad_url(url, "bad mailbox or section in URL") from exc
    assert isinstance(body, BodySection)
    if is_inbox(mailbox):
        mailbox = "INBOX"
    validity = found.group("uidvalidity")
    partial: tuple[int, int | None] | None = None
    if found.group("origin") is not None:
        length = found.group("length")
        partial = (int(found.group("origin")), int(length) if length else None)
    return ImapUrl(
        url,
        mailbox.rstrip("/"),
        int(validity) if validity else None,
        int(found.group("uid")),
        body,
        partial,
    )


def cut(url: ImapUrl, raw: bytes) -> bytes:
    """The octets the URL names in the message ``raw`` (BADURL if no such section)."""
    data = section(raw, url.section.part, url.section.kind, url.section.fields)
    if data is None:
        raise bad_url(url.text, "no such section in the message")
    if url.partial is not None:
        origin, length = url.partial
        data = data[origin:] if length is None else data[origin : origin + length]
    return data
