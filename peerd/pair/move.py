"""Moving an account's home: where failback brings it back to.

How this works: the home is part of the ownership row, so changing it is a
row change at epoch + 1 (the partner must take it, and the higher epoch
wins). The new row is sent to the partner at once; if it does not answer,
it learns the row at the next exchange (a refused sync, or a start).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session

from engine.errors import EngineError, NoSuchAccount
from ownership import table as ownership_table
from ownership.errors import UnknownNode
from ownership.rows import OwnershipView, row_view
from peerd.pair.partner import Pair, exchange_rows

__all__ = ["HomeMoved", "move_home"]

log = logging.getLogger("peerd.pair.move")


@dataclass(frozen=True, slots=True)
class HomeMoved:
    row: OwnershipView  # with the new home and epoch
    partner_informed: bool


async def move_home(pair: Pair, account: str, to: str) -> HomeMoved:
    node = pair.node
    if to not in (node.name, node.partner):
        raise UnknownNode(f"{to!r} is neither {node.name} nor {node.partner}")

    def write(session: Session) -> OwnershipView:
        if ownership_table.get(session, account) is None:
            raise NoSuchAccount(f"no such account: {account}")
        return row_view(ownership_table.set_home(session, account, to))

    row = await node.store.write(write)
    try:
        await exchange_rows(node, pair.client)
    except EngineError as exc:
        log.warning("home of %s changed; the partner learns it later: %s", account, exc)
        return HomeMoved(row, False)
    return HomeMoved(row, True)
