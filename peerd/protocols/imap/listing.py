"""LIST, LSUB and STATUS responses, without I/O (RFC 3501 6.3.8-6.3.10, RFC 5258,
RFC 5819, RFC 6154).

How this works: the server reads the account's mailbox names and
subscriptions from the store and hands them over with the command;
:func:`list_responses` and :func:`lsub_responses` return the untagged
responses, :func:`status_response` renders one mailbox's counts. Names are
the store's (``/`` is the hierarchy separator, INBOX spelled so).

Wildcards (RFC 3501 6.3.8): ``*`` matches anything, ``%`` anything but the
separator; each pattern is compiled once by
:func:`~peerd.protocols.imap.wildcard.compile_pattern` (linear time in the
name, no backtracking; a pattern over its limits is ``NO [LIMIT]``).
Whether a name has children is read from the set of every name's parents, so
a LIST costs time linear in the names, not quadratic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol

from peerd.protocols.imap import commands as c
from peerd.protocols.imap.responses import CommandError, mailbox
from peerd.protocols.imap.wildcard import compile_pattern

__all__ = [
    "SEPARATOR",
    "SPECIAL_USE",
    "Counts",
    "list_responses",
    "lsub_responses",
    "status_response",
]

SEPARATOR: Final = "/"
# RFC 6154 2: the attribute a mailbox of this name gets in LIST.
SPECIAL_USE: Final = {
    "sent": "\\Sent",
    "drafts": "\\Drafts",
    "trash": "\\Trash",
    "junk": "\\Junk",
    "archive": "\\Archive",
}


def _parents(names: Sequence[str]) -> set[str]:
    """Every name that is a proper ancestor of one of ``names``."""
    out: set[str] = set()
    for name in names:
        at = name.find(SEPARATOR)
        while at != -1:
            out.add(name[:at])
            at = name.find(SEPARATOR, at + 1)
    return out


def list_responses(
    cmd: c.List, names: Sequence[str], subscriptions: Sequence[str], levels: Sequence[str] = ()
) -> tuple[bytes, list[str]]:
    """LIST's responses, and the names listed that exist (for RETURN (STATUS)).

    ``levels`` are names of the hierarchy that are not mailboxes (the
    ``Other Users`` namespace and its accounts): listed ``\\Noselect`` when a
    pattern matches them (RFC 3501 6.3.8), like a superior with no mailbox.

    RFC 5258 (LIST-EXTENDED): SUBSCRIBED, REMOTE (there are no remote
    mailboxes) and RECURSIVEMATCH selection, SPECIAL-USE selection (RFC 6154
    5.1), several patterns; CHILDREN, SPECIAL-USE and ``\\Subscribed`` are
    always returned (RFC 5258 3.2 lets a server return what was not asked
    for).
    """
    subscribed = "SUBSCRIBED" in cmd.select_options
    recursive = "RECURSIVEMATCH" in cmd.select_options
    if recursive and not subscribed:
        # CHILDINFO (RFC 5258 3.5) is given for SUBSCRIBED only.
        raise CommandError("RECURSIVEMATCH is offered with SUBSCRIBED only")
    return _responses(
        "LIST",
        cmd.reference,
        cmd.patterns,
        names,
        subscriptions,
        subscribed_only=subscribed,
        special_only="SPECIAL-USE" in cmd.select_options,
        recursive=recursive,
        levels=levels,
    )


def lsub_responses(cmd: c.Lsub, names: Sequence[str], subscriptions: Sequence[str]) -> bytes:
    """LSUB's responses (RFC 3501 6.3.9)."""
    out, _ = _responses(
        "LSUB", cmd.reference, (cmd.pattern,), names, subscriptions, subscribed_only=True, lsub=True
    )
    return out


def _responses(
    command: str,
    reference: str,
    patterns: Sequence[str],
    names: Sequence[str],
    subs: Sequence[str],
    *,
    subscribed_only: bool,
    lsub: bool = False,
    special_only: bool = False,
    recursive: bool = False,
    levels: Sequence[str] = (),
) -> tuple[bytes, list[str]]:
    if any(p == "" for p in patterns):
        # RFC 3501 6.3.8: an empty pattern asks for the hierarchy delimiter.
        return f'* {command} (\\Noselect) "/" ""\r\n'.encode(), []
    compiled = [compile_pattern(reference, p) for p in patterns]
    existing = set(names)
    has_children = _parents(names)
    subscribed = set(subs)
    noselect = set(levels)
    candidates: Sequence[str] = subs if subscribed_only else [*names, *levels]
    # RFC 5258 3.5 (RECURSIVEMATCH) and RFC 3501 6.3.9 (LSUB with "%"): a
    # parent that matches the pattern is listed for a subscribed mailbox below
    # it that the pattern stops short of (a "%" does not cross "/"): with
    # CHILDINFO, and in LSUB as \Noselect when it is not subscribed itself.
    # A subscribed child the pattern lists by itself gives no CHILDINFO.
    cut_short: set[str] = set()
    if recursive or lsub:
        cut_short = _parents([s for s in subs if not any(p.matches(s) for p in compiled)])
        candidates = sorted(subscribed | cut_short)
    out: list[bytes] = []
    listed: list[str] = []
    for name in candidates:
        if not any(pattern.matches(name) for pattern in compiled):
            continue
        # ASCII case only: "JUN\u212a".lower() (a Kelvin sign) is "junk" too.
        special = SPECIAL_USE.get(name.lower()) if name.isascii() else None
        if special_only and special is None:
            continue
        attrs = []
        if (lsub and (name not in existing or name not in subscribed)) or name in noselect:
            attrs.append("\\Noselect")
        elif name not in existing:
            attrs.append("\\NonExistent")
        attrs.append("\\HasChildren" if name in has_children else "\\HasNoChildren")
        if special:
            attrs.append(special)
        if not lsub and name in subscribed:
            attrs.append("\\Subscribed")
        extended = b""
        if recursive and name in cut_short:
            extended = b' ("CHILDINFO" ("SUBSCRIBED"))'
        out.append(
            f'* {command} ({" ".join(attrs)}) "/" '.encode() + mailbox(name) + extended + b"\r\n"
        )
        if name in existing:
            listed.append(name)
    return b"".join(out), listed


class Counts(Protocol):
    """A mailbox's counts, as the store gives them."""

    @property
    def messages(self) -> int: ...
    @property
    def uidnext(self) -> int: ...
    @property
    def uidvalidity(self) -> int: ...
    @property
    def unseen(self) -> int: ...
    @property
    def highestmodseq(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def deleted(self) -> int: ...
    @property
    def recent(self) -> int: ...


def status_response(name: str, items: Sequence[str], counts: Counts) -> bytes:
    """``* STATUS name (item value ...)`` for the items asked, in their order."""
    values = {
        "MESSAGES": counts.messages,
        "RECENT": counts.recent,  # not yet claimed by a SELECT (RFC 3501 2.3.2)
        "UIDNEXT": counts.uidnext,
        "UIDVALIDITY": counts.uidvalidity,
        "UNSEEN": counts.unseen,
        "HIGHESTMODSEQ": counts.highestmodseq,
        "SIZE": counts.size,  # RFC 8438
        "DELETED": counts.deleted,  # RFC 9051 6.3.11
    }
    parts = " ".join(f"{item} {values[item]}" for item in items)
    return b"* STATUS " + mailbox(name) + f" ({parts})\r\n".encode()
