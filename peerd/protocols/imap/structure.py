"""Message structure for IMAP: parts, ENVELOPE, BODYSTRUCTURE, BODY[section], search text.

How this works: :func:`parse` splits a message into a tree of :class:`Part`,
each a range of the message's bytes (BODY[1.2] must return the bytes as
stored, RFC 3501 6.4.5; a range copies nothing, so deep nesting costs no
memory), using the stdlib header parser for header fields only. Multipart
bodies are split on their boundary lines; ``message/rfc822`` parts are
parsed again. Broken MIME never raises: a missing boundary makes the part a
leaf, and a message without a header/body separator is all header. What one
message may cost is bounded whatever its shape: nesting (:data:`MAX_DEPTH`),
parts (:data:`MAX_PARTS`) and header bytes read (:data:`MAX_HEADER_READ`);
past them, a part is a text/plain leaf. ENVELOPE and BODYSTRUCTURE (RFC 3501
7.4.2) are rendered once and cached per GUID by the session layer.
"""

from __future__ import annotations

import base64
import binascii
import email.header
import email.utils
import quopri
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Final

import engine.mimetext as mimetext
from peerd.protocols.imap.addrlist import getaddresses
from peerd.protocols.imap.fetchatt import SectionKind
from peerd.protocols.imap.responses import nstring

__all__ = [
    "Part",
    "UnknownEncoding",
    "binary_section",
    "bodystructure",
    "charset",
    "decode_words",
    "decoded_body",
    "decoded_header",
    "decoded_headers",
    "envelope",
    "field_text",
    "leaves",
    "parse",
    "search_text",
    "section",
]

MAX_DEPTH = 50
# A sender chooses a message's structure: these bound what parsing one
# message costs, whatever its shape (a message of empty parts, a header of
# tiny fields). Past MAX_PARTS the rest of a multipart is its last part
# (Dovecot's message parser stops at 10,000 too); past MAX_HEADER_READ, the
# header fields of the message's later parts are not read (no type: a
# text/plain leaf). What the client gets of the bytes (BODY[...], BINARY[...])
# is never cut.
MAX_PARTS: Final = 10_000
MAX_HEADER_READ: Final = 1024 * 1024  # bytes of header fields read, the whole message's
_BYTES_FOLD: Final = re.compile(rb"\r?\n(?=[ \t])")
_HEADER_PARSER = BytesHeaderParser(policy=compat32)
_NO_FIELDS: Final = _HEADER_PARSER.parsebytes(b"")


@dataclass(slots=True)
class Part:
    """One part of a message: a range of the message's bytes (``src``), so
    a part nested fifty deep copies nothing of what it holds."""

    src: bytes  # the whole message
    start: int  # its header's first byte
    body_start: int  # its body's first byte (after the blank line)
    end: int
    fields: Message
    maintype: str
    subtype: str
    children: list[Part] = field(default_factory=list)
    message: Part | None = None

    @property
    def header(self) -> bytes:
        """The header, including the blank line that ends it."""
        return self.src[self.start : self.body_start]

    @property
    def body(self) -> bytes:
        return self.src[self.body_start : self.end]

    @property
    def size(self) -> int:
        return self.end - self.body_start

    @property
    def lines(self) -> int:
        """Lines of the body (RFC 3501 7.4.2's size in text lines)."""
        src, start, end = self.src, self.body_start, self.end
        return src.count(b"\n", start, end) + (1 if end > start and src[end - 1] != 0x0A else 0)


@dataclass(slots=True)
class _Budget:
    parts: int = MAX_PARTS
    header: int = MAX_HEADER_READ


def _fields(src: bytes, start: int, body_start: int, budget: _Budget) -> Message:
    """The header's fields, read from at most what is left of the budget
    (cut at a line's end)."""
    if budget.header <= 0:
        return _NO_FIELDS
    stop = body_start
    if stop - start > budget.header:
        stop = src.rfind(b"\n", start, start + budget.header) + 1
        stop = max(stop, start)
    budget.header -= stop - start
    # RFC 5322 2.2.3: a field's value is read unfolded (a fold's CRLF goes,
    # its white space stays), or a folded parameter keeps a CRLF inside it
    # (boundary="foo<CRLF> bar" would never match a boundary line).
    return _HEADER_PARSER.parsebytes(_BYTES_FOLD.sub(b"", src[start:stop]))


def parse(raw: bytes) -> Part:
    """The message's parts (see the module's docstring)."""
    return _parse(raw, 0, len(raw), 0, "text/plain", _Budget())


def _parse(src: bytes, start: int, end: int, depth: int, default: str, budget: _Budget) -> Part:
    body_start = mimetext.body_start(src, start, end)
    fields = _fields(src, start, body_start, budget)
    ctype = fields.get_content_type() if fields.get("Content-Type") else default
    maintype, _, subtype = ctype.partition("/")
    part = Part(src, start, body_start, end, fields, maintype.lower(), (subtype or "plain").lower())
    if depth >= MAX_DEPTH or budget.parts <= 0:
        if part.maintype == "multipart":
            part.maintype, part.subtype = "text", "plain"
        return part
    if part.maintype == "multipart":
        boundary = fields.get_param("boundary")
        if isinstance(boundary, str) and boundary:
            inner_default = "message/rfc822" if part.subtype == "digest" else "text/plain"
            ranges = _multipart(src, body_start, end, boundary.encode(), budget.parts)
            budget.parts -= len(ranges)
            part.children = [_parse(src, s, e, depth + 1, inner_default, budget) for s, e in ranges]
        if not part.children:
            part.maintype, part.subtype = "text", "plain"
    elif (part.maintype, part.subtype) == ("message", "rfc822"):
        budget.parts -= 1
        part.message = _parse(src, body_start, end, depth + 1, "text/plain", budget)
    return part


def _multipart(
    src: bytes, start: int, end: int, boundary: bytes, limit: int
) -> list[tuple[int, int]]:
    """The parts of the multipart body ``src[start:end]``, as ranges: at
    most ``limit``, the last of them running to the body's end when there
    are more."""
    delimiter = b"--" + boundary
    chunks: list[tuple[int, int]] = []
    first: int | None = None
    pos = start
    while True:
        at = src.find(delimiter, pos, end)
        if at < 0:
            break
        if at != start and src[at - 1] != 0x0A:
            pos = at + 1
            continue
        line_end = src.find(b"\n", at, end)
        line_end = end if line_end < 0 else line_end + 1
        if first is not None:
            stop = at
            if stop - 2 >= first and src[stop - 2 : stop] == b"\r\n":
                stop -= 2
            elif stop - 1 >= first and src[stop - 1] == 0x0A:
                stop -= 1
            closing = src[at + len(delimiter) : min(at + len(delimiter) + 2, end)] == b"--"
            if len(chunks) == limit - 1 and not closing:
                chunks.append((first, end))  # more parts past the cap: the rest is one
                return chunks
            chunks.append((first, stop))
        after = at + len(delimiter)
        if src[after : min(after + 2, end)] == b"--":
            return chunks
        first = line_end
        pos = line_end
    if first is not None and first < end:
        chunks.append((first, end))  # no closing delimiter: keep what is there
    return chunks


# -- ENVELOPE -----------------------------------------------------------------------


def _raw(fields: Message, name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    return str(value).replace("\r", "").replace("\n", "")


def field_text(part: Part, name: str, default: str) -> str:
    """A field's value as text: compat32 gives a ``Header``, not a ``str``,
    for a value with 8-bit octets in it (its ``str`` has U+FFFD for them)."""
    value = part.fields.get(name)
    return default if value is None else str(value)


def charset(part: Part) -> str | None:
    """The part's charset parameter; None when the stdlib cannot read it (an
    RFC 2231 ``charset*=`` naming no codec, or holding NUL: ValueError)."""
    try:
        return part.fields.get_content_charset()
    except (LookupError, UnicodeError, ValueError):
        return None


def _rfc2231(value: tuple[str | None, str | None, str]) -> str:
    """An RFC 2231 parameter value (charset, language, text) as text. The
    stdlib's ``collapse_rfc2231_value`` raises on a charset naming a codec
    that is no text codec ("idna", "undefined") or holding NUL; a sender
    chose it, so it reads as UTF-8 with U+FFFD, as an unknown one does."""
    codec, _, text = value
    return mimetext.decode_text(text.encode("raw-unicode-escape"), codec or "us-ascii")


_PLAIN_SPLIT = re.compile(r"(<[^>]*>?|[,:;])")


def _split_top(value: str) -> list[str]:
    """An address-list cut at the ``,``, ``:`` and ``;`` that separate its items
    and groups (RFC 5322 3.4): text, separator, text, ... Quoted strings,
    comments and angle-addrs are kept whole (a route's ``:`` is inside ``<>``)."""
    if '"' not in value and "(" not in value:
        # No quoted string and no comment (most headers): only an angle-addr
        # (from ``<`` to the first ``>``) hides a separator; a regex finds
        # them instead of a loop over each character.
        plain: list[str] = []
        text = ""
        for piece in _PLAIN_SPLIT.split(value):
            if piece in (",", ":", ";"):
                plain += [text, piece]
                text = ""
            else:
                text += piece
        plain.append(text)
        return plain
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = angle = False
    comment = 0
    for ch in value:
        if escaped:
            escaped = False
        elif (quoted or comment) and ch == "\\":
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif comment:
            comment += (ch == "(") - (ch == ")")
        elif ch == '"':
            quoted = True
        elif ch == "(":
            comment = 1
        elif ch == "<":
            angle = True
        elif ch == ">":
            angle = False
        elif ch in ",:;" and not angle:
            items += ["".join(current), ch]
            current = []
            continue
        current.append(ch)
    items.append("".join(current))
    return items


def _address(display: str | None, local: str | None, host: str | None) -> bytes:
    return b"(" + nstring(display) + b" NIL " + nstring(local) + b" " + nstring(host) + b")"


def _group_name(text: str) -> str:
    name = text.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = re.sub(r"\\(.)", r"\1", name[1:-1])
    return name


def _addresses(fields: Message, name: str) -> bytes:
    """An address header for ENVELOPE (RFC 3501 7.4.2): one address structure
    per mailbox, and a group as its start marker ``(NIL NIL "name" NIL)``,
    its members, and the end marker ``(NIL NIL NIL NIL)``."""
    values = fields.get_all(name)
    if not values:
        return b"NIL"
    out: list[bytes] = []
    items = _split_top(", ".join(str(v) for v in values))
    in_group = False
    for at in range(0, len(items), 2):
        text = items[at]
        separator = items[at + 1] if at + 1 < len(items) else ""
        if separator == ":" and not in_group:
            out.append(_address(None, _group_name(text) or None, None))
            in_group = True
            continue
        for display, address in getaddresses(text):
            if not address and not display:
                continue
            local, _, host = address.rpartition("@") if "@" in address else (address, "", "")
            out.append(_address(display or None, local or None, host or None))
        if separator == ";" and in_group:
            out.append(_address(None, None, None))
            in_group = False
    if in_group:
        out.append(_address(None, None, None))  # a group nobody closed
    return b"(" + b"".join(out) + b")" if out else b"NIL"


def envelope(part: Part) -> bytes:
    f = part.fields
    # Sender and Reply-To default to From (RFC 3501 7.4.2): parsed once.
    sender = _addresses(f, "From")
    items = [
        nstring(_raw(f, "Date")),
        nstring(_raw(f, "Subject")),
        sender,
        _addresses(f, "Sender") if f.get("Sender") else sender,
        _addresses(f, "Reply-To") if f.get("Reply-To") else sender,
        _addresses(f, "To"),
        _addresses(f, "Cc"),
        _addresses(f, "Bcc"),
        nstring(_raw(f, "In-Reply-To")),
        nstring(_raw(f, "Message-ID")),
    ]
    return b"(" + b" ".join(items) + b")"


# -- BODYSTRUCTURE ------------------------------------------------------------------


def _params(fields: Message, header: str = "content-type") -> bytes:
    params = fields.get_params(header=header) or []
    pairs = []
    for key, value in params[1:]:
        if isinstance(value, tuple):
            value = _rfc2231(value)
        pairs.append(nstring(key.upper()) + b" " + nstring(str(value)))
    return b"(" + b" ".join(pairs) + b")" if pairs else b"NIL"


def _disposition(fields: Message) -> bytes:
    value = fields.get("Content-Disposition")
    if value is None:
        return b"NIL"
    kind = str(value).split(";", 1)[0].strip() or "attachment"
    return b"(" + nstring(kind.upper()) + b" " + _params(fields, "content-disposition") + b")"


def bodystructure(part: Part, extended: bool = True) -> bytes:
    f = part.fields
    if part.children:
        inner = b"".join(bodystructure(child, extended) for child in part.children)
        out = inner + b" " + nstring(part.subtype.upper())
        if extended:
            out += b" " + _params(f) + b" " + _disposition(f) + b" NIL NIL"
        return b"(" + out + b")"
    encoding = field_text(part, "Content-Transfer-Encoding", "7BIT").strip().upper()
    items = [
        nstring(part.maintype.upper()),
        nstring(part.subtype.upper()),
        _params(f) if f.get("Content-Type") else b'("CHARSET" "US-ASCII")',
        nstring(_raw(f, "Content-ID")),
        nstring(_raw(f, "Content-Description")),
        nstring(encoding),
        str(part.size).encode(),
    ]
    if part.message is not None:
        items += [
            envelope(part.message),
            bodystructure(part.message, extended),
            str(part.lines).encode(),
        ]
    elif part.maintype == "text":
        items.append(str(part.lines).encode())
    if extended:
        items += [nstring(_raw(f, "Content-MD5")), _disposition(f), b"NIL", b"NIL"]
    return b"(" + b" ".join(items) + b")"


# -- BODY[section] (RFC 3501 6.4.5) -------------------------------------------------


def _descend(root: Part, path: list[int]) -> Part | None:
    """The part ``path`` names (RFC 3501 6.4.5): the numbers count the parts of
    a multipart, and a message that is not multipart has one part, its body,
    numbered 1. After a message/rfc822 part's own number, the next number
    counts inside the message it encapsulates; after a multipart's, inside
    that multipart."""
    context = part = root
    for at, number in enumerate(path):
        if at:
            if part.message is not None:
                context = part.message
            elif part.children:
                context = part
            else:
                return None
        if context.children:
            if not 1 <= number <= len(context.children):
                return None
            part = context.children[number - 1]
        elif number == 1:
            part = context
        else:
            return None
    return part


def _header_fields(header: bytes, names: list[str], keep: bool) -> bytes:
    wanted = {n.lower() for n in names}
    out: list[bytes] = []
    current: list[bytes] = []
    current_name = ""
    for line in header.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
            continue
        if current and ((current_name in wanted) == keep):
            out.extend(current)
        current = [line]
        current_name = line.split(b":", 1)[0].strip().decode("latin-1").lower()
    if current and ((current_name in wanted) == keep):
        out.extend(current)
    return b"".join(out) + b"\r\n"


def section(
    raw: bytes,
    path: tuple[int, ...] = (),
    kind: SectionKind = SectionKind.ALL,
    fields: tuple[str, ...] = (),
) -> bytes | None:
    """The bytes of ``BODY[path.kind (fields)]``; None when the section does not exist.

    ``path`` is the part number (``()`` for the whole message). HEADER, TEXT
    and HEADER.FIELDS after a part number apply to a message/rfc822 part's
    inner message only (RFC 3501 6.4.5); MIME is the part's own header.
    """
    if not path and kind is SectionKind.ALL:
        return raw  # BODY[]: the message as stored, nothing to parse
    root = parse(raw)
    part = _descend(root, list(path)) if path else root
    if part is None:
        return None
    if kind is SectionKind.ALL:
        return part.body
    if kind is SectionKind.MIME:
        return part.header if path else None
    target = part
    if path and part.message is not None:
        target = part.message
    elif path:
        return None
    if kind is SectionKind.HEADER:
        return target.header
    if kind is SectionKind.TEXT:
        return target.body
    return _header_fields(target.header, list(fields), kind is SectionKind.HEADER_FIELDS)


# -- BINARY[section] (RFC 3516) ------------------------------------------------------

# RFC 2045 6.1: the encodings that leave the octets as they are.
_IDENTITY: Final = frozenset({"7bit", "8bit", "binary"})


class UnknownEncoding(Exception):
    """A part's Content-Transfer-Encoding that cannot be undone (RFC 3516 4.3: UNKNOWN-CTE)."""


def binary_section(raw: bytes, path: tuple[int, ...] = ()) -> bytes | None:
    """The octets of ``BINARY[path]``: the part's body with its content
    transfer encoding undone (RFC 3516 4.1); None when there is no such part.

    A multipart or message/rfc822 part is given as stored (RFC 2045 6.4: a
    composite part is never encoded); ``BINARY[]`` of a message that is not
    multipart is its header and its decoded body.
    """
    root = parse(raw)
    part = _descend(root, list(path)) if path else root
    if part is None:
        return None
    if part.children or part.message is not None:
        return raw if not path else part.body
    encoding = field_text(part, "Content-Transfer-Encoding", "7bit").strip().lower()
    if encoding in _IDENTITY:
        body = part.body
    elif encoding == "base64":
        data = part.body.translate(None, _NOT_BASE64).rstrip(b"=")
        # Whole groups of four only: a torn last group is dropped, not guessed.
        body = binascii.a2b_base64(data[: len(data) - len(data) % 4] + _padding(data))
    elif encoding == "quoted-printable":
        body = quopri.decodestring(part.body)
    else:
        raise UnknownEncoding(encoding)
    return body if path else part.header + body


def _padding(data: bytes) -> bytes:
    """The last group of a base64 body that lost its "=" padding, padded."""
    rest = data[len(data) - len(data) % 4 :]
    return rest + b"=" * (4 - len(rest)) if len(rest) >= 2 else b""


_BASE64: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_NOT_BASE64: Final = bytes(b for b in range(256) if b not in _BASE64)


# -- text for SEARCH --------------------------------------------------------------------


_ADDRESS_FIELDS: Final = frozenset({"from", "sender", "reply-to", "to", "cc", "bcc"})


def decoded_header(part: Part, name: str) -> str:
    """A header field's decoded text; for an address field, each address also
    as ``display <local@domain>`` with comments and folding white space gone,
    so that SEARCH FROM finds ``user@domain.org`` in
    ``<user (comment)@ (comment) domain.org>``."""
    values = [str(value) for value in part.fields.get_all(name) or []]
    text = " ".join(decode_words(value) for value in values)
    if name.lower() not in _ADDRESS_FIELDS or not values:
        return text
    addresses = [
        f"{decode_words(display)} <{address}>".strip()
        for display, address in email.utils.getaddresses(values)
        if address or display
    ]
    return text + "\n" + "\n".join(addresses)


def decoded_headers(part: Part) -> str:
    """Every header field as ``Name: decoded value`` lines, for SEARCH TEXT."""
    return "\n".join(f"{name}: {decode_words(str(value))}" for name, value in part.fields.items())


def decode_words(value: str) -> str:
    """A header field's value, unfolded (RFC 5322 2.2.3: a fold is CRLF before
    white space), with RFC 2047 encoded words decoded."""
    return mimetext.decode_words(_FOLD.sub("", value))


_FOLD: Final = re.compile(r"\r?\n(?=[ \t])")


def decoded_body(part: Part) -> bytes:
    """The part's body with its transfer encoding (base64, quoted-printable)
    undone; as sent when it is another or cannot be undone."""
    encoding = field_text(part, "Content-Transfer-Encoding", "").strip().lower()
    data = part.body
    try:
        if encoding == "base64":
            data = base64.b64decode(data, validate=False)
        elif encoding == "quoted-printable":
            data = quopri.decodestring(data)
    except (binascii.Error, ValueError):
        pass
    return data


def leaves(root: Part) -> Iterator[Part]:
    """The parts that are neither multipart nor an attached message, in
    message order; inside an attached message, its own."""
    stack = [root]
    while stack:
        part = stack.pop()
        if part.children:
            stack.extend(reversed(part.children))
        elif part.message is not None:
            stack.append(part.message)
        else:
            yield part


def _decode_body(part: Part) -> str:
    return mimetext.decode_text(decoded_body(part), charset(part))


def search_text(part: Part) -> str:
    """The decoded text of every text/* part (BODY and TEXT search keys)."""
    if part.children:
        return "\n".join(search_text(child) for child in part.children)
    if part.message is not None:
        return search_text(part.message)
    if part.maintype == "text":
        return _decode_body(part)
    return ""
