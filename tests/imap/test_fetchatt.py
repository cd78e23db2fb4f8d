"""FETCH items: macros, simple items, sections, partials, response names."""

from __future__ import annotations

import pytest

from peerd.protocols.imap.fetchatt import (
    BinarySection,
    BodySection,
    Item,
    SectionKind,
    parse_fetch_att,
    parse_fetch_atts,
    response_name,
    sets_seen,
)
from peerd.protocols.imap.parser import tokenize
from peerd.protocols.imap.responses import CommandError


def atts(text: bytes) -> tuple[object, ...]:
    [arg] = tokenize(text)
    return parse_fetch_atts(arg)


def test_macros_expand_per_rfc3501() -> None:
    assert atts(b"ALL") == (Item.FLAGS, Item.INTERNALDATE, Item.RFC822_SIZE, Item.ENVELOPE)
    assert atts(b"fast") == (Item.FLAGS, Item.INTERNALDATE, Item.RFC822_SIZE)
    assert atts(b"FULL")[-1] is Item.BODY


def test_simple_items() -> None:
    names = b"(FLAGS UID INTERNALDATE RFC822 RFC822.HEADER RFC822.TEXT RFC822.SIZE ENVELOPE BODY BODYSTRUCTURE MODSEQ)"
    assert set(atts(names)) == set(Item)


@pytest.mark.parametrize(
    ("text", "section"),
    [
        ("BODY[]", BodySection()),
        ("body.peek[]", BodySection(peek=True)),
        ("BODY[1.2]", BodySection((1, 2))),
        ("BODY[HEADER]", BodySection(kind=SectionKind.HEADER)),
        ("BODY[TEXT]<0.2048>", BodySection(kind=SectionKind.TEXT, partial=(0, 2048))),
        ("BODY[1.2.HEADER]", BodySection((1, 2), SectionKind.HEADER)),
        ("BODY[3.MIME]", BodySection((3,), SectionKind.MIME)),
        ("BODY[4.2.TEXT]", BodySection((4, 2), SectionKind.TEXT)),
        (
            'BODY.PEEK[HEADER.FIELDS (Subject "X-Spam-Flag")]',
            BodySection((), SectionKind.HEADER_FIELDS, ("Subject", "X-Spam-Flag"), peek=True),
        ),
        (
            "BODY[1.HEADER.FIELDS.NOT (RECEIVED)]<10.5>",
            BodySection((1,), SectionKind.HEADER_FIELDS_NOT, ("RECEIVED",), (10, 5)),
        ),
    ],
)
def test_sections(text: str, section: BodySection) -> None:
    assert parse_fetch_att(text) == section
    assert atts(text.encode()) == (section,)


@pytest.mark.parametrize(
    "text",
    [
        "BODY[",
        "BODY[0]",
        "BODY[1.]",
        "BODY[.1]",
        "BODY[01]",
        "BODY[MIME]",
        "BODY[HEADER.FIELDS]",
        "BODY[HEADER.FIELDS ()]",
        "BODY[HEADER (FROM)]",
        "BODY[HEADER.FIELDS (FR:OM)]",
        "BODY[BOGUS]",
        "BODY[]<5>",
        "BODY[]<0.0>",
        "BODY[]<a.b>",
        "BODY[]x",
        "BODY.PEEK",
        "BINARY[1.HEADER]",  # RFC 3516 5: part numbers only
        "BINARY[0]",
        "BINARY.SIZE[1]<0.5>",
        "X-GM-MSGID",
    ],
)
def test_bad_items_are_refused(text: str) -> None:
    with pytest.raises(CommandError):
        parse_fetch_att(text)


def test_macros_only_alone_and_lists_not_empty() -> None:
    with pytest.raises(CommandError, match="alone"):
        atts(b"(FLAGS ALL)")
    with pytest.raises(CommandError):
        atts(b"()")
    with pytest.raises(CommandError):
        atts(b'"FLAGS"')


def test_duplicates_are_dropped_in_order() -> None:
    assert atts(b"(UID FLAGS UID)") == (Item.UID, Item.FLAGS)


def test_response_names_follow_rfc3501_7_4_2() -> None:
    assert response_name(Item.RFC822_SIZE) == b"RFC822.SIZE"
    assert response_name(parse_fetch_att("BODY.PEEK[HEADER.FIELDS (SUBJECT)]<0.100>")) == (
        b"BODY[HEADER.FIELDS (SUBJECT)]<0>"
    )
    assert response_name(parse_fetch_att("body[1.2.mime]")) == b"BODY[1.2.MIME]"
    assert response_name(parse_fetch_att("BODY[]")) == b"BODY[]"
    # quoted names come back as atoms when they can be
    assert response_name(parse_fetch_att('BODY[HEADER.FIELDS.NOT ("X-Y" To)]')) == (
        b"BODY[HEADER.FIELDS.NOT (X-Y To)]"
    )


def test_which_items_set_seen() -> None:
    assert sets_seen([parse_fetch_att("BODY[TEXT]")])
    assert sets_seen([Item.RFC822]) and sets_seen([Item.RFC822_TEXT])
    assert not sets_seen([parse_fetch_att("BODY.PEEK[]"), Item.RFC822_HEADER, Item.FLAGS])


def test_binary_items() -> None:
    # RFC 3516 4: BINARY[part]<partial>, BINARY.PEEK, BINARY.SIZE, and the
    # names their answers carry.
    assert parse_fetch_att("BINARY[1.2]<5.10>") == BinarySection((1, 2), (5, 10))
    assert parse_fetch_att("binary.peek[]") == BinarySection((), None, peek=True)
    size = parse_fetch_att("BINARY.SIZE[3]")
    assert size == BinarySection((3,), None, peek=True, size=True)
    assert response_name(parse_fetch_att("BINARY.PEEK[1]<5.10>")) == b"BINARY[1]<5>"
    assert response_name(size) == b"BINARY.SIZE[3]"
    assert sets_seen([parse_fetch_att("BINARY[1]")])
    assert not sets_seen([size, parse_fetch_att("BINARY.PEEK[1]")])
