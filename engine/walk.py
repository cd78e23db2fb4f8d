"""Walking the stored messages in ``messages.id`` order, for the work done
once per message after it is stored: the full-text index
(:mod:`engine.textindex`) and the parsed keys and structures
(:mod:`engine.parsed`) each walk with a mark and ask which GUIDs they lack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from sqlalchemy import text
from sqlalchemy.orm import Session

__all__ = ["CHUNK", "Pending", "chunks", "pending"]

CHUNK: Final = 400  # GUIDs in one IN (...): SQLite limits a statement's parameters


@dataclass(frozen=True, slots=True)
class Pending:
    """GUIDs still to do (live records' GUIDs the walker lacks), the highest
    ``messages.id`` looked at, and whether rows past it remain."""

    guids: tuple[str, ...]
    mark: int
    more: bool


def chunks(items: Sequence[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), CHUNK):
        yield list(items[i : i + CHUNK])


def pending(
    session: Session,
    after: int,
    limit: int,
    done: Callable[[Session, list[str]], set[str]],
) -> Pending:
    """Walk ``messages`` past ``after`` (at most ``limit`` rows); ``done``
    says which of their GUIDs need nothing more."""
    rows = session.execute(
        text(
            "SELECT id, guid FROM messages WHERE id > :after AND expunged = :no "
            "ORDER BY id LIMIT :limit"
        ),
        {"after": after, "no": False, "limit": limit},
    ).all()
    if not rows:
        return Pending((), after, False)
    guids = list(dict.fromkeys(guid for _, guid in rows))
    have = done(session, guids)
    return Pending(tuple(g for g in guids if g not in have), int(rows[-1][0]), len(rows) == limit)
