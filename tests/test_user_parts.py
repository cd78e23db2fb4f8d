"""USER_SOME in parts (sync protocol 2, engine.userparts): an account whose
mailbox summaries outgrow one request replicates, against a partner at the
lowest ``sync_max_request`` its config allows.

The cutting itself is tested on its own: the owner's summaries in requests
that each fit (at the byte), a summary too large for any request refused
naming its mailbox, and the replica's answer in pages that fit the asker
and put together give what one answer would have. Then two real daemons:
beta takes requests of 12,296 bytes (the least config validation accepts
with messages of 8 KiB), alpha reads answers of 20,496; an account of
300 mailboxes with long ACLs (some 330 KB of summaries) replicates in
full, and again after a rename of them all, deletions and ACL changes; so
does ``replicate --all``, which sends it alone, in parts. Mixed releases: a
partner that speaks only version 1 still takes every account that fits in
one request, and the one that does not fails with an error naming the
reason and the node to upgrade, until it is upgraded; an owner that speaks
only version 1 replicates to this release unchanged.
"""

from __future__ import annotations

import base64
import datetime as dt
import imaplib
import itertools
import json
import sys
import urllib.request
import uuid
from dataclasses import replace
from functools import partial
from pathlib import Path
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
from peerd.node.config import ConfigError, parse_config
from tests.harness.daemons import ModuleNodes
from tests.nodes import Node, make_pair, running
from tests.procs import Proc, wait_until
from tests.test_replication import open_store

OWNERSHIP: dict[str, object] = {"owner": "alpha", "home": "alpha", "epoch": 1, "state": "normal"}

# Messages of at most 8 KiB on beta, and the least sync_max_request its config
# then takes (4 KiB and 0.1% of room for a message's framing); alpha's twice.
SMALL = 8 << 10
BETA_LIMIT = SMALL + SMALL // 1024 + 4096
ALPHA_LIMIT = 2 * SMALL + 2 * SMALL // 1024 + 4096


def limits(message: int, request: int) -> dict[str, dict[str, Any]]:
    return {
        "sync": {"sync_max_request": request, "sync_log": False},
        "imap": {"max_literal": message},
        "lmtp": {"max_message_size": message},
    }


# Rolling replication off on both: each test syncs with ``replicate`` and
# reads the requests that one run made.
PAIR = {"alpha": limits(2 * SMALL, ALPHA_LIMIT), "beta": limits(SMALL, BETA_LIMIT)}

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


# -- two real daemons ---------------------------------------------------------


@pytest.fixture
def low_pair(module_nodes: ModuleNodes) -> tuple[Node, Node]:
    return module_nodes.pair(PAIR)


def seed(node: Node, account: str, count: int, acl: str = LONG_ACL, parent: str = "big") -> None:
    """``count`` mailboxes ``parent/NNNN`` (and ``parent``) with ``acl``,
    created through the engine in one write to the running node's store."""
    store = open_store(node)
    try:

        def write(s: Any) -> None:
            acct = accounts.get_account(s, account)
            specs = [(parent, uuid.uuid4().hex, 999, acl)]
            specs += [(f"{parent}/{n:04d}", uuid.uuid4().hex, 1000 + n, acl) for n in range(count)]
            mailbox.create_mailboxes(s, acct, specs)

        store.write_sync(write)
    finally:
        store.close()


def change(node: Node, account: str, what: Any) -> None:
    store = open_store(node)
    try:
        store.write_sync(lambda s: what(s, accounts.get_account(s, account)))
    finally:
        store.close()


def state_of(node: Node, account: str) -> AccountState:
    """The account as replication makes it equal: every live record, the
    replica's own ``sync_base`` left out."""
    store = open_store(node)
    try:
        state = store.read_sync(lambda s: read_account_state(s, account, records_for={}))
    finally:
        store.close()
    boxes = tuple(replace(m, summary=replace(m.summary, sync_base=0)) for m in state.mailboxes)
    return replace(state, mailboxes=boxes)


def replicated(alpha: Node, account: str, **extra: Any) -> dict[str, Any]:
    """``replicate`` of one account: its one report, every request within
    beta's limit and every answer within alpha's."""
    result = alpha.replicate(account, **extra)
    assert result["errors"] == [], result["errors"]
    (report,) = result["reports"]
    for line in report["requests"]:
        sent, got = (int(part.split(" bytes")[0]) for part in line.split("(")[1:3])
        assert sent <= BETA_LIMIT and got <= ALPHA_LIMIT, line
    return dict(report)


def test_an_account_larger_than_a_request_replicates_and_keeps_replicating(
    low_pair: tuple[Node, Node],
) -> None:
    alpha, beta = low_pair
    # Each node's limit is the least its config takes.
    for name, config in PAIR.items():
        sync = config["sync"]
        lower = {**config, "sync": {**sync, "sync_max_request": sync["sync_max_request"] - 1}}
        with pytest.raises(ConfigError, match="sync_max_request"):
            parse_config({"node": {"name": name}, **lower})
        parse_config({"node": {"name": name}, **config})
    alpha.add_account("many")
    seed(alpha, "many", 300)
    want = state_of(alpha, "many")
    summaries = sum(len(encode_json(encode_summary(m.summary))) for m in want.mailboxes)
    assert summaries > 25 * BETA_LIMIT, summaries

    report = replicated(alpha, "many")
    steps = report["steps"]
    assert any(s.startswith("USER_SOME in ") for s in steps), steps
    assert any(s.startswith("APPLY in ") for s in steps), steps
    assert report["mailboxes_created"] == 302  # INBOX, big and its 300
    assert state_of(beta, "many") == want
    assert replicated(alpha, "many")["mailboxes_created"] == 0  # nothing left to do

    # A rename of the parent of them all (one IMAP RENAME on the owner).
    with imaplib.IMAP4("127.0.0.1", alpha.ports["imap"], timeout=30) as imap:
        imap.login("many", "secret")
        assert imap.rename("big", "moved")[0] == "OK"
    replicated(alpha, "many")
    assert state_of(beta, "many") == want_now(alpha, "many", "moved/0299")

    # 100 deleted, 100 ACLs shortened: the replica's answer (its long ACLs)
    # is larger than what the owner asked with, and comes in pages.
    def delete_and_shorten(s: Any, acct: Any) -> None:
        for n in range(100):
            mailbox.delete_mailbox(s, acct, f"moved/{n:04d}")
        for n in range(100, 200):
            mailbox.set_acl(s, acct, f"moved/{n:04d}", {"many": "lrswipkxtecda"})

    change(alpha, "many", delete_and_shorten)
    report = replicated(alpha, "many")
    assert report["mailboxes_deleted"] == 100
    (cut,) = [s for s in report["steps"] if s.startswith("USER_SOME in ")]
    requests, parts = (int(word.strip("(")) for word in cut.split()[2::2])
    assert requests > parts > 1, cut
    want = state_of(alpha, "many")
    assert len(want.mailboxes) == 202
    assert state_of(beta, "many") == want

    # And the other way: ACLs made long again, on every mailbox.
    def lengthen(s: Any, acct: Any) -> None:
        for n in range(100, 300):
            acl = {f"{n}-{i:02d}-{'z' * 80}": "lr" for i in range(8)}
            mailbox.set_acl(s, acct, f"moved/{n:04d}", acl)

    change(alpha, "many", lengthen)
    replicated(alpha, "many")
    assert state_of(beta, "many") == state_of(alpha, "many")


def want_now(alpha: Node, account: str, expected: str) -> AccountState:
    state = state_of(alpha, account)
    assert expected in {m.summary.name for m in state.mailboxes}
    return state


def test_replicate_all_sends_an_account_too_large_for_a_batch_alone_in_parts(
    low_pair: tuple[Node, Node],
) -> None:
    alpha, beta = low_pair
    for name in ("batch-a", "batch-big", "batch-c"):
        alpha.add_account(name)
    seed(alpha, "batch-big", 120)
    result = alpha.call("POST", "/v1/replicate", {"all": True})
    assert result["errors"] == [], result["errors"]
    reports = {r["account"]: r for r in result["reports"]}
    assert {"batch-a", "batch-big", "batch-c"} <= set(reports)
    # The others went together (the batch was not refused for the big one's sake).
    for name in ("batch-a", "batch-c"):
        assert any("batch_user_some" in line for line in reports[name]["requests"]), name
    big = reports["batch-big"]
    assert not any("batch_user_some" in line for line in big["requests"])
    assert any(s.startswith("USER_SOME in ") for s in big["steps"]), big["steps"]
    for name in ("batch-a", "batch-big", "batch-c"):
        assert state_of(beta, name) == state_of(alpha, name), name

    # A replica leaves out of a batch answer what would take it past the
    # asker's limit (the asker then syncs those alone); an asker that does
    # not say its limit (an older release) gets every account.
    rows = {n: alpha.call("GET", f"/v1/owner/{n}") for n in ("batch-big", "batch-a")}
    body = {"accounts": [{"account": n, "ownership": r, "summaries": []} for n, r in rows.items()]}
    answered = _post_sync(beta, "batch_user_some", body, {"X-Sync-Max-Request": "20000"})
    assert [a["account"] for a in answered["accounts"]] == ["batch-a"]
    answered = _post_sync(beta, "batch_user_some", body, {})
    assert [a["account"] for a in answered["accounts"]] == ["batch-big", "batch-a"]


def _post_sync(node: Node, path: str, body: Any, headers: dict[str, str]) -> dict[str, Any]:
    token = base64.b64encode(b"repl:repl-secret").decode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{node.ports['sync']}/sync/v1/{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json", **headers},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


# -- mixed releases -------------------------------------------------------------

# The daemon as the release before this one: it speaks sync protocol 1 only.
OLD = """
import sys
import engine.syncwire as wire
wire.PROTOCOL_VERSION = 1
wire.PROTOCOL_OLDEST = 1
from peerd.app.main import main
sys.exit(main(["run", "-c", sys.argv[1]]))
"""


def as_old_release(node: Node, tmp_path: Path) -> Proc:
    proc = Proc(
        [sys.executable, "-c", OLD, str(node.config)],
        tmp_path / f"{node.name}-old.log",
        cwd=tmp_path,
    )
    node.proc = proc.start()
    return proc


def test_a_pair_one_version_apart_replicates_both_ways_and_names_the_upgrade(
    tmp_path: Path,
) -> None:
    alpha, beta = make_pair(tmp_path, PAIR)
    alpha.start(wait=False)
    old = as_old_release(beta, tmp_path)
    try:
        alpha.wait_ready()
        beta.wait_ready()
        alpha.add_account("fits")
        seed(alpha, "fits", 3)
        alpha.add_account("toolarge")
        seed(alpha, "toolarge", 60)

        # Alpha speaks version 1 to it: an account that fits goes in one request.
        report = replicated(alpha, "fits")
        assert [s for s in report["steps"] if s.startswith("USER_SOME")] == ["USER_SOME fits"]
        assert state_of(beta, "fits") == state_of(alpha, "fits")

        # One that does not is not sent at all: a clear refusal, every time.
        for _ in range(2):
            result = alpha.replicate("toolarge")
            (error,) = result["errors"]
            assert error["error"] == "partner_lacks_request", error
            assert "summaries of its 62 mailboxes" in error["detail"], error
            assert "sync protocol 2" in error["detail"] and "upgrade beta" in error["detail"]
        assert "exceeds" not in beta.tail(200)
    finally:
        old.stop()
        alpha.stop()
    # beta upgraded: the account goes through, in parts.
    with running(alpha, beta):
        report = replicated(alpha, "toolarge")
        assert any(s.startswith("USER_SOME in ") for s in report["steps"])
        assert state_of(beta, "toolarge") == state_of(alpha, "toolarge")

    # beta back on the older release while alpha runs on: alpha learnt
    # version 2 from it before, is refused in it now, asks again and syncs
    # in version 1, within the same replicate.
    # The change is made before beta goes back: with a change waiting, the
    # rolling worker would ask first and the replicate would find the
    # version asked already.
    alpha.start()
    beta.start()
    try:
        seed(alpha, "fits", 2, parent="more")
        replicated(alpha, "fits")
        wait_until(lambda: alpha.call("GET", "/v1/status")["sync_log_depth"] == 0, 10, "the log")
        beta.stop()
        old = as_old_release(beta, tmp_path)
        try:
            beta.wait_ready()
            report = replicated(alpha, "fits")
            assert any(s.startswith("VERSION ") for s in report["steps"]), report["steps"]
            assert state_of(beta, "fits") == state_of(alpha, "fits")
        finally:
            old.stop()
    finally:
        alpha.stop()
        beta.stop()

    # The other way: an owner of the older release replicates to this one
    # (each answer is in version 1, which it reads).
    beta.start(wait=False)
    old = as_old_release(alpha, tmp_path)
    try:
        alpha.wait_ready()
        beta.wait_ready()
        alpha.add_account("older")
        seed(alpha, "older", 3)
        report = replicated(alpha, "older")
        assert [s for s in report["steps"] if s.startswith("USER_SOME")] == ["USER_SOME older"]
        assert state_of(beta, "older") == state_of(alpha, "older")
        assert "sync_version" not in alpha.tail(200)
    finally:
        old.stop()
        beta.stop()
