"""Load a stopped node's store directly through the engine, so benchmarks set up in seconds."""

from __future__ import annotations

import datetime as dt
from typing import Any

import migrations
from engine import accounts, mailbox
from engine.messages import append
from engine.spool import guid_of
from engine.store import Store
from ownership import table as ownership_table
from tests.nodes import Node

__all__ = ["load"]


def load(node: Node, account: str, payloads: list[bytes]) -> None:
    """Create ``account`` (password "pw") on a stopped node and put ``payloads`` in its INBOX."""
    url = f"sqlite:///{node.db_path}"
    node.db_path.parent.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(url)
    store = Store(url, node.workdir / "var" / node.name)
    try:

        def create(s: Any) -> None:
            accounts.create_account(s, account, password="pw")
            ownership_table.create(s, account, node.name)

        store.write_sync(create)
        base = dt.datetime(2023, 11, 14, tzinfo=dt.UTC)
        for start in range(0, len(payloads), 500):
            chunk = payloads[start : start + 500]
            dirs = store.spool.put_many((guid_of(p), p) for p in chunk)

            def fill(s: Any, chunk: list[bytes] = chunk, start: int = start) -> None:
                acct = accounts.get_account(s, account)
                box = mailbox.get_mailbox(s, acct, "INBOX")
                for i, data in enumerate(chunk):
                    when = base + dt.timedelta(seconds=start + i)
                    append(s, acct, box, guid=guid_of(data), size=len(data), internaldate=when)

            store.write_sync(fill, dirs=dirs)
    finally:
        store.close()
