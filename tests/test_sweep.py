"""The spool sweep: files no live record names leave the spool after a grace, and
only those (engine.sweep; the store on SQLite and PostgreSQL), and the daemon's
sweep on two real nodes, on demand and on its timer."""

from __future__ import annotations

import asyncio
import datetime as dt
import imaplib
import os
import smtplib
import threading
import time
import urllib.error
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import accounts, delivery, mailbox, messages
from engine.apply import apply_repairs
from engine.compare import Pull, Repairs
from engine.delta import owner_delta
from engine.errors import TemporaryFailure
from engine.models import Message
from engine.passwords import MIN_LN, hash_password
from engine.store import Store
from engine.sweep import SUSPICIOUS_MIN, Sweeper
from engine.syncstate import RecordState, read_account_state
from tests.nodes import Node, make_pair, make_single, peerctl, running
from tests.procs import wait_until

# A real scrypt hash at the least cost (ln=15 is 0.15 s of CPU an account).
PW = hash_password("pw", MIN_LN)

GRACE = 0.3
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def payload(text: str) -> bytes:
    return f"Subject: {text}\r\nMessage-ID: <{text}@t>\r\n\r\n{text}\r\n".encode()


def aged(store: Store, guid: str) -> None:
    """Make a spooled file look an hour old (past any grace)."""
    old = time.time() - 3600
    os.utime(store.spool.path(guid), (old, old))


def setup(store: Store, *texts: str) -> list[str]:
    """alice with INBOX and Archive; one INBOX message per text, its file aged."""
    store.write_sync(lambda s: accounts.create_account(s, "alice", password_hash=PW))
    store.write_sync(
        lambda s: mailbox.create_mailbox(s, accounts.get_account(s, "alice"), "Archive")
    )
    guids = []
    for text in texts:
        data = payload(text)
        guid, _ = store.spool.put(data)
        aged(store, guid)
        size = len(data)
        store.write_sync(partial(_append, name="INBOX", guid=guid, size=size))
        guids.append(guid)
    return guids


def _append(s: Session, name: str, guid: str, size: int) -> None:
    account = accounts.get_account(s, "alice")
    box = mailbox.find_mailbox(s, account, name)
    assert box is not None
    messages.append(s, account, box, guid=guid, size=size, internaldate=NOW)


def expunge(store: Store, name: str, uids: list[int]) -> None:
    def write(s: Session) -> None:
        account = accounts.get_account(s, "alice")
        box = mailbox.find_mailbox(s, account, name)
        assert box is not None
        messages.expunge(s, account, box, uids)

    store.write_sync(write)


def sweep(sweeper: Sweeper) -> Any:
    return asyncio.run(sweeper.run())


def test_an_expunged_message_leaves_the_spool_after_the_grace(store: Store) -> None:
    gone, kept = setup(store, "gone", "kept")
    expunge(store, "INBOX", [1])
    sweeper = Sweeper(store, dt.timedelta(seconds=GRACE))
    first = sweep(sweeper)
    assert (first.files_checked, first.condemned, first.removed) == (2, 1, 0)
    assert sweep(sweeper).removed == 0, "removed before the grace was over"
    assert store.spool.has(gone)
    time.sleep(GRACE + 0.05)
    last = sweep(sweeper)
    assert (last.removed, last.bytes_freed, last.condemned) == (1, len(payload("gone")), 0)
    assert not store.spool.has(gone) and store.spool.has(kept)
    assert store.spool.read(kept) == payload("kept")


def test_a_pass_slower_than_the_grace_does_not_shorten_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grace runs from when a pass found the file unnamed, not from when
    the pass started: a pass that takes longer than the grace (a large
    spool, a busy store) must not let the very next one remove the file."""
    (gone,) = setup(store, "gone")
    expunge(store, "INBOX", [1])
    sweeper = Sweeper(store, dt.timedelta(seconds=GRACE))
    read = store.read

    async def slow_read(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(GRACE + 0.1)
        return await read(*args, **kwargs)

    monkeypatch.setattr(store, "read", slow_read)
    assert sweep(sweeper).condemned == 1
    monkeypatch.setattr(store, "read", read)
    assert sweep(sweeper).removed == 0, "removed before the grace was over"
    assert store.spool.has(gone)


def test_a_file_a_copy_still_names_stays(store: Store) -> None:
    (guid,) = setup(store, "copied")

    def copy(s: Session) -> None:
        account = accounts.get_account(s, "alice")
        inbox = mailbox.find_mailbox(s, account, "INBOX")
        archive = mailbox.find_mailbox(s, account, "Archive")
        assert inbox is not None and archive is not None
        messages.copy_messages(s, account, inbox, archive, [1])

    store.write_sync(copy)
    expunge(store, "INBOX", [1])
    sweeper = Sweeper(store, dt.timedelta(seconds=GRACE))
    assert sweep(sweeper).condemned == 0
    expunge(store, "Archive", [1])
    assert sweep(sweeper).condemned == 1
    time.sleep(GRACE + 0.05)
    assert sweep(sweeper).removed == 1
    assert not store.spool.has(guid)


def test_a_file_just_written_is_not_considered(store: Store) -> None:
    # A sync uploads bytes in one request and names them in the next: a new
    # file no record names yet is not garbage.
    setup(store)
    guid, _ = store.spool.put(payload("uploaded"))
    result = sweep(Sweeper(store, dt.timedelta(seconds=60)))
    assert (result.files_checked, result.condemned) == (0, 0)
    assert store.spool.has(guid)


def test_a_file_named_again_before_its_removal_stays(store: Store) -> None:
    (guid,) = setup(store, "again")
    expunge(store, "INBOX", [1])
    sweeper = Sweeper(store, dt.timedelta(seconds=GRACE))
    assert sweep(sweeper).condemned == 1
    store.write_sync(lambda s: _append(s, "Archive", guid, len(payload("again"))))
    time.sleep(GRACE + 0.05)
    result = sweep(sweeper)
    assert (result.removed, result.condemned) == (0, 0)
    assert store.spool.read(guid) == payload("again")


def test_a_delivery_whose_spooled_bytes_were_swept_fails_and_stores_nothing(
    store: Store,
) -> None:
    (guid,) = setup(store, "late")
    expunge(store, "INBOX", [1])
    sweeper = Sweeper(store, dt.timedelta(seconds=GRACE))
    sweep(sweeper)
    time.sleep(GRACE + 0.05)  # due now
    # The same bytes arrive again: the front finds them spooled (tmp None),
    # and marks them used, so the sweep leaves them...
    staged = store.spool.stage(payload("late"))
    assert staged.tmp is None
    assert sweep(sweeper).removed == 0
    # ...but a sweep whose stat came just before that mark still removes
    # them (the race the mark narrows): the delivery must not name them.
    store.spool.path(guid).unlink()
    runner = delivery.DeliveryRunner(delivery.DeliveryOptions())
    op = delivery.Delivery(
        delivery.parse_recipient("alice", frozenset()), guid, len(payload("late")), NOW, None
    )

    async def deliver() -> Any:
        return await store.write_grouped(runner, op, staged=[staged])

    with pytest.raises(TemporaryFailure, match="left the spool"):
        asyncio.run(deliver())
    assert [r["uid"] for r in _records(store)] == [1], "a record names a missing file"
    # The MTA's retry brings the bytes again: stored, readable.
    staged = store.spool.stage(payload("late"))
    assert staged.tmp is not None
    asyncio.run(store.write_grouped(runner, op, staged=[staged]))
    assert store.spool.read(guid) == payload("late")


def test_bytes_a_sync_was_told_are_here_stay_for_a_grace(store: Store) -> None:
    # RESERVE answers "have it" with Spool.keep: the APPLY that names the
    # bytes comes in a later request.
    (guid,) = setup(store, "reserved")
    expunge(store, "INBOX", [1])
    sweeper = Sweeper(store, dt.timedelta(seconds=GRACE))
    assert sweep(sweeper).condemned == 1
    time.sleep(GRACE + 0.05)
    assert store.spool.keep(guid)
    assert sweep(sweeper).removed == 0
    assert store.spool.has(guid)
    assert not store.spool.keep("f" * 40)


def test_the_delta_sends_bytes_again_when_the_replica_held_only_a_tombstone(
    store: Store,
) -> None:
    # The replica's copy of an expunged message may have been swept: bytes
    # delivered again must travel with the delta.
    (guid,) = setup(store, "twice")
    expunge(store, "INBOX", [1])
    mark = store.read_sync(lambda s: read_account_state(s, "alice"))
    store.write_sync(lambda s: _append(s, "INBOX", guid, len(payload("twice"))))
    delta = store.read_sync(lambda s: owner_delta(s, "alice", mark))
    assert delta is not None and delta.upload == (guid,)


def test_most_files_unnamed_holds_the_removal_back(store: Store) -> None:
    # As if the node had started on the wrong database: spooled bytes, no records.
    setup(store)
    for n in range(SUSPICIOUS_MIN + 20):
        guid, _ = store.spool.put(payload(f"orphan{n}"))
        aged(store, guid)
    sweeper = Sweeper(store, dt.timedelta(0))
    assert sweep(sweeper).condemned == SUSPICIOUS_MIN + 20
    held = sweep(sweeper)
    assert held.removed == 0 and "is this the node's database?" in held.held_back
    assert asyncio.run(sweeper.run(force=True)).removed == SUSPICIOUS_MIN + 20


def _records(store: Store) -> list[dict[str, Any]]:
    def read(s: Session) -> list[dict[str, Any]]:
        account = accounts.get_account(s, "alice")
        box = mailbox.find_mailbox(s, account, "INBOX")
        assert box is not None
        rows = s.scalars(select(Message).where(Message.mailbox_id == box.id).order_by(Message.uid))
        return [{"uid": r.uid, "expunged": r.expunged} for r in rows]

    return store.read_sync(read)


def test_a_repair_refuses_records_whose_bytes_are_not_here(store: Store) -> None:
    setup(store)
    missing = "0" * 40
    uniqueid = store.read_sync(
        lambda s: mailbox.find_mailbox(s, accounts.get_account(s, "alice"), "INBOX").uniqueid  # type: ignore[union-attr]
    )
    record = RecordState(uid=7, guid=missing, flags="", internaldate=0, size=10, modseq=1)
    repairs = Repairs(pulls=(Pull(uniqueid, uniqueid, "INBOX", None, 7, (record,)),))
    with pytest.raises(TemporaryFailure, match="not in the spool"):
        store.write_sync(lambda s: apply_repairs(s, "alice", repairs, store.spool.has))


def test_a_write_alone_gets_a_transaction_of_its_own(store: Store) -> None:
    setup(store)
    gate = threading.Event()
    seen: list[tuple[str, int]] = []

    def hold(s: Session) -> None:
        gate.wait(10)

    def normal(s: Session) -> None:
        s.info["normal"] = s.info.get("normal", 0) + 1
        seen.append(("normal", s.info["normal"]))

    def alone(s: Session) -> None:
        seen.append(("alone", s.info.get("normal", 0)))

    async def main() -> None:
        held = asyncio.ensure_future(store.write(hold))
        await asyncio.sleep(0.1)  # the committer is busy with hold: the rest queue up
        writes = [asyncio.ensure_future(store.write(normal)) for _ in range(3)]
        writes.append(asyncio.ensure_future(store.write(alone, alone=True)))
        writes += [asyncio.ensure_future(store.write(normal)) for _ in range(3)]
        await asyncio.sleep(0.1)
        gate.set()
        await asyncio.gather(held, *writes)

    asyncio.run(main())
    # Three in one batch, the alone write by itself, then the other three together.
    three = [("normal", 1), ("normal", 2), ("normal", 3)]
    assert seen == [*three, ("alone", 0), *three]


# --- the daemon's sweep, two real nodes ------------------------------------------

QUICK = {"node": {"spool_sweep_interval": "0", "spool_sweep_grace": "1s"}}


def deliver(node: Node, subject: str) -> None:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30) as lmtp:
        lmtp.sendmail(
            "s@example.test",
            ["alice@example.test"],
            f"Subject: {subject}\r\nMessage-ID: <{subject}@t>\r\n\r\n{subject}\r\n".encode(),
        )


def guids(node: Node) -> list[str]:
    try:
        return [m["guid"] for m in node.mailbox("alice")["messages"]]
    except urllib.error.HTTPError as exc:  # not replicated yet
        exc.close()
        return []


def spooled(node: Node, guid: str) -> bool:
    return (node.workdir / "var" / node.name / "spool" / guid[:2] / guid).exists()


def expunge_first(node: Node) -> None:
    with imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=30) as imap:
        imap.login("alice", "secret")
        imap.select("INBOX")
        imap.store("1", "+FLAGS", "(\\Deleted)")
        imap.expunge()


def sweep_now(node: Node) -> dict[str, Any]:
    return dict(node.call("POST", "/v1/spool/sweep", {}))


def test_expunged_mail_leaves_both_nodes_spools(tmp_path: Path) -> None:
    alpha, beta = make_pair(tmp_path, {"alpha": QUICK, "beta": QUICK})
    with running(alpha, beta):
        alpha.add_account("alice")
        deliver(alpha, "gone")
        deliver(alpha, "kept")
        wait_until(lambda: len(guids(beta)) == 2, 15, "both messages on beta")
        gone, kept = guids(alpha)
        expunge_first(alpha)
        wait_until(lambda: guids(beta) == [kept], 15, "the expunge on beta")
        time.sleep(1.1)  # the files are older than the grace now
        for node in (alpha, beta):
            assert sweep_now(node)["condemned"] == 1
        time.sleep(1.1)
        result = peerctl(alpha, "spool", "sweep")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("removed 1 file(s), ")
        assert sweep_now(beta)["removed"] == 1
        for node in (alpha, beta):
            assert not spooled(node, gone) and spooled(node, kept)
            status = node.call("GET", "/v1/status")["spool_sweep"]
            assert status["runs"] == 2 and status["waiting"] == 0
        text = peerctl(alpha, "status", "--local").stdout.splitlines()
        (line,) = [t for t in text if t.startswith("spool sweep: ")]
        assert line.startswith("spool sweep: on demand, grace 1s, 2 run(s); last ")
        assert " removed 1 file(s) (" in line and line.endswith("B), 0 waiting")
        with imaplib.IMAP4("127.0.0.1", alpha.ports["imap"], timeout=30) as imap:
            imap.login("alice", "secret")
            imap.select("INBOX")
            typ, data = imap.fetch("1", "(BODY.PEEK[TEXT])")
            assert typ == "OK" and b"kept" in cast(tuple[bytes, bytes], data[0])[1]


def test_the_timer_sweeps_on_its_own(tmp_path: Path) -> None:
    node = make_single(
        tmp_path, overrides={"node": {"spool_sweep_interval": "300ms", "spool_sweep_grace": "1s"}}
    )
    with running(node):
        node.add_account("alice")
        deliver(node, "gone")
        (gone,) = guids(node)
        expunge_first(node)
        wait_until(lambda: not spooled(node, gone), 20, "the file swept by the timer")
        assert node.call("GET", "/v1/status")["spool_sweep"]["last"]["trigger"] == "schedule"


def test_a_sweep_takes_force_and_nothing_else(tmp_path: Path) -> None:
    node = make_single(tmp_path, overrides=QUICK)
    with running(node):
        result = peerctl(node, "--json", "spool", "sweep", "--force")
        assert result.returncode == 0 and '"removed": 0' in result.stdout
        with pytest.raises(urllib.error.HTTPError) as refused:
            node.call("POST", "/v1/spool/sweep", {"grace": 0})
        assert refused.value.code == 422
        refused.value.close()
