"""The rounds of one account's sync, as the owner drives them. No I/O of its own.

How this works: a round compares the owner's state with the replica's
(:func:`engine.compare.compare`). If the owner must repair first (mail only
the replica holds, a UID that names two messages), the caller repairs here
and the next round compares again: the owner's state changed. A round that
needs no repair leaves only the push, which the caller sends. The second
round has only a push (the pulled GUIDs are known by then), so
:data:`MAX_ROUNDS` is a guard against a bug, not a budget: more rounds mean
the two sides do not converge, a :class:`~engine.errors.SyncProtocolError`.

The sync client runs these rounds over the network, and the convergence
property test runs the same rounds in-process; both go through
:func:`converge`, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from engine.compare import Repairs
from engine.errors import SyncProtocolError

__all__ = ["MAX_ROUNDS", "Planned", "converge"]

MAX_ROUNDS = 4


class Planned(Protocol):
    """What one round's compare gave: the repairs, and whatever the caller needs
    to send the push (the push itself, the rows it will acknowledge, ...)."""

    @property
    def repairs(self) -> Repairs: ...


P = TypeVar("P", bound=Planned)


async def converge(
    account: str,
    plan: Callable[[], Awaitable[P]],
    repair: Callable[[P], Awaitable[None]],
) -> P:
    """Plan and repair until a round needs no repair; that round's plan (its push)."""
    for _ in range(MAX_ROUNDS):
        planned = await plan()
        if planned.repairs.empty:
            return planned
        await repair(planned)
    raise SyncProtocolError(f"{account}: repairs did not converge in {MAX_ROUNDS} rounds")
