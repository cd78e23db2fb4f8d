"""The selected-mailbox core with values and bytes alone: what may be told when.

Commands come from bytes through the real reader; the store is replaced by
plain values (a mailbox view is a list of records), as the core never sees
more than that.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.protocols.imap import commands as c
from peerd.protocols.imap.fetchatt import Item
from peerd.protocols.imap.parser import CommandReader
from peerd.protocols.imap.records import Numbered, Record
from peerd.protocols.imap.responses import CommandError
from peerd.protocols.imap.selected import (
    Extensions,
    FetchPlan,
    Selected,
    closed_response,
    may_expunge,
)
from tests.example_counts import examples

WHEN = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class Rec:
    uid: int
    flags: str = ""
    modseq: int = 1
    guid: str = "0" * 40
    size: int = 100
    internaldate: dt.datetime = WHEN


@dataclass(frozen=True, slots=True)
class View:
    records: tuple[Record, ...]
    uidvalidity: int = 7
    highestmodseq: int = 10
    uidnext: int = 0

    def __post_init__(self) -> None:
        if not self.uidnext:
            last = self.records[-1].uid if self.records else 0
            object.__setattr__(self, "uidnext", last + 1)


def command(text: bytes) -> c.Command:
    reader = CommandReader()
    reader.feed(text + b"\r\n")
    event = reader.next_event()
    assert isinstance(event, c.Command), event
    return event


def fetch(text: bytes) -> c.Fetch:
    cmd = command(text)
    assert isinstance(cmd, c.Fetch)
    return cmd


def admissible(text: bytes) -> c.Select | c.Examine | c.Fetch | c.Store:
    cmd = command(text)
    assert isinstance(cmd, c.Select | c.Examine | c.Fetch | c.Store)
    return cmd


def store(text: bytes) -> c.Store:
    cmd = command(text)
    assert isinstance(cmd, c.Store)
    return cmd


def five(ext: Extensions | None = None, *, readonly: bool = False) -> Selected:
    view = View(tuple(Rec(uid) for uid in (10, 20, 30, 40, 50)))
    return Selected(view, name="INBOX", readonly=readonly, ext=ext or Extensions())


def without(box: Selected, *uids: int, highestmodseq: int = 11) -> View:
    return View(
        tuple(r for r in box.records if r.uid not in uids),
        highestmodseq=highestmodseq,
        uidnext=box.uidnext,
    )


# -- when expunges may be told (RFC 3501 7.4.1) -------------------------------------------


@pytest.mark.parametrize(
    ("text", "allowed"),
    [
        (b"a FETCH 1 FLAGS", False),
        (b"a STORE 1 +FLAGS (\\Seen)", False),
        (b"a SEARCH ALL", False),
        (b"a UID FETCH 1 FLAGS", True),
        (b"a UID STORE 1 +FLAGS (\\Seen)", True),
        (b"a UID SEARCH ALL", True),
        (b"a NOOP", True),
        (b"a CHECK", True),
        (b"a IDLE", True),
        (b"a EXPUNGE", True),
        (b"a MOVE 1 Trash", True),
        (b"a APPEND INBOX {1+}\r\nx", True),
    ],
)
def test_expunges_are_never_told_after_fetch_store_or_search(text: bytes, allowed: bool) -> None:
    assert may_expunge(command(text)) is allowed


def test_an_expunge_is_held_back_during_fetch_and_told_at_the_next_noop() -> None:
    box = five()
    fresh = without(box, 20)
    box.changed()
    assert box.take_stale()
    assert box.update(fresh, expunges=may_expunge(fetch(b"a FETCH 1:* FLAGS"))) == b""
    # Nothing changed in what the client was told, and the change is still due.
    assert [r.uid for r in box.records] == [10, 20, 30, 40, 50]
    assert box.stale
    assert box.take_stale()
    out = box.update(fresh, expunges=may_expunge(command(b"a NOOP")))
    assert out == b"* 2 EXPUNGE\r\n* 4 EXISTS\r\n"
    assert [r.uid for r in box.records] == [10, 30, 40, 50]
    assert box.highestmodseq == 11


def test_a_flag_change_behind_a_held_back_expunge_is_held_back_too() -> None:
    # A FETCH MODSEQ told now would be above the untold expunge's modseq: a
    # QRESYNC client would think it had seen everything up to it.
    ext = Extensions()
    ext.enable(["QRESYNC"])
    box = five(ext)
    fresh = View(
        (Rec(10, "\\Seen", modseq=12), Rec(30), Rec(40), Rec(50)), highestmodseq=12, uidnext=51
    )
    assert box.update(fresh, expunges=False) == b""
    assert box.records[0].flags == ""
    assert box.update(fresh, expunges=True) == (
        b"* VANISHED 20\r\n* 1 FETCH (UID 10 FLAGS (\\Seen) MODSEQ (12))\r\n* 4 EXISTS\r\n"
    )


def test_each_expunge_renumbers_the_ones_after_it() -> None:
    box = five()
    assert box.update(without(box, 20, 40, 50), expunges=True) == (
        b"* 2 EXPUNGE\r\n* 3 EXPUNGE\r\n* 3 EXPUNGE\r\n* 2 EXISTS\r\n"
    )


def test_after_enable_qresync_expunges_are_told_as_vanished_uids() -> None:
    ext = Extensions()
    assert ext.enable(["QRESYNC"]) == b"* ENABLED QRESYNC\r\n"
    box = five(ext)
    assert box.update(without(box, 20, 30, 50), expunges=True) == (
        b"* VANISHED 20,30,50\r\n* 2 EXISTS\r\n"
    )


def test_new_messages_are_told_as_exists() -> None:
    box = five()
    fresh = View((*box.records, Rec(51), Rec(52)), highestmodseq=12)
    # RFC 3501 7.3.1: the RECENT count goes with a new EXISTS.
    assert box.update(fresh, expunges=False) == b"* 7 EXISTS\r\n* 0 RECENT\r\n"
    assert box.uidnext == 53


def test_claimed_uids_are_recent_now_and_when_they_arrive() -> None:
    # RFC 3501 2.3.2: the UIDs the store gave this session carry \Recent in
    # every answer, and the count is told with EXISTS (7.3.2).
    box = five()
    assert not box.needs_claim(View(tuple(box.records)), 50)
    assert box.needs_claim(View(tuple(box.records)), 40)
    assert not five(readonly=True).needs_claim(View(tuple(box.records)), 40)
    box.claimed(40, 52)
    assert [r.flags for r in box.records][-2:] == ["", "\\Recent"]
    assert b"* 1 RECENT\r\n" in box.opening()
    fresh = View((*five().records[:4], Rec(50, "\\Seen"), Rec(51), Rec(52), Rec(53)))
    out = box.update(fresh, expunges=False)
    assert out == (b"* 5 FETCH (UID 50 FLAGS (\\Seen \\Recent))\r\n* 8 EXISTS\r\n* 3 RECENT\r\n")
    assert [r.uid for r in box.records if "\\Recent" in r.flags.split()] == [50, 51, 52]
    # Our own STORE's records come back from the store without it.
    box.absorb([Rec(51, "\\Flagged")])
    assert box.records[5].flags == "\\Flagged \\Recent"


def test_recent_count_and_marks_follow_the_claimed_ranges() -> None:
    # recent_count bisects each claimed range and claimed() marks only the
    # records inside it: the same answer as a test of every record, with
    # ranges that hold no record, touch, or come after gaps in the UIDs.
    uids = (3, 4, 9, 10, 11, 20, 21, 40, 41, 42)
    box = Selected(
        View(tuple(Rec(u, "$Late" if u == 9 else "") for u in uids)),
        name="INBOX",
        readonly=False,
        ext=Extensions(),
    )
    for first, last in ((0, 3), (3, 4), (12, 19), (19, 21), (41, 60)):
        box.claimed(first, last)
        marked = [r.uid for r in box.records if "\\Recent" in r.flags.split()]
        assert marked == [u for u in uids if box.is_recent(u)]
        assert box.recent_count() == len(marked)
    assert box.recent_count() == 5  # 3, 4, 20, 21 and 42
    assert b"* 5 RECENT\r\n" in box.opening()


def test_keywords_given_with_the_view_are_the_ones_told() -> None:
    # The server hands over the keywords it found once with the records
    # (engine.mailview.keywords_of); FLAGS names them as if found here.
    records = (Rec(1, "\\Seen $Work"), Rec(2, "$Later"), Rec(3))
    found = Selected(View(records), name="INBOX", readonly=False, ext=Extensions())
    given = Selected(
        View(records),
        name="INBOX",
        readonly=False,
        ext=Extensions(),
        keywords=frozenset({"$Later", "$Work"}),
    )
    assert given.opening() == found.opening()
    assert b"\\Draft $Later $Work)" in given.opening()


def test_flag_changes_are_told_with_modseq_only_under_condstore() -> None:
    records = (Rec(10), Rec(20, "\\Seen", modseq=5))
    plain = Selected(View(records), name="INBOX", readonly=False, ext=Extensions())
    fresh = View((Rec(10, "\\Flagged", modseq=11), Rec(20, "\\Seen", modseq=11)), highestmodseq=11)
    # Without CONDSTORE a modseq-only change is not news.
    assert plain.update(fresh, expunges=True) == b"* 1 FETCH (UID 10 FLAGS (\\Flagged))\r\n"
    ext = Extensions()
    ext.enable(["CONDSTORE"])
    condstore = Selected(View(records), name="INBOX", readonly=False, ext=ext)
    assert condstore.update(fresh, expunges=True) == (
        b"* 1 FETCH (UID 10 FLAGS (\\Flagged) MODSEQ (11))\r\n"
        b"* 2 FETCH (UID 20 FLAGS (\\Seen) MODSEQ (11))\r\n"
    )


def test_a_change_reported_while_the_mailbox_is_read_is_not_lost() -> None:
    box = five()
    box.changed()
    assert box.take_stale()
    box.changed()  # the store's notice arrives while the server reads
    box.update(without(box, 20), expunges=True)
    assert box.stale


def test_a_poll_marks_the_snapshot_stale_only_when_the_mailbox_moved_on() -> None:
    box = five()
    assert not box.outdated_by(10, 51)
    assert box.outdated_by(11, 51)
    assert box.take_stale()
    assert box.outdated_by(10, 52)


def test_our_own_changes_are_absorbed_and_not_told_again() -> None:
    box = five()
    box.absorb([Rec(20, "\\Seen", modseq=11)])
    fresh = View(tuple(box.records), highestmodseq=11)
    assert box.update(fresh, expunges=True) == b""


# -- SELECT ---------------------------------------------------------------------------------


def test_select_opening_responses() -> None:
    box = five()
    assert box.opening() == (
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
        b"* 5 EXISTS\r\n"
        b"* 0 RECENT\r\n"
        b"* OK [UIDVALIDITY 7] UIDs valid\r\n"
        b"* OK [UIDNEXT 51] Predicted next UID\r\n"
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Limited\r\n"
        b"* OK [HIGHESTMODSEQ 10] Highest\r\n"
    )
    assert closed_response() == b"* OK [CLOSED] Previous mailbox closed\r\n"


def test_qresync_resync_tells_vanished_within_known_uids_then_changed_flags() -> None:
    ext = Extensions()
    ext.enable(["QRESYNC"])
    records = (Rec(10, modseq=3), Rec(30, "\\Answered", modseq=9), Rec(50, modseq=4))
    box = Selected(View(records), name="INBOX", readonly=False, ext=ext)
    select = command(b"a SELECT INBOX (QRESYNC (7 5 1:40))")
    assert isinstance(select, c.Select) and select.qresync is not None
    ext.admit(select)
    assert box.resync(select.qresync, [20, 45]) == (
        b"* VANISHED (EARLIER) 20\r\n* 2 FETCH (UID 30 FLAGS (\\Answered) MODSEQ (9))\r\n"
    )
    other = command(b"a SELECT INBOX (QRESYNC (8 5))")
    assert isinstance(other, c.Select) and other.qresync is not None
    assert box.resync(other.qresync, [20]) == b""  # another UIDVALIDITY: nothing


def test_qresync_and_vanished_need_enable_first() -> None:
    ext = Extensions()
    with pytest.raises(CommandError, match="ENABLE QRESYNC"):
        ext.admit(admissible(b"a SELECT INBOX (QRESYNC (7 5))"))
    with pytest.raises(CommandError, match="ENABLE QRESYNC"):
        ext.admit(fetch(b"a UID FETCH 1:* FLAGS (CHANGEDSINCE 5 VANISHED)"))
    assert not ext.condstore


def test_enable_names_only_what_is_offered_and_qresync_implies_condstore() -> None:
    ext = Extensions()
    assert ext.enable(["UTF8=ACCEPT", "QRESYNC", "QRESYNC"]) == b"* ENABLED QRESYNC\r\n"
    assert ext.condstore and ext.qresync
    assert Extensions().enable(["X-NOTHING"]) == b"* ENABLED\r\n"


@pytest.mark.parametrize(
    "text",
    [
        b"a SELECT INBOX (CONDSTORE)",
        b"a FETCH 1 (FLAGS MODSEQ)",
        b"a FETCH 1 FLAGS (CHANGEDSINCE 3)",
        b"a STORE 1 (UNCHANGEDSINCE 3) +FLAGS (\\Seen)",
    ],
)
def test_condstore_enabling_commands(text: bytes) -> None:
    ext = Extensions()
    ext.admit(admissible(text))
    assert ext.condstore and not ext.qresync


# -- FETCH ----------------------------------------------------------------------------------


def test_uid_fetch_answers_uid_first() -> None:
    plan = five().plan_fetch(fetch(b"a UID FETCH 20:30 (FLAGS)"))
    assert plan.items == (Item.UID, Item.FLAGS)
    assert [(seq, r.uid) for seq, r in plan.targets] == [(2, 20), (3, 30)]
    assert plan.seen == () and plan.vanished_since is None


def test_body_without_peek_marks_seen_on_a_writable_mailbox_only() -> None:
    box = five()
    box.absorb([Rec(20, "\\Seen")])
    plan = box.plan_fetch(fetch(b"a FETCH 1:3 BODY[]"))
    assert plan.seen == (10, 30)
    assert five(readonly=True).plan_fetch(fetch(b"a FETCH 1:3 BODY[]")).seen == ()
    assert five().plan_fetch(fetch(b"a FETCH 1:3 BODY.PEEK[]")).seen == ()
    assert five().plan_fetch(fetch(b"a FETCH 1 RFC822")).seen == (10,)
    assert five().plan_fetch(fetch(b"a FETCH 1 RFC822.HEADER")).seen == ()


def test_after_the_seen_write_the_new_flags_are_answered() -> None:
    box = five()
    plan = box.plan_fetch(fetch(b"a FETCH 2 BODY[TEXT]"))
    box.absorb([Rec(20, "\\Seen", modseq=11)])
    after = box.after_seen(plan)
    assert Item.FLAGS in after.items
    assert [(seq, r.flags) for seq, r in after.targets] == [(2, "\\Seen")]
    assert after.seen == ()


def test_condstore_adds_uid_and_modseq_and_changedsince_filters() -> None:
    ext = Extensions()
    records = (Rec(10, modseq=3), Rec(20, modseq=8))
    box = Selected(View(records), name="INBOX", readonly=False, ext=ext)
    cmd = fetch(b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 5)")
    ext.admit(cmd)
    plan = box.plan_fetch(cmd)
    assert plan.items[0] is Item.UID and Item.MODSEQ in plan.items
    assert [r.uid for _, r in plan.targets] == [20]


def test_vanished_earlier_names_requested_uids_no_longer_shown() -> None:
    ext = Extensions()
    ext.enable(["QRESYNC"])
    box = five(ext)
    cmd = fetch(b"a UID FETCH 1:35 FLAGS (CHANGEDSINCE 5 VANISHED)")
    ext.admit(cmd)
    plan = box.plan_fetch(cmd)
    assert plan == FetchPlan(plan.items, plan.targets, (), 5)
    # 20 is still shown: told as a plain VANISHED when it may be; 45 was not asked.
    assert box.vanished_earlier(cmd.seqset, [15, 20, 25, 45]) == b"* VANISHED (EARLIER) 15,25\r\n"
    assert box.vanished_earlier(cmd.seqset, [20]) == b""


def test_sequence_numbers_past_the_end_are_refused_uids_ignored() -> None:
    box = five()
    with pytest.raises(CommandError, match="out of range"):
        box.resolve(fetch(b"a FETCH 4:6 FLAGS").seqset, uid=False)
    assert [r.uid for _, r in box.resolve(fetch(b"a UID FETCH 45:* FLAGS").seqset, True)] == [50]
    empty = Selected(View(()), name="INBOX", readonly=False, ext=Extensions())
    assert empty.resolve(fetch(b"a FETCH 1:* FLAGS").seqset, uid=False) == []


@settings(max_examples=examples(300), deadline=None)
@given(
    st.lists(st.integers(1, 60), min_size=0, max_size=25, unique=True),
    st.lists(
        st.tuples(st.integers(1, 70), st.integers(1, 70) | st.just(-1)), min_size=1, max_size=6
    ),
    st.booleans(),
)
def test_fetch_targets_are_the_resolved_pairs(
    uids: list[int], ranges: list[tuple[int, int]], uid: bool
) -> None:
    # What a FETCH answers (a Numbered run when the messages are consecutive)
    # is what resolve gives, pair for pair, sliced or not.
    view = View(tuple(Rec(u) for u in sorted(uids)))
    box = Selected(view, name="INBOX", readonly=False, ext=Extensions())
    text = ",".join(f"{a}:{'*' if b == -1 else b}" for a, b in ranges)
    seqset = fetch(b"a FETCH " + text.encode() + b" FLAGS").seqset
    try:
        pairs = box.resolve(seqset, uid)
    except CommandError:
        with pytest.raises(CommandError):
            box.targets(seqset, uid)
        return
    targets = box.targets(seqset, uid)
    assert list(targets) == pairs and targets == pairs and len(targets) == len(pairs)
    seqs = [seq for seq, _ in pairs]
    if isinstance(targets, Numbered):
        assert seqs == list(range(targets.first, targets.first + len(targets)))
    elif seqs:
        assert seqs != list(range(seqs[0], seqs[0] + len(seqs)))
    for start in range(len(pairs) + 1):
        assert list(targets[start : start + 3]) == pairs[start : start + 3]
        if start < len(pairs):
            assert targets[start] == pairs[start] and targets[-1 - start] == pairs[-1 - start]


def test_a_fetch_of_consecutive_messages_makes_no_pair_per_message() -> None:
    plan = five().plan_fetch(fetch(b"a UID FETCH 20:* (FLAGS)"))
    assert isinstance(plan.targets, Numbered)
    assert plan.targets.first == 2 and [r.uid for r in plan.targets.records] == [20, 30, 40, 50]
    assert not isinstance(five().plan_fetch(fetch(b"a FETCH 1,3 (FLAGS)")).targets, Numbered)


# -- STORE and EXPUNGE ----------------------------------------------------------------------


def test_store_silent_is_silent_unless_condstore() -> None:
    box = five()
    cmd = store(b"a STORE 2 +FLAGS.SILENT (\\Seen)")
    targets = box.resolve(cmd.seqset, cmd.uid)
    box.absorb([Rec(20, "\\Seen", modseq=11)])
    assert box.store_responses(cmd, targets, {20}, ()) == (b"", None)
    ext = Extensions()
    ext.enable(["CONDSTORE"])
    box = five(ext)
    box.absorb([Rec(20, "\\Seen", modseq=11)])
    assert box.store_responses(cmd, targets, {20}, ()) == (
        b"* 2 FETCH (UID 20 FLAGS (\\Seen) MODSEQ (11))\r\n",
        None,
    )


def test_store_modified_names_uids_or_sequence_numbers() -> None:
    box = five()
    plain = store(b"a STORE 1:3 (UNCHANGEDSINCE 5) +FLAGS (\\Flagged)")
    targets = box.resolve(plain.seqset, plain.uid)
    out, code = box.store_responses(plain, targets, set(), (20, 30))
    assert code == b"MODIFIED 2:3"
    assert out.startswith(b"* 1 FETCH (FLAGS ())\r\n")
    by_uid = store(b"a UID STORE 10:30 (UNCHANGEDSINCE 5) +FLAGS (\\Flagged)")
    _, code = box.store_responses(by_uid, targets, set(), (20, 30))
    assert code == b"MODIFIED 20,30"


def test_uid_expunge_takes_only_deleted_messages_among_the_uids() -> None:
    box = five()
    box.absorb([Rec(20, "\\Deleted"), Rec(40, "\\Deleted \\Seen"), Rec(50, "\\Deleted")])
    cmd = command(b"a UID EXPUNGE 1:45")
    assert isinstance(cmd, c.UidExpunge)
    assert box.uid_expunge_targets(cmd.seqset) == [20, 40]


def test_expunge_code_names_highestmodseq_under_qresync_only() -> None:
    box = five()
    assert box.expunge_code(True) is None
    ext = Extensions()
    ext.enable(["QRESYNC"])
    box = five(ext)
    box.update(replace(without(box, 20), highestmodseq=12), expunges=True)
    assert box.expunge_code(True) == b"HIGHESTMODSEQ 12"
    assert box.expunge_code(False) is None


def test_a_read_only_mailbox_refuses_changes() -> None:
    with pytest.raises(CommandError, match="read-only") as refused:
        five(readonly=True).writable()
    assert refused.value.status == "NO" and refused.value.code == b"CANNOT"
    five().writable()


# -- two sessions on one mailbox ------------------------------------------------------------


def test_two_sessions_see_one_expunge_each_at_its_own_moment() -> None:
    # A deletes and expunges message 2; B is in a FETCH when the change lands,
    # then sends NOOP. The store's view after the expunge is the same for both.
    qresync = Extensions()
    qresync.enable(["QRESYNC"])
    a, b = five(), five(qresync)
    a.absorb([Rec(20, "\\Deleted", modseq=11)])
    after = View((Rec(10), Rec(30), Rec(40), Rec(50)), highestmodseq=12, uidnext=51)
    assert a.update(after, expunges=may_expunge(command(b"a EXPUNGE"))) == (
        b"* 2 EXPUNGE\r\n* 4 EXISTS\r\n"
    )
    b.changed()
    assert b.take_stale()
    assert b.update(after, expunges=may_expunge(fetch(b"b FETCH 2 FLAGS"))) == b""
    assert b.take_stale()
    assert b.update(after, expunges=may_expunge(command(b"b NOOP"))) == (
        b"* VANISHED 20\r\n* 4 EXISTS\r\n"
    )
    assert a.records == b.records


# -- one change, many sessions (peerd/services/imap/wakeup.py) ---------------------


def test_sessions_in_the_same_state_share_one_update_and_stay_apart_after() -> None:
    before = View((Rec(1, "\\Seen"), Rec(2)), highestmodseq=10)
    after = View((Rec(1, "\\Seen"), Rec(2, "\\Flagged", 11), Rec(3, "", 12)), highestmodseq=12)
    boxes = [Selected(before, name="INBOX", readonly=False, ext=Extensions()) for _ in range(3)]
    alone = Selected(before, name="INBOX", readonly=False, ext=Extensions())
    ext = Extensions()
    ext.enable(["CONDSTORE"])
    condstore = Selected(before, name="INBOX", readonly=False, ext=ext)
    claimer = Selected(before, name="INBOX", readonly=False, ext=Extensions())
    claimer.claimed(2, 3)
    # The same view read once: the same key; other extensions or \Recent: another.
    key = boxes[0].state_key()
    assert key is not None and all(b.state_key() == key for b in boxes)
    assert condstore.state_key() != key and claimer.state_key() != key
    out = boxes[0].update(after, expunges=True)
    assert out == b"* 2 FETCH (UID 2 FLAGS (\\Flagged))\r\n* 3 EXISTS\r\n* 0 RECENT\r\n"
    for box in boxes[1:]:
        box.follow(boxes[0])
    assert alone.update(after, expunges=True) == out  # what following stands for
    for box in boxes:
        assert box.records == alone.records and box.highestmodseq == 12 and box.uidnext == 4
    assert b"MODSEQ (11)" in condstore.update(after, expunges=True)
    assert b"* 1 RECENT" in claimer.update(after, expunges=True)
    # One session's own change is its own: the others are still told of it.
    boxes[1].absorb([Rec(3, "\\Answered", 13)])
    assert boxes[1].state_key() is None
    assert boxes[2].records[2].flags == ""
    later = View((*after.records[:2], Rec(3, "\\Answered", 13)), highestmodseq=13)
    assert boxes[2].update(later, expunges=True) == b"* 3 FETCH (UID 3 FLAGS (\\Answered))\r\n"
