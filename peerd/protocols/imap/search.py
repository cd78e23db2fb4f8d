"""SEARCH (RFC 3501 6.4.4): a :mod:`~peerd.protocols.imap.searchkey` AST compiled to one predicate.

How this works: the parser has already turned the criteria into a small AST
(:data:`~peerd.protocols.imap.searchkey.SearchKey`). :func:`compile_search` walks it once
and builds nested closures over a :class:`Candidate` (a message's sequence
number, UID, flags, size, dates, modseq). Flag, size, date, UID and sequence
keys look only at the record; header and body keys load the message (through
the server's verified spool reader) at most once per message and decode it:
RFC 2047 words in headers, transfer encodings and charsets in text parts.
Matching is case-insensitive substring, as RFC 3501 6.4.4 asks. Sequence sets
are resolved once per search, not once per message.

BODY and TEXT can be answered by the caller instead: given ``texts`` (a
:data:`TextSearch`), each BODY or TEXT key asks it once, at compile time, for
a test over a message's GUID. The IMAP service passes the full-text index's
answers (which read the text :mod:`engine.fulltext` defines: HTML parts as
text, attached messages' fields); :func:`text_questions` lists what a key
will ask, so the caller can ask its index once for all of them. Without
``texts``, the core decodes the message itself (below).

:func:`search_response`, :func:`sort_response` and :func:`esearch_response`
(RFC 4731) render the answer.

No I/O here beyond the loader the caller passes; nothing is written.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Final, Literal

from peerd.protocols.imap import structure
from peerd.protocols.imap.partial import PartialRange, partial_data, runs
from peerd.protocols.imap.records import Record
from peerd.protocols.imap.responses import CODE_LIMIT, CommandError
from peerd.protocols.imap.searchkey import (
    All,
    And,
    Body,
    Date,
    Flag,
    Header,
    ModSeq,
    Not,
    Or,
    SearchKey,
    Seq,
    Size,
    Text,
    Uid,
)
from peerd.protocols.imap.sequence import SequenceSet, in_ranges, resolved

__all__ = [
    "MAX_TEXT_KEYS",
    "Loader",
    "Matcher",
    "Record",
    "TextKind",
    "TextSearch",
    "compile_search",
    "esearch_response",
    "esort_response",
    "in_ranges",
    "resolved",
    "saved_result",
    "search_response",
    "sort_response",
    "text_questions",
]

# The distinct BODY and TEXT strings (case folded) one SEARCH, SORT or THREAD
# may ask. Each is a query of the full-text index over the node's messages,
# answered before the search: a 64 KiB SEARCH of 2,500 case variants of one
# phrase found in every message kept a store reader busy for 4 s (two such
# sessions held every read of the node); a person's search asks a handful.
MAX_TEXT_KEYS: Final = 100

Loader = Callable[[str], bytes]
TextKind = Literal["BODY", "TEXT"]
TextSearch = Callable[[TextKind, str], Callable[[str], bool]]
"""``texts(kind, string)``: a test over a GUID for ``BODY string`` or ``TEXT string``."""


Matcher = Callable[[int, Record, Loader], bool]
_Test = Callable[[int, Record, "_Message"], bool]


# Charsets in which ASCII bytes mean the same ASCII text (so a decoded text
# part of ASCII bytes is its bytes). UTF-7, UTF-16/32, HZ and the like are not.
_ASCII_SUPERSETS = re.compile(
    r"(us-)?ascii|utf-?8|(iso-?8859|latin|windows-?125|cp125|koi8)[-_a-z0-9]*|"
    r"gb2312|gbk|gb18030|big5|shift_jis|euc-(jp|kr|cn)"
)
# guid -> whether the message's searchable text is its raw bytes (see
# _Message.lacks). A property of immutable bytes, so it is kept per GUID.
_PLAIN: OrderedDict[str, bool] = OrderedDict()
_PLAIN_MAX = 1_000_000
_PLAIN_LOCK = threading.Lock()


def _text_is_raw(part: structure.Part) -> bool:
    """True when what TEXT and BODY look at (decoded headers, decoded text parts)
    holds exactly the ASCII bytes of the part: no encoded words, no transfer
    encoding on a text part, an ASCII-superset charset."""
    if b"=?" in part.header:
        return False
    if part.children:
        return all(_text_is_raw(child) for child in part.children)
    if part.message is not None:
        return _text_is_raw(part.message)
    if part.maintype != "text":
        return True  # not text: search_text does not look inside it
    encoding = structure.field_text(part, "Content-Transfer-Encoding", "7bit").strip().lower()
    charset = (structure.charset(part) or "us-ascii").lower()
    return encoding in ("7bit", "8bit", "binary") and bool(_ASCII_SUPERSETS.fullmatch(charset))


class _Message:
    """The message, loaded and parsed at most once per record during a search."""

    __slots__ = ("_headers", "_lower", "_part", "_raw", "_text", "guid", "loader")

    def __init__(self, guid: str, loader: Loader) -> None:
        self.guid = guid
        self.loader = loader
        self._raw: bytes | None = None
        self._lower: bytes | None = None
        self._part: structure.Part | None = None
        self._text: str | None = None
        self._headers: str | None = None

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = self.loader(self.guid)
        return self._raw

    @property
    def part(self) -> structure.Part:
        if self._part is None:
            self._part = structure.parse(self.raw)
        return self._part

    def lacks(self, needle: str) -> bool:
        """True only if the message's searchable text cannot hold ``needle``
        (casefolded): its text is its raw ASCII bytes (checked once per GUID
        with a parse, then remembered) and those bytes do not hold it. Then
        TEXT and BODY need no parse. Not for terms with white space (header
        unfolding joins lines) or beyond ASCII (casefolding maps "ß" to "ss")."""
        if not needle.isascii() or any(c.isspace() for c in needle):
            return False
        with _PLAIN_LOCK:
            plain = _PLAIN.get(self.guid)
        if plain is None:
            plain = self.raw.isascii() and _text_is_raw(self.part)
            with _PLAIN_LOCK:
                _PLAIN[self.guid] = plain
                if len(_PLAIN) > _PLAIN_MAX:
                    _PLAIN.popitem(last=False)
        if not plain:
            return False
        if self._lower is None:
            self._lower = self.raw.lower()
        return needle.encode() not in self._lower

    def header(self, name: str) -> str:
        return structure.decoded_header(self.part, name).casefold()

    def has_header(self, name: str) -> bool:
        return self.part.fields.get(name) is not None

    def body(self) -> str:
        if self._text is None:
            self._text = structure.search_text(self.part).casefold()
        return self._text

    def all_headers(self) -> str:
        # The header as sent and with its encoded words decoded: TEXT finds
        # a term in either (RFC 3501 6.4.4 matches the header's contents).
        if self._headers is None:
            raw = self.part.header.decode("utf-8", "replace")
            self._headers = (raw + "\n" + structure.decoded_headers(self.part)).casefold()
        return self._headers

    def sent(self) -> dt.date | None:
        value = self.part.fields.get("Date")
        try:
            when = email.utils.parsedate_to_datetime(str(value)) if value else None
        except (TypeError, ValueError):
            return None
        # RFC 3501 6.4.4: compare dates "disregarding time and timezone",
        # i.e. the date as written in the header.
        return when.date() if when is not None else None


def _compare(op: str, day: dt.date) -> Callable[[dt.date], bool]:
    if op == "BEFORE":
        return lambda d: d < day
    if op == "ON":
        return lambda d: d == day
    return lambda d: d >= day  # SINCE


def text_questions(key: SearchKey) -> Iterator[tuple[TextKind, str]]:
    """Each BODY and TEXT key in ``key``, as (kind, string), in order; past
    :data:`MAX_TEXT_KEYS` distinct ones (case folded), ``NO [LIMIT]``."""
    distinct: set[tuple[TextKind, str]] = set()
    for kind, string in _text_keys(key):
        distinct.add((kind, string.casefold()))
        if len(distinct) > MAX_TEXT_KEYS:
            raise CommandError(
                f"a search asks at most {MAX_TEXT_KEYS} different BODY and TEXT strings",
                code=CODE_LIMIT,
                status="NO",
            )
        yield kind, string


def _text_keys(key: SearchKey) -> Iterator[tuple[TextKind, str]]:
    match key:
        case Body(value):
            yield "BODY", value
        case Text(value):
            yield "TEXT", value
        case Not(inner):
            yield from _text_keys(inner)
        case Or(left, right):
            yield from _text_keys(left)
            yield from _text_keys(right)
        case And(keys):
            for inner in keys:
                yield from _text_keys(inner)
        case _:
            return


def _unread(guid: str) -> bytes:
    raise AssertionError(f"a search that reads no message read {guid}")


# The message given to tests that never look at it (see compile_search).
_UNREAD: Final = _Message("", _unread)


def compile_search(
    key: SearchKey,
    count: int,
    top_uid: int,
    texts: TextSearch | None = None,
    saved: Collection[int] = (),
) -> Matcher:
    """The predicate for ``key`` in a mailbox of ``count`` messages whose last
    UID is ``top_uid``; BODY and TEXT through ``texts`` when given; ``$``
    (RFC 5182) names the messages of the UIDs ``saved``."""

    # Whether a test looks at the message itself (its header, text or Date):
    # when none does, no _Message is built per record.
    reads = False

    def build(node: SearchKey) -> _Test:
        nonlocal reads
        match node:
            case Body(value) if texts is not None:
                body_test = texts("BODY", value)
                return lambda seq, rec, msg: body_test(rec.guid)
            case Text(value) if texts is not None:
                text_test = texts("TEXT", value)
                return lambda seq, rec, msg: text_test(rec.guid)
            case All():
                return lambda seq, rec, msg: True
            case Flag(name, present):
                # \Recent is in the flags of the session's recent records (RFC 3501 2.3.2).
                return lambda seq, rec, msg: (name in rec.flags.split()) == present
            case Header(field, value):
                reads = True
                needle = value.casefold()
                if not needle:  # RFC 3501 6.4.4 HEADER: "" matches any message with the field
                    return lambda seq, rec, msg: msg.has_header(field)
                return lambda seq, rec, msg: needle in msg.header(field)
            case Body(value):
                reads = True
                needle = value.casefold()
                return lambda seq, rec, msg: not msg.lacks(needle) and needle in msg.body()
            case Text(value):
                reads = True
                needle = value.casefold()
                return lambda seq, rec, msg: (
                    not msg.lacks(needle) and (needle in msg.all_headers() or needle in msg.body())
                )
            case Date("INTERNAL", op, day):
                test = _compare(op, day)
                return lambda seq, rec, msg: test(rec.internaldate.date())
            case Date(_, op, day):
                reads = True
                test = _compare(op, day)

                def sent(seq: int, rec: Record, msg: _Message) -> bool:
                    when = msg.sent()
                    return when is not None and test(when)

                return sent
            case Size("LARGER", size):
                return lambda seq, rec, msg: rec.size > size
            case Size(_, size):
                return lambda seq, rec, msg: rec.size < size
            case Seq(sequence) | Uid(sequence) if sequence.saved:
                # RFC 5182 2.1: "$" is the messages the last SEARCH (SAVE) found.
                return lambda seq, rec, msg: rec.uid in saved
            case Seq(sequence):
                seqs = resolved(sequence, count)
                return lambda seq, rec, msg: in_ranges(seq, seqs)
            case Uid(sequence):
                uids = resolved(sequence, top_uid)
                return lambda seq, rec, msg: in_ranges(rec.uid, uids)
            case ModSeq(floor):
                # RFC 7162 3.1.5: per-flag entries are not kept; every entry is the message's.
                return lambda seq, rec, msg: rec.modseq >= floor
            case Not(inner):
                test_inner = build(inner)
                return lambda seq, rec, msg: not test_inner(seq, rec, msg)
            case Or(left, right):
                test_left, test_right = build(left), build(right)
                return lambda seq, rec, msg: test_left(seq, rec, msg) or test_right(seq, rec, msg)
            case And(keys):
                tests = [build(k) for k in keys]
                return lambda seq, rec, msg: all(t(seq, rec, msg) for t in tests)
        raise AssertionError(f"unknown search key {node!r}")

    test = build(key)
    if not reads:
        # Flags, sizes, dates of arrival, numbers and the index's answers
        # only: the tests never touch the message they are given.
        return lambda seq, rec, loader: test(seq, rec, _UNREAD)

    def run(seq: int, rec: Record, loader: Loader) -> bool:
        return test(seq, rec, _Message(rec.guid, loader))

    return run


def saved_result(
    options: Sequence[str], uids: Sequence[int], partial: PartialRange | None = None
) -> frozenset[int]:
    """What SEARCH RETURN (SAVE ...) keeps as ``$`` of the UIDs found, in
    mailbox order (RFC 5182 2.4): with MIN, MAX and/or PARTIAL and neither
    ALL nor COUNT, only the messages those return; otherwise all of them."""
    wanted = set(options) - {"SAVE"}
    if not uids or not wanted or wanted & {"ALL", "COUNT"}:
        return frozenset(uids)
    picked = set(partial.pick(uids)) if partial is not None else set()
    if "MIN" in wanted:
        picked.add(uids[0])
    if "MAX" in wanted:
        picked.add(uids[-1])
    return frozenset(picked)


def esort_response(
    tag: str,
    uid: bool,
    options: Sequence[str],
    ordered: Sequence[int],
    partial: PartialRange | None = None,
) -> bytes:
    """RFC 5267 3.2 (ESORT): ``* ESEARCH (TAG "t") [UID] ...`` for a SORT.

    MIN and MAX are the first and last message in sort order; ALL lists them
    all in sort order, a range only where numbers ascend one by one (``5:7,1``);
    PARTIAL the ones at its positions in sort order (RFC 5267 4.4).
    """
    wanted = set(options) or {"ALL"}
    parts = [b'* ESEARCH (TAG "' + tag.encode() + b'")']
    if uid:
        parts.append(b"UID")
    if ordered:
        if "MIN" in wanted:
            parts.append(b"MIN %d" % ordered[0])
        if "MAX" in wanted:
            parts.append(b"MAX %d" % ordered[-1])
        if "ALL" in wanted:
            parts.append(b"ALL " + runs(ordered).encode())
    if partial is not None:
        parts.append(partial_data(partial, ordered))
    if "COUNT" in wanted:
        parts.append(b"COUNT %d" % len(ordered))
    return b" ".join(parts) + b"\r\n"


def _numbers(found: Sequence[int]) -> bytes:
    """`` n n ...``, each number after a space (one format for all of them:
    a third of the time of one ``b" %d"`` a number, for 10,000)."""
    return (" %d" * len(found) % tuple(found)).encode()


def sort_response(ordered: Sequence[int]) -> bytes:
    """``* SORT n ...`` (RFC 5256 4), like ``* SEARCH``."""
    return b"* SORT" + _numbers(ordered) + b"\r\n"


def search_response(found: Sequence[int], modseqs: Mapping[int, int] | None = None) -> bytes:
    """``* SEARCH n ...`` (RFC 3501 7.2.5); with ``modseqs`` (the mod-sequence
    of each number found, given when the key held MODSEQ) the highest of them
    ends it as ``(MODSEQ m)`` (RFC 7162 3.1.5; none when nothing matched)."""
    out = b"* SEARCH" + _numbers(found)
    if modseqs is not None and found:
        out += b" (MODSEQ %d)" % max(modseqs[n] for n in found)
    return out + b"\r\n"


def esearch_response(
    tag: str,
    uid: bool,
    options: Sequence[str],
    found: Sequence[int],
    modseqs: Mapping[int, int] | None = None,
    partial: PartialRange | None = None,
) -> bytes:
    """RFC 4731 3.1: ``* ESEARCH (TAG "t") [UID] MIN .. MAX .. ALL .. COUNT ..``.

    ``RETURN ()`` means ALL. With no match MIN, MAX and ALL are left out and
    COUNT, if asked for, is 0. (A tag holds no quote nor backslash, RFC 3501 9.)
    ``partial``: ``PARTIAL (range results)``, the numbers at the range's
    positions in ascending order, NIL if none (RFC 9394 3.1), even with no match.
    With ``modseqs`` (the key held MODSEQ) and a match, ``MODSEQ m`` follows
    (RFC 4731 3.2, RFC 7162 3.1.10): the highest mod-sequence of the messages
    returned: of MIN, MAX and PARTIAL's alone, else of all found.
    """
    wanted = set(options) or {"ALL"}
    parts = [b'* ESEARCH (TAG "' + tag.encode() + b'")']
    if uid:
        parts.append(b"UID")
    if found:
        if "MIN" in wanted:
            parts.append(b"MIN %d" % min(found))
        if "MAX" in wanted:
            parts.append(b"MAX %d" % max(found))
        if "ALL" in wanted:
            parts.append(b"ALL " + str(SequenceSet.from_numbers(found)).encode())
    ascending = sorted(found)
    if partial is not None:
        parts.append(partial_data(partial, ascending))
    if "COUNT" in wanted:
        parts.append(b"COUNT %d" % len(found))
    if modseqs is not None and found:
        if wanted & {"ALL", "COUNT"}:
            returned = list(found)
        else:
            returned = [n for n, w in ((min(found), "MIN"), (max(found), "MAX")) if w in wanted]
            if partial is not None:
                returned += partial.pick(ascending)
        if returned:
            parts.append(b"MODSEQ %d" % max(modseqs[n] for n in returned))
    return b" ".join(parts) + b"\r\n"
