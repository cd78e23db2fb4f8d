"""The searchable text of a message (IMAP SEARCH BODY and TEXT), and how an index answers.

How this works: :func:`extract` reads a message's bytes once and gives a
:class:`Searchable`: ``header`` (what TEXT looks at besides the body) and
``body`` (what BODY looks at), both already folded by :func:`fold`. A search
string matches when ``fold(string)`` is a substring of the text (RFC 3501
6.4.4: case-insensitive substring). The unindexed path is that ``in`` test
on a fresh :func:`extract`; the indexed path stores the same two strings at
delivery and asks the database for the same substrings. Both read only
what :func:`extract` gives, so they agree by construction: the text, its
caps and its folding are one definition, here.

What the text holds:

- ``header``: the message's header as sent (UTF-8, or Latin-1 where it is not
  UTF-8), then one ``Name: value`` line per field with the value unfolded
  and its RFC 2047 encoded words decoded; TEXT finds a term in either form.
- ``body``: every ``text/*`` part, transfer encoding (base64,
  quoted-printable) and charset decoded (an unknown charset, or US-ASCII,
  reads as UTF-8; bytes that do not decode become U+FFFD); ``text/html``
  rendered to text (tags dropped, entities decoded, scripts and styles
  skipped, block elements as line breaks); each ``message/rfc822`` (and
  ``message/global``) part recursed into, its header fields as decoded
  ``Name: value`` lines, then its body; other parts (images, PDFs, any
  non-text attachment) skipped; a multipart part with no boundary, or none
  found in it, is read as ``text/plain``. Parts are joined with a line break.
- :func:`fold` is Python's full Unicode case folding (``str.casefold``, so
  ``STRASSE`` finds ``straße``), with NUL as U+FFFD (PostgreSQL text cannot
  hold NUL; IMAP search strings cannot contain it).

Bounded work (the caps are part of the definition, so both paths share them):
at most :data:`MAX_INPUT` bytes of the message are read, :data:`MAX_PARTS`
MIME parts visited, :data:`MAX_DEPTH` levels of nesting followed, at most
:data:`MAX_HTML` bytes of HTML rendered (all its HTML parts together: per
part, sixteen parts of 1 MB of tags cost 8.7 s of CPU), and the body text stops
at :data:`MAX_BODY` characters (the header at :data:`MAX_HEADER`).
``Searchable.complete`` says whether a cap cut anything.

The index (the tables: migration ``0010_fulltext``, which repeats the DDL
below; filling and asking it: :mod:`engine.textindex`; first evaluated with
a prototype in ``tests/test_fulltext.py``):

- SQLite: FTS5 with the ``trigram`` tokenizer (SQLite 3.34+; this machine has
  3.40.1), ``case_sensitive 1`` because the text is folded already: FTS5's
  own folding is simple case folding (no ``ß`` -> ``ss``) and folding twice
  would merge strings that ``fold`` keeps apart. A phrase query of the
  folded string is an exact substring test for strings of 3 or more code
  points (:func:`sqlite_match`); shorter ones (the trigram index has nothing
  to offer) scan the stored text with ``instr`` in C (:data:`SQLITE_SHORT`),
  which gives the same answer. See :data:`SQLITE_DDL` and the queries below.
  The cost is space: with ``detail=full`` (positions, which phrase queries
  need) the index is about 5.5 times the text (``bench/fulltext.py``: 277 MB
  for the 50.6 M characters of 10,000 benchmark messages). ``detail=none``
  is a third of that, but then only GLOB can ask (FTS5 refuses phrases), and
  GLOB rechecks each candidate row's text: 35 to 90 ms for a common word
  where a phrase takes 2 ms. GLOB and LIKE on an FTS5 table also miss
  characters of 3 or 4 UTF-8 bytes in patterns under 3 characters (SQLite
  3.40.1), so the short scan uses ``instr``.
- PostgreSQL: ``pg_trgm`` with a GIN ``gin_trgm_ops`` index and ``LIKE``
  (not ``ILIKE``) on the folded columns (:func:`like_pattern`). The index
  narrows, the executor rechecks every candidate row, so the answer is exact
  for any length (short strings get no index help). ``ILIKE`` would fold
  with the database collation's rules, which are not ``str.casefold``'s
  (``ß``; and they depend on the locale), so results could differ from the
  unindexed path. PostgreSQL's own full-text search (``tsvector``) matches
  words and stems, not substrings: it cannot give identical results.

Pure: no I/O, no database; nothing of peerd.
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re
from dataclasses import dataclass
from email.message import Message
from html.parser import HTMLParser
from typing import Final, Literal

from engine.mimetext import body_start, decode_text, decode_words

__all__ = [
    "EXTRACT_VERSION",
    "MAX_BODY",
    "MAX_DEPTH",
    "MAX_FIELDS_READ",
    "MAX_HEADER",
    "MAX_HTML",
    "MAX_INPUT",
    "MAX_PARTS",
    "MIN_INDEXED",
    "PG_DDL",
    "SQLITE_DDL",
    "SQLITE_SHORT",
    "Searchable",
    "decode_words",
    "extract",
    "fold",
    "html_text",
    "like_pattern",
    "matches",
    "sqlite_match",
]

# Bump when what extract() gives changes: stored text of an older version is
# re-extracted (``fulltext_docs.version``).
EXTRACT_VERSION: Final = 2  # 2: MAX_HTML is the message's, not each part's

# The caps. Decoding runs in C and is cheap; the HTML renderer is pure Python
# (about 2 MB/s of text, 1.5 MB/s of bare tags), so the HTML is what bounds
# the worst case: a message at every cap costs under a second of CPU (0.66 s
# for 16 MB of tags in sixteen parts), once, at delivery.
MAX_INPUT: Final = 16 * 1024 * 1024  # bytes of the message read
MAX_PARTS: Final = 256  # MIME parts visited
MAX_DEPTH: Final = 16  # multipart and message/rfc822 levels followed
MAX_HTML: Final = 1024 * 1024  # bytes of HTML rendered, all the message's HTML parts together
MAX_BODY: Final = 2 * 1024 * 1024  # characters of body text kept
MAX_HEADER: Final = 256 * 1024  # characters of header text kept
MAX_FIELDS_READ: Final = 1024 * 1024  # bytes of a header read for its fields (as IMAP reads them)

# A trigram index helps strings of at least this many code points.
MIN_INDEXED: Final = 3

Key = Literal["BODY", "TEXT"]

# -- folding and matching -------------------------------------------------------------------


def fold(text: str) -> str:
    """The case folding SEARCH uses on both sides (RFC 3501 6.4.4)."""
    return text.casefold().replace("\x00", "\ufffd")


@dataclass(frozen=True, slots=True)
class Searchable:
    """A message's searchable text, folded: ``header`` for TEXT, ``body`` for
    BODY and TEXT. ``complete`` is False when a cap cut the extraction."""

    header: str
    body: str
    complete: bool = True


def matches(doc: Searchable, key: Key, string: str) -> bool:
    """The unindexed test: does ``key`` (BODY or TEXT) with ``string`` match?"""
    needle = fold(string)
    if key == "BODY":
        return needle in doc.body
    return needle in doc.header or needle in doc.body


# -- HTML as text ---------------------------------------------------------------------------------

_SKIP: Final = frozenset({"script", "style", "template"})
_BLOCK: Final = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4",
        "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section",
        "table", "td", "th", "tr", "ul",
    }
)  # fmt: skip
_SPACE: Final = re.compile(r"\s+")
_NEWLINES: Final = re.compile(r" *\n[ \n]*")


class _HTMLText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skipping += 1
        elif tag in _BLOCK:
            self.pieces.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK:
            self.pieces.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _BLOCK:
            self.pieces.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.pieces.append(_SPACE.sub(" ", data))


def html_text(html: str) -> str:
    """HTML rendered to plain text: tags dropped, entities decoded, script
    and style contents skipped, white space collapsed, block elements and
    ``<br>`` as line breaks."""
    parser = _HTMLText()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError):  # the stdlib parser on hostile markup
        pass
    return _NEWLINES.sub("\n", "".join(parser.pieces)).strip(" \n")


# -- MIME -------------------------------------------------------------------------------------------

_MESSAGES: Final = frozenset({("message", "rfc822"), ("message", "global")})  # RFC 6532 3.7


def _split(raw: bytes) -> tuple[bytes, bytes]:
    """Header (with the blank line) and body; no blank line: all header."""
    at = body_start(raw)
    return raw[:at], raw[at:]


def _text(data: bytes) -> str:
    # RFC 6532 lets header fields hold UTF-8; other 8-bit bytes read as Latin-1.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


@dataclass(slots=True)
class _Head:
    """A part's header: its fields (name, value bytes unfolded), and a
    :class:`Message` holding only Content-Type and Content-Transfer-Encoding,
    for their parameters (RFC 2045, RFC 2231)."""

    fields: list[tuple[str, bytes]]
    mime: Message


def _head(header: bytes) -> _Head:
    if len(header) > MAX_FIELDS_READ:
        header = header[: header.rfind(b"\n", 0, MAX_FIELDS_READ) + 1]
    lines: list[tuple[str, list[bytes]]] = []
    for line in header.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if lines:  # RFC 5322 2.2.3: unfolding removes the line break only
                lines[-1][1].append(line)
            continue
        label, colon, value = line.partition(b":")
        if colon:
            lines.append((label.strip().decode("latin-1"), [value]))
    # Joined once: a field folded over a million lines is linear, not quadratic.
    fields = [(name, b"".join(values)) for name, values in lines]
    mime = Message()
    for name, value in fields:
        key = name.lower()
        if key in ("content-type", "content-transfer-encoding") and key not in mime:
            mime[key] = _text(value).strip()
    return _Head(fields, mime)


def _field_lines(head: _Head) -> str:
    """``Name: value`` per field: 8-bit bytes read as :func:`_text`, encoded
    words decoded."""
    return "\n".join(f"{name}: {decode_words(_text(value).strip())}" for name, value in head.fields)


def _parts(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts of a multipart body (RFC 2046 5.1.1): between delimiter lines,
    without the CRLF before each; preamble and epilogue dropped; a missing
    close delimiter keeps the last part. No more than :data:`MAX_PARTS`."""
    delimiter = b"--" + boundary
    parts: list[bytes] = []
    start = -1
    pos = 0
    while len(parts) <= MAX_PARTS:
        at = body.find(delimiter, pos)
        if at < 0:
            break
        if at and body[at - 1 : at] != b"\n":
            pos = at + 1
            continue
        if start >= 0:
            end = at - 2 if body[at - 2 : at] == b"\r\n" else at - 1
            parts.append(body[start : max(start, end)])
        closing = body[at + len(delimiter) : at + len(delimiter) + 2] == b"--"
        line_end = body.find(b"\n", at)
        if closing:
            return parts
        start = pos = len(body) if line_end < 0 else line_end + 1
    if start >= 0 and start < len(body):
        parts.append(body[start:])
    return parts


def _payload(mime: Message, body: bytes, limit: int) -> bytes:
    """The body with its transfer encoding undone, at most ``limit`` bytes of it."""
    encoding = str(mime.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding == "base64":
        # Enough base64 for ``limit`` bytes: 4 characters per 3 bytes, and line breaks.
        chunk = body[: limit * 2]
        try:
            return base64.b64decode(chunk)[:limit]
        except (binascii.Error, ValueError):
            cleaned = re.sub(rb"[^A-Za-z0-9+/]", b"", chunk)
            try:
                return base64.b64decode(cleaned[: len(cleaned) // 4 * 4])[:limit]
            except (binascii.Error, ValueError):
                return chunk[:limit]
    if encoding == "quoted-printable":
        return quopri.decodestring(body[: limit * 3])[:limit]
    return body[:limit]


def extract(raw: bytes) -> Searchable:
    """The searchable text of a message (see the module's docstring)."""
    complete = len(raw) <= MAX_INPUT
    raw = raw[:MAX_INPUT]
    header, body = _split(raw)
    head = _head(header)
    header_text = _text(header)
    if len(header_text) < MAX_HEADER:
        # Past MAX_HEADER the decoded field lines would be cut off whole:
        # decoding a sender's megabytes of encoded words for nothing is not done.
        header_text += "\n" + _field_lines(head)
    if len(header_text) > MAX_HEADER:
        header_text, complete = header_text[:MAX_HEADER], False

    texts: list[str] = []
    budget = MAX_BODY
    html_left = MAX_HTML
    visited = 0
    # (header, body, depth, default type); a stack, pushed in reverse so
    # parts come out in message order.
    stack: list[tuple[_Head, bytes, int, str]] = [(head, body, 0, "text/plain")]
    while stack and budget > 0:
        part, part_body, depth, default = stack.pop()
        visited += 1
        if visited > MAX_PARTS:
            complete = False
            break
        mime = part.mime
        ctype = mime.get_content_type() if mime.get("Content-Type") else default
        maintype, _, subtype = ctype.partition("/")
        nests = maintype == "multipart" or (maintype, subtype) in _MESSAGES
        if nests and depth >= MAX_DEPTH:
            complete = False
            continue
        if maintype == "multipart":
            boundary = mime.get_param("boundary")
            children = []
            if isinstance(boundary, str) and boundary:
                children = _parts(part_body, boundary.encode("utf-8", "replace"))
            inner = "message/rfc822" if subtype == "digest" else "text/plain"
            for child in reversed(children):
                child_header, child_body = _split(child)
                stack.append((_head(child_header), child_body, depth + 1, inner))
            if children:
                continue
            # No boundary, or no part found: its body is read as text/plain
            # (what FETCH BODYSTRUCTURE calls such a part).
            maintype, subtype = "text", "plain"
        if (maintype, subtype) in _MESSAGES:
            inner_bytes = _payload(mime, part_body, budget * 4 + MAX_HEADER)
            inner_header, inner_body = _split(inner_bytes)
            inner_head = _head(inner_header)
            lines = _field_lines(inner_head)[:budget]
            texts.append(lines)
            budget -= len(lines)
            stack.append((inner_head, inner_body, depth + 1, "text/plain"))
        elif maintype == "text":
            charset = mime.get_content_charset()
            if subtype == "html":
                data = _payload(mime, part_body, html_left)
                if len(data) == html_left:
                    complete = False
                html_left -= len(data)
                text = html_text(decode_text(data, charset))
            else:
                text = decode_text(_payload(mime, part_body, budget * 4), charset)
            if len(text) > budget:
                text, complete = text[:budget], False
            texts.append(text)
            budget -= len(text)
    if stack:
        complete = False
    return Searchable(fold(header_text), fold("\n".join(texts)), complete)


# -- the index: DDL and queries ---------------------------------------------------------------

SQLITE_DDL: Final = (
    "CREATE TABLE fulltext_docs (\n"
    "    id INTEGER PRIMARY KEY,\n"
    "    guid VARCHAR(40) NOT NULL UNIQUE,\n"
    "    version INTEGER NOT NULL\n"
    ")",
    "CREATE VIRTUAL TABLE fulltext USING fts5(\n"
    "    header, body, tokenize = 'trigram case_sensitive 1'\n"
    ")",
)
"""SQLite: one row per GUID (the text is a property of the bytes), the FTS5
row's ``rowid`` is ``fulltext_docs.id``. Searches for a mailbox::

    SELECT m.uid FROM messages AS m JOIN fulltext_docs AS d ON d.guid = m.guid
    WHERE m.mailbox_id = :mailbox AND m.expunged = 0
      AND d.id IN (SELECT rowid FROM fulltext WHERE fulltext MATCH :match)

with ``:match`` from :func:`sqlite_match`, or when that is None (a string
shorter than :data:`MIN_INDEXED`) the subquery of :data:`SQLITE_SHORT`."""

SQLITE_SHORT: Final = {
    "BODY": "SELECT rowid FROM fulltext WHERE instr(body, :needle) > 0",
    "TEXT": "SELECT rowid FROM fulltext WHERE instr(header, :needle) > 0"
    " OR instr(body, :needle) > 0",
}
"""The scan for strings too short for the trigram index (``:needle`` is the
folded string): ``instr`` over the stored folded text, the same substring
test, in C. Not GLOB or LIKE: on an FTS5 trigram table SQLite 3.40.1 hands
those to FTS5, which answers patterns of fewer than 3 characters wrongly
when they hold a character of 3 or 4 UTF-8 bytes (``*日*`` finds nothing)."""

PG_DDL: Final = (
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE TABLE fulltext (\n"
    "    guid VARCHAR(40) PRIMARY KEY,\n"
    "    version SMALLINT NOT NULL,\n"
    "    header TEXT NOT NULL,\n"
    "    body TEXT NOT NULL\n"
    ")",
    "CREATE INDEX ix_fulltext_header_trgm ON fulltext USING gin (header gin_trgm_ops)",
    "CREATE INDEX ix_fulltext_body_trgm ON fulltext USING gin (body gin_trgm_ops)",
)
"""PostgreSQL (``pg_trgm`` is a trusted extension from PostgreSQL 13: the
database owner may create it). Searches for a mailbox::

    SELECT m.uid FROM messages AS m JOIN fulltext AS f ON f.guid = m.guid
    WHERE m.mailbox_id = :mailbox AND NOT m.expunged
      AND f.body LIKE :pattern ESCAPE '\\'                       -- BODY
      -- TEXT: AND (f.header LIKE :pattern ESCAPE '\\' OR f.body LIKE :pattern ESCAPE '\\')

with ``:pattern`` from :func:`like_pattern`."""


def sqlite_match(key: Key, string: str) -> str | None:
    """The FTS5 MATCH expression for BODY or TEXT ``string``: the folded
    string as one phrase in the column(s) the key reads; None when it has
    fewer than :data:`MIN_INDEXED` code points (scan with :data:`SQLITE_SHORT`)."""
    needle = fold(string)
    if len(needle) < MIN_INDEXED:
        return None
    columns = "{body}" if key == "BODY" else "{header body}"
    return columns + ' : "' + needle.replace('"', '""') + '"'


def like_pattern(string: str) -> str:
    """The PostgreSQL ``LIKE ... ESCAPE '\\'`` pattern finding the folded
    ``string`` anywhere: ``%``, ``_`` and ``\\`` escaped."""
    needle = fold(string)
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return "%" + escaped + "%"
