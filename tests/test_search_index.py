"""The full-text index on real daemons: mail delivered over LMTP is indexed on the
owner and on the replica, SEARCH BODY/TEXT over IMAP answer from it (on beta
after a failover, without a rebuild), and ``peerctl index`` rebuilds it."""

from __future__ import annotations

import base64
import contextlib
import imaplib
import quopri
import random
import smtplib
import sqlite3
import time
import urllib.error
from typing import Any

import pytest

from tests.nodes import Node, make_single, peerctl, running
from tests.procs import wait_until

# An HTML part in Latin-1, base64; a quoted-printable UTF-8 text part; a PDF.
MAIL = (
    b"From: sender@example.test\r\nTo: alice@example.test\r\n"
    b"Subject: =?utf-8?q?Men=C3=BC?=\r\nMessage-ID: <menu@t>\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/html; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes("<p>Zuckerwatte &amp; Gr\xfc\xdfe</p>".encode("latin-1")).replace(
        b"\n", b"\r\n"
    )
    + b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    + quopri.encodestring("Crème brûlée for dessert".encode())
    + b"\r\n--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(b"hidden attachment words")
    + b"--b--\r\n"
)
PLAIN = b"Subject: plain\r\nMessage-ID: <plain@t>\r\n\r\nnothing sweet here\r\n"


def deliver(node: Node, data: bytes) -> None:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30) as lmtp:
        lmtp.sendmail("sender@example.test", ["alice@example.test"], data)


def index_of(node: Node, account: str) -> dict[str, Any]:
    try:
        return dict(node.call("GET", f"/v1/index?account={account}"))
    except urllib.error.HTTPError as exc:  # the account has not arrived yet
        exc.close()
        return {"messages": 0, "indexed": 0, "pending": 0}


def indexed(node: Node, account: str, count: int) -> bool:
    found = index_of(node, account)
    return bool(found["messages"] == found["indexed"] == count)


def _two_indexed(node: Node, first: bytes, second: bytes) -> None:
    """alice made, ``first`` and ``second`` delivered to her and indexed."""
    node.add_account("alice")
    deliver(node, first)
    deliver(node, second)
    wait_until(lambda: indexed(node, "alice", 2), 20, "alice's two messages indexed")


def search(node: Node, *criteria: str, literal: str | None = None) -> list[int]:
    with imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=30) as imap:
        imap.login("alice", "secret")
        imap.select("INBOX")
        if literal is not None:
            imap.literal = literal.encode()  # type: ignore[assignment]  # sent after the criteria
            typ, data = imap.search("UTF-8", *criteria)
        else:
            typ, data = imap.search(None, *criteria)
        assert typ == "OK", data
        return [int(n) for n in (data[0] or b"").split()]


def spool_file(node: Node, guid: str) -> Any:
    return node.workdir_data / "spool" / guid[:2] / guid


def test_search_finds_the_word_on_beta_after_failover_without_a_rebuild(
    pair: tuple[Node, Node],
) -> None:
    alpha, beta = pair
    alpha.add_account("alice")
    deliver(alpha, MAIL)
    deliver(alpha, PLAIN)
    # The owner indexes what it delivered; the replica what it received.
    wait_until(lambda: indexed(alpha, "alice", 2), 20, "alpha indexed its mail")
    wait_until(lambda: indexed(beta, "alice", 2), 20, "beta indexed what it received")
    assert search(alpha, "BODY", "zuckerwatte") == [1]

    alpha.kill9()
    taken = beta.call("POST", "/v1/failover", {})["taken"]
    assert [t["account"] for t in taken] == ["alice"]

    # Answered by beta's index: with the message's bytes out of the way,
    # decoding it could not find the word (the bytes go back afterwards).
    guid = beta.records("alice")[0]["guid"]
    path = spool_file(beta, guid)
    aside = path.with_name(guid + ".aside")
    path.rename(aside)
    try:
        assert search(beta, "BODY", "zuckerwatte") == [1]  # HTML, Latin-1, base64
        assert search(beta, "TEXT", "ZUCKERWATTE") == [1]
    finally:
        aside.rename(path)
    assert search(beta, "BODY", literal="CRÈME BRÛLÉE") == [1]  # quoted-printable UTF-8
    assert search(beta, "BODY", literal="grüsse") == [1]  # ß folds to ss
    assert search(beta, "BODY", "sweet") == [2]
    assert search(beta, "BODY", "&amp;") == []  # HTML is read as text
    assert search(beta, "BODY", "hidden") == []  # not a text part
    assert search(beta, "TEXT", literal="menü") == [1]  # the decoded Subject
    assert search(beta, "BODY", literal="menü") == []  # BODY skips the header
    assert search(beta, "OR", "BODY", "sweet", "TEXT", "dessert") == [1, 2]
    assert search(beta, "NOT", "BODY", "dessert") == [2]


def test_peerctl_index_rebuild_and_status(tmp_path: Any) -> None:
    node = make_single(tmp_path)
    with running(node):
        node.add_account("alice")
        node.add_account("bob")
        deliver(node, MAIL)
        deliver(node, PLAIN)
        wait_until(lambda: indexed(node, "alice", 2), 20, "alice's mail indexed")

        done = peerctl(node, "index", "rebuild", "-u", "alice")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("indexed 2 message text(s) of alice in ")
        status = peerctl(node, "index", "status", "-u", "alice")
        assert status.returncode == 0, status.stderr
        assert "2 of 2 message text(s) indexed, 0 pending" in status.stdout

        everything = peerctl(node, "--json", "index", "rebuild", "--all")
        assert everything.returncode == 0, everything.stderr
        assert '"indexed": 2' in everything.stdout and '"account": null' in everything.stdout

        unknown = peerctl(node, "index", "rebuild", "-u", "nobody")
        assert unknown.returncode != 0 and "nobody" in unknown.stderr
        neither = peerctl(node, "index", "rebuild")
        assert neither.returncode != 0
        try:
            node.call("POST", "/v1/index/rebuild", {"account": "alice", "all": True})
        except urllib.error.HTTPError as exc:
            assert exc.code == 422
            exc.close()
        else:
            raise AssertionError("an account and all were both accepted")
        assert search(node, "BODY", "zuckerwatte") == [1]


def test_a_stream_of_deliveries_is_indexed_in_few_walks(tmp_path: Any) -> None:
    """Thirty deliveries 40 ms apart: the indexer takes the commits of its
    gap (``peerd.pair.indexer.GAP``) in one walk instead of walking again
    after each one (and after each commit of its own), and still indexes
    them all."""
    node = make_single(tmp_path)
    count = 30
    with running(node):
        node.add_account("alice")
        deliver(node, PLAIN)
        wait_until(lambda: indexed(node, "alice", 1), 20, "the first message indexed")
        before = index_of(node, "alice")["indexer"]["walks"]
        with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30) as lmtp:
            for n in range(count):
                data = PLAIN.replace(b"<plain@t>", f"<plain{n}@t>".encode())
                lmtp.sendmail("sender@example.test", ["alice@example.test"], data)
                time.sleep(0.04)
        wait_until(lambda: indexed(node, "alice", count + 1), 30, "the stream indexed")
        walks = index_of(node, "alice")["indexer"]["walks"] - before
    # About 1.2 s of deliveries at one walk per 0.5 s (and the polls).
    assert walks <= count // 3, walks


def _damage_index(node: Node, how: str) -> None:
    """Damage the node's stopped full-text index file: ``header`` writes over
    its first 100 bytes (SQLite no longer reads it as a database), ``page``
    over the start of the root page of its docs table (found by the check)."""
    path = node.workdir_data / "peerd.fulltext.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        (root,) = db.execute(
            "SELECT rootpage FROM sqlite_schema WHERE name = 'fulltext_docs'"
        ).fetchone()
    offset, size = (0, 100) if how == "header" else ((root - 1) * page_size, 64)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(random.Random(f"peerd-index-{how}").randbytes(size))


@pytest.mark.parametrize("how", ["header", "page"])
def test_a_damaged_index_file_is_set_aside_and_refilled(tmp_path: Any, how: str) -> None:
    """The index is a cache of the spool's bytes in a file of its own, which
    every read connection attaches: damaged, it is set aside at start (a new
    one is made and refilled), and nothing else of the node is affected."""
    node = make_single(tmp_path)
    with running(node):
        _two_indexed(node, MAIL, PLAIN)
    _damage_index(node, how)
    with running(node):
        # Every read works (a SELECT, a FETCH), and SEARCH answers as before.
        assert search(node, "BODY", "zuckerwatte") == [1]
        assert search(node, "TEXT", '"nothing sweet"') == [2]
        wait_until(lambda: indexed(node, "alice", 2), 20, "alice's mail indexed again")
        assert search(node, "BODY", "zuckerwatte") == [1]
        deliver(node, PLAIN.replace(b"plain@t", b"plain2@t"))
        wait_until(lambda: indexed(node, "alice", 3), 20, "the new mail indexed")
    aside = list(node.workdir_data.glob("peerd.fulltext.db.damaged-*"))
    assert [p.name for p in aside if not p.name.endswith(("-wal", "-shm"))], aside
    log = node.log.read_text()
    assert "full-text index" in log and "set aside as peerd.fulltext.db.damaged-" in log
    assert "database damaged" not in log  # the node's own file is not blamed


def test_a_message_whose_text_decodes_to_surrogates_does_not_stop_the_indexer(
    tmp_path: Any,
) -> None:
    """A charset Python decodes to lone surrogates (``unicode_escape``) made
    text no UTF-8 encoder takes: the index's insert failed, and the walk
    stopped there for good, every later message unindexed."""
    odd = (
        b"Subject: =?unicode_escape?q?=5Cud800?=\r\nMessage-ID: <odd@t>\r\n"
        b"Content-Type: text/plain; charset=raw_unicode_escape\r\n\r\n\\udfff marzipan\r\n"
    )
    node = make_single(tmp_path)
    with running(node):
        _two_indexed(node, odd, PLAIN)
        assert search(node, "BODY", "marzipan") == [1]
        assert search(node, "BODY", "sweet") == [2]
        log = (node.workdir / f"{node.name}.log").read_text()
    assert "Traceback" not in log, log[-3000:]
