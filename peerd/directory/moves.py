"""A move between pairs as the directory records it: its row and its statements.

How this works: ``directory_moves`` holds one row per account being moved
(or moved): from which pair and node, to which pair and node, the source's
epoch when the move began, and the ``step`` reached (:data:`STEPS`). The
row is written by the source's owner node only, each step in its own
statement, so a node that restarts reads where its move stood. The
account's routing row says ``state`` = ``moving``, ``move_to`` = the target
pair from :func:`begin` until :func:`flip`, which gives the row to the
target pair at the new epoch in one statement; every statement here may be
run again with the same result (a resumed move repeats its last step).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from peerd.directory.errors import TransferRefused

__all__ = [
    "STEPS",
    "MoveEntry",
    "abort",
    "begin",
    "flip",
    "get",
    "pair_nodes",
    "pending",
    "set_epoch",
    "set_step",
]

# copy: copying and catching up (the source serves); cutover: writes held,
# the final delta, the flips; flipped: the target pair serves, the source's
# copy waits out the grace; done: the source's copy deleted.
STEPS = ("copy", "cutover", "flipped", "done")

_COLUMNS = (
    "account, from_pair, to_pair, source, target, epoch, step, held_seconds,"
    " bytes_sent, mailbox_bytes, messages, note, delete_after, started_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class MoveEntry:
    account: str
    from_pair: str
    to_pair: str
    source: str
    target: str
    epoch: int  # the source's epoch when the move began; the target's is epoch + 1
    step: str
    held_seconds: float
    bytes_sent: int
    mailbox_bytes: int
    messages: int
    note: str
    delete_after: dt.datetime | None
    started_at: dt.datetime
    updated_at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "from_pair": self.from_pair,
            "to_pair": self.to_pair,
            "source": self.source,
            "target": self.target,
            "epoch": self.epoch,
            "step": self.step,
            "writes_held": round(self.held_seconds, 3),
            "bytes_sent": self.bytes_sent,
            "mailbox_bytes": self.mailbox_bytes,
            "messages": self.messages,
            "note": self.note,
            "delete_after": self.delete_after.isoformat() if self.delete_after else None,
            "started_at": self.started_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _entry(row: Sequence[Any]) -> MoveEntry:
    return MoveEntry(
        str(row[0]),
        str(row[1]),
        str(row[2]),
        str(row[3]),
        str(row[4]),
        int(row[5]),
        str(row[6]),
        float(row[7]),
        int(row[8]),
        int(row[9]),
        int(row[10]),
        str(row[11]),
        row[12],
        row[13],
        row[14],
    )


def get(conn: Connection, account: str) -> MoveEntry | None:
    row = conn.execute(
        text(f"SELECT {_COLUMNS} FROM directory_moves WHERE account = :a"), {"a": account}
    ).first()
    return _entry(tuple(row)) if row is not None else None


def pending(conn: Connection, pair: str, source: str) -> list[MoveEntry]:
    """The unfinished moves this node (``source`` of ``pair``) drives."""
    rows = conn.execute(
        text(
            f"SELECT {_COLUMNS} FROM directory_moves WHERE from_pair = :pair"
            " AND source = :source AND step <> 'done' ORDER BY started_at"
        ),
        {"pair": pair, "source": source},
    )
    return [_entry(tuple(r)) for r in rows]


def begin(
    conn: Connection,
    account: str,
    from_pair: str,
    to_pair: str,
    source: str,
    target: str,
    epoch: int,
) -> MoveEntry:
    """Record a new move (or a finished one's successor) and mark the routing
    row ``moving``; an unfinished move of the account is returned as it is."""
    routed = conn.execute(
        text("SELECT pair FROM directory_accounts WHERE account = :a"), {"a": account}
    ).scalar()
    if routed != from_pair:
        # Not written through yet (or another pair's name): nothing to move from.
        raise TransferRefused(
            f"{account} is not pair {from_pair}'s in the directory yet; try again in a moment"
        )
    found = get(conn, account)
    if found is None or found.step == "done":
        conn.execute(text("DELETE FROM directory_moves WHERE account = :a"), {"a": account})
        conn.execute(
            text(
                "INSERT INTO directory_moves (account, from_pair, to_pair, source, target,"
                " epoch, step) VALUES (:a, :f, :t, :s, :g, :e, 'copy')"
            ),
            {"a": account, "f": from_pair, "t": to_pair, "s": source, "g": target, "e": epoch},
        )
    conn.execute(
        text(
            "UPDATE directory_accounts SET state = 'moving', move_to = :t, updated_at = now()"
            " WHERE account = :a AND pair = :f"
        ),
        {"a": account, "f": from_pair, "t": to_pair},
    )
    entry = get(conn, account)
    assert entry is not None
    return entry


def set_step(conn: Connection, account: str, step: str, **values: Any) -> None:
    """Record ``step`` and any of held_seconds, bytes_sent, mailbox_bytes,
    messages, note, delete_after."""
    if step not in STEPS:
        raise ValueError(f"unknown move step {step!r}")
    allowed = ("held_seconds", "bytes_sent", "mailbox_bytes", "messages", "note", "delete_after")
    sets = "".join(f", {k} = :{k}" for k in values if k in allowed)
    conn.execute(
        text(
            f"UPDATE directory_moves SET step = :step, updated_at = now(){sets} WHERE account = :a"
        ),
        {"a": account, "step": step, **values},
    )


def flip(conn: Connection, move: MoveEntry) -> bool:
    """The routing row to the target pair at epoch + 1, ``active``; True when
    it changed now (False: done already, or the row is not the moving one)."""
    result = conn.execute(
        text(
            "UPDATE directory_accounts SET pair = :t, owner = :g, epoch = :e,"
            " ownership = 'normal', state = 'active', move_to = NULL, updated_at = now()"
            " WHERE account = :a AND pair = :f AND epoch <= :e"
        ),
        {
            "a": move.account,
            "f": move.from_pair,
            "t": move.to_pair,
            "g": move.target,
            "e": move.epoch + 1,
        },
    )
    return bool(result.rowcount)


def pair_nodes(conn: Connection, pair: str) -> list[tuple[str, str | None, float]]:
    """``pair``'s nodes: name, sync listener, seconds since the last heartbeat."""
    rows = conn.execute(
        text(
            "SELECT node, sync, extract(epoch FROM now() - last_heartbeat)"
            " FROM directory_nodes WHERE pair = :pair ORDER BY node"
        ),
        {"pair": pair},
    )
    return [(str(n), str(s) if s else None, float(age)) for n, s, age in rows]


def set_epoch(conn: Connection, account: str, epoch: int) -> None:
    """The source's epoch changed meanwhile (a switchover there and back)."""
    conn.execute(
        text("UPDATE directory_moves SET epoch = :e, updated_at = now() WHERE account = :a"),
        {"a": account, "e": epoch},
    )


def abort(conn: Connection, move: MoveEntry) -> bool:
    """Forget a move that has not cut over: its row goes, the routing row is
    the source pair's again, ``active``. False when the move is not there
    before its cut-over any more (nothing is changed then)."""
    gone = conn.execute(
        text(
            "DELETE FROM directory_moves WHERE account = :a AND to_pair = :t"
            " AND step IN ('copy', 'cutover')"
        ),
        {"a": move.account, "t": move.to_pair},
    )
    if not gone.rowcount:
        return False
    conn.execute(
        text(
            "UPDATE directory_accounts SET state = 'active', move_to = NULL, updated_at = now()"
            " WHERE account = :a AND pair = :f AND move_to = :t"
        ),
        {"a": move.account, "f": move.from_pair, "t": move.to_pair},
    )
    return True
