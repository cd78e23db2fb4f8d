"""``peerd rebuild --from-partner``: a fresh store for this node, filled by its partner.

How this works (run on the damaged node, with its daemon stopped; Cyrus does
the same with ``sync_client -A`` onto an empty replica). Each step prints
one line:

1. **Refuse while this node runs**: its control API must not answer
   (``[listen] http``), or two processes would share the store.
2. **The partner takes every account**: it must answer, and it is asked to
   fail over (``POST /v1/failover`` on ``[partner] api``): every account this
   node owned is the partner's from now on, at a higher epoch. The partner
   refuses that while this node's sync listener answers, so a node still
   running cannot be failed over by mistake.
3. **The damaged database is put aside**: SQLite: the file (and its ``-wal``
   and ``-shm``) is renamed ``peerd.db.damaged-<UTC time>``. PostgreSQL: the
   command refuses unless ``[database] url`` names an empty database (create
   one; the damaged one stays for inspection).
4. **The spool is checked in place**: every file is hashed; one whose bytes
   do not match its name is removed, so the partner sends it again. Whole
   files stay, and are not sent again (RESERVE).
5. **A fresh schema** (Alembic) and **the partner's ownership rows** (the
   sync ``ownership`` exchange): this node owns nothing and the fence knows it.
6. **The partner replicates everything**: only the sync listener runs here
   (no LMTP, IMAP, POP3, control API, rolling worker or reconcile: the node
   serves nobody and pushes nothing, so it cannot fight the partner over
   ownership), and the partner is asked for ``replicate --all``
   (``POST /v1/replicate``), again until a pass finds every account in sync.
7. **Done**: the listener stops; the daemon is started as usual. It owns
   nothing until ``peerctl failback`` brings its accounts home.

Changes this node accepted and had not replicated before its database was
damaged are not in the partner's copy; their bytes stay in the spool (the
sweep removes them after its grace) and the old database stays aside.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

import migrations
from engine.db import make_engine, normalize_url
from engine.models import Account, Message
from engine.spool import GUID_RE, guid_of
from engine.store import Store
from ownership import table as ownership_table
from peerd.node.config import Config
from peerd.node.node import Node
from peerd.pair.partner import exchange_rows
from peerd.replication.client import SyncClient
from peerd.replication.server import start_sync_listener

__all__ = ["RebuildNotConfigured", "RebuildRefused", "Rebuilt", "rebuild_from_partner"]

# Passes of ``replicate --all`` on the partner before giving up on convergence.
PASSES = 5


class RebuildRefused(Exception):
    """The rebuild cannot go on; the message says why and what to do."""


class RebuildNotConfigured(RebuildRefused):
    """The node's config names no partner to rebuild from (exit status 2,
    as for any config error)."""


@dataclass(frozen=True, slots=True)
class Rebuilt:
    partner: str
    taken: int  # accounts the partner took over
    accounts: int
    messages: int
    spool_removed: int
    seconds: float


async def _api(
    config: Config, base: str, method: str, path: str, body: Any = None, timeout: float = 30
) -> tuple[int, Any]:
    token = config.partner.token or config.api.token
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    try:
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as session,
            session.request(
                method,
                base.rstrip("/") + path,
                json=body,
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            return response.status, await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        raise ConnectionError(str(exc) or type(exc).__name__) from exc


def _detail(answer: Any) -> str:
    return str(answer.get("detail", answer)) if isinstance(answer, dict) else str(answer)


async def _refuse_if_running(config: Config) -> None:
    if config.listen.http is None:
        return
    try:
        await _api(config, f"http://{config.listen.http}", "GET", "/v1/health", timeout=2)
    except ConnectionError:
        return
    raise RebuildRefused(
        f"peerd is running here (its API answers on {config.listen.http}): "
        "stop it first (systemctl stop peerd)"
    )


def _put_database_aside(config: Config, out: Callable[[str], None]) -> None:
    url = normalize_url(config.database_url)
    if url.startswith("sqlite"):
        path = Path(url.split(":///", 1)[1])
        if not path.exists():
            out(f"database: {path} does not exist; a fresh one is made")
            return
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = path.with_name(f"{path.name}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{path}{suffix}")
            if source.exists():
                os.rename(source, Path(f"{aside}{suffix}"))
        out(f"database: {path} put aside as {aside}")
        return
    engine = make_engine(url)
    try:
        tables = inspect(engine).get_table_names()
    finally:
        engine.dispose()
    if tables:
        where = url.rsplit("@", 1)[-1]
        raise RebuildRefused(
            f"database {where} is not empty: create an empty database (createdb), point "
            "[database] url at it and run the rebuild again; the damaged one stays for inspection"
        )
    out(f"database: {url.rsplit('@', 1)[-1]} is empty; the schema is made there")


def _check_spool(data_dir: Path) -> tuple[int, int]:
    """Hash every spool file; remove those whose bytes do not match their
    name. (files checked, files removed)"""
    root = data_dir / "spool"
    checked = removed = 0
    if not root.is_dir():
        return 0, 0
    for directory in sorted(root.iterdir()):
        if not directory.is_dir() or directory.name == "tmp":
            continue
        for entry in os.scandir(directory):
            if not GUID_RE.match(entry.name):
                continue
            checked += 1
            try:
                with open(entry.path, "rb") as handle:
                    whole = guid_of(handle.read()) == entry.name
            except OSError:
                whole = False
            if not whole:
                os.unlink(entry.path)
                removed += 1
    for leftover in (root / "tmp").glob("*"):
        leftover.unlink(missing_ok=True)
    return checked, removed


def _counts(session: Session) -> tuple[int, int]:
    accounts = session.scalar(select(func.count()).select_from(Account)) or 0
    messages = (
        session.scalar(select(func.count()).select_from(Message).where(Message.expunged.is_(False)))
        or 0
    )
    return int(accounts), int(messages)


async def rebuild_from_partner(config: Config, out: Callable[[str], None] = print) -> Rebuilt:
    """The steps in the module docstring; :class:`RebuildRefused` if one cannot be taken."""
    started = time.perf_counter()
    partner = config.partner.name or "the partner"
    if not config.partner.api or config.sync_partner is None or config.listen.sync is None:
        raise RebuildNotConfigured(
            "a rebuild needs the partner: [partner] api, [sync] sync_host and [listen] sync"
        )
    await _refuse_if_running(config)
    api = config.partner.api
    try:
        status, answer = await _api(config, api, "GET", "/v1/status")
    except ConnectionError as exc:
        raise RebuildRefused(f"{partner} does not answer on {api} ({exc}): it must be up") from exc
    if status != 200:
        raise RebuildRefused(f"{partner} refused GET /v1/status: {status} {_detail(answer)}")
    out(f"partner {answer.get('node', partner)} answers on {api}")

    status, answer = await _api(config, api, "POST", "/v1/failover", {}, timeout=600)
    if status != 200:
        raise RebuildRefused(
            f"{partner} refused to take this node's accounts: {status} {_detail(answer)}"
        )
    taken = [str(r.get("account")) for r in answer.get("taken", [])]
    out(
        f"{partner} took {len(taken)} account(s) this node owned"
        + (f": {', '.join(taken[:10])}" + (" ..." if len(taken) > 10 else "") if taken else "")
    )

    await asyncio.to_thread(_put_database_aside, config, out)
    (config.node.data_dir / "damage.json").unlink(missing_ok=True)
    checked, removed = await asyncio.to_thread(_check_spool, config.node.data_dir)
    out(f"spool: {checked} file(s) checked, {removed} damaged removed (the partner sends them)")

    url = config.database_url
    config.node.data_dir.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(migrations.upgrade, url)
    store = Store(url, config.node.data_dir, flush=config.node.spool_flush)
    store.bind_loop(asyncio.get_running_loop())
    node = Node(config, store)
    client = SyncClient(node)
    runner = None
    try:
        await exchange_rows(node, client)
        rows = await store.read(ownership_table.views)
        mine = [r.account for r in rows if r.owner == config.node.name]
        if mine:
            raise RebuildRefused(
                f"{partner} still says this node owns {', '.join(mine[:10])}: run "
                f"`peerctl failover` on {partner}, then the rebuild again"
            )
        out(f"ownership: {len(rows)} row(s) taken from {partner}; this node owns none")
        where = config.listen.sync
        _, runner = await start_sync_listener(node, where.host, where.port)
        out(f"sync listener on {where}; nothing else runs while {partner} replicates")
        for attempt in range(1, PASSES + 1):
            status, answer = await _api(
                config, api, "POST", "/v1/replicate", {"all": True}, timeout=24 * 3600
            )
            if status != 200:
                raise RebuildRefused(f"{partner} refused replicate --all: {_detail(answer)}")
            errors = answer.get("errors", [])
            synced = len(answer.get("reports", []))
            out(
                f"replicate --all on {partner} (pass {attempt}): {synced} account(s) synced, "
                f"{answer.get('in_sync', 0)} already in sync, {len(errors)} failed"
            )
            if not errors and answer.get("in_sync") == answer.get("accounts"):
                break
        else:
            failed = ", ".join(str(e.get("account")) for e in errors[:10]) or "-"
            raise RebuildRefused(
                f"the accounts did not converge in {PASSES} passes (last failures: {failed}); "
                "run the rebuild again"
            )
        accounts, messages = await store.read(_counts)
    finally:
        if runner is not None:
            await runner.cleanup()
        await client.close()
        await asyncio.to_thread(store.close)
    seconds = round(time.perf_counter() - started, 3)
    out(
        f"rebuilt {config.node.name} from {partner}: {accounts} account(s), {messages} message(s) "
        f"in {seconds} s. Start the daemon (systemctl start peerd); `peerctl failback` there "
        "brings its accounts home"
    )
    return Rebuilt(partner, len(taken), accounts, messages, removed, seconds)
