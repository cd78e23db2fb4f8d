"""The rights table and the Other Users names (peerd.protocols.imap.rights), without I/O."""

from __future__ import annotations

import pytest

from peerd.protocols.imap import acl
from peerd.protocols.imap import commands as c
from peerd.protocols.imap.rights import (
    REQUIRED,
    Of,
    held,
    namespace_response,
    permitted_flags,
    refusal,
    split_other,
    store_rights,
)


def test_the_owner_holds_every_right_and_others_what_the_acl_gives() -> None:
    entries = {"alice": "lrswipkxtea", "bob": "lr", "anyone": "i"}
    assert held("alice", "alice", {}) == acl.OWNER_RIGHTS
    assert held("bob", "alice", entries) == "lri"
    assert held("carol", "alice", entries) == "i"
    assert held("carol", "alice", {"bob": "lr"}) == ""


def test_the_table_names_rfc_4314s_rights() -> None:
    def letters(cls: type[c.Command]) -> set[tuple[Of, str]]:
        return {(n.of, n.rights) for n in REQUIRED[cls]}

    assert letters(c.Select) == {(Of.MAILBOX, "r")}
    assert letters(c.Create) == {(Of.PARENT, "k")}
    assert letters(c.Delete) == {(Of.MAILBOX, "x")}
    assert letters(c.Rename) == {(Of.MAILBOX, "x"), (Of.NEW_PARENT, "k")}
    assert letters(c.Append) == {(Of.MAILBOX, "i")}
    assert letters(c.Copy) == {(Of.DESTINATION, "i")}
    assert letters(c.Move) == {(Of.DESTINATION, "i"), (Of.SELECTED, "te")}
    assert letters(c.Expunge) == {(Of.SELECTED, "e")}
    assert letters(acl.SetAcl) == {(Of.MAILBOX, "a")}


@pytest.mark.parametrize(
    ("flags", "mode", "needed"),
    [
        (("\\Seen",), "+", "s"),
        (("\\Deleted",), "-", "t"),
        (("\\Flagged", "$Junk"), "+", "w"),
        (("\\SEEN", "\\Answered"), "+", "sw"),
        ((), "", "stw"),
    ],
)
def test_store_needs_s_for_seen_t_for_deleted_w_for_the_rest(
    flags: tuple[str, ...], mode: str, needed: str
) -> None:
    assert store_rights(flags, mode) == needed


def test_append_keeps_only_the_flags_the_rights_allow() -> None:
    flags = ("\\Seen", "\\Deleted", "\\Flagged")
    assert permitted_flags(flags, "lri") == ()
    assert permitted_flags(flags, "lris") == ("\\Seen",)
    assert permitted_flags(flags, "lriwt") == ("\\Deleted", "\\Flagged")


def test_a_refusal_is_noperm_or_hides_the_mailbox_without_l_and_r() -> None:
    assert refusal("lr", "r", "x") is None
    denied = refusal("lr", "i", "Other Users/alice/x")
    assert denied is not None and denied.code == acl.CODE_NOPERM and denied.status == "NO"
    hidden = refusal("i", "r", "Other Users/alice/x")
    assert hidden is not None and hidden.code == b"NONEXISTENT"
    assert refusal("", "*", "x") is not None
    assert refusal("l", "*", "x") is None


def test_other_users_names() -> None:
    assert split_other("Other Users/alice/Team/Sub") == ("alice", "Team/Sub")
    assert split_other("Other Users/alice") == ("alice", "")
    assert split_other("Other Usersx/alice") is None
    assert split_other("INBOX") is None
    assert namespace_response() == b'* NAMESPACE (("" "/")) (("Other Users/" "/")) NIL\r\n'
