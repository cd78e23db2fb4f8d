"""LIST, LSUB and STATUS responses from names and counts alone."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from peerd.protocols.imap import commands as c
from peerd.protocols.imap.listing import (
    list_responses,
    lsub_responses,
    status_response,
)
from peerd.protocols.imap.parser import CommandReader
from peerd.protocols.imap.responses import CommandError
from peerd.protocols.imap.wildcard import matches

NAMES = ("Archive", "INBOX", "INBOX/2024", "Sent", "work", "work/a", "work/a/b")


def command(text: bytes) -> c.Command:
    reader = CommandReader()
    reader.feed(text + b"\r\n")
    event = reader.next_event()
    assert isinstance(event, c.Command), event
    return event


def listed(text: bytes, subs: tuple[str, ...] = ()) -> tuple[bytes, list[str]]:
    cmd = command(text)
    assert isinstance(cmd, c.List)
    return list_responses(cmd, NAMES, subs)


@pytest.mark.parametrize(
    ("pattern", "name", "hit"),
    [
        ("*", "work/a/b", True),
        ("%", "work/a", False),
        ("work/%", "work/a", True),
        ("work/%", "work/a/b", False),
        ("inbox", "INBOX", True),
        ("INBOX/*", "inbox/2024", True),
        ("Sent", "sent", False),
    ],
)
def test_wildcards(pattern: str, name: str, hit: bool) -> None:
    assert matches("", pattern, name) is hit


def test_list_percent_gives_the_top_level_with_attributes() -> None:
    out, names = listed(b'a LIST "" %', subs=("Sent",))
    assert out == (
        b'* LIST (\\HasNoChildren \\Archive) "/" Archive\r\n'
        b'* LIST (\\HasChildren) "/" INBOX\r\n'
        b'* LIST (\\HasNoChildren \\Sent \\Subscribed) "/" Sent\r\n'
        b'* LIST (\\HasChildren) "/" work\r\n'
    )
    assert names == ["Archive", "INBOX", "Sent", "work"]


def test_an_empty_pattern_asks_for_the_delimiter() -> None:
    assert listed(b'a LIST "" ""') == (b'* LIST (\\Noselect) "/" ""\r\n', [])


def test_recursivematch_lists_unsubscribed_parents_with_childinfo() -> None:
    out, _ = listed(b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" %', subs=("work/a",))
    assert out == b'* LIST (\\HasChildren) "/" work ("CHILDINFO" ("SUBSCRIBED"))\r\n'
    with pytest.raises(CommandError, match="RECURSIVEMATCH"):
        listed(b'a LIST (SPECIAL-USE RECURSIVEMATCH) "" %')


def test_special_use_selection() -> None:
    out, _ = listed(b'a LIST (SPECIAL-USE) "" *')
    assert out == (
        b'* LIST (\\HasNoChildren \\Archive) "/" Archive\r\n'
        b'* LIST (\\HasNoChildren \\Sent) "/" Sent\r\n'
    )


def test_lsub_marks_a_subscription_without_a_mailbox_noselect() -> None:
    cmd = command(b'a LSUB "" *')
    assert isinstance(cmd, c.Lsub)
    assert lsub_responses(cmd, NAMES, ("gone", "work")) == (
        b'* LSUB (\\Noselect \\HasNoChildren) "/" gone\r\n* LSUB (\\HasChildren) "/" work\r\n'
    )


@dataclass(frozen=True, slots=True)
class Counts:
    messages: int = 3
    uidnext: int = 9
    uidvalidity: int = 1700000000
    unseen: int = 1
    highestmodseq: int = 40
    size: int = 3000
    deleted: int = 0
    recent: int = 2


def test_status_answers_the_items_in_the_order_asked() -> None:
    assert status_response("work/a", ("UNSEEN", "MESSAGES", "RECENT", "SIZE"), Counts()) == (
        b"* STATUS work/a (UNSEEN 1 MESSAGES 3 RECENT 2 SIZE 3000)\r\n"
    )
