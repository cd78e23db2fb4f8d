"""The walkers that work once per stored message (the parse walker, the
full-text indexer) against messages their parsers choke on, on a real node:
one such message is skipped with one log line; the messages after it, and the
account's replication, go on."""

from __future__ import annotations

import imaplib
import smtplib
import sqlite3
from pathlib import Path

from tests.nodes import Node, make_single, running
from tests.procs import wait_until

# RFC 2231 parameters naming a codec that refuses the "replace" error handler
# (idna) or every input (undefined): the standard library's
# collapse_rfc2231_value, which BODYSTRUCTURE's parameters go through,
# raises UnicodeError on them; an 8-bit octet in Content-Transfer-Encoding,
# which the compat32 parser hands back as a Header object, not a str.
HOSTILE = (
    b"Subject: cte\r\nMessage-ID: <cte@t>\r\n"
    b"Content-Transfer-Encoding: b\xffase64\r\n\r\nthird\r\n",
    b"Subject: idna\r\nMessage-ID: <idna@t>\r\n"
    b"Content-Type: text/plain; name*=idna''abc\r\n\r\nfirst\r\n",
    b"Subject: undefined\r\nMessage-ID: <undefined@t>\r\n"
    b"Content-Type: text/plain; name*=undefined''abc\r\n\r\nsecond\r\n",
)
PLAIN = b"Subject: plain\r\nMessage-ID: <plain@t>\r\n\r\nnothing odd here\r\n"


def deliver(node: Node, data: bytes) -> None:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30) as lmtp:
        assert lmtp.sendmail("sender@example.test", ["alice@example.test"], data) == {}


def _guids(node: Node, sql: str) -> set[str]:
    with sqlite3.connect(f"file:{node.db_path}?mode=ro", uri=True, timeout=30) as db:
        return {row[0] for row in db.execute(sql)}


def test_messages_the_stdlib_raised_on_are_parsed_and_fetched(tmp_path: Path) -> None:
    """The parse walker parsed a batch at a time and its whole walk failed on
    one message that raised: it tried again every second, with a traceback,
    and no message delivered after it was ever parsed. The renderers now
    read each of them (peerd.protocols.imap.structure: RFC 2231 values and
    8-bit fields); a message one still raised on would be skipped with one
    log line (Walker.skip). FETCH BODYSTRUCTURE, which rendered them on the
    fly and dropped the connection, answers for each."""
    node = make_single(tmp_path)
    with running(node):
        node.add_account("alice")
        for data in (*HOSTILE, PLAIN):
            deliver(node, data)
        every = {m["guid"] for m in node.mailbox("alice")["messages"]}
        wait_until(
            lambda: every <= _guids(node, "SELECT guid FROM message_parsed"),
            15,
            "every message parsed, the hostile ones too",
        )
        with imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=30) as imap:
            imap.login("alice", "secret")
            imap.select("INBOX", readonly=True)
            for number in range(1, len(HOSTILE) + 2):
                typ, answer = imap.fetch(str(number), "(BODYSTRUCTURE BODY.PEEK[TEXT])")
                assert typ == "OK" and answer[0] is not None, (number, answer)
        log = (node.workdir / f"{node.name}.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "parsing stored messages: message" not in log, log[-3000:]
