"""The rules of a selected mailbox, without I/O (RFC 3501 6.4 and 7.4.1, RFC 7162).

How this works: a :class:`Selected` is what one session has told its client
about the mailbox: the records in sequence order (UID, flags, modseq), the
highest modseq and the next UID. The server feeds it values and writes the
bytes it returns; the core never reads a socket nor the store.

- **Changes by others.** When the store says the mailbox changed, the server
  calls :meth:`Selected.changed`; at the end of a command it asks
  :meth:`Selected.take_stale`, reads the mailbox again, and hands the fresh
  :class:`~peerd.protocols.imap.records.MailboxView` to :meth:`Selected.update`,
  which returns the untagged responses that tell the difference:
  ``EXPUNGE`` (or ``VANISHED`` once QRESYNC is on, RFC 7162 3.2.10), ``FETCH``
  of changed flags (with ``MODSEQ`` under CONDSTORE), ``EXISTS``. Whether
  expunges may be told now is :func:`may_expunge`'s call (RFC 3501 7.4.1:
  never during FETCH, STORE or SEARCH, as sequence numbers would shift under
  the client; the UID forms may). When they may not, nothing of the change is
  told and the snapshot stays stale for a later moment: a flag change told now
  would carry a MODSEQ above the untold expunge's, which a QRESYNC client
  would take as "seen everything up to here".
- **Our own changes.** A STORE's or a FETCH's ``\\Seen`` write returns the
  changed records; :meth:`Selected.absorb` takes them in, so they are told by
  the command's own FETCH responses and not again later.
- **Commands.** :meth:`Selected.resolve` maps a sequence set to (number,
  record) pairs; :meth:`Selected.plan_fetch` says which items to answer,
  for which messages, which to mark ``\\Seen`` first and whether VANISHED
  (EARLIER) goes before; :meth:`Selected.store_responses` renders a STORE's
  answers; :meth:`Selected.opening` and :meth:`Selected.resync` are SELECT's.
- **\\Recent** (RFC 3501 2.3.2): the store keeps the highest UID some
  session claimed; the server claims the rest when a SELECT opens the
  mailbox or new mail is about to be told (never under EXAMINE) and hands
  the claimed UID range to :meth:`Selected.claimed`. Records of those UIDs
  carry ``\\Recent`` in their flags from then on, so FETCH FLAGS, SEARCH
  RECENT/NEW/OLD and STORE's answers see it; SELECT and each change of the
  count say ``* n RECENT``.
- **Extensions** (:class:`Extensions`): CONDSTORE and QRESYNC are per
  session, switched on by ENABLE (RFC 5161) or by a CONDSTORE-enabling
  command (RFC 7162 3.1), and outlive SELECT.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from peerd.protocols.imap import commands as c
from peerd.protocols.imap.fetchatt import FetchAtt, Item, sets_seen
from peerd.protocols.imap.records import MailboxView, Numbered, Record
from peerd.protocols.imap.responses import (
    CODE_CANNOT,
    CODE_CLOSED,
    CODE_HIGHESTMODSEQ,
    CODE_MODIFIED,
    CODE_PERMANENTFLAGS,
    CODE_UIDNEXT,
    CODE_UIDVALIDITY,
    CommandError,
    Raw,
    fetch_response,
    response_code,
    untagged_status,
)
from peerd.protocols.imap.searchkey import uses_modseq
from peerd.protocols.imap.sequence import SequenceSet, in_ranges, resolved

__all__ = [
    "ENABLABLE",
    "SYSTEM_FLAGS",
    "Extensions",
    "FetchPlan",
    "Selected",
    "closed_response",
    "highestmodseq_response",
    "may_expunge",
]

SYSTEM_FLAGS: Final = "\\Answered \\Flagged \\Deleted \\Seen \\Draft"
# RFC 5161 3.1: what ENABLE can switch on here.
ENABLABLE: Final = ("CONDSTORE", "QRESYNC")


def may_expunge(cmd: c.Command) -> bool:
    """Whether untagged EXPUNGE/VANISHED may follow ``cmd`` (RFC 3501 7.4.1).

    Not after FETCH, STORE, SEARCH, SORT or THREAD, whose answers are in sequence numbers
    the client is still using; after their UID forms, and any other command,
    they may.
    """
    if isinstance(cmd, c.Fetch | c.Store | c.Search | c.Sort | c.Thread):
        return cmd.uid
    return True


def closed_response() -> bytes:
    """``* OK [CLOSED]``: the previous mailbox's responses end here (RFC 7162 3.2.11)."""
    return untagged_status("OK", "Previous mailbox closed", CODE_CLOSED)


def highestmodseq_response(highestmodseq: int) -> bytes:
    """``* OK [HIGHESTMODSEQ n]``: the first CONDSTORE-enabling command in the
    selected state tells the mailbox's highest mod-sequence before its own
    answers (RFC 7162 3.1; SELECT's opening already holds it)."""
    return untagged_status("OK", "Highest", response_code(CODE_HIGHESTMODSEQ, highestmodseq))


def _keywords(records: Iterable[Record]) -> frozenset[str]:
    """The keywords (flags without a backslash) ``records`` hold."""
    return frozenset(f for r in records for f in r.flags.split() if not f.startswith("\\"))


# resolve(): up to this many UID ranges are found by bisecting the records.
_FEW_RANGES: Final = 16


def _uid(record: Record) -> int:
    return record.uid


def _has_recent(record: Record) -> bool:
    return isinstance(record, _RecentRecord)


def _flags(flags: str) -> bytes:
    return b"(" + flags.encode() + b")"


def _vanished(uids: Iterable[int], earlier: bool) -> bytes:
    text = str(SequenceSet.from_numbers(uids)).encode()
    return b"* VANISHED %s%s\r\n" % (b"(EARLIER) " if earlier else b"", text)


@dataclass(frozen=True, slots=True)
class _RecentRecord:
    """A record as this session shows it: its flags with ``\\Recent`` added."""

    uid: int
    guid: str
    flags: str
    modseq: int
    size: int
    internaldate: dt.datetime


def _mark_recent(record: Record) -> Record:
    flags = record.flags + " \\Recent" if record.flags else "\\Recent"
    return _RecentRecord(
        record.uid, record.guid, flags, record.modseq, record.size, record.internaldate
    )


class Extensions:
    """The session's CONDSTORE/QRESYNC state (RFC 7162)."""

    __slots__ = ("condstore", "qresync")

    def __init__(self) -> None:
        self.condstore = False
        # RFC 7162 3.2.3: after ENABLE QRESYNC, VANISHED replaces EXPUNGE.
        self.qresync = False

    def enable(self, caps: Sequence[str]) -> bytes:
        """ENABLE: switch on what is offered; the ``* ENABLED`` response names it
        (RFC 5161 3.1: capabilities not offered are ignored)."""
        enabled = [cap for cap in dict.fromkeys(caps) if cap in ENABLABLE]
        if enabled:
            self.condstore = True  # RFC 7162 3.2.3: QRESYNC implies CONDSTORE
        if "QRESYNC" in enabled:
            self.qresync = True
        return b"* ENABLED" + b"".join(b" " + e.encode() for e in enabled) + b"\r\n"

    def admit(self, cmd: c.Select | c.Examine | c.Fetch | c.Store | c.Search) -> bool:
        """Refuse what needs QRESYNC first, then note a CONDSTORE-enabling
        command (RFC 7162 3.1: SELECT (CONDSTORE), FETCH MODSEQ or CHANGEDSINCE,
        STORE UNCHANGEDSINCE, SEARCH MODSEQ). True when this command is the
        one that switched CONDSTORE on: in the selected state the server then
        tells the mailbox's HIGHESTMODSEQ (:func:`highestmodseq_response`)."""
        before = self.condstore
        if isinstance(cmd, c.Select | c.Examine):
            if cmd.qresync is not None and not self.qresync:
                raise CommandError("QRESYNC is not enabled: ENABLE QRESYNC first (RFC 7162 3.2.5)")
            if cmd.condstore:
                self.condstore = True  # RFC 7162 3.1.8
        elif isinstance(cmd, c.Fetch):
            if cmd.vanished and not self.qresync:
                raise CommandError("VANISHED needs ENABLE QRESYNC first (RFC 7162 3.2.6)")
            if cmd.changedsince is not None or Item.MODSEQ in cmd.items:
                self.condstore = True
        elif isinstance(cmd, c.Search):
            if uses_modseq(cmd.key):
                self.condstore = True  # RFC 7162 3.1.5
        elif cmd.unchangedsince is not None:
            self.condstore = True
        return self.condstore and not before


@dataclass(frozen=True, slots=True)
class FetchPlan:
    """What a FETCH answers: ``items`` for ``targets`` (sequence number, record).

    ``seen``: UIDs to mark ``\\Seen`` before answering (RFC 3501 6.4.5); then
    :meth:`Selected.after_seen` gives the plan with the new flags.
    ``vanished_since``: tell ``VANISHED (EARLIER)`` first for the requested UIDs
    expunged after this modseq (RFC 7162 3.2.6); the server reads the
    tombstones and asks :meth:`Selected.vanished_earlier`.
    """

    items: tuple[FetchAtt, ...]
    # A Numbered run for consecutive messages; any sequence of pairs otherwise.
    targets: Sequence[tuple[int, Record]]
    seen: tuple[int, ...] = ()
    vanished_since: int | None = None


class Selected:
    """One session's view of its selected mailbox (see the module docstring)."""

    __slots__ = (
        "basis",
        "ext",
        "highestmodseq",
        "keywords",
        "name",
        "readonly",
        "recent",
        "records",
        "saved",
        "shared",
        "stale",
        "told_recent",
        "uidnext",
        "uidvalidity",
    )

    def __init__(
        self,
        view: MailboxView,
        *,
        name: str,
        readonly: bool,
        ext: Extensions,
        keywords: Iterable[str] | None = None,
    ) -> None:
        self.name = name
        self.readonly = readonly
        self.ext = ext
        self.uidvalidity = view.uidvalidity
        # The UID ranges (first, last] this session claimed as \Recent.
        self.recent: list[tuple[int, int]] = []
        self.told_recent = 0
        # RFC 5182: the UIDs the last SEARCH RETURN (SAVE) found ("$"); empty
        # at SELECT. UIDs never come back, so an expunged one just never matches.
        self.saved: frozenset[int] = frozenset()
        self.records: list[Record] = list(view.records)
        # The store's records that ``records`` are, marked with ``recent``;
        # None once this session's own changes were absorbed (see state_key).
        self.basis: Sequence[Record] | None = view.records
        # ``records`` is another session's list too (follow): copied before
        # it is changed in place.
        self.shared = False
        self.highestmodseq = view.highestmodseq
        self.uidnext = view.uidnext
        # The keywords told in FLAGS so far (RFC 3501 7.2.6): the mailbox's
        # (``keywords``: the server's, read with the records, when it has them).
        self.keywords = frozenset(keywords) if keywords is not None else _keywords(self.records)
        # The store may hold changes not yet told (set by changed() and by an
        # update() that may not tell them yet; cleared by take_stale()).
        self.stale = False

    # -- \Recent ---------------------------------------------------------------------

    def claimed(self, first: int, last: int) -> None:
        """The store gave this session the UIDs in ``(first, last]`` as
        \\Recent (RFC 3501 2.3.2); records already shown are marked now,
        later ones when they arrive."""
        if last <= first:
            return
        if self.recent and self.recent[-1][1] == first:
            self.recent[-1] = (self.recent[-1][0], last)
        else:
            self.recent.append((first, last))
        # Only records with UIDs in (first, last] change: the records are in UID
        # order. A list another session shares (follow) is copied first.
        records = list(self.records) if self.shared else self.records
        lo = bisect.bisect_right(records, first, key=_uid)
        hi = bisect.bisect_right(records, last, key=_uid)
        records[lo:hi] = self._marked(records[lo:hi])
        self.records = records
        self.shared = False

    def is_recent(self, uid: int) -> bool:
        return any(first < uid <= last for first, last in self.recent)

    def _marked(self, records: Iterable[Record]) -> list[Record]:
        if not self.recent:
            return list(records)
        return [
            _mark_recent(r) if self.is_recent(r.uid) and not _has_recent(r) else r for r in records
        ]

    def recent_count(self) -> int:
        """How many records carry \\Recent: those in the claimed ranges (each
        marked when it came, :meth:`_marked`), counted with two bisects a
        range, not a test a record (a SELECT of 10,000 messages)."""
        records = self.records
        count = 0
        top = 0  # ranges are claimed upwards; an overlap is not counted twice
        for first, last in sorted(self.recent):
            first = max(first, top)
            if last > first:
                count += bisect.bisect_right(records, last, key=_uid) - bisect.bisect_right(
                    records, first, key=_uid
                )
                top = last
        return count

    def needs_claim(self, view: MailboxView, recentuid: int) -> bool:
        """Whether the store holds UIDs no session claimed yet that this one
        would claim: never under EXAMINE (RFC 3501 6.3.2 leaves \\Recent alone)."""
        return not self.readonly and view.uidnext - 1 > recentuid

    # -- SELECT ---------------------------------------------------------------------

    def opening(self) -> bytes:
        """SELECT's untagged responses (RFC 3501 6.3.1; RFC 7162 3.1.2.1
        HIGHESTMODSEQ; RECENT counts what :meth:`claimed` gave this session).
        FLAGS names the system flags and the keywords the mailbox holds."""
        flags = self._flag_list()
        self.told_recent = self.recent_count()
        return b"".join(
            [
                b"* FLAGS (" + flags + b")\r\n",
                b"* %d EXISTS\r\n" % len(self.records),
                b"* %d RECENT\r\n" % self.told_recent,
                untagged_status(
                    "OK", "UIDs valid", response_code(CODE_UIDVALIDITY, self.uidvalidity)
                ),
                untagged_status(
                    "OK", "Predicted next UID", response_code(CODE_UIDNEXT, self.uidnext)
                ),
                untagged_status("OK", "Limited", CODE_PERMANENTFLAGS + b" (" + flags + b" \\*)"),
                untagged_status(
                    "OK", "Highest", response_code(CODE_HIGHESTMODSEQ, self.highestmodseq)
                ),
            ]
        )

    def _flag_list(self) -> bytes:
        return " ".join([SYSTEM_FLAGS, *sorted(self.keywords)]).encode()

    def _new_keywords(self, records: Iterable[Record]) -> bytes:
        """``* FLAGS`` and ``* OK [PERMANENTFLAGS]`` when ``records`` hold a
        keyword not told yet: a client must learn it before a FETCH shows it
        (RFC 3501 7.2.6); empty otherwise. Keywords are never taken back."""
        new = _keywords(records) - self.keywords
        if not new:
            return b""
        self.keywords = self.keywords | new
        flags = self._flag_list()
        return (
            b"* FLAGS ("
            + flags
            + b")\r\n"
            + untagged_status("OK", "Limited", CODE_PERMANENTFLAGS + b" (" + flags + b" \\*)")
        )

    def resync(self, known: c.QResync, vanished: Sequence[int]) -> bytes:
        """SELECT (QRESYNC ...): what changed since the client's modseq (RFC 7162
        3.2.5.1): the UIDs expunged since (``vanished``, from the tombstones),
        within its known UIDs, as VANISHED (EARLIER); then the flags of every
        message changed since. Nothing when the UIDVALIDITY differs. (Every
        expunge is kept with its modseq, so the list is exact; the
        sequence-match data, a hint for servers that keep fewer, is not needed.)"""
        if known.uidvalidity != self.uidvalidity:
            return b""
        largest = self.uidnext - 1
        ranges = resolved(known.known_uids, largest) if known.known_uids is not None else None
        gone = [uid for uid in vanished if ranges is None or in_ranges(uid, ranges)]
        out: list[bytes] = []
        if gone:
            out.append(_vanished(gone, earlier=True))
        for seq, record in enumerate(self.records, 1):
            if record.modseq > known.modseq:
                parts = [b"UID %d" % record.uid, b"FLAGS " + _flags(record.flags)]
                out.append(fetch_response(seq, [*parts, b"MODSEQ (%d)" % record.modseq]))
        return b"".join(out)

    # -- changes --------------------------------------------------------------------

    def changed(self) -> None:
        """The store says the mailbox changed: tell it at the next moment that may."""
        self.stale = True

    def take_stale(self) -> bool:
        """Whether the snapshot is stale; clears the mark, so a change the store
        reports while the server reads the mailbox marks it again."""
        stale, self.stale = self.stale, False
        return stale

    def outdated_by(self, highestmodseq: int, uidnext: int) -> bool:
        """Whether the store's mailbox (its highest modseq and next UID) is newer
        than what was told; marks the snapshot stale when so."""
        if (highestmodseq, uidnext) != (self.highestmodseq, self.uidnext):
            self.stale = True
        return self.stale

    def update(self, fresh: MailboxView, *, expunges: bool) -> bytes:
        """Take the store's mailbox as it is now; the untagged responses that
        tell the client (empty when nothing may be told yet, see the module
        docstring: then the snapshot stays and stays stale)."""
        marked = self._marked(fresh.records)
        new = {r.uid: r for r in marked}
        seqs = self.seq_of()
        gone = [uid for uid in seqs if uid not in new]
        if gone and not expunges:
            self.stale = True
            return b""
        out: list[bytes] = [self._new_keywords(marked)]
        if self.ext.qresync and gone:
            # RFC 7162 3.2.10: once QRESYNC is on, VANISHED says it in UIDs.
            out.append(_vanished(gone, earlier=False))
        else:
            # Each EXPUNGE renumbers the ones after it (RFC 3501 7.4.1).
            for removed, uid in enumerate(sorted(gone, key=lambda u: seqs[u])):
                out.append(b"* %d EXPUNGE\r\n" % (seqs[uid] - removed))
        kept = [r for r in self.records if r.uid in new]
        condstore = self.ext.condstore
        for i, record in enumerate(kept, 1):
            now = new[record.uid]
            if now.flags != record.flags or (condstore and now.modseq != record.modseq):
                parts = [b"UID %d" % now.uid, b"FLAGS " + _flags(now.flags)]
                if condstore:
                    parts.append(b"MODSEQ (%d)" % now.modseq)
                out.append(fetch_response(i, parts))
        arrived = len(fresh.records) != len(kept)
        if arrived or gone:
            out.append(b"* %d EXISTS\r\n" % len(fresh.records))
        self.records = marked
        self.basis = fresh.records
        self.shared = False
        self.highestmodseq = fresh.highestmodseq
        self.uidnext = fresh.uidnext
        recent = self.recent_count()
        if recent != self.told_recent or arrived:
            # RFC 3501 7.3.2: the new count of \Recent messages.
            out.append(b"* %d RECENT\r\n" % recent)
            self.told_recent = recent
        return b"".join(out)

    def absorb(self, changed: Iterable[Record]) -> None:
        """Take this session's own flag changes (the records as they are now)
        into the snapshot: they are told by the command's own responses."""
        by_uid = {r.uid: r for r in self._marked(changed)}
        if not by_uid:
            return
        self.basis = None
        if self.shared:
            self.records = list(self.records)
            self.shared = False
        for i, record in enumerate(self.records):
            updated = by_uid.get(record.uid)
            if updated is not None:
                self.records[i] = updated

    # -- one change, many sessions ------------------------------------------------------

    def state_key(self) -> tuple[object, ...] | None:
        """What :meth:`update` depends on besides the fresh view: two sessions
        of a mailbox with equal keys get the same bytes and the same state from
        the same view, so one computes and the other :meth:`follow` s it. The
        records are the store's ``basis`` marked with ``recent``, so the basis
        (by identity: sessions that read the same version hold the same tuple)
        and the ranges stand for them. None once own changes were absorbed."""
        if self.basis is None:
            return None
        ext = self.ext
        return (
            id(self.basis),
            tuple(self.recent),
            self.keywords,
            self.told_recent,
            ext.condstore,
            ext.qresync,
        )

    def follow(self, other: Selected) -> None:
        """Take the state :meth:`update` just gave ``other``, whose
        :meth:`state_key` before it was this one's, from the same view: as if
        this session had run the same update (it would have told the same bytes)."""
        self.records = other.records
        self.shared = other.shared = True
        self.basis = other.basis
        self.keywords = other.keywords
        self.highestmodseq = other.highestmodseq
        self.uidnext = other.uidnext
        self.told_recent = other.told_recent

    # -- sequence sets ----------------------------------------------------------------

    def seq_of(self) -> dict[int, int]:
        """Sequence number by UID."""
        return {r.uid: i + 1 for i, r in enumerate(self.records)}

    def largest_uid(self) -> int:
        return self.records[-1].uid if self.records else 0

    def resolve(self, sequence: SequenceSet, uid: bool) -> list[tuple[int, Record]]:
        """The (sequence number, record) pairs a set names, in mailbox order;
        ``$`` names the saved messages, in either form (RFC 5182 2.1)."""
        if sequence.saved:
            saved = self.saved
            return [(i + 1, r) for i, r in enumerate(self.records) if r.uid in saved]
        records = self.records
        found: list[tuple[int, Record]] = []
        for lo, hi in self._spans(sequence, uid):
            found.extend(zip(range(lo + 1, hi + 1), records[lo:hi], strict=True))
        return found

    def targets(self, sequence: SequenceSet, uid: bool) -> Sequence[tuple[int, Record]]:
        """:meth:`resolve`, as a :class:`~peerd.protocols.imap.records.Numbered`
        run when the set names consecutive messages (``1:*``, a page): no
        pair made per message until one is read."""
        if not sequence.saved:
            spans = self._spans(sequence, uid)
            if len(spans) == 1:
                lo, hi = spans[0]
                return Numbered(lo + 1, tuple(self.records[lo:hi]))
        return self.resolve(sequence, uid)

    def _spans(self, sequence: SequenceSet, uid: bool) -> list[tuple[int, int]]:
        """The runs of ``records`` a set (not ``$``) names, as index ranges
        [lo, hi), in order, none empty, the adjacent ones joined."""
        records = self.records
        if not records:
            return []
        spans: list[tuple[int, int]] = []
        if uid:
            # RFC 3501 6.4.8: UIDs that do not exist are ignored. The records
            # are in UID order and the ranges merged and sorted: two bisects
            # a range, not a test a record (UID FETCH 1:* of 10,000 messages);
            # on the records themselves for a few ranges, on a list of their
            # UIDs (made once: 10,000 attribute reads) for many.
            starts, ends = resolved(sequence, records[-1].uid)
            if len(starts) <= _FEW_RANGES:
                found = [
                    (
                        bisect.bisect_left(records, a, key=_uid),
                        bisect.bisect_right(records, b, key=_uid),
                    )
                    for a, b in zip(starts, ends, strict=True)
                ]
            else:
                uids = [r.uid for r in records]
                found = [
                    (bisect.bisect_left(uids, a), bisect.bisect_right(uids, b))
                    for a, b in zip(starts, ends, strict=True)
                ]
            spans = [(lo, hi) for lo, hi in found if hi > lo]
        else:
            count = len(records)
            starts, ends = resolved(sequence, count)
            if ends and ends[-1] > count:
                raise CommandError(f"message sequence number out of range (there are {count})")
            spans = [(a - 1, b) for a, b in zip(starts, ends, strict=True)]
        joined: list[tuple[int, int]] = []
        for lo, hi in spans:
            if joined and joined[-1][1] == lo:
                joined[-1] = (joined[-1][0], hi)
            else:
                joined.append((lo, hi))
        return joined

    def writable(self) -> None:
        """Refuse a change to a mailbox opened with EXAMINE (RFC 3501 6.3.2)."""
        if self.readonly:
            raise CommandError("mailbox is read-only (EXAMINE)", code=CODE_CANNOT, status="NO")

    # -- EXPUNGE ----------------------------------------------------------------------

    def uid_expunge_targets(self, seqset: SequenceSet) -> list[int]:
        """UID EXPUNGE: the ``\\Deleted`` messages among these UIDs (RFC 4315 2.1)."""
        return [r.uid for _, r in self.resolve(seqset, True) if "\\Deleted" in r.flags.split()]

    def expunge_code(self, expunged: bool) -> bytes | None:
        """The tagged OK's code after EXPUNGE: the new HIGHESTMODSEQ once
        QRESYNC is on and something was expunged (RFC 7162 3.2.7)."""
        if expunged and self.ext.qresync:
            return response_code(CODE_HIGHESTMODSEQ, self.highestmodseq)
        return None

    # -- FETCH ------------------------------------------------------------------------

    def plan_fetch(self, cmd: c.Fetch) -> FetchPlan:
        """What to answer (call after :meth:`Extensions.admit`)."""
        items: list[FetchAtt] = list(cmd.items)
        if cmd.uid:
            # RFC 3501 6.4.8: UID FETCH always answers with UIDs; first, as clients expect.
            items = [Item.UID, *(i for i in items if i is not Item.UID)]
        targets: Sequence[tuple[int, Record]] = self.targets(cmd.seqset, cmd.uid)
        if cmd.changedsince is not None:
            since = cmd.changedsince
            targets = [(seq, r) for seq, r in targets if r.modseq > since]
        if cmd.partial is not None:
            # RFC 9394 3.2: only the messages at these positions of those the
            # set (and CHANGEDSINCE) leaves, in mailbox order.
            targets = cmd.partial.pick(targets)
        condstore = self.ext.condstore
        if condstore and Item.MODSEQ not in items:
            items.append(Item.MODSEQ)  # RFC 7162 3.1.4.1
        if condstore and Item.UID not in items:
            items.insert(0, Item.UID)  # RFC 7162 3.2.4
        seen: tuple[int, ...] = ()
        if not self.readonly and sets_seen(items):
            seen = tuple(r.uid for _, r in targets if "\\Seen" not in r.flags.split())
        vanished = cmd.changedsince if cmd.vanished else None
        return FetchPlan(tuple(items), targets, seen, vanished)

    def vanished_earlier(self, seqset: SequenceSet, tombstones: Iterable[int]) -> bytes:
        """``VANISHED (EARLIER)`` for the requested UIDs among ``tombstones``
        that this session no longer shows (one it still shows is told as a
        plain VANISHED when it may be, RFC 7162 3.2.6); empty if none."""
        shown = self.seq_of()
        if seqset.saved:
            gone = [uid for uid in tombstones if uid not in shown and uid in self.saved]
        else:
            ranges = resolved(seqset, self.uidnext - 1)
            gone = [uid for uid in tombstones if uid not in shown and in_ranges(uid, ranges)]
        return _vanished(gone, earlier=True) if gone else b""

    def after_seen(self, plan: FetchPlan) -> FetchPlan:
        """The plan once the ``\\Seen`` write was absorbed: the targets as they
        are now, and FLAGS answered (RFC 3501 6.4.5: the new flags are told)."""
        seqs = self.seq_of()
        targets = tuple(
            (seqs[r.uid], self.records[seqs[r.uid] - 1]) for _, r in plan.targets if r.uid in seqs
        )
        items = plan.items if Item.FLAGS in plan.items else (*plan.items, Item.FLAGS)
        return FetchPlan(items, targets)

    # -- STORE ------------------------------------------------------------------------

    def store_responses(
        self,
        cmd: c.Store,
        targets: Sequence[tuple[int, Record]],
        changed: Collection[int],
        modified: Sequence[int],
    ) -> tuple[bytes, bytes | None]:
        """A STORE's untagged FETCH responses, after its changes were absorbed,
        and the MODIFIED code for the tagged OK when UNCHANGEDSINCE refused some
        (RFC 7162 3.1.3: UIDs for UID STORE, else sequence numbers)."""
        seqs = self.seq_of()
        condstore = self.ext.condstore
        # The records as absorbed: a keyword this STORE introduced is told first.
        now = (self.records[seqs[r.uid] - 1] for _, r in targets if r.uid in seqs)
        out: list[bytes] = [self._new_keywords(now)]
        for _, record in targets:
            seq = seqs.get(record.uid)
            if seq is None:
                continue
            current = self.records[seq - 1]
            # RFC 7162 3.2: with CONDSTORE, .SILENT still reports the new MODSEQ.
            if cmd.silent and record.uid in changed and not condstore:
                continue
            parts = [b"FLAGS " + _flags(current.flags)]
            if cmd.uid or condstore:
                # RFC 7162 3.2.4: with CONDSTORE on, every FETCH carries UID and MODSEQ.
                parts.insert(0, b"UID %d" % current.uid)
            if condstore:
                parts.append(b"MODSEQ (%d)" % current.modseq)
            out.append(fetch_response(seq, parts))
        code = None
        if modified:
            numbers = modified if cmd.uid else [seqs[u] for u in modified if u in seqs]
            code = response_code(CODE_MODIFIED, Raw(bytes(SequenceSet.from_numbers(numbers))))
        return b"".join(out), code
