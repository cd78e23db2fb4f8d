"""Recipients as LMTP, the socketmap and the routing lookups read them
(``engine.recipients.parse_recipient``), without a store."""

from __future__ import annotations

import pytest

from engine.errors import InvalidArgument
from engine.recipients import parse_recipient

LOCAL = frozenset({"example.test"})


@pytest.mark.parametrize(
    ("address", "candidates", "detail"),
    [
        ("<carol@example.test>", ("carol", "carol@example.test"), None),
        (" <carol+lists@example.test>\t", ("carol", "carol@example.test"), "lists"),
        # A quoted local part is the same mailbox (RFC 5321 4.1.2); its
        # quoted-pairs stand for their characters.
        ('<"carol"@example.test>', ("carol", "carol@example.test"), None),
        ('"carol+x"@example.test', ("carol", "carol@example.test"), "x"),
        ('"c\\arol"@example.test', ("carol", "carol@example.test"), None),
        ('"a@b"@other.test', ("a@b@other.test",), None),
        ("carol@other.test", ("carol@other.test",), None),
    ],
)
def test_addresses_read_as_their_mailbox(
    address: str, candidates: tuple[str, ...], detail: str | None
) -> None:
    recipient = parse_recipient(address, LOCAL)
    assert (recipient.candidates, recipient.detail) == (candidates, detail)


@pytest.mark.parametrize(
    "address",
    [
        "\x85carol@example.test",  # str.strip() took U+0085: it was carol
        "carol\x1f@example.test",
        "<carol\x00@example.test>",
        "ca\x9drol@example.test",
        '""@example.test',
        "",
        "<>",
    ],
)
def test_control_characters_and_empty_mailboxes_are_refused(address: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_recipient(address, LOCAL)
