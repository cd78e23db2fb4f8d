"""The batch path's engine parts give exactly what the one-account path
gives, on SQLite and PostgreSQL: :mod:`engine.bulkstate` reads (every mode
of a compare: equal, full, delta) and :mod:`engine.applybulk` writes (the
same rows, counts, quota, sync-log changes and answers as
:func:`engine.apply.apply_push`)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import replace
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from engine import accounts, mailbox, messages, sieve
from engine import annotations as metadata
from engine.apply import apply_push
from engine.applybulk import apply_new_accounts, is_fresh
from engine.bulkstate import owner_views, read_states
from engine.compare import Push, compare
from engine.models import Account, Mailbox
from engine.store import Store
from engine.syncstate import AccountState, account_digests, owner_view, read_account_state


def populate(store: Store) -> list[str]:
    """Four accounts: empty, with messages and flags, with Sieve and
    METADATA and a deleted mailbox, and one with a hierarchy."""
    stored = []
    for i in range(8):
        body = f"From: a@example.test\r\nSubject: {i}\r\n\r\nbody {i}\r\n".encode()
        guid, _ = store.spool.put(body)
        stored.append((guid, len(body)))

    def write(s: Session) -> None:
        accounts.create_account(s, "empty", password_hash="$x")
        full = accounts.create_account(s, "full", password_hash="$y", quota_limit=99_999)
        accounts.set_message_limit(s, "full", 40)
        inbox = mailbox.get_mailbox(s, full, "INBOX")
        sent = mailbox.create_mailbox(s, full, "Sent")
        for i, (guid, size) in enumerate(stored):
            messages.append(
                s,
                full,
                inbox if i % 2 else sent,
                guid=guid,
                size=size,
                flags=["\\Seen"] if i % 3 else [],
                internaldate=dt.datetime(2026, 2, 1 + i, tzinfo=dt.UTC),
            )
        messages.set_flags(s, full, inbox, [1, 2], ["\\Answered", "$Work"])
        messages.expunge(s, full, sent, [1])
        mailbox.subscribe(s, full, "Sent")
        mailbox.set_acl(s, full, "Sent", {"full": "lrswipkxtecda", "other": "lr"})
        scripted = accounts.create_account(s, "scripted", password_hash="$z")
        sieve.put_script(s, scripted, "b", "keep;", max_scripts=5)
        sieve.put_script(s, scripted, "a", "discard;", max_scripts=5)
        sieve.set_active(s, scripted, "a")
        metadata.set_entries(s, scripted, "INBOX", [("/private/comment", b"x")])
        mailbox.create_mailbox(s, scripted, "Gone")
        mailbox.delete_mailbox(s, scripted, "Gone")
        deep = accounts.create_account(s, "deep", password_hash="$w")
        for name in ("b", "a/z", "a", "B", "a/y"):
            mailbox.create_mailbox(s, deep, name)

    store.write_sync(write)
    return ["empty", "full", "scripted", "deep", "nobody"]


def test_read_states_and_owner_views_equal_the_one_account_reads(store: Store) -> None:
    names = populate(store)

    def check(s: Session) -> None:
        everyone = account_digests(s)
        assert account_digests(s, names) == {n: everyone[n] for n in names if n in everyone}
        assert read_states(s, names) == {n: read_account_state(s, n) for n in names}
        assert read_states(s, names, records_for={}) == {
            n: read_account_state(s, n, records_for={}) for n in names
        }
        # The other side's summaries: one equal, one changed, one with a
        # sync_base (a delta), one it lacks.
        full = read_account_state(s, "full")
        inbox, sent = (m.summary for m in full.mailboxes)
        theirs = {
            "full": {
                inbox.uniqueid: replace(inbox, checksum=inbox.checksum ^ 1),
                sent.uniqueid: sent,
            },
            "deep": {},
        }
        savepoint = s.begin_nested()
        s.execute(
            update(Mailbox)
            .where(Mailbox.uniqueid == inbox.uniqueid)
            .values(sync_base=inbox.highestmodseq - 2)
        )
        assert read_states(s, names, records_for=theirs) == {
            n: read_account_state(s, n, records_for=theirs.get(n, {})) for n in names
        }
        # The owner's side of a compare against replicas in every mode.
        replicas = {
            "full": read_account_state(s, "full", records_for=theirs["full"]),
            "deep": AccountState("deep", exists=False),
            "empty": read_account_state(s, "empty", records_for={}),
            "scripted": read_account_state(s, "scripted"),
        }
        got = owner_views(s, replicas)
        for name, replica in replicas.items():
            state, records, known = owner_view(s, account=name, replica=replica)
            assert (got[name].state, got[name].records, got[name].known) == (
                state,
                records,
                known,
            ), name
        savepoint.rollback()

    store.write_sync(check)


def _as_new(push: Push, name: str) -> Push:
    """The push under another name, with new mailbox uniqueids (the source
    account stays in the same store)."""
    boxes = tuple(
        replace(mp, summary=replace(mp.summary, uniqueid=uuid.uuid4().hex)) for mp in push.mailboxes
    )
    return replace(push, account=name, mailboxes=boxes)


def test_apply_new_accounts_writes_what_apply_push_writes(store: Store) -> None:
    populate(store)

    def pushes(s: Session) -> list[Push]:
        out = []
        for name in ("empty", "full", "deep"):
            state = read_account_state(s, name, records_for={})
            records = {m.summary.uniqueid: m.records for m in state.mailboxes}
            owner = read_account_state(s, name)
            _, push = compare(owner, records, AccountState(name, exists=False), frozenset())
            out.append(_as_new(push, f"new-{name}"))
        # A summary the records do not match: reported mismatched by both.
        bad = out[1].mailboxes[0]
        out.append(
            replace(
                _as_new(out[1], "new-bad"),
                mailboxes=(
                    replace(
                        bad, summary=replace(bad.summary, uniqueid=uuid.uuid4().hex, checksum=5)
                    ),
                ),
            )
        )
        return out

    planned = store.read_sync(pushes)
    assert all(is_fresh(p) for p in planned)

    def both(s: Session) -> list[Any]:
        seen = []
        for bulk in (False, True):
            savepoint = s.begin_nested()
            s.info["changes"] = []
            if bulk:
                results = apply_new_accounts(s, planned, store.spool.has)
            else:
                results = [apply_push(s, p, store.spool.has) for p in planned]
            s.flush()
            s.expire_all()
            names = [p.account for p in planned]
            rows = {
                a.name: (a.quota_used, a.quota_limit, a.message_limit, a.uidvalidity_used)
                for a in s.scalars(select(Account).where(Account.name.in_(names)))
            }
            boxes = {
                (m.uniqueid, m.name, m.recentuid, m.sync_base, m.last_uid)
                for m in s.scalars(
                    select(Mailbox).where(
                        Mailbox.account_id.in_(select(Account.id).where(Account.name.in_(names)))
                    )
                )
            }
            seen.append(
                (
                    [(r.summaries, r.mismatched) for r in results],
                    {n: read_account_state(s, n, records_for={}) for n in names},
                    rows,
                    boxes,
                    set(s.info["changes"]),
                )
            )
            savepoint.rollback()
        return seen

    one, bulk = store.write_sync(both)
    assert bulk == one
    results, states, _, boxes, _ = one
    assert len(boxes) == 1 + 2 + 6 + 1  # every mailbox written
    assert sum(len(m.records) for m in states["new-full"].mailboxes) == 7
    assert [bool(mismatched) for _, mismatched in results] == [False, False, False, True]
