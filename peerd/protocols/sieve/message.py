"""The message a script is run against: headers, envelope, size and body parts.

How this works: the delivery side builds a :class:`Message` with
:meth:`Message.from_bytes` (the message as received, the envelope sender and
the recipient this delivery is for) or directly from values it already has.
Headers are unfolded (RFC 5322 section 2.2.3) and kept twice: ``raw`` for
the ``address`` test, which must parse addresses before any decoding (a
display name decoded from RFC 2047 may hold a comma), and ``value``, decoded
from RFC 2047 encoded words, for ``header`` (RFC 5228 section 2.7.2 compares
decoded text).

The RFC 2047 decoder (:mod:`engine.mimetext`, shared with IMAP) is
linear: one regular expression whose pieces are runs of single character
classes (an encoded word holds no "?" or white space), so a header of
thousands of ``=?`` costs one pass; the standard library's decoder uses a
lazy ``.*?`` that is quadratic on such input.

Body parts (RFC 5173 ``body``) are worked out only when a script asks, by
:func:`body_parts`, with IMAP's MIME parser (bounded whatever the shape).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from engine.mimetext import body_start, decode_text, decode_words
from peerd.protocols.imap import structure

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_HEADER_FIELDS",
    "BodyPart",
    "Header",
    "Message",
    "body_parts",
    "decode_words",
    "raw_body",
]

_FOLD: Final = re.compile(r"\r?\n(?=[ \t])")
# Parts beyond this many are not looked at by the body test.
MAX_BODY_PARTS: Final = 200
# What of a header block the tests see: its first MAX_HEADER_BYTES octets
# (whole lines) and, of those, the first MAX_HEADER_FIELDS fields. Real mail
# has a few hundred at most; a message of nothing but "a:" lines was a
# million Header objects per recipient with a script (seconds of CPU under
# the interpreter lock, hundreds of megabytes).
MAX_HEADER_BYTES: Final = 1 << 20
MAX_HEADER_FIELDS: Final = 10_000


@dataclass(frozen=True, slots=True)
class Header:
    name: str  # as written; compared case-insensitively
    value: str  # unfolded, RFC 2047 words decoded
    raw: str  # unfolded, not decoded

    @classmethod
    def of(cls, name: str, raw: str) -> Header:
        return cls(name, decode_words(raw), raw)


@dataclass(frozen=True, slots=True)
class BodyPart:
    content_type: str  # "type/subtype", lower-case
    text: str  # transfer encoding and charset decoded


@dataclass(frozen=True, slots=True)
class Message:
    headers: tuple[Header, ...]
    # RFC 5228 section 5.4: the envelope. "" is the null reverse-path <>.
    envelope_from: str
    # The recipient this delivery is for (RCPT TO), as the MTA gave it.
    envelope_to: str
    # RFC 5228 section 5.9: the message size in octets.
    size: int
    # The whole message as received (the body test parses it when needed).
    raw: bytes = b""

    @classmethod
    def from_bytes(cls, data: bytes, envelope_from: str, envelope_to: str) -> Message:
        return cls(_parse_headers(data), envelope_from, envelope_to, len(data), data)

    def values(self, name: str) -> list[str]:
        lowered = name.lower()
        return [header.value for header in self.headers if header.name.lower() == lowered]

    def raw_values(self, name: str) -> list[str]:
        lowered = name.lower()
        return [header.raw for header in self.headers if header.name.lower() == lowered]

    def has(self, name: str) -> bool:
        lowered = name.lower()
        return any(header.name.lower() == lowered for header in self.headers)


def raw_body(data: bytes) -> bytes:
    """The octets after the blank line that ends the header (RFC 5322 section 2.1)."""
    return data[body_start(data) :]


def _text(data: bytes) -> str:
    # RFC 6532 allows UTF-8 in headers; anything else is read as Latin-1
    # so no octet is lost.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _parse_headers(data: bytes) -> tuple[Header, ...]:
    head = data[: MAX_HEADER_BYTES + 4]
    head = head[: body_start(head)]
    if len(head) > MAX_HEADER_BYTES:
        head = head[: head.rfind(b"\n", 0, MAX_HEADER_BYTES) + 1]  # whole lines only
    out: list[Header] = []
    # Lines end at LF (CRLF, or LF alone) only: str.splitlines() also cuts at
    # VT, FF, U+001C-U+001E, U+0085 and U+2028, so a value holding one gave a
    # second, made-up field ("Subject: hi\x0bList-Id: x") the tests saw.
    for line in _FOLD.sub("", _text(head)).split("\n"):
        line = line.removesuffix("\r")
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or " " in name:
            continue  # not a header field (RFC 5322 section 2.2): ignored
        out.append(Header.of(name, value.strip()))
        if len(out) >= MAX_HEADER_FIELDS:
            break
    return tuple(out)


def body_parts(data: bytes) -> list[BodyPart]:
    """The leaf MIME parts of a message, decoded (RFC 5173 section 5), at
    most :data:`MAX_BODY_PARTS`.

    Parsed as IMAP parses a message (:mod:`peerd.protocols.imap.structure`:
    ranges of the bytes, the parts, the nesting and the header bytes read
    all capped). The standard library's parser read every part of the
    message before the first was looked at: a 10 MB message of empty parts
    was 8.5 s of CPU and 370 MB per recipient whose script has a ``body``
    test, and a few thousand nested levels overflowed its stack."""
    out: list[BodyPart] = []
    for part in structure.leaves(structure.parse(data)):
        if len(out) >= MAX_BODY_PARTS:
            break
        text = decode_text(structure.decoded_body(part), structure.charset(part))
        out.append(BodyPart(f"{part.maintype}/{part.subtype}", text))
    return out
