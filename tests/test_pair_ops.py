"""The pair operations called as plain functions, on a node whose partner is down.

One node runs in-process (its store on SQLite, migrated by Alembic); its
partner's sync listener and API are loopback ports nothing listens on, so
every call to the partner is refused at once, as when the partner is down.
Its proxy hook is a real command that writes what it was sent to a file.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

import migrations
from engine import accounts
from engine.errors import NoSuchAccount
from engine.passwords import MIN_LN, hash_password
from engine.store import Store
from ownership import table as ownership_table
from ownership.errors import PartnerUnreachable
from peerd.node.config import (
    Config,
    DatabaseConfig,
    NodeConfig,
    PartnerConfig,
    ProxyHook,
    RoutingConfig,
    SyncConfig,
    parse_address,
)
from peerd.node.node import Node
from peerd.pair.failover import failover
from peerd.pair.hooks import HookAck, Hooks
from peerd.pair.move import move_home
from peerd.pair.partner import Pair
from peerd.pair.returning import exchange_at_start
from peerd.pair.switchover import switchover
from peerd.replication.client import SyncClient

# A real scrypt hash at the least cost (ln=15 is 0.15 s of CPU an account).
PW = hash_password("pw", MIN_LN)

T = TypeVar("T")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alpha_config(tmp_path: Path) -> Config:
    sync_port, api_port = closed_port(), closed_port()
    write = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_bytes(sys.stdin.buffer.read())"
    return Config(
        node=NodeConfig(name="alpha", data_dir=tmp_path / "alpha"),
        database=DatabaseConfig(url=f"sqlite:///{tmp_path / 'alpha.db'}"),
        sync=SyncConfig(
            sync_host="127.0.0.1",
            sync_port=sync_port,
            sync_authname="repl",
            sync_password="repl-secret",
        ),
        partner=PartnerConfig(name="beta", api=f"http://127.0.0.1:{api_port}"),
        routing=RoutingConfig(
            partner_imap=parse_address("127.0.0.1:1143"),
            hooks=(
                ProxyHook(
                    name="file", command=(sys.executable, "-c", write, str(tmp_path / "hook.json"))
                ),
            ),
        ),
    )


def run(tmp_path: Path, owners: dict[str, str], body: Callable[[Pair], Awaitable[T]]) -> T:
    """Accounts owned as ``owners`` says, then ``body`` with the node's pair."""
    config = alpha_config(tmp_path)
    migrations.upgrade(config.database_url)

    def create(session: Any) -> None:
        for name, owner in owners.items():
            accounts.create_account(session, name, password_hash=PW)
            ownership_table.create(session, name, owner)

    async def main() -> T:
        store = Store(config.database_url, config.node.data_dir)
        store.bind_loop(asyncio.get_running_loop())
        node = Node(config, store)
        pair = Pair(node, SyncClient(node), Hooks(node))
        try:
            await store.write(create)
            return await body(pair)
        finally:
            await pair.hooks.stop()
            await pair.client.close()
            await asyncio.to_thread(store.close)

    return asyncio.run(main())


def rows(pair: Pair) -> Awaitable[dict[str, tuple[str, str, int, str]]]:
    return pair.node.store.read(
        lambda s: {v.account: (v.owner, v.home, v.epoch, v.state) for v in ownership_table.views(s)}
    )


def test_failover_takes_the_partners_accounts_and_tells_the_hook(tmp_path: Path) -> None:
    async def body(pair: Pair) -> None:
        returned = await exchange_at_start(pair.node, pair.client)
        assert not returned.partner_answered and returned.learned == ()
        assert "partner unreachable at start" in pair.node.startup_note
        result = await failover(pair)
        assert result.accounts == ["ann", "bob"]
        assert {(r.owner, r.home, r.epoch, r.state) for r in result.taken} == {
            ("alpha", "beta", 2, "failed_over")
        }
        assert not result.forced_while_partner_answered and result.partner_informed is None
        assert result.hooks == (HookAck("file", True, ""),)
        assert set(result.to_json()) == {
            "taken",
            "forced_while_partner_answered",
            "partner_informed",
            "hooks",
            "seconds",
        }
        assert await rows(pair) == {
            "ann": ("alpha", "beta", 2, "failed_over"),
            "bob": ("alpha", "beta", 2, "failed_over"),
            "cid": ("alpha", "alpha", 1, "normal"),
        }
        told = json.loads((tmp_path / "hook.json").read_text())
        assert told["node"] == "alpha"
        assert [(r["account"], r["owner"], r["epoch"]) for r in told["routes"]] == [
            ("ann", "alpha", 2),
            ("bob", "alpha", 2),
        ]
        # Nothing left to take: no rows, no hook call.
        again = await failover(pair)
        assert again.taken == () and again.hooks == ()
        assert pair.node.counters.values["failovers"] == 2

    run(tmp_path, {"ann": "beta", "bob": "beta", "cid": "alpha"}, body)


def test_a_switchover_the_partner_cannot_take_moves_nothing(tmp_path: Path) -> None:
    async def body(pair: Pair) -> None:
        before = await rows(pair)
        with pytest.raises(PartnerUnreachable):
            await switchover(pair, ["cid"])
        # Refused before the accounts were marked: writes were never held.
        assert await rows(pair) == before
        await pair.node.store.write(
            lambda s: pair.node.guard(s, "cid")  # the fence lets alpha write cid
        )
        with pytest.raises(NoSuchAccount):
            await switchover(pair, ["cid", "nobody"])

    run(tmp_path, {"cid": "alpha"}, body)


def test_moving_a_home(tmp_path: Path) -> None:
    async def body(pair: Pair) -> None:
        # An account without a row is a 404, not an unexpected error (500).
        with pytest.raises(NoSuchAccount):
            await move_home(pair, "nobody", "beta")
        moved = await move_home(pair, "cid", "beta")
        assert (moved.row.home, moved.row.epoch) == ("beta", 2)
        assert not moved.partner_informed  # it learns the row at the next exchange
        assert (await rows(pair))["cid"] == ("alpha", "beta", 2, "normal")

    run(tmp_path, {"cid": "alpha"}, body)
