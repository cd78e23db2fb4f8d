"""BODY[section] from typed sections, without sockets (RFC 3501 6.4.5); the
renderers against what a sender may write in the fields they read."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.pair.parsewalk import row_of
from peerd.protocols.imap.fetchatt import SectionKind
from peerd.protocols.imap.sort import build_record
from peerd.protocols.imap.structure import (
    UnknownEncoding,
    binary_section,
    bodystructure,
    decoded_header,
    decoded_headers,
    envelope,
    parse,
    search_text,
    section,
)
from tests.example_counts import examples

INNER = b"Subject: inner\r\nX-A: 1\r\n\r\ninner body\r\n"
MESSAGE = (
    b"Subject: outer\r\nX-A: 1\r\nX-B: 2\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\npart one\r\n"
    b"--b\r\nContent-Type: message/rfc822\r\n\r\n" + INNER + b"--b--\r\n"
)


@pytest.mark.parametrize(
    ("path", "kind", "fields", "expected"),
    [
        ((), SectionKind.ALL, (), MESSAGE),
        ((), SectionKind.HEADER, (), MESSAGE[: MESSAGE.index(b"\r\n\r\n") + 4]),
        ((), SectionKind.TEXT, (), MESSAGE[MESSAGE.index(b"\r\n\r\n") + 4 :]),
        ((), SectionKind.HEADER_FIELDS, ("x-b", "SUBJECT"), b"Subject: outer\r\nX-B: 2\r\n\r\n"),
        (
            (),
            SectionKind.HEADER_FIELDS_NOT,
            ("Content-Type", "X-A", "X-B"),
            b"Subject: outer\r\n\r\n",
        ),
        ((1,), SectionKind.ALL, (), b"part one"),  # the CRLF before a boundary is the boundary's
        ((1,), SectionKind.MIME, (), b"Content-Type: text/plain\r\n\r\n"),
        ((2,), SectionKind.HEADER, (), b"Subject: inner\r\nX-A: 1\r\n\r\n"),  # the inner message
        ((2,), SectionKind.TEXT, (), b"inner body"),
        ((2,), SectionKind.HEADER_FIELDS, ("subject",), b"Subject: inner\r\n\r\n"),
        ((1,), SectionKind.HEADER, (), None),  # HEADER after a number needs message/rfc822
        ((3,), SectionKind.ALL, (), None),  # no such part
    ],
)
def test_sections(
    path: tuple[int, ...], kind: SectionKind, fields: tuple[str, ...], expected: bytes | None
) -> None:
    assert section(MESSAGE, path, kind, fields) == expected


def test_whole_message_is_returned_unparsed() -> None:
    broken = b"\xff\xfe not a header at all"
    assert section(broken) is broken


@pytest.mark.parametrize(
    ("header", "decoded"),
    [
        # RFC 2047 6.2: white space between an encoded word and text stays,
        # also when the header is folded right there (RFC 5322 2.2.3).
        (b"=?UTF-8?Q?caf=C3=A9?= and\r\n =?UTF-8?B?w7xiZXI=?=", "café and über"),
        (b"=?UTF-8?Q?caf=C3=A9?= and =?UTF-8?B?w7xiZXI=?=", "café and über"),
        # ... and between two encoded words it goes.
        (b"=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),
        (
            b"=?ISO-8859-1?Q?Andr=E9_Pirard?= <andre@example.test>",
            "André Pirard <andre@example.test>",
        ),
        # An unknown charset or bytes not in the charset: read, with replacements.
        (b"x =?bogus?q?a=C3=A9?= y", "x aé y"),
        (b"=?utf-8?q?bad=FF?=", "bad\ufffd"),
        (b"plain, folded\r\n\tonce", "plain, folded\tonce"),
    ],
)
def test_decoded_header(header: bytes, decoded: str) -> None:
    assert decoded_header(parse(b"Subject: " + header + b"\r\n\r\nbody"), "Subject") == decoded


# What a sender may write in the fields the renderers read: RFC 2231
# parameters naming codecs that are no text codecs (idna refuses "replace",
# undefined refuses everything) or holding NUL, 8-bit octets (compat32 then
# gives a Header object, not a str), encoded words and escapes that decode to
# lone surrogates.
_FIELDS = [
    b"Content-Type",
    b"Content-Transfer-Encoding",
    b"Content-Disposition",
    b"Content-ID",
    b"Subject",
    b"From",
    b"Date",
    b"References",
]
_ATOMS = [
    b"text/plain",
    b"multipart/mixed",
    b"message/rfc822",
    b"; charset=",
    b"; charset*=",
    b"; name*=",
    b"; boundary=b",
    b"''",
    b"'en'",
    b"idna",
    b"undefined",
    b"utf-7",
    b"unicode_escape",
    b"utf-8",
    b"\x00",
    b"\xff",
    b"\xe9",
    b"%C3%A9",
    b"%",
    b"=?utf-8?q?a?=",
    b"=?unicode_escape?q?=5Cud800?=",
    b"base64",
    b'"',
    b"<",
    b"@",
    b"\r\n ",
    b"99999999999999999999",
]
_BODIES = [b"hi\r\n", b"--b\r\n\r\nx\r\n--b--\r\n", b"aGk=\r\n", b"Subject: in\r\n\r\nx\r\n"]


def _render_all(raw: bytes) -> None:
    part = parse(raw)
    bodystructure(part)
    bodystructure(part, False)
    envelope(part)
    search_text(part)
    decoded_headers(part)
    build_record(raw)
    row_of("0" * 40, raw)
    for path in ((), (1,), (1, 1)):
        with contextlib.suppress(UnknownEncoding):  # BINARY's own answer
            binary_section(raw, path)


@pytest.mark.parametrize(
    "raw",
    [
        b"Content-Type: text/plain; name*=idna''abc\r\n\r\nhi\r\n",
        b"Content-Type: text/plain; name*=undefined''abc\r\n\r\nhi\r\n",
        b"Content-Disposition: attachment; filename*=idna''x\r\n\r\nhi\r\n",
        b"Content-Type: text/plain; charset*=x\x00''a\r\n\r\nhi\r\n",
        b"Content-Transfer-Encoding: b\xffase64\r\n\r\naGk=\r\n",
    ],
)
def test_what_the_stdlib_raised_on_renders(raw: bytes) -> None:
    """Each raised in BODYSTRUCTURE (and some in SEARCH's text or BINARY):
    the IMAP session failed and the connection dropped at every FETCH."""
    _render_all(raw)


def test_a_parameter_in_a_codec_that_is_no_text_codec_reads_as_utf8() -> None:
    part = parse(b"Content-Type: text/plain; name*=idna''caf%C3%A9; x*=latin-1''%E9\r\n\r\nhi\r\n")
    assert bodystructure(part).startswith(
        b'("TEXT" "PLAIN" ("NAME" {5}\r\ncaf\xc3\xa9 "X" {2}\r\n\xc3\xa9)'
    )


@settings(max_examples=examples(400), deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_FIELDS), st.lists(st.sampled_from(_ATOMS), min_size=1, max_size=8)
        ),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from(_BODIES),
)
def test_no_header_a_sender_writes_makes_a_renderer_raise(
    fields: list[tuple[bytes, list[bytes]]], body: bytes
) -> None:
    _render_all(
        b"".join(name + b": " + b"".join(atoms) + b"\r\n" for name, atoms in fields)
        + b"\r\n"
        + body
    )
