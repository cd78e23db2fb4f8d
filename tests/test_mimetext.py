"""Charsets a sender may name, read by every part that decodes message text:
the sort keys, SEARCH, Sieve's header and body tests, the full-text index.
A name Python knows as no text encoding, or as one that refuses replacement,
reads as UTF-8; it never raises (tests/test_sieve_service.py delivers such
messages through a real node)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from engine import fulltext, mimetext
from peerd.protocols.imap import sort, structure
from peerd.protocols.sieve.message import Message, body_parts

# Bytes-to-bytes codecs, codecs that decode only strictly or never, a language
# suffix (RFC 2231 5), quotes, a name no codec has.
HOSTILE = (
    "base64",
    "zlib",
    "rot13",
    "hex",
    "uu",
    "bz2",
    "quopri",
    "idna",
    "undefined",
    "punycode",
    '"utf-8"',
    "utf-8*en",
    "x-unknown",
    "\x00",
)


def _message(charset: str) -> bytes:
    return (
        f"Subject: =?{charset}?Q?caf=C3=A9=FF?= =?{charset}?B?/w==?= end\r\n"
        f'Content-Type: text/plain; charset="{charset}"\r\n\r\ncaf\xc3\xa9 \xff body\r\n'
    ).encode("latin-1")


READERS: dict[str, Callable[[bytes], str]] = {
    "imap sort key": lambda raw: sort.build_record(raw).subject,
    "imap search header": lambda raw: structure.decoded_header(structure.parse(raw), "subject"),
    "imap search body": lambda raw: structure.search_text(structure.parse(raw)),
    "sieve header": lambda raw: Message.from_bytes(raw, "a@b", "c@d").values("subject")[0],
    "sieve body": lambda raw: body_parts(raw)[0].text,
    "full-text index": lambda raw: fulltext.extract(raw).header + fulltext.extract(raw).body,
}


@pytest.mark.parametrize("charset", HOSTILE)
@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_reads_a_hostile_charset_as_utf8(reader: str, charset: str) -> None:
    text = READERS[reader](_message(charset))
    assert "caf" in text.lower()  # read, not dropped


def test_encoded_words() -> None:
    assert mimetext.decode_words("=?utf-8?q?caf=C3=A9?= =?utf-8?b?IGF1?=") == "café au"
    assert mimetext.decode_words("a =?iso-8859-1?q?=E9?= b") == "a é b"
    # A character split across two words (RFC 2047 5: should not happen; does).
    assert mimetext.decode_words("=?utf-8?q?=E2=82?= =?utf-8?q?=AC?=") == "€"
    assert mimetext.decode_words("=?utf-8?b?!!!?= kept") == "=?utf-8?b?!!!?= kept"


def test_text_codec_keeps_real_charsets_and_replaces_the_rest() -> None:
    assert mimetext.text_codec("ISO-8859-1") == "iso8859-1"
    assert mimetext.text_codec("utf-8*en") == "utf-8"
    assert mimetext.text_codec("us-ascii") == "utf-8"  # mail that says ASCII and is not
    assert mimetext.text_codec(None) == "utf-8"
    for charset in HOSTILE:
        assert mimetext.text_codec(charset) in ("utf-8", "idna", "undefined", "punycode")
    assert mimetext.decode_text(b"caf\xe9", "latin1") == "café"
    assert mimetext.decode_text(b"\xff", "undefined") == "\ufffd"


# Codecs that decode escapes or UTF-16 code units to lone surrogates, which
# no UTF-8 encoder (SQLite's, PostgreSQL's, an IMAP reply's) takes.
SURROGATES = {
    "unicode_escape": (b"=5Cud800", b"\\ud800 body"),
    "raw-unicode-escape": (b"=5Cudfff", b"\\udfff body"),
    "utf-7": (b"+2AA-", b"+2AA- body"),
}


@pytest.mark.parametrize("charset", sorted(SURROGATES))
@pytest.mark.parametrize("reader", sorted(READERS))
def test_no_reader_gives_a_lone_surrogate(reader: str, charset: str) -> None:
    word, body = SURROGATES[charset]
    raw = b"Subject: caf =?%s?Q?%s?=\r\nContent-Type: text/plain; charset=%s\r\n\r\n%s\r\n" % (
        charset.encode(),
        word,
        charset.encode(),
        body,
    )
    text = READERS[reader](raw)
    assert "caf" in text or "body" in text
    text.encode("utf-8")  # raised UnicodeEncodeError: surrogates not allowed
    assert mimetext.decode_text(body, charset).encode("utf-8")
