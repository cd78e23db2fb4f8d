"""The full-text index in the store (engine.textindex, migration 0010_fulltext), on
SQLite and on PostgreSQL: what the index answers is what decoding every message
answers, on generated mail; what it walks, what it forgets."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
import time
from dataclasses import dataclass
from functools import partial

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.orm import Session

from engine import accounts, mailbox, messages, textindex
from engine.fulltext import EXTRACT_VERSION, Key, extract, matches
from engine.passwords import MIN_LN, hash_password
from engine.store import INDEX_NICE, Store
from engine.sweep import Sweeper
from peerd.protocols.imap.parser import tokenize
from peerd.protocols.imap.search import compile_search
from peerd.protocols.imap.searchkey import parse_search_key
from tests.example_counts import examples
from tests.test_fulltext import mailboxes, needles
from tests.test_sweep import aged

# A real scrypt hash at the least cost (ln=15 is 0.15 s of CPU an account).
PW = hash_password("pw", MIN_LN)

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


def add_alice(store: Store) -> None:
    store.write_sync(lambda s: accounts.create_account(s, "alice", password_hash=PW))


def _append(s: Session, box: str, guid: str, size: int) -> int:
    account = accounts.get_account(s, "alice")
    found = mailbox.find_mailbox(s, account, box) or mailbox.create_mailbox(s, account, box)
    return messages.append(s, account, found, guid=guid, size=size, internaldate=NOW).uid


def deliver(store: Store, box: str, raws: list[bytes]) -> tuple[int, list[tuple[int, str]]]:
    """Spool and append ``raws`` to ``box``, in one write: its id and (uid, guid)
    per message."""
    spooled = [(store.spool.put(raw)[0], len(raw)) for raw in raws]

    def append(s: Session) -> tuple[int, list[tuple[int, str]]]:
        uids = [_append(s, box, guid, size) for guid, size in spooled]
        found = mailbox.find_mailbox(s, accounts.get_account(s, "alice"), box)
        assert found is not None
        return found.id, [(uid, guid) for uid, (guid, _) in zip(uids, spooled, strict=True)]

    return store.write_sync(append)


def index(store: Store, guids: list[str]) -> None:
    docs = [(g, extract(store.spool.read(g))) for g in guids]
    store.index_write_sync(partial(textindex.put, docs=docs))


def reading(store: Store, read: list[str], guid: str) -> bytes:
    """The bytes of ``guid``, noted in ``read``."""
    read.append(guid)
    return store.spool.read(guid)


def rows(store: Store) -> set[str]:
    table = "fulltext_docs" if store.engine.dialect.name == "sqlite" else "fulltext"
    return set(store.read_sync(lambda s: s.scalars(text(f"SELECT guid FROM {table}")).all()))


@settings(
    max_examples=examples(40),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), raws=mailboxes)
def test_indexed_answers_are_the_unindexed_answers(
    store: Store, data: st.DataObject, raws: list[bytes]
) -> None:
    """Generated mail (charsets, quoted-printable, base64, HTML, attached
    messages), part of it indexed: SEARCH BODY and TEXT through the index give
    what extracting every message gives, and never read an indexed message."""
    if not store.read_sync(lambda s: accounts.find_account(s, "alice")):
        add_alice(store)
    box = f"Box{time.monotonic_ns()}"
    mailbox_id, records = deliver(store, box, raws)
    indexed = [g for _, g in records if data.draw(st.booleans(), label="indexed")]
    index(store, indexed)
    docs = {g: extract(store.spool.read(g)) for _, g in records}
    kinds: tuple[Key, Key] = ("BODY", "TEXT")
    strings = needles(list(docs.values()))
    for _ in range(4):
        string = data.draw(strings, label="string")
        for kind in kinds:
            answer = store.read_sync(
                partial(textindex.ask, mailbox_id=mailbox_id, questions=[(kind, string)])
            )
            assert not set(indexed) & answer.unindexed
            read: list[str] = []
            search = textindex.TextSearch(answer, partial(reading, store, read))
            test = search.test(kind, string)
            got = [uid for uid, guid in records if test(guid)]
            want = [uid for uid, guid in records if matches(docs[guid], kind, string)]
            assert got == want, (kind, string)
            assert set(read) <= answer.unindexed  # the index answered the others


def test_the_imap_core_asks_the_index_for_body_and_text(store: Store) -> None:
    """compile_search with the index's answers: an HTML part is read as text
    (the core's own decoding would see the tags), and an indexed message's
    bytes are not read."""
    add_alice(store)
    html = b"Subject: menu\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Fish &amp; chips</p>"
    plain = b"Subject: other\r\n\r\nfish and chips\r\n"
    mailbox_id, records = deliver(store, "INBOX", [html, plain])
    index(store, [records[0][1]])
    key = parse_search_key(tokenize(b'BODY "fish & chips"'), charset="UTF-8")
    answer = store.read_sync(lambda s: textindex.ask(s, mailbox_id, [("BODY", "fish & chips")]))
    read: list[str] = []

    def load(guid: str) -> bytes:
        read.append(guid)
        return store.spool.read(guid)

    search = textindex.TextSearch(answer, load)
    matcher = compile_search(key, 2, 2, search.test)
    found = [
        uid for seq, (uid, guid) in enumerate(records, 1) if matcher(seq, Rec(uid, guid), load)
    ]
    assert found == [1]
    assert read == [records[1][1]]  # only the message not indexed yet


@dataclass(frozen=True, slots=True)
class Rec:
    """A record, as the IMAP core reads it."""

    uid: int
    guid: str
    flags: str = ""
    modseq: int = 1
    size: int = 1
    internaldate: dt.datetime = NOW


def test_the_walk_names_live_unindexed_messages_once(store: Store) -> None:
    add_alice(store)
    raws = [f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode() for n in range(5)]
    _, records = deliver(store, "INBOX", [*raws, raws[0]])  # the same bytes twice
    guids = [g for _, g in records]

    first = store.read_sync(partial(textindex.pending, after=0, limit=4))
    assert first.guids == tuple(guids[:4]) and first.more
    rest = store.read_sync(partial(textindex.pending, after=first.mark, limit=4))
    assert rest.guids == (guids[4], guids[0]) and not rest.more
    index(store, guids[:3])
    again = store.read_sync(partial(textindex.pending, after=0, limit=100))
    assert again.guids == (guids[3], guids[4])

    def expunge(s: Session) -> None:
        account = accounts.get_account(s, "alice")
        box = mailbox.get_mailbox(s, account, "INBOX")
        messages.expunge(s, account, box, [4])

    store.write_sync(expunge)
    assert store.read_sync(partial(textindex.pending, after=0, limit=100)).guids == (guids[4],)
    counts = store.read_sync(partial(textindex.counts, account="alice"))
    assert (counts.guids, counts.indexed) == (4, 3)  # four GUIDs live, three indexed
    # A GUID named twice in one put is one document (it failed with a
    # UNIQUE error on SQLite: two messages with the same bytes).
    index(store, [guids[4], guids[4]])
    counts = store.read_sync(partial(textindex.counts, account="alice"))
    assert (counts.guids, counts.indexed) == (4, 4)


def test_an_old_version_counts_as_not_indexed(store: Store) -> None:
    add_alice(store)
    _, records = deliver(store, "INBOX", [b"Subject: v\r\n\r\nversioned\r\n"])
    guid = records[0][1]
    index(store, [guid])
    table = "fulltext_docs" if store.engine.dialect.name == "sqlite" else "fulltext"
    store.index_write_sync(
        lambda s: s.execute(text(f"UPDATE {table} SET version = :v"), {"v": EXTRACT_VERSION - 1})
    )
    assert store.read_sync(partial(textindex.pending, after=0)).guids == (guid,)
    index(store, [guid])  # put replaces the old row
    assert store.read_sync(partial(textindex.pending, after=0)).guids == ()
    assert rows(store) == {guid}


def test_the_text_leaves_with_the_bytes(store: Store) -> None:
    """An expunged message's text is dropped by the sweep that removes its
    bytes; a GUID another record still names keeps its text."""
    add_alice(store)
    raws = [b"Subject: gone\r\n\r\ngone words\r\n", b"Subject: kept\r\n\r\nkept words\r\n"]
    mailbox_id, records = deliver(store, "INBOX", raws)
    guids = [g for _, g in records]
    for guid in guids:
        aged(store, guid)
    index(store, guids)

    def expunge(s: Session) -> None:
        account = accounts.get_account(s, "alice")
        messages.expunge(s, account, mailbox.get_mailbox(s, account, "INBOX"), [1])

    store.write_sync(expunge)
    sweeper = Sweeper(store, dt.timedelta(seconds=0.2))
    asyncio.run(sweeper.run())
    assert rows(store) == set(guids)  # condemned, not yet removed
    time.sleep(0.25)
    assert asyncio.run(sweeper.run()).removed == 1
    assert rows(store) == {guids[1]}
    answer = store.read_sync(lambda s: textindex.ask(s, mailbox_id, [("BODY", "words")]))
    assert answer.found[("BODY", "words")] == {guids[1]}


def test_forget_unnamed_drops_rows_no_live_record_names(store: Store) -> None:
    add_alice(store)
    _, records = deliver(store, "INBOX", [b"Subject: a\r\n\r\na\r\n", b"Subject: b\r\n\r\nb\r\n"])
    guids = [g for _, g in records]
    index(store, guids)

    def expunge(s: Session) -> None:
        account = accounts.get_account(s, "alice")
        messages.expunge(s, account, mailbox.get_mailbox(s, account, "INBOX"), [2])

    store.write_sync(expunge)
    unnamed = store.read_sync(textindex.unnamed)
    assert unnamed == [guids[1]]
    store.index_write_sync(partial(textindex.forget, guids=unnamed))
    assert rows(store) == {guids[0]}


def test_on_sqlite_the_index_has_a_file_and_a_writer_of_its_own(store: Store) -> None:
    """SQLite locks per file: while the index's writer holds its write lock
    (an FTS5 insert in progress), the store's committer still commits, and
    the node's file holds no index table (migration 0013_fulltext_file)."""
    if store.index_engine is None:
        return  # PostgreSQL: the index is a table of the one database
    add_alice(store)
    _, records = deliver(store, "INBOX", [b"Subject: x\r\n\r\nseparate file\r\n"])
    guid = records[0][1]
    path = textindex.index_file(store.engine)
    assert path is not None and path.exists() and path != store.data_dir / "peerd.db"
    with store.engine.connect() as conn:
        names = set(conn.execute(text("SELECT name FROM main.sqlite_master")).scalars())
    assert not names & {"fulltext", "fulltext_docs"}
    holding = threading.Event()
    release = threading.Event()

    def slow_put(s: Session) -> None:
        textindex.put(s, [(guid, extract(store.spool.read(guid)))])
        holding.set()
        release.wait(10)  # the index file's write lock is held until this returns

    writer = threading.Thread(target=store.index_write_sync, args=(slow_put,))
    writer.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        deliver(store, "INBOX", [b"Subject: y\r\n\r\nnot queued\r\n"])
        assert time.monotonic() - started < 5
        assert rows(store) == set()  # not committed yet: readers see the last commit
    finally:
        release.set()
        writer.join()
    assert rows(store) == {guid}


def test_the_index_writer_runs_at_a_lower_priority(store: Store) -> None:
    """Its inserts wait for a free core, not the deliveries and DELTAs."""
    if store.index_engine is None:
        return  # PostgreSQL: the index's writes are the committer's

    def priority(_s: Session) -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    theirs = asyncio.run(store.index_write(priority))
    assert theirs == min(19, mine + INDEX_NICE)
