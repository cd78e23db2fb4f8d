"""A damaged replica is repaired by one ``replicate`` run (issue 15, item 7).

Two real daemons. beta (the replica) loses records as a damaged database
and its recovery lose them: the rows are gone, and the mailbox's checksum,
count and quota were made to agree with what is left, so nothing on beta
looks wrong and no modseq moved. The replica's ``sync_base`` still says it
was equal to the owner, so it sends a delta (nothing changed since) and the
difference shows only in the summary. One ``replicate`` must bring the
records back, not leave that to a second run.
"""

from __future__ import annotations

import smtplib
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from engine.flags import record_hash
from engine.models import Account, Mailbox, Message
from tests.nodes import Node
from tests.procs import wait_until


def deliver(node: Node, account: str, subject: str) -> None:
    data = f"Subject: {subject}\r\nMessage-ID: <{subject}@repair>\r\n\r\nhi\r\n".encode()
    with smtplib.LMTP("127.0.0.1", node.port("lmtp"), timeout=30) as lmtp:
        assert lmtp.sendmail("s@example.test", [f"{account}@example.test"], data) == {}


def same(node: Node, account: str) -> list[tuple[Any, ...]]:
    return [(r["uid"], r["guid"], sorted(r["flags"]), r["modseq"]) for r in node.records(account)]


def lose_rows(node: Node, account: str, uids: set[int]) -> None:
    """Delete these records of INBOX and make the mailbox agree with the rest
    (checksum, exists, quota): a replica that lost rows and does not know it."""
    engine = create_engine(node.db_url)
    try:
        with Session(engine) as session, session.begin():
            acct = session.scalars(select(Account).where(Account.name == account)).one()
            box = session.scalars(
                select(Mailbox).where(Mailbox.account_id == acct.id, Mailbox.name == "INBOX")
            ).one()
            for row in session.scalars(
                select(Message).where(Message.mailbox_id == box.id, Message.uid.in_(uids))
            ):
                box.checksum ^= record_hash(
                    row.uid, row.guid, row.flags, row.internaldate, row.modseq
                )
                box.exists -= 1
                acct.quota_used -= row.size
                session.delete(row)
    finally:
        engine.dispose()


def test_one_replicate_repairs_a_replica_that_lost_records(pair: tuple[Node, Node]) -> None:
    alpha, beta = pair
    alpha.add_account("alice")
    for n in range(6):
        deliver(alpha, "alice", f"m{n}")
    wait_until(lambda: same(beta, "alice") == same(alpha, "alice"), 30, "alice equal on beta")
    assert len(same(alpha, "alice")) == 6
    beta.stop()
    lose_rows(beta, "alice", {2, 4})
    beta.start()
    assert [r[0] for r in same(beta, "alice")] == [1, 3, 5, 6]
    beta.audit("alice")  # beta's own bookkeeping agrees with what it holds

    answer = alpha.replicate("alice")
    assert answer["errors"] == []
    assert same(beta, "alice") == same(alpha, "alice")
    assert len(beta.audit("alice")) == 6
    steps = answer["reports"][0]["steps"]
    assert "FULL COMPARE (the replica differs after a delta)" in steps, steps
    # Nothing is left for a second run to do.
    again = alpha.replicate("alice")["reports"][0]["steps"]
    assert again == ["MAILBOXES INBOX", "USER_SOME alice", "ENDUSER"], again
