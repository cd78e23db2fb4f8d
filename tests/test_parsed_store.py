"""What the store keeps of a message for IMAP (engine.parsed, migration 0012_sortcache)
gives the same answers as parsing the bytes.

- FETCH ENVELOPE, BODYSTRUCTURE and BODY rendered from rows read back from the
  store (SQLite and PostgreSQL) are byte-identical to the same FETCH rendered
  from the bytes, and to the rendering written out here as the parser does
  it, on a corpus of tricky MIME.
- SORT and THREAD over sort keys read back from their stored form equal a
  plain comparison sort and RFC 5256's REFERENCES written plainly (the
  references in tests/imap), over records built from the bytes (Hypothesis).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from functools import partial

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from engine import accounts, mailbox, mailview, parsed
from engine import messages as messages_
from engine.passwords import MIN_LN, hash_password
from engine.spool import guid_of
from engine.store import Store
from peerd.protocols.imap import structure
from peerd.protocols.imap.fetchatt import parse_fetch_atts
from peerd.protocols.imap.fetchreply import StructureCache, render_fetch
from peerd.protocols.imap.parsed import PARSE_VERSION, parse_message
from peerd.protocols.imap.sort import (
    Criterion,
    SortItem,
    SortKey,
    build_record,
    loads_joined,
    loads_many,
    sort,
)
from peerd.protocols.imap.thread import Algorithm, render, thread_response
from peerd.protocols.imap.tokens import tokenize
from tests.example_counts import examples
from tests.imap.test_sort import reference_sort
from tests.imap.test_thread import rfc_references

CORPUS = [
    # message/rfc822 inside multipart/mixed, itself multipart/alternative.
    b"From: a@example.test\r\nSubject: nested\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="o"\r\n\r\n'
    b"--o\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    b"--o\r\nContent-Type: message/rfc822\r\n\r\n"
    b"From: b@example.test\r\nSubject: inner\r\n"
    b"Content-Type: multipart/alternative; boundary=i\r\n\r\n"
    b"--i\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
    b"--i\r\nContent-Type: message/rfc822\r\n\r\nSubject: twice\r\n\r\ndeep\r\n"
    b"--i--\r\n\r\n--o--\r\n",
    # A folded boundary parameter and RFC 2231 continuations.
    b"Subject: folded\r\nContent-Type: multipart/mixed;\r\n"
    b' boundary="foo\r\n bar"\r\n\r\n'
    b'--foo bar\r\nContent-Type: application/octet-stream;\r\n name*0="long ";\r\n'
    b' name*1="name.bin"\r\nContent-Disposition: attachment;\r\n\tfilename="x.bin"\r\n'
    b"Content-Transfer-Encoding: base64\r\nContent-Language: en, fr\r\n"
    b"Content-Location: http://x.test/a\r\nContent-MD5: abc\r\n\r\nAAAA\r\n--foo bar--\r\n",
    # Address groups, an empty group, encoded words in names and subject.
    b"From: =?UTF-8?B?w6lsw6g=?= <e@example.test>\r\n"
    b'To: group: g1@d1.org, "G Two" <g2@d2.org>;, undisclosed-recipients:;\r\n'
    b"Cc: =?ISO-8859-1?Q?Andr=E9?= <andre@example.test>, (comment) c@x.test\r\n"
    b"Bcc: <@route:d@example.test>\r\nReply-To: r@example.test\r\n"
    b"Subject: =?UTF-8?Q?Re=3A_caf=C3=A9?= =?UTF-8?Q?_au_lait?=\r\n"
    b"Date: Tue, 06 Jan 2026 08:00:00 +0100\r\nIn-Reply-To: <x@y>\r\n"
    b'Message-ID: <id"q@t>\r\n\r\nbody\r\n',
    # Broken MIME: no closing boundary, 8-bit header bytes, no blank line.
    b"Subject: caf\xc3\xa9 \xe9t\xe9\r\nContent-Type: multipart/related; boundary=b\r\n\r\n"
    b'--b\r\nContent-Type: text/html; charset="utf-8"; format=flowed\r\n\r\n<p>x</p>\r\n'
    b"--b\r\nContent-Type: image/png\r\nContent-ID: <img@x>\r\n"
    b"Content-Description: a picture\r\n\r\n\x89PNG",
    b"Subject: only a header\r\nX-Nothing: here",
    b"\r\nno header at all\r\n",
    b"Content-Type: text/plain; charset=iso-8859-1\nSubject: bare LF\n\nline\nline\n",
    b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\nContent-Type: message/rfc822\r\n\r\n"
    b"Subject: deeper\r\n\r\nend\r\n",
]


def test_a_mailboxs_stored_sort_keys_come_in_one_row_each_beside_its_guid(
    store: Store,
) -> None:
    """parsed.mailbox_sortkeys (a SORT's first run reads a whole mailbox's
    keys as one aggregated row): each live record's keys beside its GUID, on
    SQLite and PostgreSQL; expunged records, other mailboxes' records and
    rows of another parser version are left out, a range of UIDs gives
    its own, and an empty mailbox gives nothing."""
    store.write_sync(lambda s: accounts.create_account(s, "alice", password_hash=PW))
    store.write_sync(lambda s: mailbox.create_mailbox(s, accounts.get_account(s, "alice"), "Other"))
    messages_in = {"INBOX": CORPUS[:6], "Other": CORPUS[6:]}
    rows = []
    for box, raws in messages_in.items():
        for raw in raws:
            guid, _ = store.spool.put(raw)
            p = parse_message(raw)
            rows.append(
                parsed.Row(guid, PARSE_VERSION, p.sortkeys, p.envelope, p.bodystructure, p.body)
            )

            def add(s: Session, box: str = box, guid: str = guid, size: int = len(raw)) -> None:
                account = accounts.get_account(s, "alice")
                target = mailbox.get_mailbox(s, account, box)
                messages_.append(
                    s, account, target, guid=guid, size=size, flags=(), internaldate=NOW
                )

            store.write_sync(add)
    # The last INBOX message's row is another parser's: missing, as unparsed.
    rows[5] = dataclasses.replace(rows[5], version=PARSE_VERSION + 1)
    store.write_sync(lambda s: parsed.put(s, rows))

    def box_id(name: str) -> int:
        def find(s: Session) -> int:
            return mailbox.get_mailbox(s, accounts.get_account(s, "alice"), name).id

        return store.read_sync(find)

    inbox = box_id("INBOX")
    store.write_sync(lambda s: mailview.expunge(s, accounts.get_account(s, "alice"), inbox, [1]))
    keys = store.read_sync(lambda s: parsed.mailbox_sortkeys(s, PARSE_VERSION, inbox))
    live = [guid_of(raw) for raw in CORPUS[1:5]]
    assert sorted(keys.guids) == sorted(live)
    by_guid = dict(zip(keys.guids, loads_joined(keys.joined), strict=True))
    assert by_guid == {guid_of(raw): build_record(raw) for raw in CORPUS[1:5]}
    # A range of UIDs (INBOX's records 2-6 hold CORPUS[1:6]), and the parts
    # of several ranges joined: the same keys.
    middle = store.read_sync(lambda s: parsed.mailbox_sortkeys(s, PARSE_VERSION, inbox, (3, 4)))
    assert sorted(middle.guids) == sorted(guid_of(raw) for raw in CORPUS[2:4])
    parts = [
        store.read_sync(
            partial(parsed.mailbox_sortkeys, version=PARSE_VERSION, mailbox_id=inbox, uids=run)
        )
        for run in [(1, 2), (3, 3), (4, 4), (5, 9)]
    ]
    whole = parsed.SortKeys.joined_parts(parts)
    assert dict(zip(whole.guids, loads_joined(whole.joined), strict=True)) == by_guid
    other = store.read_sync(lambda s: parsed.mailbox_sortkeys(s, PARSE_VERSION, box_id("Other")))
    assert dict(zip(other.guids, loads_joined(other.joined), strict=True)) == {
        guid_of(raw): build_record(raw) for raw in CORPUS[6:]
    }
    store.write_sync(lambda s: mailbox.create_mailbox(s, accounts.get_account(s, "alice"), "Empty"))
    empty = store.read_sync(lambda s: parsed.mailbox_sortkeys(s, PARSE_VERSION, box_id("Empty")))
    assert empty == parsed.SortKeys([], b"") and loads_joined(empty.joined) == []


@dataclass(frozen=True, slots=True)
class Rec:
    uid: int
    guid: str
    size: int
    flags: str = ""
    modseq: int = 1
    internaldate: dt.datetime = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


PW = hash_password("pw", MIN_LN)
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

ITEMS = list(parse_fetch_atts(tokenize(b"(UID ENVELOPE BODYSTRUCTURE BODY)")[0]))


def old_rendering(uid: int, raw: bytes) -> bytes:
    """The FETCH response as the parser renders it straight from the bytes."""
    part = structure.parse(raw)
    return (
        b"* %d FETCH (UID %d ENVELOPE " % (uid, uid)
        + structure.envelope(part)
        + b" BODYSTRUCTURE "
        + structure.bodystructure(part, True)
        + b" BODY "
        + structure.bodystructure(part, False)
        + b")\r\n"
    )


def test_structures_from_the_store_are_byte_identical(store: Store) -> None:
    rows = []
    for raw in CORPUS:
        p = parse_message(raw)
        rows.append(
            parsed.Row(guid_of(raw), PARSE_VERSION, p.sortkeys, p.envelope, p.bodystructure, p.body)
        )
    store.write_sync(lambda s: parsed.put(s, rows))
    guids = [guid_of(raw) for raw in CORPUS]
    stored = store.read_sync(lambda s: parsed.structures(s, PARSE_VERSION, guids))
    assert set(stored) == set(guids)
    # Another parser version's rows count as missing.
    assert store.read_sync(lambda s: parsed.structures(s, PARSE_VERSION + 1, guids)) == {}
    from_store = StructureCache()
    from_store.put_many(stored)
    assert from_store.missing(guids) == []

    def no_bytes(guid: str) -> bytes:
        raise AssertionError("the stored structures need no bytes")

    for n, raw in enumerate(CORPUS, 1):
        rec = Rec(n, guid_of(raw), len(raw))
        served = render_fetch(n, rec, ITEMS, no_bytes, from_store)
        parsed_now = render_fetch(n, rec, ITEMS, {rec.guid: raw}.__getitem__, StructureCache())
        assert served == parsed_now == old_rendering(n, raw), raw
    # The sort keys read back are the records built from the bytes.
    keys = store.read_sync(lambda s: parsed.sortkeys(s, PARSE_VERSION, guids))
    assert loads_many(keys[g] for g in guids) == [build_record(raw) for raw in CORPUS]
    store.write_sync(lambda s: parsed.forget(s, guids[:2]))
    assert set(store.read_sync(lambda s: parsed.sortkeys(s, PARSE_VERSION, guids))) == set(
        guids[2:]
    )


# -- SORT and THREAD over stored keys (Hypothesis) -------------------------------------------

_IDS = [f"<m{i}@t>" for i in range(6)]
_SUBJECTS = st.lists(
    st.sampled_from(
        [
            "Re: ",
            "RE: ",
            "Fwd: ",
            "[list] ",
            "plans",
            "Plans",
            "lunch",
            " (fwd)",
            "=?UTF-8?Q?caf=C3=A9?=",
        ]
    ),
    max_size=4,
).map("".join)
_FROMS = st.sampled_from(
    [
        "",
        "From: zed@example.test\r\n",
        'From: "Amy" <amy@example.test>\r\n',
        "From: =?UTF-8?Q?=C3=89mile?= <emile@example.test>\r\n",
        "From: group: b@example.test;\r\n",
        "From: BOB@Example.test\r\n",
    ]
)
_DATES = st.sampled_from(
    [
        "",
        "Date: Mon, 05 Jan 2026 10:00:00 +0000\r\n",
        "Date: Mon, 05 Jan 2026 12:00:00 +0200\r\n",
        "Date: Sun, 04 Jan 2026 23:30:00 -0500\r\n",
        "Date: garbage\r\n",
    ]
)


@st.composite
def _message(draw: st.DrawFn) -> bytes:
    header = draw(_FROMS) + draw(_DATES) + f"Subject: {draw(_SUBJECTS)}\r\n"
    if draw(st.booleans()):
        header += f"Message-ID: {draw(st.sampled_from(_IDS))}\r\n"
    refs = draw(st.lists(st.sampled_from(_IDS), max_size=3))
    if refs:
        header += f"References: {' '.join(refs)}\r\n"
    elif draw(st.booleans()):
        header += f"In-Reply-To: {draw(st.sampled_from(_IDS))}\r\n"
    return f"{header}\r\nbody\r\n".encode()


_mailboxes = st.lists(
    st.tuples(_message(), st.integers(1_767_000_000, 1_767_700_000)), min_size=1, max_size=10
)
_criteria = st.lists(
    st.builds(Criterion, st.sampled_from(list(SortKey)), st.booleans()), min_size=1, max_size=3
).map(tuple)


def _items(mailbox: list[tuple[bytes, int]], stored: bool) -> list[SortItem]:
    if stored:
        records = loads_many(parse_message(raw).sortkeys for raw, _ in mailbox)
    else:
        records = [build_record(raw) for raw, _ in mailbox]
    return [
        SortItem(n, arrival, len(raw), record)
        for n, ((raw, arrival), record) in enumerate(zip(mailbox, records, strict=True), 1)
    ]


@settings(max_examples=examples(300), deadline=None)
@given(_mailboxes, _criteria)
def test_sort_and_thread_over_stored_keys_match_the_references(
    mailbox: list[tuple[bytes, int]], criteria: tuple[Criterion, ...]
) -> None:
    stored, from_bytes = _items(mailbox, True), _items(mailbox, False)
    assert sort(stored, criteria) == reference_sort(from_bytes, criteria)
    assert thread_response(stored, Algorithm.REFERENCES) == render(rfc_references(from_bytes))
    assert thread_response(stored, Algorithm.ORDEREDSUBJECT) == thread_response(
        from_bytes, Algorithm.ORDEREDSUBJECT
    )
