"""The directory's statements, each one round trip on a caller's connection.

How this works: a node registers itself (its pair, its addresses) and then
writes a heartbeat now and then; it writes its pair's account rows through
:func:`write_accounts`, whose ``ON CONFLICT … WHERE`` lets a row change only
to a higher epoch of the same pair: a stale write (a lower or equal epoch,
from a node that has not yet learnt the newer owner) changes nothing and is
not in the answer. An account row of another pair is never overwritten
(a name taken by two pairs stays with the first; moving an account between
pairs is an explicit step through ``state`` = ``moving``:
:mod:`peerd.directory.moves`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, text

from peerd.directory.rows import AccountEntry, Found, NodeEntry, PairEntry

__all__ = [
    "delete_accounts",
    "heartbeat",
    "list_pairs",
    "lookup",
    "pair_accounts",
    "register_node",
    "write_accounts",
]

_NODE_COLUMNS = "pair, node, imap, pop3, lmtp, api, release, last_heartbeat, sync"


def register_node(conn: Connection, node: NodeEntry) -> None:
    """The pair (if new) and this node's addresses, heartbeat now."""
    conn.execute(
        text("INSERT INTO directory_pairs (name) VALUES (:pair) ON CONFLICT DO NOTHING"),
        {"pair": node.pair},
    )
    conn.execute(
        text(
            "INSERT INTO directory_nodes (pair, node, imap, pop3, lmtp, api, release, sync)"
            " VALUES (:pair, :node, :imap, :pop3, :lmtp, :api, :release, :sync)"
            " ON CONFLICT (pair, node) DO UPDATE SET imap = excluded.imap, sync = excluded.sync,"
            " pop3 = excluded.pop3, lmtp = excluded.lmtp, api = excluded.api,"
            " release = excluded.release, last_heartbeat = now()"
        ),
        {
            "pair": node.pair,
            "node": node.node,
            "imap": node.imap,
            "pop3": node.pop3,
            "lmtp": node.lmtp,
            "api": node.api,
            "release": node.release,
            "sync": node.sync,
        },
    )


def heartbeat(conn: Connection, pair: str, node: str) -> bool:
    """False when the node's row is gone (register it again)."""
    result = conn.execute(
        text(
            "UPDATE directory_nodes SET last_heartbeat = now() WHERE pair = :pair AND node = :node"
        ),
        {"pair": pair, "node": node},
    )
    return bool(result.rowcount)


def write_accounts(conn: Connection, pair: str, rows: Sequence[AccountEntry]) -> list[str]:
    """Insert or raise the rows of ``pair``'s accounts; the accounts written.

    A row changes only when the new epoch is higher (``WHERE epoch < :new``)
    and the row is this pair's; everything else is a stale write and loses.
    """
    if not rows:
        return []
    result = conn.execute(
        text(
            "INSERT INTO directory_accounts AS d (account, pair, owner, epoch, ownership)"
            " SELECT a, :pair, o, e, s FROM unnest("
            "CAST(:accounts AS text[]), CAST(:owners AS text[]),"
            " CAST(:epochs AS bigint[]), CAST(:states AS text[])) AS t (a, o, e, s)"
            " ON CONFLICT (account) DO UPDATE SET owner = excluded.owner,"
            " epoch = excluded.epoch, ownership = excluded.ownership, updated_at = now()"
            " WHERE d.pair = excluded.pair AND d.epoch < excluded.epoch"
            " RETURNING d.account"
        ),
        {
            "pair": pair,
            "accounts": [r.account for r in rows],
            "owners": [r.owner for r in rows],
            "epochs": [r.epoch for r in rows],
            "states": [r.ownership for r in rows],
        },
    )
    return [str(name) for name in result.scalars()]


def delete_accounts(conn: Connection, pair: str, accounts: Sequence[str]) -> list[str]:
    """Remove ``pair``'s rows of deleted accounts (another pair's row of the
    same name stays); the accounts removed."""
    if not accounts:
        return []
    result = conn.execute(
        text(
            "DELETE FROM directory_accounts WHERE pair = :pair"
            " AND account = ANY(CAST(:accounts AS text[])) RETURNING account"
        ),
        {"pair": pair, "accounts": list(accounts)},
    )
    return [str(name) for name in result.scalars()]


def _text(value: object) -> str | None:
    return str(value) if value else None


def _node(row: Sequence[Any]) -> NodeEntry:
    pair, node, imap, pop3, lmtp, api, release, beat, *rest = row
    return NodeEntry(
        str(pair),
        str(node),
        _text(imap),
        _text(pop3),
        _text(lmtp),
        _text(api),
        str(release),
        beat,
        _text(rest[0]) if rest else None,
    )


def lookup(conn: Connection, account: str) -> Found | None:
    """The account's row and its pair's nodes (one round trip), or None."""
    rows = conn.execute(
        text(
            "SELECT a.account, a.pair, a.owner, a.epoch, a.ownership, a.state, a.move_to,"
            " n.pair, n.node, n.imap, n.pop3, n.lmtp, n.api, n.release, n.last_heartbeat, n.sync"
            " FROM directory_accounts a LEFT JOIN directory_nodes n ON n.pair = a.pair"
            " WHERE a.account = :account ORDER BY n.node"
        ),
        {"account": account},
    ).all()
    if not rows:
        return None
    first = rows[0]
    entry = AccountEntry(
        str(first[0]),
        str(first[1]),
        str(first[2]),
        int(first[3]),
        str(first[4]),
        str(first[5]),
        _text(first[6]),
    )
    nodes = tuple(_node(tuple(row)[7:]) for row in rows if row[8] is not None)
    return Found(entry, nodes)


def pair_accounts(conn: Connection, pair: str) -> dict[str, int]:
    """``pair``'s accounts in the directory and their epochs."""
    rows = conn.execute(
        text("SELECT account, epoch FROM directory_accounts WHERE pair = :pair"), {"pair": pair}
    )
    return {str(a): int(e) for a, e in rows}


def list_pairs(conn: Connection) -> list[PairEntry]:
    """Every pair, its nodes, and its accounts counted per owner."""
    nodes: dict[str, list[NodeEntry]] = {}
    for row in conn.execute(
        text(f"SELECT {_NODE_COLUMNS} FROM directory_nodes ORDER BY pair, node")
    ):
        entry = _node(tuple(row))
        nodes.setdefault(entry.pair, []).append(entry)
    owned: dict[str, dict[str, int]] = {}
    moving: dict[str, int] = {}
    for pair, owner, state, count in conn.execute(
        text(
            "SELECT pair, owner, state, count(*) FROM directory_accounts"
            " GROUP BY pair, owner, state ORDER BY pair, owner"
        )
    ):
        by_owner = owned.setdefault(str(pair), {})
        by_owner[str(owner)] = by_owner.get(str(owner), 0) + int(count)
        if state == "moving":
            moving[str(pair)] = moving.get(str(pair), 0) + int(count)
    names = [str(n) for n in conn.scalars(text("SELECT name FROM directory_pairs ORDER BY name"))]
    out = []
    for name in names:
        counts = owned.get(name, {})
        out.append(
            PairEntry(
                name,
                tuple(nodes.get(name, [])),
                sum(counts.values()),
                tuple(sorted(counts.items())),
                moving.get(name, 0),
            )
        )
    return out
