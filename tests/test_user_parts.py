"""USER_SOME in parts (engine.userparts): the cutting of an account's
summaries into requests and of the replica's answer into pages.

The owner's summaries go in requests that each fit (at the byte); a summary
too large for any request is refused naming its mailbox; the replica's
answer comes in pages that fit the asker and, put together, give what one
answer would have, and a page always moves on.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import replace
from functools import partial
from typing import Any

import pytest

from engine import accounts, mailbox, messages
from engine.errors import TooLargeForPartner
from engine.limits import check_acl
from engine.store import Store
from engine.syncstate import AccountState, MailboxSummary, read_account_state
from engine.syncwire import (
    UserPart,
    decode_json,
    decode_user_page,
    encode_json,
    encode_summary,
    encode_user_part,
)
from engine.userparts import Pages, part_overhead, read_page, split_summaries

OWNERSHIP: dict[str, object] = {"owner": "alpha", "home": "alpha", "epoch": 1, "state": "normal"}

# An ACL of eight identifiers of 90 characters: about a kilobyte a summary.
LONG_ACL = check_acl({f"user{n:02d}{'x' * 84}": "lrswipkxtecda" for n in range(8)})
SHORT_ACL = check_acl({"owner": "lrswipkxtecda"})


def summary(n: int, acl: str = "{}", name: str = "") -> MailboxSummary:
    return MailboxSummary(f"{n:032x}", name or f"box{n:04d}", 1, 0, 0, acl, 0, 0)


# -- the cutting, in this process -------------------------------------------


def test_summaries_go_in_parts_that_fit_at_the_byte() -> None:
    boxes = [summary(n) for n in range(10)]
    piece = len(encode_json(encode_summary(boxes[0]))) + 1  # every one the same length
    overhead = part_overhead("amy", OWNERSHIP)

    assert len(split_summaries("amy", OWNERSHIP, boxes, overhead + 10 * piece)) == 1
    parts = split_summaries("amy", OWNERSHIP, boxes, overhead + 3 * piece)
    assert [len(p.summaries) for p in parts] == [3, 3, 3, 1]
    parts = split_summaries("amy", OWNERSHIP, boxes, overhead + 3 * piece - 1)
    assert [len(p.summaries) for p in parts] == [2, 2, 2, 2, 2]
    # Every uniqueid in exactly one part: each starts after the last one's end.
    assert parts[0].after == "" and parts[-1].upto is None
    for before, part in itertools.pairwise(parts):
        assert part.after == before.upto == before.summaries[-1].uniqueid
    assert [s for p in parts for s in p.summaries] == boxes
    # A request of each part, even resuming at the longest place, fits.
    for part in parts:
        widest = replace(part, resume=(part.summaries[-1].uniqueid, 2**63))
        body = encode_json(encode_user_part("amy", OWNERSHIP, widest))
        assert len(body) <= overhead + 3 * piece - 1
    # No mailboxes: one part, for the account's own state.
    assert split_summaries("amy", OWNERSHIP, [], overhead) == [UserPart()]


def test_a_summary_larger_than_any_request_is_refused_naming_its_mailbox() -> None:
    big = summary(7, LONG_ACL, "Projects/huge")
    budget = part_overhead("amy", OWNERSHIP) + len(encode_json(encode_summary(big)))
    parts = split_summaries("amy", OWNERSHIP, [summary(1), big], budget + 1)
    assert [len(p.summaries) for p in parts] == [1, 1]
    with pytest.raises(TooLargeForPartner) as refused:
        split_summaries("amy", OWNERSHIP, [summary(1), big], budget)
    assert refused.value.code == "too_large_for_partner"
    assert "amy: mailbox 'Projects/huge'" in refused.value.message
    assert "sync_max_request" in refused.value.message


def _replica(store: Store, count: int = 40) -> tuple[dict[str, MailboxSummary], AccountState]:
    """An account of 30 mailboxes, a few with ``count`` messages of long flags,
    and the summaries an owner would send of it: some equal, some
    different (records in full or since its base), some missing (the owner
    lacks them)."""
    bodies = [f"Subject: {n}\r\n\r\nx\r\n".encode() for n in range(count)]
    guids = [(store.spool.put(body)[0], len(body)) for body in bodies]

    def fill(s: Any) -> None:
        acct = accounts.create_account(s, "amy", password_hash="x")
        for n in range(30):
            box = mailbox.create_mailbox(s, acct, f"box{n:02d}")
            box.acl = LONG_ACL if n % 2 else SHORT_ACL
            for guid, size in guids if n % 10 == 3 else []:
                messages.append(
                    s,
                    acct,
                    box,
                    guid=guid,
                    size=size,
                    flags=[f"$k{'y' * 100}", f"$j{'y' * 100}"],
                    internaldate=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                )
        mailbox.subscribe(s, acct, "box01")

    store.write_sync(fill)
    state = store.read_sync(lambda s: read_account_state(s, "amy"))
    owner: dict[str, MailboxSummary] = {}
    for n, m in enumerate(state.mailboxes):
        if n % 3 == 0:
            owner[m.summary.uniqueid] = m.summary  # equal
        elif n % 3 == 1:
            owner[m.summary.uniqueid] = replace(m.summary, checksum=m.summary.checksum + 1)
    whole = store.read_sync(lambda s: read_account_state(s, "amy", records_for=owner))
    return owner, whole


def _page(store: Store, part: UserPart, budget: int) -> bytes:
    return store.read_sync(partial(read_page, account="amy", part=part, budget=budget))


def test_the_replicas_answer_comes_in_pages_that_fit_and_add_up(sqlite_store: Store) -> None:
    owner, whole = _replica(sqlite_store)
    assert {m.mode for m in whole.mailboxes} == {"none", "full"}
    assert max(len(m.records) for m in whole.mailboxes) == 40
    budget = 3000  # a record is some 300 bytes: a mailbox's 40 take several pages
    parts = split_summaries("amy", OWNERSHIP, owner.values(), 2500)
    assert len(parts) > 2
    pages = Pages("amy")
    count = 0
    for part in parts:
        while True:
            page = _page(sqlite_store, part, budget)
            count += 1
            state, boxes, after = decode_user_page(decode_json(page))
            # Over the budget only with its first mailbox and record alone.
            assert len(page) <= budget or (len(boxes) == 1 and len(boxes[0].records) <= 1)
            assert (state is not None) == (part.after == "" and part.resume is None)
            pages.add(state, boxes)
            if after is None:
                break
            part = replace(part, resume=after)
    assert count > len(parts) + 10
    assert pages.state() == whole


def test_a_page_never_repeats_itself(sqlite_store: Store) -> None:
    """A budget smaller than any mailbox: each page still moves on."""
    owner, whole = _replica(sqlite_store, 4)
    (part,) = split_summaries("amy", OWNERSHIP, owner.values(), 10**9)
    pages = Pages("amy")
    seen: set[tuple[str, int] | None] = set()
    while True:
        state, boxes, after = decode_user_page(decode_json(_page(sqlite_store, part, 1)))
        pages.add(state, boxes)
        if after is None:
            break
        assert after not in seen
        seen.add(after)
        part = replace(part, resume=after)
    assert pages.state() == whole
