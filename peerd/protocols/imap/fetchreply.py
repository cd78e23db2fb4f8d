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

:class:`FetchRenderer` gives the same octets as those two for many messages
(a FETCH of 10,000): the items are looked at once per FETCH, not once per
message, each message's pieces are appended to the caller's list (joined
once per group: a literal's octets are copied once, not once per nesting
level), the structures are looked up once per message and the flag lists
encoded once per distinct list.

The server renders in worker threads, many groups at once, so the cache takes
a lock around each look-up and insertion (the MIME parse itself runs outside
it: two threads may parse the same message once each, which is harmless).

:class:`RenderedGroups` keeps the responses of groups of messages already
rendered for items that need no octets (FLAGS, ENVELOPE, BODYSTRUCTURE...),
so that the same FETCH of the same messages again (a webmail showing a
folder's page again, a second client of the account, a client's resync)
is one comparison and one write a group, not Python per message. Such a
response is a function of the items, the sequence number and the record
alone (the structures are those of the GUID, whose bytes never change), and
records are frozen: a flag change, ``\\Recent`` or an expunge (which
renumbers) makes other (sequence number, record) pairs, so a stale group is
never served, only not found. Groups are kept for consecutive messages
(:class:`~peerd.protocols.imap.records.Numbered`: ``1:*``, a page).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, cast

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
from peerd.protocols.imap.records import Numbered, Record
from peerd.protocols.imap.responses import (
    CODE_LIMIT,
    CODE_UNKNOWN_CTE,
    CommandError,
    fetch_response,
    internaldate,
    literal,
)

__all__ = [
    "FetchRenderer",
    "Reader",
    "RenderedGroups",
    "Segment",
    "Sink",
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

    def held(self, guids: Iterable[str]) -> dict[str, Structure]:
        """Those of ``guids`` held, under one lock (:meth:`get` parses the others)."""
        found: dict[str, Structure] = {}
        with self._lock:
            entries = self._entries
            for guid in guids:
                cached = entries.get(guid)
                if cached is not None:
                    entries.move_to_end(guid)
                    found[guid] = cached
        return found

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


# The octets RenderedGroups holds at most (responses, and about this many a
# message for the records it keeps to compare): a header FETCH of 10,000
# messages is ~4 MB, BODYSTRUCTURE ~2 MB.
_RENDERED_BUDGET: Final = 16 << 20
_RECORD_COST: Final = 64


class RenderedGroups:
    """FETCH responses of groups of consecutive messages, rendered once and
    served again to a FETCH of the same items for the same messages under
    the same sequence numbers; least recently used out first past a budget
    of octets.

    An entry is found by the items and its first message's sequence number,
    and serves a group only if the FETCH's next records are the entry's
    (the same objects, for the store's frozen records shared by the
    sessions, or equal ones: compared in C, not record by record in
    Python). Only for a FETCH's :class:`~peerd.protocols.imap.records.Numbered`
    targets, items that need no octets of the messages, and groups whose
    every message was rendered (none unreadable). The server uses it from
    its event loop only: no lock.
    """

    def __init__(self, budget: int = _RENDERED_BUDGET) -> None:
        self.budget = budget
        self._held = 0
        self._entries: OrderedDict[
            tuple[tuple[FetchAtt, ...], int], tuple[tuple[Record, ...], bytes]
        ] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def held(self) -> int:
        """The octets held, as the budget counts them."""
        return self._held

    def get(
        self, items: tuple[FetchAtt, ...], targets: Sequence[tuple[int, Record]], start: int
    ) -> tuple[bytes, int] | None:
        """The responses of the group at ``targets[start]`` and where the next
        group begins, if an entry holds exactly those messages; else None."""
        if not isinstance(targets, Numbered) or start >= len(targets):
            return None
        key = (items, targets.first + start)
        entry = self._entries.get(key)
        if entry is None:
            return None
        records, data = entry
        end = start + len(records)
        if targets.records[start:end] != records:
            return None
        self._entries.move_to_end(key)
        return data, end

    def put(
        self, items: tuple[FetchAtt, ...], group: Sequence[tuple[int, Record]], data: bytes
    ) -> None:
        """Hold ``data``, the responses to ``items`` for ``group`` (kept only
        for a :class:`~peerd.protocols.imap.records.Numbered` group)."""
        if not isinstance(group, Numbered) or not group.records:
            return
        cost = len(data) + _RECORD_COST * len(group.records)
        if cost > self.budget:
            return
        key = (items, group.first)
        old = self._entries.pop(key, None)
        if old is not None:
            self._held -= len(old[1]) + _RECORD_COST * len(old[0])
        self._entries[key] = (group.records, data)
        self._held += cost
        while self._held > self.budget:
            _, (gone, gone_data) = self._entries.popitem(last=False)
            self._held -= len(gone_data) + _RECORD_COST * len(gone)


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


class Sink(Protocol):
    """Where :class:`FetchRenderer` appends a message's pieces (a list that
    may hold more kinds of pieces than :data:`Segment`)."""

    def append(self, segment: Segment, /) -> None: ...
    def extend(self, segments: Iterable[Segment], /) -> None: ...


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


# Where each structure item is in a Structure, and its name.
_STRUCTURE_ITEMS: Final = {
    Item.ENVELOPE: (0, b"ENVELOPE "),
    Item.BODYSTRUCTURE: (1, b"BODYSTRUCTURE "),
    Item.BODY: (2, b"BODY "),
}


# The items a FETCH answers from the record alone, as a format's field.
_RECORD_FIELDS: Final = {
    Item.UID: b"UID %d",
    Item.FLAGS: b"FLAGS %b",
    Item.RFC822_SIZE: b"RFC822.SIZE %d",
    Item.MODSEQ: b"MODSEQ (%d)",
    Item.INTERNALDATE: b"INTERNALDATE %b",
}


_CODES: Final[dict[FetchAtt, int]] = {
    Item.UID: 0,
    Item.FLAGS: 1,
    Item.RFC822_SIZE: 2,
    Item.MODSEQ: 3,
    Item.INTERNALDATE: 4,
    Item.ENVELOPE: 10,
    Item.BODYSTRUCTURE: 11,
    Item.BODY: 12,
}


_WHOLE: Final = -1  # a whole-message literal (partial or not)
_SECTION: Final = -2  # any other item that needs the octets


class FetchRenderer:
    """The FETCH responses for ``items``, message by message, as
    :func:`render_fetch` (``span_from`` None) or :func:`render_fetch_segments`
    (a whole-message literal of at least ``span_from`` octets left as a
    :class:`Span`) answer them; one renderer serves one FETCH in one thread.

    When no item needs the message's octets, each response is one ``%``
    format, made once per FETCH, filled from the record and the structure.
    """

    __slots__ = (
        "_codes",
        "_flags",
        "_format",
        "_found",
        "_items",
        "_span_from",
        "_structured",
        "_whole",
        "_wholes",
        "spans",
    )

    def __init__(self, items: Iterable[FetchAtt], *, span_from: int | None = None) -> None:
        self._items = tuple(items)
        self._span_from = span_from
        self._structured = any(att in _STRUCTURE_ITEMS for att in self._items)
        # The name before each whole-message literal (RFC 3501 7.4.2) and its
        # <origin.length>, by the item's place.
        self._wholes = {
            i: (
                b"RFC822" if att is Item.RFC822 else response_name(att),
                att.partial if isinstance(att, BodySection) else None,
            )
            for i, att in enumerate(self._items)
            if whole_message(att)
        }
        self._flags: dict[str, bytes] = {}
        self._found: dict[str, Structure] = {}
        fields: list[bytes] = []
        for att in self._items:
            if att in _RECORD_FIELDS:
                fields.append(_RECORD_FIELDS[att])
            elif att in _STRUCTURE_ITEMS:
                fields.append(_STRUCTURE_ITEMS[att][1] + b"%b")
            else:
                break
        self._format: bytes | None = None
        if len(fields) == len(self._items):
            self._format = b"* %d FETCH (" + b" ".join(fields) + b")\r\n"
        # Each item as a small number for the format's loop (an Enum member
        # is slower to look up and compare, 10,000 times a FETCH).
        self._codes = tuple(
            _CODES.get(att, _WHOLE if i in self._wholes else _SECTION)
            for i, att in enumerate(self._items)
        )
        # How many Spans the renderer has put out (the caller opens their files).
        self.spans = 0
        # One whole message (BODY[], BODY.PEEK[], RFC822, no partial) among
        # record fields only, as UID FETCH 1:* BODY.PEEK[] asks: its response
        # is two formats around the literal (see _whole_message).
        self._whole: tuple[bytes, bytes, tuple[int, ...], tuple[int, ...]] | None = None
        if len(self._wholes) == 1 and all(0 <= c < 10 or c == _WHOLE for c in self._codes):
            ((at, (name, partial)),) = self._wholes.items()
            if partial is None:
                head = b"".join(_RECORD_FIELDS[cast(Item, att)] + b" " for att in self._items[:at])
                tail = b"".join(
                    b" " + _RECORD_FIELDS[cast(Item, att)] for att in self._items[at + 1 :]
                )
                self._whole = (
                    b"* %d FETCH (" + head + name.replace(b"%", b"%%") + b" {%d}\r\n",
                    tail + b")\r\n",
                    self._codes[:at],
                    self._codes[at + 1 :],
                )

    def prefetch(self, guids: Iterable[str], structures: StructureCache) -> None:
        """Look up the held structures of the messages about to be rendered
        at once (one lock for a group, not one a message); a no-op when no
        item needs them."""
        if self._structured:
            self._found = structures.held(guids)

    def _flag_list(self, flags: str) -> bytes:
        found = self._flags.get(flags)
        if found is None:
            found = self._flags[flags] = b"(" + flags.encode() + b")"
        return found

    def message(
        self,
        seq: int,
        record: Record,
        reader: Reader,
        structures: StructureCache,
        out: Sink,
    ) -> int:
        """Append ``* seq FETCH (...)`` CRLF for ``record`` to ``out`` (octets,
        and :class:`Span` in place of large literals); the octets it holds in
        memory (of its literals and structures). Raises as the ``reader``
        does, with ``out`` holding part of the response: the caller drops
        what it appended."""
        if self._whole is not None:
            return self._whole_message(seq, record, reader, out)
        found = None
        if self._structured:
            found = self._found.get(record.guid) or structures.get(record.guid, reader)
        if self._format is not None:
            line = self._format % (seq, *self._record_values(self._codes, record, found))
            out.append(line)
            return len(line)
        return self._pieces(seq, record, reader, found, out)

    def _record_values(
        self, codes: tuple[int, ...], record: Record, found: Structure | None = None
    ) -> list[object]:
        """The values of ``codes`` for ``record``: 0-4 its UID, FLAGS,
        RFC822.SIZE, MODSEQ and INTERNALDATE, 10-12 ENVELOPE, BODYSTRUCTURE
        and BODY from ``found``."""
        values: list[object] = []
        for code in codes:
            if code == 0:
                values.append(record.uid)
            elif code == 1:
                values.append(self._flag_list(record.flags))
            elif code == 2:
                values.append(record.size)
            elif code == 3:
                values.append(record.modseq)
            elif code == 4:
                values.append(internaldate(record.internaldate))
            else:  # 10, 11, 12: ENVELOPE, BODYSTRUCTURE, BODY
                assert found is not None
                values.append(found[code - 10])
        return values

    def _whole_message(self, seq: int, record: Record, reader: Reader, out: Sink) -> int:
        """:meth:`_pieces` for one whole-message literal among record fields:
        the same octets, from two formats made once per FETCH."""
        assert self._whole is not None
        head, tail, before, after = self._whole
        size = record.size
        span_from = self._span_from
        data: bytes | None = None
        if span_from is None or size < span_from:
            data = reader(record.guid)
            size = len(data)
        if before:
            out.append(head % (seq, *self._record_values(before, record), size))
        else:
            out.append(head % (seq, size))
        if data is None:
            out.append(Span(record.guid, size, 0, size))
            self.spans += 1
        else:
            out.append(data)
        out.append(tail % tuple(self._record_values(after, record)) if after else tail)
        return 0 if data is None else size

    def _pieces(
        self, seq: int, record: Record, reader: Reader, found: Structure | None, out: Sink
    ) -> int:
        """:meth:`message` with items that need the octets: the text between
        two literals is joined, a literal's octets are a piece of their own."""
        octets: _Octets | None = None
        text: list[bytes] = [b"* %d FETCH (" % seq]
        for i, (att, code) in enumerate(zip(self._items, self._codes, strict=True)):
            if i:
                text.append(b" ")
            if code >= 0:
                text.append(self._field(att, record, found))
            elif code == _WHOLE:
                name, partial = self._wholes[i]
                span_from = self._span_from
                if span_from is not None:
                    # As _whole_span: the range of the record's size it names.
                    size = record.size
                    first, end = 0, size
                    if partial is not None:
                        first = min(partial[0], size)
                        end = min(size, partial[0] + partial[1])
                    count = max(0, end - first)
                    if count >= span_from:
                        text.append(name + b" {%d}\r\n" % count)
                        out.append(b"".join(text))
                        out.append(Span(record.guid, size, first, count))
                        self.spans += 1
                        text = []
                        continue
                if octets is None:
                    octets = _Octets(reader(record.guid))
                data = octets.raw
                if partial is not None:
                    # RFC 3501 6.4.5: <origin.length>; past the end is an empty string.
                    data = data[partial[0] : partial[0] + partial[1]]
                octets.hold(len(data))
                text.append(name + b" {%d}\r\n" % len(data))
                out.append(b"".join(text))
                out.append(data)
                text = []
            else:
                if octets is None:
                    octets = _Octets(reader(record.guid))
                item = _body_item(att, octets)
                octets.hold(len(item))
                text.append(item)
        text.append(b")\r\n")
        out.append(b"".join(text))
        return 0 if octets is None else octets.held

    def _field(self, att: FetchAtt, record: Record, found: Structure | None) -> bytes:
        if att is Item.UID:
            return b"UID %d" % record.uid
        if att is Item.FLAGS:
            return b"FLAGS " + self._flag_list(record.flags)
        if att is Item.RFC822_SIZE:
            return b"RFC822.SIZE %d" % record.size
        if att is Item.MODSEQ:
            return b"MODSEQ (%d)" % record.modseq
        if att is Item.INTERNALDATE:
            return b"INTERNALDATE " + internaldate(record.internaldate)
        assert found is not None
        index, prefix = _STRUCTURE_ITEMS[att]  # type: ignore[index]
        return prefix + found[index]


def render_fetch(
    seq: int,
    record: Record,
    items: Iterable[FetchAtt],
    reader: Reader,
    structures: StructureCache,
) -> bytes:
    """``* seq FETCH (...)`` for one message (RFC 3501 7.4.2)."""
    parts: list[bytes] = []
    octets: _Octets | None = None
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
            if octets is None:
                octets = _Octets(reader(record.guid))
            item = _body_item(att, octets)
            octets.hold(len(item))
            parts.append(item)
    return fetch_response(seq, parts)


# What the items of one FETCH may hold of one message, in octets: this many
# times the message, plus a floor. Ample for any client's items (the whole
# message, its header and text, a few parts, their decoded forms); an item
# is a few octets on the wire and may name the whole message, so without a
# bound 300 BINARY[1]<k.2000000> of one 2 MB message held some 2 GB.
_HOLD_FACTOR: Final = 8
_HOLD_FLOOR: Final = 1 << 20


class _Octets:
    """One message's octets as its FETCH items take them: each section cut
    or decoded once (an item's partial is cut from it), and what the items
    and those sections hold counted against :data:`_HOLD_FACTOR`."""

    __slots__ = ("_budget", "_sections", "_used", "held", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.held = 0  # in the items
        self._used = 0  # in the items and the sections they were cut from
        self._budget = _HOLD_FACTOR * len(raw) + _HOLD_FLOOR
        self._sections: dict[tuple[object, ...], bytes | None] = {}

    def hold(self, size: int) -> None:
        """An item of ``size`` octets is kept for the response."""
        self.held += size
        self._use(size)

    def _use(self, size: int) -> None:
        self._used += size
        if self._used > self._budget:
            raise CommandError(
                "the FETCH items ask for too many octets of one message; ask for fewer at once",
                code=CODE_LIMIT,
                status="NO",
            )

    def section(
        self, path: tuple[int, ...], kind: SectionKind, fields: tuple[str, ...] = ()
    ) -> bytes | None:
        key = ("section", path, kind, fields)
        if key not in self._sections:
            data = self._sections[key] = structure.section(self.raw, path, kind, fields)
            self._use(len(data or b""))
        return self._sections[key]

    def binary(self, path: tuple[int, ...]) -> bytes | None:
        key = ("binary", path)
        if key not in self._sections:
            data = self._sections[key] = structure.binary_section(self.raw, path)
            self._use(len(data or b""))
        return self._sections[key]


def _binary_item(att: BinarySection, octets: _Octets) -> bytes:
    """RFC 3516 4: ``BINARY[p] ~{n}`` (a literal8 when the octets hold NUL,
    else a plain literal) or ``BINARY.SIZE[p] n``; NIL for a missing part.
    An encoding that cannot be undone is ``NO [UNKNOWN-CTE]`` (4.3)."""
    try:
        data = octets.binary(att.part)
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


def _body_item(att: FetchAtt, octets: _Octets) -> bytes:
    if att is Item.RFC822:
        return b"RFC822 " + literal(octets.raw)
    if att is Item.RFC822_HEADER:
        return b"RFC822.HEADER " + literal(octets.section((), SectionKind.HEADER) or b"")
    if att is Item.RFC822_TEXT:
        return b"RFC822.TEXT " + literal(octets.section((), SectionKind.TEXT) or b"")
    if isinstance(att, BinarySection):
        return _binary_item(att, octets)
    assert isinstance(att, BodySection)
    data = octets.section(att.part, att.kind, att.fields)
    if data is not None and att.partial is not None:
        # RFC 3501 6.4.5: <origin.length>; past the end is an empty string.
        origin, length = att.partial
        data = data[origin : origin + length]
    return response_name(att) + b" " + (literal(data) if data is not None else b"NIL")
