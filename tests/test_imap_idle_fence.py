"""An IDLE wake-up's ``\\Recent`` claim goes through the fence.

One wake-up claims the new ``\\Recent`` UIDs of every changed mailbox in one
write (``peerd.services.imap.wakeup``, ``Node.write_owned_many``). Here the
claim of a delivery to two accounts, each with a session in IDLE on alpha,
is held at a failpoint while one of the accounts is switched over to beta;
then it runs. The account alpha still owns gets its claim (its session is
told ``* 1 RECENT``: the write happened); the one that moved away does not:
alpha's copy of its INBOX keeps ``recentuid`` 0, because alpha is no longer
its owner. Written without the fence, the same write would claim it.
"""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import BinaryIO

from tests.harness.clients import idling
from tests.harness.daemons import make_pair, running
from tests.harness.procs import wait_until
from tests.nodes import Node


def recentuid(node: Node, account: str) -> tuple[int, int]:
    """(recentuid, last_uid) of ``account``'s INBOX in ``node``'s store."""
    row = node.db_row(
        "SELECT m.recentuid, m.last_uid FROM mailboxes m JOIN accounts a"
        " ON a.id = m.account_id WHERE a.name = ? AND m.name = 'INBOX'",
        account,
    )
    assert row is not None, account
    return int(row[0]), int(row[1])


def read_until(stream: BinaryIO, marker: bytes) -> bytes:
    """What the session is sent, up to the line holding ``marker``."""
    seen = b""
    while marker not in seen:
        line = stream.readline()
        if not line:
            break
        seen += line
    return seen


def test_a_wakeup_claims_no_recent_for_an_account_that_moved_away(tmp_path: Path) -> None:
    failpoints = tmp_path / "failpoints"
    alpha, beta = make_pair(tmp_path / "pair")
    alpha.extra_env["PEERD_FAILPOINTS"] = f"@{failpoints}"
    with running(alpha, beta):
        for name in ("stays", "moves"):
            alpha.add_account(name)
        stays, stays_stream = idling(alpha, "stays")
        moves, moves_stream = idling(alpha, "moves")
        try:
            failpoints.write_text("imap.wakeup.claim=60\n")
            with smtplib.LMTP("127.0.0.1", alpha.ports["lmtp"], timeout=30) as lmtp:
                lmtp.docmd("LHLO", "t")
                assert lmtp.mail("s@example.test")[0] == 250
                for rcpt in ("stays@example.test", "moves@example.test"):
                    assert lmtp.rcpt(rcpt)[0] == 250
                # RFC 2033 4.2: one reply per recipient after the data.
                first = lmtp.data(b"Subject: one for both\r\nMessage-ID: <both@t>\r\n\r\nbody\r\n")
                assert (first[0], lmtp.getreply()[0]) == (250, 250)
            wait_until(
                lambda: "failpoint imap.wakeup.claim" in alpha.tail(200), 20, "the claim held"
            )
            assert recentuid(alpha, "moves") == (0, 1)  # delivered, not claimed yet
            moved = alpha.call("POST", "/v1/switchover", {"accounts": ["moves"]})
            assert [r["account"] for r in moved["moved"]] == ["moves"]
            assert b"BYE" in read_until(moves_stream, b"BYE")
            failpoints.write_text("")  # the claim goes on, after the move
            # The write happened: the account alpha still owns was claimed,
            # and its session told.
            told = read_until(stays_stream, b"RECENT")
            assert b"* 1 EXISTS" in told and b"* 1 RECENT" in told, told
            assert recentuid(alpha, "stays") == (1, 1)
            # ... and in the same transaction the fence kept it off the
            # account that moved away.
            assert recentuid(alpha, "moves") == (0, 1)
        finally:
            for sock in (stays, moves):
                sock.close()
