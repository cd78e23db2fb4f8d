"""CATENATE's IMAP URLs (RFC 4469 5, RFC 5092): what is taken, what is BADURL."""

from __future__ import annotations

import pytest

from peerd.protocols.imap.caturl import cut, parse_url
from peerd.protocols.imap.fetchatt import SectionKind
from peerd.protocols.imap.responses import CommandError

MESSAGE = b"Subject: s\r\n\r\nbody text\r\n"


def test_path_absolute_and_absolute_urls() -> None:
    url = parse_url("/INBOX;UIDVALIDITY=7/;UID=3/;SECTION=TEXT/;PARTIAL=1.3", "alice")
    assert (url.mailbox, url.uidvalidity, url.uid, url.partial) == ("INBOX", 7, 3, (1, 3))
    assert url.section.kind is SectionKind.TEXT
    assert cut(url, MESSAGE) == b"ody"
    # A percent-encoded UTF-8 mailbox (RFC 5092 6), the whole message.
    url = parse_url("imap://alice@mail.example/Caf%C3%A9/sub/;UID=1", "alice")
    assert (url.mailbox, url.uidvalidity, url.uid) == ("Café/sub", None, 1)
    assert cut(url, MESSAGE) == MESSAGE
    assert parse_url("/inbox/;UID=1", "alice").mailbox == "INBOX"


@pytest.mark.parametrize(
    "text",
    [
        ";UID=1",  # relative: no base here
        "/INBOX",  # no UID
        "/INBOX/;UID=0",
        "imap://bob@mail.example/INBOX/;UID=1",  # another user
        "/INBOX/;UID=1/;SECTION=1.BOGUS",
        "/%FF/;UID=1",  # not UTF-8
        "http://x/INBOX/;UID=1",
    ],
)
def test_bad_urls(text: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_url(text, "alice")
    assert info.value.status == "NO" and info.value.code is not None
    assert info.value.code.startswith(b"BADURL ")


def test_a_missing_section_is_badurl() -> None:
    with pytest.raises(CommandError, match="no such section"):
        cut(parse_url("/INBOX/;UID=1/;SECTION=4", "alice"), MESSAGE)
