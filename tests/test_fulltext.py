"""Full-text extraction for SEARCH BODY/TEXT, and the index prototypes: SQLite FTS5
(trigram) and PostgreSQL pg_trgm give exactly the unindexed path's answers on
generated mail."""

from __future__ import annotations

import base64
import quopri
import sqlite3
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.fulltext import (
    MAX_BODY,
    MAX_DEPTH,
    MAX_PARTS,
    MIN_INDEXED,
    PG_DDL,
    SQLITE_DDL,
    SQLITE_SHORT,
    Searchable,
    extract,
    fold,
    html_text,
    like_pattern,
    matches,
    sqlite_match,
)
from tests.example_counts import examples

# -- extraction -------------------------------------------------------------------------------


def test_text_parts_are_decoded_and_attachments_skipped() -> None:
    raw = (
        b"From: =?utf-8?q?J=C3=B6rg?= <j@example.org>\r\n"
        b"Subject: =?iso-8859-1?q?r=E9union?=\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"preamble words\r\n"
        b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9 au lait\r\n"
        b"--b1\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode("Grüße".encode("latin-1"))
        + b"\r\n--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode(b"secret pdf words")
        + b"\r\n--b1--\r\nepilogue words\r\n"
    )
    doc = extract(raw)
    assert doc.body == "café au lait\ngrüsse"  # folded: ß is ss
    assert "jörg" in doc.header and "réunion" in doc.header  # RFC 2047 decoded
    assert "=?utf-8?q?j=c3=b6rg?=" in doc.header  # and the header as sent
    assert doc.complete
    assert matches(doc, "BODY", "CAFÉ AU")
    assert matches(doc, "BODY", "GRÜSSE") and matches(doc, "BODY", "grüße")
    assert not matches(doc, "BODY", "secret")  # a non-text attachment
    assert not matches(doc, "BODY", "preamble") and not matches(doc, "BODY", "epilogue")
    assert not matches(doc, "BODY", "réunion") and matches(doc, "TEXT", "Réunion")


def test_html_is_rendered_as_text() -> None:
    html = (
        "<html><head><style>p { color: red }</style></head><body>"
        "<p>Fish &amp; chips</p><script>alert('no')</script>"
        "<div>two<br>lines</div>caf&eacute; &#x263A;</body></html>"
    )
    assert html_text(html) == "Fish & chips\ntwo\nlines\ncafé ☺"
    raw = b"Content-Type: text/html; charset=utf-8\r\n\r\n" + html.encode()
    doc = extract(raw)
    assert matches(doc, "BODY", "fish & chips")
    assert not matches(doc, "BODY", "&amp;") and not matches(doc, "BODY", "alert")
    assert not matches(doc, "BODY", "<p>")


def test_attached_messages_are_recursed() -> None:
    inner = (
        b"Subject: =?utf-8?q?inner_=C3=A9t=C3=A9?=\r\n"
        b'Content-Type: multipart/alternative; boundary="in"\r\n\r\n'
        b"--in\r\nContent-Type: text/plain\r\n\r\nplain inner\r\n"
        b"--in\r\nContent-Type: text/html\r\n\r\n<b>html inner</b>\r\n--in--\r\n"
    )
    raw = (
        b'Subject: outer\r\nContent-Type: multipart/mixed; boundary="out"\r\n\r\n'
        b"--out\r\nContent-Type: text/plain\r\n\r\nouter text\r\n"
        b"--out\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--out--\r\n"
    )
    doc = extract(raw)
    assert (
        doc.body
        == 'outer text\nsubject: inner été\ncontent-type: multipart/alternative; boundary="in"\nplain inner\nhtml inner'
    )
    assert matches(doc, "BODY", "inner été")  # the inner header is in the outer body
    assert not matches(doc, "BODY", "outer\n\nplain")


def test_digest_parts_default_to_messages() -> None:
    raw = (
        b'Content-Type: multipart/digest; boundary="d"\r\n\r\n'
        b"--d\r\n\r\nSubject: first\r\n\r\nbody one\r\n--d--\r\n"
    )
    assert extract(raw).body == "subject: first\nbody one"


def test_a_multipart_without_parts_is_read_as_text() -> None:
    for ctype in (b"multipart/mixed", b'multipart/mixed; boundary="nowhere"'):
        raw = b"Content-Type: " + ctype + b"\r\n\r\nthe body words\r\n"
        assert extract(raw).body == "the body words\r\n"


def test_charsets_that_lie_or_are_unknown() -> None:
    utf8 = "naïve".encode()
    for charset in (b"us-ascii", b"x-unknown", b"rot13", b'"utf-8"'):
        raw = b"Content-Type: text/plain; charset=" + charset + b"\r\n\r\n" + utf8
        assert extract(raw).body == "naïve", charset
    raw = b"Content-Type: text/plain; charset=utf-8\r\n\r\nbad \xff byte"
    assert extract(raw).body == "bad \ufffd byte"
    assert fold("a\x00b") == "a\ufffdb"


def test_caps_bound_the_work_and_say_so() -> None:
    # Many parts.
    many = b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n' + b"".join(
        b"--m\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(MAX_PARTS * 4)
    )
    start = time.thread_time()
    doc = extract(many + b"--m--\r\n")
    assert not doc.complete and doc.body.count("part") == MAX_PARTS - 1
    # Deep nesting.
    deep = b"Content-Type: text/plain\r\n\r\ncore words"
    for level in range(MAX_DEPTH * 20):
        deep = (
            b'Content-Type: multipart/mixed; boundary="n%d"\r\n\r\n--n%d\r\n' % (level, level)
            + deep
            + b"\r\n--n%d--\r\n" % level
        )
    doc = extract(deep)
    assert not doc.complete and "core" not in doc.body
    # A huge text part is cut at MAX_BODY characters.
    huge = b"Content-Type: text/plain\r\n\r\n" + b"word " * (MAX_BODY // 4)
    doc = extract(huge)
    assert not doc.complete and len(doc.body) == MAX_BODY
    # Hostile HTML.
    tags = b"Content-Type: text/html\r\n\r\n" + b"<div><span a='" * 50_000
    extract(tags)
    assert time.thread_time() - start < 30


# -- generated mail ---------------------------------------------------------------------------

WORDS = [
    "needle", "Needle", "NEEDLE", "straße", "STRASSE", "café", "CAFÉ", "hay", "a", "ab",
    "x%y", "x_y", 'q"uote', "{col}:", "*^-", "ǅ", "İstanbul", "ﬁle", "ΣΊΣΥΦΟΣ", "😀",
    "日本語", "e\u0301", "back\\slash", "tab\there",
]  # fmt: skip

words = st.lists(st.sampled_from(WORDS), min_size=0, max_size=8).map(" ".join)


@st.composite
def leaf(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["text/plain", "text/html", "application/octet-stream"]))
    charset = draw(st.sampled_from(["utf-8", "iso-8859-1", "us-ascii", "x-unknown"]))
    encoding = draw(st.sampled_from(["8bit", "base64", "quoted-printable"]))
    text = draw(words)
    if kind == "text/html":
        text = f"<p>{text.replace('&', '&amp;')}</p><br><b>{draw(words)}</b>"
    data = text.encode(charset if charset == "iso-8859-1" else "utf-8", "replace")
    if encoding == "base64":
        body = base64.encodebytes(data)
    elif encoding == "quoted-printable":
        body = quopri.encodestring(data)
    else:
        body = data
    return (
        f"Content-Type: {kind}; charset={charset}\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n"
    ).encode() + body.replace(b"\n", b"\r\n")


def message(depth: int) -> st.SearchStrategy[bytes]:
    def build(subject: str, parts: list[bytes], boundary: int) -> bytes:
        encoded = "=?utf-8?b?" + base64.b64encode(subject.encode()).decode() + "?="
        head = f"Subject: {encoded}\r\nFrom: {subject[:10]} <a@b>\r\n".encode()
        if len(parts) == 1:
            return head + parts[0]
        b = f"b{depth}x{boundary}".encode()
        return (
            head
            + b'Content-Type: multipart/mixed; boundary="'
            + b
            + b'"\r\n\r\n'
            + b"".join(b"--" + b + b"\r\n" + p + b"\r\n" for p in parts)
            + b"--"
            + b
            + b"--\r\n"
        )

    inner: st.SearchStrategy[bytes] = leaf()
    if depth > 0:
        inner = leaf() | message(depth - 1).map(
            lambda m: b"Content-Type: message/rfc822\r\n\r\n" + m
        )
    return st.builds(build, words, st.lists(inner, min_size=1, max_size=3), st.integers(0, 9))


mailboxes = st.lists(message(2), min_size=1, max_size=6)


def needles(docs: list[Searchable]) -> st.SearchStrategy[str]:
    texts = [d.header for d in docs] + [d.body for d in docs]

    @st.composite
    def cut(draw: st.DrawFn) -> str:
        text = draw(st.sampled_from(texts))
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 12)))
        piece = text[i:j]
        return piece.upper() if draw(st.booleans()) else piece

    return st.one_of(
        cut(),
        st.sampled_from(WORDS),
        st.text(st.sampled_from("aeé ß\"'%_\\:{}*😀\n"), max_size=4),
    )


def sqlite_index(docs: list[Searchable]) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    for statement in SQLITE_DDL:
        db.execute(statement)
    for n, doc in enumerate(docs):
        db.execute("INSERT INTO fulltext_docs (id, guid, version) VALUES (?, ?, 1)", (n, f"g{n}"))
        db.execute(
            "INSERT INTO fulltext (rowid, header, body) VALUES (?, ?, ?)", (n, doc.header, doc.body)
        )
    return db


def sqlite_search(db: sqlite3.Connection, key: str, string: str) -> list[int]:
    match = sqlite_match(key, string)  # type: ignore[arg-type]
    if match is None:
        rows = db.execute(SQLITE_SHORT[key], {"needle": fold(string)})
    else:
        rows = db.execute("SELECT rowid FROM fulltext WHERE fulltext MATCH ?", (match,))
    return sorted(r[0] for r in rows)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), raws=mailboxes)
def test_sqlite_trigram_index_matches_the_unindexed_path(
    data: st.DataObject, raws: list[bytes]
) -> None:
    docs = [extract(raw) for raw in raws]  # extract() is pure: once per message, not per needle
    db = sqlite_index(docs)
    strings = needles(docs)
    for _ in range(8):
        string = data.draw(strings)
        for key in ("BODY", "TEXT"):
            expected = [n for n, doc in enumerate(docs) if matches(doc, key, string)]
            assert sqlite_search(db, key, string) == expected, (key, string)


def test_sqlite_trigram_short_and_long_strings() -> None:
    docs = [extract(b"\r\n" + t.encode()) for t in ("Straße 😀😀 end", "strasse", "ab", "")]
    db = sqlite_index(docs)
    assert sqlite_match("BODY", "ab") is None and MIN_INDEXED == 3
    assert sqlite_search(db, "BODY", "STRASSE") == [0, 1]  # full case folding
    assert sqlite_search(db, "BODY", "😀😀") == [0]  # two code points: the scan
    assert sqlite_search(db, "BODY", "ab") == [2]
    assert sqlite_search(db, "BODY", "") == [0, 1, 2, 3]  # "" is in every text
    assert sqlite_search(db, "TEXT", 'q"') == []


def test_sqlite_phrases_and_scans_are_exact() -> None:
    texts = ["abcd xbcde", "abcde", "a*c", "a?c", "x[y]z", "[*]", "abc", "日本", "x😀y"]
    db = sqlite_index([Searchable("", t) for t in texts])
    # Every trigram of "abcde" is in the first text, not the string itself.
    assert sqlite_search(db, "BODY", "abcde") == [1]
    for short in ("*", "?", "[", "]", "[*", "y]", "日", "😀", "😀y", "%", "_"):
        expected = [n for n, t in enumerate(texts) if short in t]
        assert sqlite_search(db, "BODY", short) == expected, short
    assert sqlite_search(db, "BODY", "a*c") == [2]
    assert sqlite_search(db, "BODY", "[y]") == [4]


# -- PostgreSQL pg_trgm ------------------------------------------------------------------------


@pytest.fixture
def pg(pg_url: str) -> Iterator[object]:
    import psycopg

    conn = psycopg.connect(
        pg_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    )
    try:
        # Migration 0010_fulltext made the tables PG_DDL describes.
        for statement in PG_DDL:
            if statement.startswith("CREATE INDEX"):
                name = statement.split()[2]
                assert conn.execute("SELECT to_regclass(%s)", (name,)).fetchone() == (name,)
        yield conn
    finally:
        conn.close()


@settings(
    max_examples=examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), raws=mailboxes)
def test_pg_trgm_like_matches_the_unindexed_path(
    pg: object, data: st.DataObject, raws: list[bytes]
) -> None:
    import psycopg

    assert isinstance(pg, psycopg.Connection)
    docs = [extract(raw) for raw in raws]
    pg.execute("TRUNCATE fulltext")
    for n, doc in enumerate(docs):
        pg.execute(
            "INSERT INTO fulltext (guid, version, header, body) VALUES (%s, 1, %s, %s)",
            (f"g{n}", doc.header, doc.body),
        )
    pg.execute("SET enable_seqscan = off")  # use the trigram indexes where they can help
    plan = pg.execute(
        "EXPLAIN SELECT guid FROM fulltext WHERE body LIKE %s ESCAPE '\\'",
        (like_pattern("needle"),),
    ).fetchall()
    assert any("ix_fulltext_body_trgm" in line for (line,) in plan)
    strings = needles(docs)
    for _ in range(6):
        string = data.draw(strings)
        pattern = like_pattern(string)
        body = pg.execute(
            "SELECT guid FROM fulltext WHERE body LIKE %s ESCAPE '\\'", (pattern,)
        ).fetchall()
        text = pg.execute(
            "SELECT guid FROM fulltext WHERE header LIKE %s ESCAPE '\\' OR body LIKE %s ESCAPE '\\'",
            (pattern, pattern),
        ).fetchall()
        got_body = sorted(int(g[1:]) for (g,) in body)
        got_text = sorted(int(g[1:]) for (g,) in text)
        assert got_body == [n for n, d in enumerate(docs) if matches(d, "BODY", string)], string
        assert got_text == [n for n, d in enumerate(docs) if matches(d, "TEXT", string)], string
