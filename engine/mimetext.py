"""Text in a message, as the full-text index, IMAP and Sieve read it: where
a part's header ends, a MIME charset name to a Python text codec, bytes to
text, RFC 2047 encoded words to text. Pure functions, no store: the one engine module the protocol cores may
import (tests/test_layers.py).

None of these raises on what a sender wrote. Python knows many names that
are not text encodings (``base64``, ``zlib``, ``rot13``, ``hex``) or that
decode only strictly (``idna``, ``punycode``) or never (``undefined``); a
charset naming one of them, or none Python knows, reads as UTF-8 with
replacement characters, as a charset that is merely unknown always did. One
such header used to fail a delivery through a Sieve script with a 451, for
as long as the sending MTA retried.

No text that comes out holds a lone surrogate (U+D800-U+DFFF): some text
codecs make them from what a sender wrote (``unicode_escape`` and
``raw_unicode_escape`` from ``\\ud800``, ``utf-7`` from ``+2AA-``), and no
UTF-8 encoder takes one: the full-text index's insert failed, and with it
every later message's, for good. Each becomes U+FFFD.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from typing import Final

__all__ = ["body_start", "decode_text", "decode_words", "text_codec"]

FALLBACK: Final = "utf-8"


def body_start(data: bytes, start: int = 0, end: int | None = None) -> int:
    """Where the body of the part ``data[start:end]`` begins: after the first
    empty line (RFC 5322 2.1; CRLF or a bare LF), right away when the part
    starts with one (an empty header), at ``end`` when it has none (all
    header)."""
    stop = len(data) if end is None else end
    if data.startswith(b"\r\n", start, stop):
        return start + 2
    if data.startswith(b"\n", start, stop):
        return start + 1
    crlf = data.find(b"\r\n\r\n", start, stop)
    # A bare-LF empty line counts only before the first CRLF one: looked for
    # there only (a part nested fifty deep is not scanned fifty times over).
    lf = data.find(b"\n\n", start, stop if crlf < 0 else crlf + 1)
    if lf >= 0:
        return lf + 2
    return crlf + 4 if crlf >= 0 else stop


_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def text_codec(charset: str | None) -> str:
    """The Python codec for a MIME ``charset``: UTF-8 when there is none, when
    Python does not know it, when it names no text encoding, and for US-ASCII
    (mail that says ASCII and is not is common; UTF-8 reads ASCII). A
    language suffix (RFC 2231 5, ``utf-8*en``) and quotes are dropped."""
    if not charset:
        return FALLBACK
    name = charset.strip().strip('"').partition("*")[0]
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return FALLBACK
    if not info._is_text_encoding or info.name == "ascii":
        return FALLBACK
    return info.name


def decode_text(data: bytes, charset: str | None) -> str:
    """``data`` as text in ``charset`` (see :func:`text_codec`), bytes that
    are not in it as U+FFFD; a codec that refuses replacement reads as UTF-8."""
    try:
        text = data.decode(text_codec(charset), "replace")
    except (LookupError, UnicodeError, ValueError):
        return data.decode(FALLBACK, "replace")  # never a surrogate
    # One C scan; the substitution only for the rare text that has one.
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


# -- RFC 2047 encoded words (RFC 2047 6) ------------------------------------------------------

_WORD: Final = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")
_Q_HEX: Final = re.compile(rb"=([0-9A-Fa-f]{2})")


def _word_bytes(encoding: str, text: str) -> bytes | None:
    """An encoded word's bytes; None when its base64 is not valid."""
    if encoding in "bB":
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            return None
    data = text.replace("_", " ").encode("latin-1", "replace")
    return _Q_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), data)


def decode_words(text: str) -> str:
    """``text`` with its RFC 2047 encoded words decoded.

    White space between two encoded words is dropped, white space next to
    plain text is kept (RFC 2047 6.2); adjacent words in one charset are
    decoded together, so a character split across two words survives. A
    word that is not valid base64 stays as it was sent.
    """
    if "=?" not in text:
        return text
    out: list[str] = []
    pending = b""
    pending_charset = ""
    pos = 0
    after_word = False

    def flush() -> None:
        nonlocal pending, pending_charset
        if pending_charset:
            out.append(decode_text(pending, pending_charset))
        pending, pending_charset = b"", ""

    for match in _WORD.finditer(text):
        gap = text[pos : match.start()]
        data = _word_bytes(match.group(2), match.group(3))
        if data is None:
            continue  # left in the text: the next gap starts before it
        if not (after_word and gap.strip(" \t\r\n") == ""):
            flush()
            out.append(gap)
        charset = text_codec(match.group(1))
        if charset != pending_charset:
            flush()
            pending_charset = charset
        pending += data
        pos = match.end()
        after_word = True
    flush()
    out.append(text[pos:])
    return "".join(out)
