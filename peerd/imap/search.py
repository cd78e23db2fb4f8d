"""SEARCH (RFC 3501 6.4.4): search keys compiled to one predicate over a record.

How this works: :func:`compile_search` walks the key tokens once and builds
nested closures; flag, size, date and UID keys look only at the record,
header and body keys load the message (through the verified spool reader)
once per message and decode it: RFC 2047 words in headers, transfer
encodings and charsets in text parts. Matching is case-insensitive
substring, as RFC 3501 asks.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import Callable
from typing import Any

from peerd.imap import structure
from peerd.imap.protocol import ParseError, SequenceSet

__all__ = ["compile_search"]

Matcher = Callable[[int, Any, "Loader"], bool]
Loader = Callable[[str], bytes]

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True),
    "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True),
    "UNDRAFT": ("\\Draft", False),
    "FLAGGED": ("\\Flagged", True),
    "UNFLAGGED": ("\\Flagged", False),
    "SEEN": ("\\Seen", True),
    "UNSEEN": ("\\Seen", False),
    "NEW": ("\\Seen", False),
    "OLD": ("\\Seen", True),
}


def _date(text: str) -> dt.date:
    try:
        return dt.datetime.strptime(text, "%d-%b-%Y").date()
    except ValueError as exc:
        raise ParseError(f"bad date {text!r}") from exc


class _Message:
    """The parsed message, loaded at most once per record during a search."""

    def __init__(self, guid: str, loader: Loader) -> None:
        self.guid = guid
        self.loader = loader
        self._part: structure.Part | None = None
        self._text: str | None = None

    @property
    def part(self) -> structure.Part:
        if self._part is None:
            self._part = structure.parse(self.loader(self.guid))
        return self._part

    def header(self, name: str) -> str:
        return structure.decoded_header(self.part, name).casefold()

    def body(self) -> str:
        if self._text is None:
            self._text = structure.search_text(self.part).casefold()
        return self._text

    def all_headers(self) -> str:
        return self.part.header.decode("utf-8", "replace").casefold()


def compile_search(
    tokens: list[Any], count: int, top_uid: int
) -> Callable[[int, Any, Loader], bool]:
    pos = 0

    def take() -> Any:
        nonlocal pos
        if pos >= len(tokens):
            raise ParseError("search key missing an argument")
        value = tokens[pos]
        pos += 1
        return value

    def text(value: Any) -> str:
        return (
            value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        ).casefold()

    def key() -> Callable[[int, Any, _Message], bool]:
        token = take()
        if isinstance(token, list):
            group = token_matchers(token)
            return lambda seq, rec, msg: all_of(seq, rec, msg, group)
        name = str(token).upper()
        if name == "ALL":
            return lambda seq, rec, msg: True
        if name in _FLAG_KEYS:
            flag, present = _FLAG_KEYS[name]
            return lambda seq, rec, msg: (flag in rec.flags.split()) == present
        if name == "RECENT":
            return lambda seq, rec, msg: False
        if name in ("KEYWORD", "UNKEYWORD"):
            word = str(take())
            want = name == "KEYWORD"
            return lambda seq, rec, msg: (word in rec.flags.split()) == want
        if name in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
            needle = text(take())
            header = name.capitalize() if name != "BCC" else "Bcc"
            return lambda seq, rec, msg: needle in msg.header(header)
        if name == "HEADER":
            field = str(take())
            needle = text(take())
            return lambda seq, rec, msg: (
                needle in msg.header(field) if needle else bool(msg.part.fields.get(field))
            )
        if name == "BODY":
            needle = text(take())
            return lambda seq, rec, msg: needle in msg.body()
        if name == "TEXT":
            needle = text(take())
            return lambda seq, rec, msg: needle in msg.all_headers() or needle in msg.body()
        if name in ("SINCE", "BEFORE", "ON"):
            day = _date(str(take()))
            compare: Callable[[dt.date], bool] = {
                "SINCE": lambda d: d >= day,
                "BEFORE": lambda d: d < day,
                "ON": lambda d: d == day,
            }[name]
            return lambda seq, rec, msg: compare(rec.internaldate.date())
        if name in ("SENTSINCE", "SENTBEFORE", "SENTON"):
            day = _date(str(take()))
            sent_compare: Callable[[dt.date], bool] = {
                "SENTSINCE": lambda d: d >= day,
                "SENTBEFORE": lambda d: d < day,
                "SENTON": lambda d: d == day,
            }[name]

            def sent(seq: int, rec: Any, msg: _Message) -> bool:
                value = msg.part.fields.get("Date")
                try:
                    when = email.utils.parsedate_to_datetime(str(value)) if value else None
                except (TypeError, ValueError):
                    when = None
                return when is not None and sent_compare(when.date())

            return sent
        if name in ("LARGER", "SMALLER"):
            size = int(str(take()))
            return (
                (lambda seq, rec, msg: rec.size > size)
                if name == "LARGER"
                else (lambda seq, rec, msg: rec.size < size)
            )
        if name == "UID":
            uids = SequenceSet.parse(str(take()))
            return lambda seq, rec, msg: uids.contains(rec.uid, top_uid)
        if name == "MODSEQ":
            value = take()
            if not str(value).isdigit():
                take()  # entry name and type (RFC 7162 3.1.5)
                value = take()
            floor = int(str(value))
            return lambda seq, rec, msg: rec.modseq >= floor
        if name == "NOT":
            inner_key = key()
            return lambda seq, rec, msg: not inner_key(seq, rec, msg)
        if name == "OR":
            left, right = key(), key()
            return lambda seq, rec, msg: left(seq, rec, msg) or right(seq, rec, msg)
        if name[:1].isdigit() or name[:1] == "*":
            seqs = SequenceSet.parse(name)
            return lambda seq, rec, msg: seqs.contains(seq, count)
        raise ParseError(f"unknown search key {name[:30]}")

    def token_matchers(group: list[Any]) -> list[Callable[[int, Any, _Message], bool]]:
        nonlocal tokens, pos
        saved = (tokens, pos)
        tokens, pos = group, 0
        out = []
        while pos < len(tokens):
            out.append(key())
        tokens, pos = saved
        return out

    def all_of(
        seq: int, rec: Any, msg: _Message, matchers: list[Callable[[int, Any, _Message], bool]]
    ) -> bool:
        return all(m(seq, rec, msg) for m in matchers)

    matchers = []
    while pos < len(tokens):
        matchers.append(key())
    if not matchers:
        raise ParseError("SEARCH needs a key")

    def run(seq: int, rec: Any, loader: Loader) -> bool:
        message = _Message(rec.guid, loader)
        return all(m(seq, rec, message) for m in matchers)

    return run
