"""``bench.curves``' generated store is the store the daemon would have made.

The generator writes, besides the records, what the daemon's two walkers
compute of each message (the parse walker's row, the full-text index), so a
big generated store needs no hours of walking before it is measured. This
checks, on a small one, that the daemon then finds nothing left to walk and
that it answers as a node to which the same messages were delivered over
LMTP and walked by its own daemon: the same stored rows per GUID, the same
SEARCH, SORT and FETCH BODYSTRUCTURE/ENVELOPE answers.
"""

from __future__ import annotations

import imaplib
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.curves import generate
from bench.idle import PASSWORD
from engine import parsed, textindex
from engine.store import Store
from peerd.protocols.imap.parsed import PARSE_VERSION
from tests.harness.daemons import make_single
from tests.harness.procs import Registry
from tests.nodes import Node

NAMES = ["gen0", "gen1"]
PER_ACCOUNT = 12


def varied(account: str, i: int) -> bytes:
    """Plain, multipart with an attachment, and encoded-word subjects in turn."""
    head = (
        f"From: Sender {i} <s{i}@example.test>\r\nTo: {account}@example.test\r\n"
        f"Message-ID: <v{i}.{account}@bench.test>\r\nDate: Mon, {1 + i % 27} Jan 2024 10:00:00 +0000\r\n"
    )
    if i % 3 == 0:
        return (head + f"Subject: plain {i} apple\r\n\r\nbody of {i} with kiwi\r\n").encode()
    if i % 3 == 1:
        return (
            head + f"Subject: =?utf-8?q?caf=C3=A9_{i}?=\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            f"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\npart one {i} kiwi\r\n"
            f'--b\r\nContent-Type: application/pdf; name="a{i}.pdf"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n"
        ).encode()
    return (
        head + f"Subject: Re: thread {i // 2}\r\nIn-Reply-To: <v{i - 1}.{account}@bench.test>\r\n"
        f"\r\nreply {i} banana\r\n"
    ).encode()


def stored(node: Node) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each GUID's parsed row and full-text row, read from the store on disk."""
    with sqlite3.connect(node.db_path) as db:
        # The full-text index's own file (engine.textindex.index_file).
        index = node.db_path.with_name(f"{node.db_path.stem}.fulltext{node.db_path.suffix}")
        db.execute("ATTACH DATABASE ? AS textindex", (str(index),))
        rows = {
            r[0]: r[1:]
            for r in db.execute(
                "SELECT guid, version, sortkeys, envelope, bodystructure, body FROM message_parsed"
            )
        }
        texts = {
            r[0]: r[1:]
            for r in db.execute(
                "SELECT d.guid, d.version, f.header, f.body FROM fulltext_docs d"
                " JOIN fulltext f ON f.rowid = d.id"
            )
        }
    return rows, texts


def answers(node: Node, account: str) -> list[Any]:
    client = imaplib.IMAP4("127.0.0.1", node.port("imap"))
    try:
        client.login(account, PASSWORD)
        client.select("INBOX", readonly=True)
        out: list[Any] = []
        for query in ("TEXT kiwi", "BODY banana", "SUBJECT caf", "HEADER In-Reply-To v"):
            out.append(client.uid("SEARCH", "CHARSET", "UTF-8", *query.split(" ", 1)))
        out.append(client.uid("SORT", "(SUBJECT DATE)", "UTF-8", "ALL"))
        out.append(client.uid("THREAD", "REFERENCES", "UTF-8", "ALL"))
        out.append(client.uid("FETCH", "1:*", "(BODYSTRUCTURE ENVELOPE BODY)"))
        return out
    finally:
        client.logout()


def test_generated_store_needs_no_walk_and_answers_as_delivered(
    tmp_path: Path, procs: Registry
) -> None:
    gen = procs.add(make_single(tmp_path / "gen", template=False))
    generate(gen, NAMES, PER_ACCOUNT, make_body=varied)
    # What the walkers ask first finds nothing to do.
    store = Store(gen.db_url, gen.workdir_data, owner=False)
    try:
        left = store.read_sync(
            lambda s: (
                parsed.pending(s, PARSE_VERSION, after=0, limit=10_000).guids,
                textindex.pending(s, after=0, limit=10_000).guids,
            )
        )
    finally:
        store.close()
    assert left == ((), ())
    before = stored(gen)
    assert len(before[0]) == len(before[1]) == len(NAMES) * PER_ACCOUNT

    # The same messages delivered to accounts of the same names on another node.
    copy = procs.add(make_single(tmp_path / "copy", template=False))
    generate(copy, NAMES, 0, derive=False)  # the accounts, empty
    gen.start()
    copy.start()
    with copy.lmtp() as lmtp:
        for name in NAMES:
            for i in range(PER_ACCOUNT):
                lmtp.sendmail("s@example.test", [f"{name}@example.test"], varied(name, i))

    # The generated node's indexer walked its store and did nothing.
    index = gen.call("GET", "/v1/index")
    deadline = time.monotonic() + 30
    while index["indexer"]["walks"] < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        index = gen.call("GET", "/v1/index")
    assert index["indexer"]["walks"] >= 2
    assert (index["indexer"]["indexed"], index["pending"]) == (0, 0)

    # The delivered node's walkers computed the same rows for the same GUIDs.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        theirs = stored(copy)
        if all(len(t) == len(NAMES) * PER_ACCOUNT for t in theirs):
            break
        time.sleep(0.3)
    assert stored(gen) == before  # the generated node's daemon rewrote nothing
    assert theirs == before
    for name in NAMES:
        got = answers(gen, name)
        assert got[0][1][0] and got[-1][1][0]  # TEXT kiwi found some; FETCH answered
        assert got == answers(copy, name)
