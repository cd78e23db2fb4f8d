"""The sans-I/O core of ACL, QUOTA and METADATA: parsing, rights arithmetic,
GETMETADATA's DEPTH/MAXSIZE rule (against a plain reference), responses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerd.protocols.imap import acl, metadata, quota
from peerd.protocols.imap.commands import Command
from peerd.protocols.imap.grammar import parse_command
from peerd.protocols.imap.responses import CommandError
from peerd.protocols.imap.states import State, allowed


def parse(line: bytes) -> Command:
    return parse_command([line])


def test_commands_parse_and_run_when_authenticated_or_selected() -> None:
    cmds = [
        parse(b"a SETACL INBOX bob +lr"),
        parse(b"a DELETEACL INBOX bob"),
        parse(b"a GETACL INBOX"),
        parse(b'a LISTRIGHTS "INBOX" anyone'),
        parse(b"a MYRIGHTS inbox"),
        parse(b'a GETQUOTA ""'),
        parse(b"a GETQUOTAROOT INBOX"),
        parse(b'a SETQUOTA "" (STORAGE 512 message 10)'),
        parse(b"a GETMETADATA (MAXSIZE 10 DEPTH infinity) INBOX (/private/a /shared/B)"),
        parse(b'a SETMETADATA "" (/shared/comment "x" /private/gone NIL)'),
    ]
    for cmd in cmds:
        assert type(cmd) in acl.COMMANDS | quota.COMMANDS | metadata.COMMANDS
        assert allowed(State.AUTHENTICATED, cmd) and allowed(State.SELECTED, cmd)
        assert not allowed(State.NOT_AUTHENTICATED, cmd)
    assert cmds[4] == acl.MyRights("a", "INBOX")
    assert cmds[7] == quota.SetQuota("a", "", (("STORAGE", 512), ("MESSAGE", 10)))
    assert cmds[8] == metadata.GetMetadata(
        "a", "INBOX", ("/private/a", "/shared/b"), maxsize=10, depth="infinity"
    )
    assert cmds[9] == metadata.SetMetadata(
        "a", "", (("/shared/comment", b"x"), ("/private/gone", None))
    )


@pytest.mark.parametrize(
    "line",
    [
        b"a SETACL INBOX bob lrq",
        b"a SETACL INBOX",
        b"a GETACL",
        b"a MYRIGHTS INBOX extra",
        b"a GETQUOTAROOT",
        b'a SETQUOTA "" STORAGE 5',
        b'a SETQUOTA "" (STORAGE -5)',
        # str.isdigit() takes a superscript two, which int() refuses.
        b'a SETQUOTA "" (STORAGE "\xc2\xb2")',
        b'a GETMETADATA (MAXSIZE "\xc2\xb2") INBOX /private/a',
        b"a GETMETADATA INBOX",
        b"a GETMETADATA INBOX /private/a /private/b",
        b"a GETMETADATA (DEPTH 5) INBOX /private/a",
        b"a GETMETADATA INBOX /other/a",
        b"a SETMETADATA INBOX (/private/a)",
        b"a SETMETADATA INBOX (/private/a (x))",
        b"a SETMETADATA INBOX (/shared x)",
    ],
)
def test_malformed_commands_are_bad(line: bytes) -> None:
    with pytest.raises(CommandError) as info:
        parse(line)
    assert info.value.status == "BAD"


def test_rights_arithmetic() -> None:
    assert acl.modify("", "rl") == "lr"
    assert acl.modify("lr", "+w") == "lrw"
    assert acl.modify("lrw", "-r") == "lw"
    assert acl.modify("l", "+c") == "lkx"  # RFC 4314 2.1.1
    assert acl.modify("lkxet", "-d") == "lkx"
    assert acl.shown("lkxet") == "lkxtecd"
    assert acl.shown("lk") == "lk"
    assert acl.shown("lzr") == "lr"  # stored elsewhere: an unknown letter is not shown
    with pytest.raises(CommandError):
        acl.modify("", "lz")


def test_responses() -> None:
    assert acl.myrights_response("INBOX", acl.OWNER_RIGHTS) == b"* MYRIGHTS INBOX lrswipkxteacd\r\n"
    assert (
        acl.acl_response("a b", {"alice": "x", "bob": "", "carol": "lr"}, "alice")
        == b'* ACL "a b" alice lrswipkxteacd bob "" carol lr\r\n'
    )
    assert quota.quota_response(1025, 10_000) == b'* QUOTA "" (STORAGE 2 9)\r\n'
    assert quota.quotaroot_response("INBOX", False) == b"* QUOTAROOT INBOX\r\n"
    assert (
        metadata.metadata_response("", [("/private/a", b"x\r\ny"), ("/shared/b", None)])
        == b'* METADATA "" (/private/a {4}\r\nx\r\ny /shared/b NIL)\r\n'
    )


def reference(
    stored: dict[str, bytes], entries: tuple[str, ...], depth: str, maxsize: int | None
) -> tuple[dict[str, bytes | None], int | None]:
    """RFC 5464 4.2.2 and 4.2.1 written plainly."""
    picked: dict[str, bytes | None] = {}
    for entry in entries:
        picked[entry] = stored.get(entry)
        for name, value in stored.items():
            if not name.startswith(entry + "/"):
                continue
            rest = name[len(entry) + 1 :]
            if depth == "infinity" or (depth == "1" and "/" not in rest):
                picked[name] = value
    longest = None
    out: dict[str, bytes | None] = {}
    for name, found in picked.items():
        if found is not None and maxsize is not None and len(found) > maxsize:
            longest = max(longest or 0, len(found))
        else:
            out[name] = found
    return out, longest


_names = st.lists(st.sampled_from("abc"), min_size=1, max_size=4).map(
    lambda parts: "/private/" + "/".join(parts)
)


@given(
    stored=st.dictionaries(_names, st.binary(max_size=6), max_size=12),
    entries=st.lists(_names, min_size=1, max_size=3, unique=True),
    depth=st.sampled_from(["0", "1", "infinity"]),
    maxsize=st.none() | st.integers(0, 6),
)
def test_select_entries_matches_the_rfc(
    stored: dict[str, bytes], entries: list[str], depth: str, maxsize: int | None
) -> None:
    cmd = metadata.GetMetadata("a", "INBOX", tuple(entries), maxsize, depth)  # type: ignore[arg-type]
    got, longest = metadata.select_entries(stored, cmd)
    want, want_longest = reference(stored, tuple(entries), depth, maxsize)
    assert dict(got) == want and len(got) == len(want)
    assert longest == want_longest
