"""The spool scrub's store side: which bodies a scrub reads, and reading them.

How this works: a GUID is the SHA-1 of its bytes, so a file proves itself
whole or damaged with no other record. :func:`live_bodies` pages through the
GUIDs that live (not expunged) records name, in GUID order (the spool's
directory order, so the disk reads one directory after the other), with the
size the records give each; ``accounts`` narrows it to some accounts' records.
:func:`check_bodies` reads and hashes a slice of them
(:meth:`engine.spool.Spool.check`) and says which are missing, cut short or
not matching. Pacing the reads, asking the partner for good copies and
counting what was found belong to the daemon (``peerd.replication.scrub``);
nothing here knows about the partner.

Files that no live record names are not read: nothing serves them, and the
sweep (:mod:`engine.sweep`) removes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.models import Account, Mailbox, Message
from engine.spool import Spool

__all__ = ["Body", "Checked", "check_bodies", "live_bodies"]


@dataclass(frozen=True, slots=True)
class Body:
    """One GUID some live record names, and the size the records give it."""

    guid: str
    size: int


@dataclass(slots=True)
class Checked:
    """What reading a slice of bodies found: files and bytes read, and the
    damaged ones as (GUID, what is wrong)."""

    files: int = 0
    bytes: int = 0
    damaged: list[tuple[str, str]] = field(default_factory=list)


def live_bodies(
    session: Session, *, after: str = "", limit: int = 5000, accounts: Sequence[str] | None = None
) -> list[Body]:
    """Up to ``limit`` GUIDs above ``after`` that live records name (of
    ``accounts`` only, when given), in GUID order."""
    query = (
        select(Message.guid, func.max(Message.size))
        .where(Message.expunged.is_(False), Message.guid > after)
        .group_by(Message.guid)
        .order_by(Message.guid)
        .limit(limit)
    )
    if accounts is not None:
        query = (
            query.join(Mailbox, Mailbox.id == Message.mailbox_id)
            .join(Account, Account.id == Mailbox.account_id)
            .where(Account.name.in_(list(accounts)))
        )
    return [Body(guid, int(size)) for guid, size in session.execute(query)]


def check_bodies(spool: Spool, bodies: Sequence[Body]) -> Checked:
    """Read and hash each body's file (blocking: run it in a thread)."""
    out = Checked()
    for body in bodies:
        length, wrong = spool.check(body.guid, body.size)
        out.files += 1
        out.bytes += length
        if wrong is not None:
            out.damaged.append((body.guid, wrong))
    return out
