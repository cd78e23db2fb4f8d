"""Recipient addresses: which accounts ``local+detail@domain`` may mean.

``local+detail@domain`` is the account ``local@domain``, or ``local`` when the
domain is one of the node's local domains; the detail names a folder
(:mod:`engine.delivery` says what happens with it). No database here: the
LMTP worker processes parse recipients without importing the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from engine.errors import InvalidArgument

__all__ = ["Recipient", "parse_recipient"]

_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
# RFC 5321 4.1.2: a quoted local part's quoted-pair is a backslash and the
# character it stands for.
_QUOTED_PAIR: Final = re.compile(r"\\(.)")


@dataclass(frozen=True, slots=True)
class Recipient:
    """A parsed recipient: the candidate account names and the +detail."""

    address: str
    candidates: tuple[str, ...]
    detail: str | None


def parse_recipient(
    address: str, local_domains: frozenset[str], lowercase: bool = False
) -> Recipient:
    """The account names ``address`` may mean, in order; with ``lowercase``
    the local part lower-cased first, then as written (an account made with
    capitals before names were lower-cased still receives its mail)."""
    # Space and tab around it go; str.strip() would also take U+0085 and
    # U+001C-U+001F, reading "\x85alice" as alice.
    raw = address.strip(" \t")
    if raw.startswith("<") and raw.endswith(">"):
        raw = raw[1:-1]
    if not raw or len(raw) > 320:
        raise InvalidArgument("empty or overlong recipient")
    # No address holds a control character, C0 or C1 (RFC 5321 4.1.2: not
    # even quoted);
    # NUL, from a socketmap key, would reach the database, and PostgreSQL
    # refuses it in text with an error that is no lookup's answer.
    if _CONTROL.search(raw):
        raise InvalidArgument("a recipient cannot hold a control character")
    local, at, domain = raw.rpartition("@") if "@" in raw else (raw, "", "")
    if len(local) >= 2 and local[0] == local[-1] == '"':
        # "carol"@example.test is carol@example.test (RFC 5321 4.1.2: the
        # quotes are the address's syntax, not part of the mailbox).
        local = _QUOTED_PAIR.sub(r"\1", local[1:-1])
    domain = domain.lower()
    base, plus, detail = local.partition("+")
    if not base:
        raise InvalidArgument(f"invalid recipient {address!r}")
    candidates: list[str] = []
    for local_part in (base.lower(), base) if lowercase else (base,):
        if at:
            if domain in local_domains:
                candidates.append(local_part)
            candidates.append(f"{local_part}@{domain}")
        else:
            candidates.append(local_part)
    unique = tuple(dict.fromkeys(candidates))
    return Recipient(address=raw, candidates=unique, detail=detail if plus else None)
