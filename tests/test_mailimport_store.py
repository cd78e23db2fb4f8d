"""The import cursor in the store (engine/mailimport.py), on SQLite and
PostgreSQL: a batch sent twice appends nothing, a new remote UIDVALIDITY is
refused unless the messages were matched, over quota keeps what fits and
stops the cursor before the first that did not, and the keys that match
messages are Message-ID, internal date and size."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from sqlalchemy.orm import Session

from engine import accounts, mailimport, synclog
from engine.errors import InvalidArgument
from engine.mailbox import get_mailbox
from engine.mailimport import Batch, ImportedMessage
from engine.messages import live_records
from engine.store import Store

HASH = "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
WHEN = dt.datetime(2024, 5, 1, 10, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=-7)))


def _data(n: int) -> bytes:
    return f"Message-ID: <{n}@example.test>\r\nSubject: {n}\r\n\r\nbody {n}\r\n".encode()


def _message(n: int) -> ImportedMessage:
    data = _data(n)
    return ImportedMessage(
        n, hashlib.sha1(data).hexdigest(), len(data), ("\\Seen", "$Work"), WHEN + dt.timedelta(n)
    )


def _run(store: Store, batch: Batch) -> mailimport.Outcome:
    def write(s: Session) -> mailimport.Outcome:
        return mailimport.import_batch(s, accounts.get_account(s, "alice"), batch)

    return store.write_sync(write)


def _uids_and_flags(store: Store, name: str = "Work") -> list[tuple[int, str]]:
    def read(s: Session) -> list[tuple[int, str]]:
        account = accounts.get_account(s, "alice")
        box = next(c for c in mailimport.cursors(s, account) if c.mailbox == name)
        assert box.exists >= 0
        return [(r.uid, r.flags) for r in live_records(s, get_mailbox(s, account, name))]

    return store.read_sync(read)


def test_batches_resume_and_never_double(store: Store) -> None:
    store.write_sync(lambda s: accounts.create_account(s, "alice", password_hash=HASH))
    first = Batch("Work", 77, 3, tuple(_message(n) for n in (1, 2, 3)), subscribe=True)
    assert _run(store, first) == mailimport.Outcome(3, 0, 3)
    assert _run(store, first) == mailimport.Outcome(0, 3, 3)  # sent again: nothing new
    assert _uids_and_flags(store) == [(1, "$Work \\Seen"), (2, "$Work \\Seen"), (3, "$Work \\Seen")]
    cursor = store.read_sync(
        lambda s: [
            c
            for c in mailimport.cursors(s, accounts.get_account(s, "alice"))
            if c.mailbox == "Work"
        ]
    )
    assert cursor == [mailimport.Cursor("Work", 77, 3, 3)]
    pending = store.read_sync(lambda s: synclog.pending(s, ["alice"]))
    assert pending and "append" in pending[0].kinds

    # The remote mailbox was rebuilt: its UIDs mean nothing here.
    with pytest.raises(InvalidArgument, match="UIDVALIDITY"):
        _run(store, Batch("Work", 78, 9, (_message(9),)))
    # Matched by key first: only the new message is sent.
    keys = store.read_sync(
        lambda s: mailimport.message_keys(
            s,
            accounts.get_account(s, "alice"),
            "Work",
            lambda guid: next(
                _data(n) for n in range(10) if hashlib.sha1(_data(n)).hexdigest() == guid
            ),
        )
    )
    assert keys[0] == mailimport.message_key(
        "<1@example.test>", WHEN + dt.timedelta(1), len(_data(1))
    )
    assert _run(store, Batch("Work", 78, 9, (_message(9),), rematch=True)).appended == 1
    assert [u for u, _ in _uids_and_flags(store)] == [1, 2, 3, 4]


def test_over_quota_keeps_what_fits(store: Store) -> None:
    size = len(_data(1))
    store.write_sync(
        lambda s: accounts.create_account(
            s, "alice", password_hash=HASH, quota_limit=2 * size + size // 2
        )
    )
    batch = Batch("INBOX", 5, 6, tuple(_message(n) for n in (2, 4, 6)))
    outcome = _run(store, batch)
    assert (outcome.appended, outcome.last_uid) == (2, 5)
    assert outcome.over_quota.startswith("over quota")
    assert len(_uids_and_flags(store, "INBOX")) == 2
    # Resumed with room: only the one that did not fit.
    store.write_sync(lambda s: accounts.set_quota(s, "alice", None))
    assert _run(store, batch) == mailimport.Outcome(1, 2, 6)
