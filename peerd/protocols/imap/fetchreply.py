"""FETCH responses for one message, without I/O (RFC 3501 6.4.5 and 7.4.2).

How this works: :func:`render_fetch` answers ``* n FETCH (...)`` for one
record and the items a :class:`~peerd.protocols.imap.selected.FetchPlan`
names. Items from the record (UID, FLAGS, INTERNALDATE, RFC822.SIZE, MODSEQ)
need no bytes; body sections read the message once through the ``reader``
the server passes (the store's verified spool read); ENVELOPE, BODYSTRUCTURE
and BODY come from a :class:`StructureCache`, as the bytes under a GUID never
change: the server fills it from the structures stored when the message was
(:mod:`peerd.protocols.imap.parsed`), and parses only what is not stored.

:func:`render_fetch_segments` is the same answer for a server that sends a
large message's octets from its file itself (``sendfile``): the literal of a
whole message (``BODY[]``, ``BODY.PEEK[]``, ``RFC822``, with or without
``<origin.length>``, RFC 3501 6.4.5) is its ``{n}`` CRLF, then a
:class:`Span` naming the octets, in place of the octets.

The server renders in worker threads, many groups at once, so the cache takes
a lock around each look-up and insertion (the MIME parse itself runs outside
it: two threads may parse the same message once each, which is harmless).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from peerd.protocols.imap import structure
from peerd.protocols.imap.fetchatt import (
    BinarySection,
    BodySection,
    FetchAtt,
    Item,
    SectionKind,
    response_name,
)
from peerd.protocols.imap.parsed import Structure, structures
from peerd.protocols.imap.records import Record
from peerd.protocols.imap.responses import (
    CODE_UNKNOWN_CTE,
    CommandError,
    fetch_response,
    internaldate,
    literal,
)

__all__ = [
    "Reader",
    "Segment",
    "Span",
    "StructureCache",
    "render_fetch",
    "render_fetch_segments",
    "whole_message",
]

Reader = Callable[[str], bytes]
"""The bytes of a message by GUID."""


_DEFAULT_SIZE: Final = 50_000


class StructureCache:
    """ENVELOPE, BODYSTRUCTURE and BODY by GUID, least recently used out first;
    safe to share between threads."""

    def __init__(self, size: int = _DEFAULT_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[str, Structure] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def missing(self, guids: Iterable[str]) -> list[str]:
        """Those of ``guids`` not held (each once)."""
        entries = self._entries
        return [g for g in dict.fromkeys(guids) if g not in entries]

    def put_many(self, values: dict[str, Structure]) -> None:
        """Hold ``values`` (read from the store, :mod:`engine.parsed`)."""
        with self._lock:
            for guid, value in values.items():
                self._entries[guid] = value
                self._entries.move_to_end(guid)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def get(self, guid: str, reader: Reader) -> Structure:
        with self._lock:
            cached = self._entries.get(guid)
            if cached is not None:
                self._entries.move_to_end(guid)
                return cached
        value = structures(reader(guid))
        with self._lock:
            self._entries[guid] = value
            self._entries.move_to_end(guid)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value


@dataclass(frozen=True, slots=True)
class Span:
    """``count`` octets from ``offset`` of the message ``guid``, whose size
    its record gives as ``size``: a literal's octets, sent by the server."""

    guid: str
    size: int
    offset: int
    count: int


Segment = bytes | Span
"""A piece of FETCH responses: octets, or octets of a message to send from its file."""


def whole_message(att: FetchAtt) -> bool:
    """Whether the item's literal is the message as stored, or a range of it:
    ``RFC822``, ``BODY[]``, ``BODY.PEEK[]`` (with or without a partial)."""
    return att is Item.RFC822 or (
        isinstance(att, BodySection) and not att.part and att.kind is SectionKind.ALL
    )


def _whole_span(att: FetchAtt, record: Record, span_from: int) -> tuple[bytes, Span] | None:
    """The literal header and :class:`Span` of a whole-message item of at
    least ``span_from`` octets; None for any other item."""
    if not whole_message(att):
        return None
    name = b"RFC822" if att is Item.RFC822 else response_name(att)
    size = record.size
    start, end = 0, size
    if isinstance(att, BodySection) and att.partial is not None:
        # RFC 3501 6.4.5: <origin.length>; past the end is an empty string.
        origin, length = att.partial
        start = min(origin, size)
        end = min(size, origin + length)
    count = max(0, end - start)
    if count < span_from:
        return None
    return name + b" {%d}\r\n" % count, Span(record.guid, size, start, count)


def render_fetch_segments(
    seq: int,
    record: Record,
    items: Iterable[FetchAtt],
    reader: Reader,
    structures: StructureCache,
    *,
    span_from: int,
) -> list[Segment]:
    """:func:`render_fetch`, with the octets of each whole-message literal of
    at least ``span_from`` octets left as a :class:`Span`."""
    items = list(items)
    spans = [_whole_span(att, record, span_from) for att in items]
    if not any(spans):
        return [render_fetch(seq, record, items, reader, structures)]
    out: list[Segment] = []
    head = b"* %d FETCH (" % seq
    pending = bytearray(head)
    for i, (att, span) in enumerate(zip(items, spans, strict=True)):
        if i:
            pending += b" "
        if span is None:
            # The item as render_fetch answers it alone: "* n FETCH (" item ")" CRLF.
            pending += render_fetch(seq, record, [att], reader, structures)[len(head) : -3]
            continue
        pending += span[0]
        out.append(bytes(pending))
        out.append(span[1])
        pending = bytearray()
    pending += b")\r\n"
    out.append(bytes(pending))
    return out


def render_fetch(
    seq: int,
    record: Record,
    items: Iterable[FetchAtt],
    reader: Reader,
    structures: StructureCache,
) -> bytes:
    """``* seq FETCH (...)`` for one message (RFC 3501 7.4.2)."""
    parts: list[bytes] = []
    raw: bytes | None = None
    for att in items:
        if att is Item.UID:
            parts.append(b"UID %d" % record.uid)
        elif att is Item.FLAGS:
            parts.append(b"FLAGS (" + record.flags.encode() + b")")
        elif att is Item.INTERNALDATE:
            parts.append(b"INTERNALDATE " + internaldate(record.internaldate))
        elif att is Item.RFC822_SIZE:
            parts.append(b"RFC822.SIZE %d" % record.size)
        elif att is Item.MODSEQ:
            parts.append(b"MODSEQ (%d)" % record.modseq)
        elif att is Item.ENVELOPE:
            parts.append(b"ENVELOPE " + structures.get(record.guid, reader)[0])
        elif att is Item.BODYSTRUCTURE:
            parts.append(b"BODYSTRUCTURE " + structures.get(record.guid, reader)[1])
        elif att is Item.BODY:
            parts.append(b"BODY " + structures.get(record.guid, reader)[2])
        else:
            if raw is None:
                raw = reader(record.guid)
            parts.append(_body_item(att, raw))
    return fetch_response(seq, parts)


def _binary_item(att: BinarySection, raw: bytes) -> bytes:
    """RFC 3516 4: ``BINARY[p] ~{n}`` (a literal8 when the octets hold NUL,
    else a plain literal) or ``BINARY.SIZE[p] n``; NIL for a missing part.
    An encoding that cannot be undone is ``NO [UNKNOWN-CTE]`` (4.3)."""
    try:
        data = structure.binary_section(raw, att.part)
    except structure.UnknownEncoding as exc:
        raise CommandError(
            f"cannot decode the part's Content-Transfer-Encoding {str(exc)[:40]!r}",
            code=CODE_UNKNOWN_CTE,
            status="NO",
        ) from exc
    if att.size:
        return response_name(att) + (b" %d" % len(data) if data is not None else b" NIL")
    if data is None:
        return response_name(att) + b" NIL"
    if att.partial is not None:
        origin, length = att.partial
        data = data[origin : origin + length]
    if b"\0" in data:
        return response_name(att) + b" ~{%d}\r\n" % len(data) + data
    return response_name(att) + b" " + literal(data)


def _body_item(att: FetchAtt, raw: bytes) -> bytes:
    if att is Item.RFC822:
        return b"RFC822 " + literal(raw)
    if att is Item.RFC822_HEADER:
        return b"RFC822.HEADER " + literal(structure.section(raw, (), SectionKind.HEADER) or b"")
    if att is Item.RFC822_TEXT:
        return b"RFC822.TEXT " + literal(structure.section(raw, (), SectionKind.TEXT) or b"")
    if isinstance(att, BinarySection):
        return _binary_item(att, raw)
    assert isinstance(att, BodySection)
    data = structure.section(raw, att.part, att.kind, att.fields)
    if data is not None and att.partial is not None:
        # RFC 3501 6.4.5: <origin.length>; past the end is an empty string.
        origin, length = att.partial
        data = data[origin : origin + length]
    return response_name(att) + b" " + (literal(data) if data is not None else b"NIL")
