"""The directory's rows as values: a node of a pair, an account, a pair.

Frozen, slotted, validated nowhere but at the database (the directory's
writers are peerd nodes): these are what lookups and ``pair list`` return.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

__all__ = ["SERVICES", "AccountEntry", "Found", "NodeEntry", "PairEntry"]

SERVICES = ("imap", "pop3", "lmtp", "api")


@dataclass(frozen=True, slots=True)
class NodeEntry:
    """One node of a pair: where proxies and other pairs reach it, and when it
    last said it was up."""

    pair: str
    node: str
    imap: str | None
    pop3: str | None
    lmtp: str | None
    api: str | None
    release: str
    last_heartbeat: dt.datetime
    sync: str | None = None  # the sync listener (a move between pairs copies there)

    def address(self, service: str) -> str | None:
        if service not in SERVICES:
            raise ValueError(f"no such service: {service}")
        value: str | None = getattr(self, service)
        return value

    def to_json(self, now: dt.datetime, up_within: dt.timedelta) -> dict[str, Any]:
        age = (now - self.last_heartbeat).total_seconds()
        return {
            "node": self.node,
            "imap": self.imap,
            "pop3": self.pop3,
            "lmtp": self.lmtp,
            "api": self.api,
            "release": self.release,
            "last_heartbeat": self.last_heartbeat.isoformat(),
            "heartbeat_age": round(max(age, 0.0), 3),
            "up": age <= up_within.total_seconds(),
        }


@dataclass(frozen=True, slots=True)
class AccountEntry:
    """An account's routing row: its pair, its owner there and the owner's
    epoch, the owner's state in the pair (``normal``, ``failed_over``), and
    the directory state (``active``; ``moving`` to ``move_to``)."""

    account: str
    pair: str
    owner: str
    epoch: int
    ownership: str
    state: str = "active"
    move_to: str | None = None


@dataclass(frozen=True, slots=True)
class Found:
    """A lookup's answer: the account's row and the nodes of its pair."""

    entry: AccountEntry
    nodes: tuple[NodeEntry, ...]

    def node(self, name: str) -> NodeEntry | None:
        return next((n for n in self.nodes if n.node == name), None)

    def address(self, service: str) -> str | None:
        """Where ``service`` is on the account's owner."""
        owner = self.node(self.entry.owner)
        return owner.address(service) if owner is not None else None

    def apis(self) -> list[str]:
        """The pair's control APIs, the owner's first."""
        ordered = sorted(self.nodes, key=lambda n: n.node != self.entry.owner)
        return [n.api for n in ordered if n.api]


@dataclass(frozen=True, slots=True)
class PairEntry:
    """One pair in ``pair list``: its nodes and how many accounts each owns."""

    name: str
    nodes: tuple[NodeEntry, ...]
    accounts: int
    owned: tuple[tuple[str, int], ...]
    moving: int

    def to_json(self, now: dt.datetime, up_within: dt.timedelta) -> dict[str, Any]:
        return {
            "pair": self.name,
            "accounts": self.accounts,
            "moving": self.moving,
            "owned": dict(self.owned),
            "nodes": [n.to_json(now, up_within) for n in self.nodes],
        }
