"""POP3 replies for store and ownership errors (peerd.node.errormap, RFC 3206 codes)."""

from __future__ import annotations

import pytest

from engine.errors import Corrupt, DatabaseBusy, EngineError, InvalidArgument, NoSuchMailbox
from ownership.errors import NotOwner, OwnershipError
from peerd.node.errormap import pop3_not_owner, pop3_reply


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        # Worth trying again later: the account moved, the database is busy, ...
        (
            NotOwner("alice", "beta", 3),
            b"-ERR [SYS/TEMP] account alice is served by beta (epoch 3)",
        ),
        # The store's own text goes to the log, not to the client.
        (
            DatabaseBusy("(sqlite3.OperationalError) database is locked [SQL: UPDATE ...]"),
            b"-ERR [SYS/TEMP] the mail store's database is busy or unavailable; try again later",
        ),
        (NoSuchMailbox("no such mailbox: INBOX"), b"-ERR [SYS/TEMP] no such mailbox: INBOX"),
        # ... or not: the stored data itself is bad.
        (
            Corrupt("spool file /var/lib/peerd/spool/ab/abc is damaged"),
            b"-ERR [SYS/PERM] the message data is damaged on the server",
        ),
        (InvalidArgument("bad name"), b"-ERR [SYS/PERM] bad name"),
    ],
)
def test_pop3_reply_codes(exc: EngineError | OwnershipError, line: bytes) -> None:
    assert pop3_reply(exc).encode() == line + b"\r\n"


def test_pop3_reply_is_one_short_line() -> None:
    reply = pop3_reply(InvalidArgument("bad\r\n" + "x" * 1000), "not done: ").encode()
    assert reply.startswith(b"-ERR [SYS/PERM] not done: bad xxx") and reply.endswith(b"x\r\n")
    assert reply.count(b"\r\n") == 1 and len(reply) <= 512  # RFC 2449 section 4


def test_pop3_not_owner_names_the_owner() -> None:
    assert pop3_not_owner("bob", "beta").encode() == b"-ERR [SYS/TEMP] bob is served by beta\r\n"
