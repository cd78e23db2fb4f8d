"""USER_SOME in parts (sync protocol 2): an account of any size, requests and
answers of a bounded one.

How this works: USER_SOME sends the owner's summary of every mailbox of an
account, and the replica answers with its own and the records of each
mailbox that differs. An account may hold 100,000 mailboxes, each with an
ACL of up to 64 KB, and a mailbox millions of records: in one request (and
one answer) such an account outgrows any ``sync_max_request``, and the sync
of the account would be refused for ever. So, in the style of Cyrus's
GET MAILBOXES per group of mailboxes:

- the owner sorts its summaries by uniqueid and cuts them into parts
  (:func:`split_summaries`), each within one request. Part *k* covers the
  uniqueids above part *k-1*'s last one up to its own last one; the last
  part has no upper bound. The parts cover every uniqueid exactly once, so
  the replica answers, for each part, every mailbox it holds in that range:
  the named ones as USER_SOME does, the others (mailboxes the owner lacks)
  with all their records. The first part's answer also carries the
  account's own state (fields, subscriptions, Sieve, ...), once.
- the replica answers each part in pages (:func:`read_page`) of at most the
  size the owner says it reads (its ``X-Sync-Max-Request``), reading
  mailboxes and records a page at a time. A page that stops early says
  where the next one starts (``next``: a mailbox and the last UID of it
  sent); the owner asks again with the same part and ``from: next``. A page
  always carries at least one mailbox (and, inside a mailbox, one record),
  so every page makes progress.
- the owner puts the pages together (:class:`Pages`) into the account state
  USER_SOME's one answer would have been, and the compare goes on as for
  one request.

Nothing here does I/O but the database reads of :func:`read_page`; the
requests are the client's (:mod:`peerd.replication.client`) and the
server's (:mod:`peerd.replication.server`) to send and answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from sqlalchemy.orm import Session

from engine.errors import SyncProtocolError, TooLargeForPartner
from engine.syncstate import (
    AccountState,
    MailboxState,
    MailboxSummary,
    RecordState,
    account_head,
    compare_mode,
    mailbox_uniqueids,
    records_page,
    summaries_by_id,
)
from engine.syncwire import (
    UserPart,
    encode_account_state,
    encode_json,
    encode_record,
    encode_summary,
    encode_user_part,
)

__all__ = ["PAGE_RECORDS", "Pages", "part_overhead", "read_page", "split_summaries"]

# Records read from the database at once while a page is filled.
PAGE_RECORDS = 2_000
# Mailbox summaries read at once (an IN list of row ids).
_SUMMARIES = 256
# The longest uniqueid and UID: what a part's bounds and a page's ``next``
# cost at most.
_LONGEST_UNIQUEID = "f" * 32
_LARGEST_UID = 2**63


def split_summaries(
    account: str,
    ownership: dict[str, object],
    summaries: Iterable[MailboxSummary],
    budget: int,
    *,
    named_only: bool = False,
) -> list[UserPart]:
    """The owner's ``summaries`` as parts whose requests (with ``account``,
    its ``ownership`` row and any page's ``from``) each encode to at most
    ``budget`` octets of JSON; one part when they all fit, one part with no
    summaries for an account without mailboxes. A summary that does not fit
    in a request of its own is :class:`TooLargeForPartner`, naming it."""
    ordered = sorted(summaries, key=lambda s: s.uniqueid)
    overhead = part_overhead(account, ownership, named_only=named_only)
    groups: list[list[MailboxSummary]] = [[]]
    used = overhead
    for summary in ordered:
        cost = len(encode_json(encode_summary(summary))) + 1  # and a comma
        if overhead + cost > budget:
            raise TooLargeForPartner(
                f"{account}: mailbox {summary.name!r} ({summary.uniqueid}) has a summary of"
                f" {cost - 1} bytes (an ACL of {len(summary.acl)} characters); one request to"
                f" the partner carries at most {budget - overhead} bytes of summaries (the"
                " lower sync_max_request of the two nodes): raise the limit or shorten the ACL"
            )
        if groups[-1] and used + cost > budget:
            groups.append([])
            used = overhead
        groups[-1].append(summary)
        used += cost
    parts = []
    after = ""
    for n, group in enumerate(groups):
        upto = None if n == len(groups) - 1 else group[-1].uniqueid
        parts.append(UserPart(tuple(group), after, upto, named_only=named_only))
        after = upto or ""
    return parts


def part_overhead(account: str, ownership: dict[str, object], *, named_only: bool = False) -> int:
    """What a part's request holds besides its summaries, at most: the
    account, its row, the part's bounds and a page's ``from`` at their longest."""
    widest = UserPart(
        after=_LONGEST_UNIQUEID[:-1],
        upto=_LONGEST_UNIQUEID,
        resume=(_LONGEST_UNIQUEID, _LARGEST_UID),
        named_only=named_only,
    )
    return len(encode_json(encode_user_part(account, ownership, widest)))


def read_page(session: Session, account: str, part: UserPart, budget: int) -> bytes:
    """The replica's answer to ``part`` from its ``resume`` on, encoded: at
    most ``budget`` octets unless its first mailbox (or record) alone is
    larger, which goes anyway. ``{state?, mailboxes: [...], next}``."""
    account_id, head = account_head(session, account)
    pieces: list[bytes] = []
    used = len(encode_json({"mailboxes": [], "next": [_LONGEST_UNIQUEID, _LARGEST_UID]}))
    state = b""
    if part.first and part.resume is None:
        state = encode_json(encode_account_state(head))
        used += len(b',"state":') + len(state)
    after: tuple[str, int] | None = None
    if account_id is not None:
        named = {s.uniqueid: s for s in part.summaries}
        covered = sorted(
            (uniqueid, mailbox_id)
            for mailbox_id, uniqueid in mailbox_uniqueids(session, account_id)
            if part.covers(uniqueid) and (not part.named_only or uniqueid in named)
        )
        start, start_uid = part.resume or ("", 0)
        covered = [c for c in covered if c[0] >= start]
        for offset in range(0, len(covered), _SUMMARIES):
            chunk = covered[offset : offset + _SUMMARIES]
            found = summaries_by_id(session, [i for _, i in chunk])
            for uniqueid, mailbox_id in chunk:
                summary = found.get(mailbox_id)
                if summary is None:
                    continue  # deleted since the ids were read
                first_uid = start_uid if uniqueid == start else 0
                piece, size, after = _mailbox_piece(
                    session,
                    mailbox_id,
                    summary,
                    named.get(uniqueid),
                    first_uid,
                    budget - used,
                    alone=not pieces,
                )
                if piece is None:
                    break
                pieces.append(piece)
                used += size
                if after is not None:
                    break
            if after is not None:
                break
    body = (
        b'{"mailboxes":['
        + b",".join(pieces)
        + b'],"next":'
        + encode_json(None if after is None else list(after))
    )
    return body + (b',"state":' + state if state else b"") + b"}"


def _mailbox_piece(
    session: Session,
    mailbox_id: int,
    summary: MailboxSummary,
    theirs: MailboxSummary | None,
    first_uid: int,
    room: int,
    *,
    alone: bool,
) -> tuple[bytes | None, int, tuple[str, int] | None]:
    """One mailbox of a page, its records from the UID after ``first_uid``
    on, in at most ``room`` octets (with its comma); the piece (None: it does
    not start in this page), its size, and where the next page starts when
    the mailbox's records do not all fit (None: the mailbox is complete).
    ``alone``: the page holds nothing yet, so the mailbox and its first
    record go whatever their size."""
    mode, since = compare_mode(summary, theirs)
    # A mailbox as an account state holds it (syncwire.encode_mailbox_state),
    # written here so that its records can follow one at a time.
    head = b'{"summary":%s,"mode":"%s","records":[' % (
        encode_json(encode_summary(summary)),
        mode.encode(),
    )
    size = len(head) + 3  # "]}" and a comma
    if size > room and not alone:
        return None, 0, (summary.uniqueid, first_uid)
    records: list[bytes] = []
    last = first_uid
    while mode != "none":
        found = records_page(session, mailbox_id, since=since, after_uid=last, limit=PAGE_RECORDS)
        for record in found:
            encoded = encode_json(encode_record(record))
            if size + len(encoded) + 1 > room and (records or not alone):
                return _joined(head, records), size, (summary.uniqueid, last)
            records.append(encoded)
            size += len(encoded) + 1
            last = record.uid
        if len(found) < PAGE_RECORDS:
            break
    return _joined(head, records), size, None


def _joined(head: bytes, records: list[bytes]) -> bytes:
    return head + b",".join(records) + b"]}"


@dataclass(slots=True)
class Pages:
    """The pages of every part of one USER_SOME, put together into the
    account state one answer would have held (mailboxes in name order)."""

    account: str
    head: AccountState | None = None
    mailboxes: dict[str, MailboxState] = field(default_factory=dict)
    records: dict[str, list[RecordState]] = field(default_factory=dict)

    def add(self, state: AccountState | None, mailboxes: Sequence[MailboxState]) -> None:
        if state is not None:
            if self.head is not None:
                raise SyncProtocolError(f"two account states for {self.account} in one USER_SOME")
            self.head = state
        for m in mailboxes:
            uniqueid = m.summary.uniqueid
            if uniqueid not in self.mailboxes:
                self.mailboxes[uniqueid] = replace(m, records=())
                self.records[uniqueid] = []
            # A mailbox a page stopped in goes on in the next one.
            self.records[uniqueid].extend(m.records)

    def state(self) -> AccountState:
        if self.head is None:
            raise SyncProtocolError(f"the partner's answer for {self.account} lacks its state")
        if not self.head.exists and self.mailboxes:
            raise SyncProtocolError(f"the partner sent mailboxes of {self.account}, which it lacks")
        boxes = sorted(self.mailboxes.values(), key=lambda m: m.summary.name)
        return replace(
            self.head,
            mailboxes=tuple(
                replace(m, records=tuple(self.records[m.summary.uniqueid])) for m in boxes
            ),
        )
