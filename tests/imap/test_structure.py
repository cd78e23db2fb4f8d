"""BODY[section] from typed sections, without sockets (RFC 3501 6.4.5)."""

from __future__ import annotations

import pytest

from peerd.protocols.imap.fetchatt import SectionKind
from peerd.protocols.imap.structure import decoded_header, parse, section

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
