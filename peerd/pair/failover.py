"""Ownership changes in the daemon: failover, switchover, failback, return.

How this works:

- **Return** (:func:`exchange_at_start`): before a node serves anything it
  sends its ownership rows to the partner and adopts every row the partner
  knows at a higher epoch. Accounts the partner took over while we were down
  become replicas here; the rolling worker then finds it no longer owns them,
  asks the partner to sync them back, and the partner's sync copies any mail
  we accepted and never replicated (the no-loss rule). If the partner cannot
  be reached, we serve the accounts we owned at our last known epoch, and
  ``status`` says so; the exchange is retried in the background until the
  partner answers. Rows left ``moving`` by a switchover a crash cut short
  are released first, and rows of deleted accounts the partner has
  forgotten too are dropped.
- **Failover** (``POST /v1/failover``): on the survivor, every account the
  partner owns becomes ours at epoch + 1, state ``failed_over``. Refused while
  the partner answers, unless forced (use switchover then); forced, the
  partner is sent the new rows at once, so it stops taking writes for them
  now rather than at its next refused sync.
- **Switchover** (``POST /v1/switchover``), both up, run on the owner: mark the
  accounts ``moving`` (the fence refuses new local writes), drain them to the
  partner (a full sync each), flip the owner at epoch + 1 on both nodes, tell
  the proxies. Asked on the node that does not own them, it is forwarded to
  the owner, with ``to`` set to this node: the owner moves only accounts
  that are not at ``to`` already and never forwards back, so two nodes whose
  tables disagree cannot bounce a request between them.
- **Failback** (``POST /v1/failback``), on the returned node: once it has
  caught up (no sync-log row here or on the partner for the accounts to
  move: nothing it accepted is still to be handed over, nothing the owner
  took is still to reach it), asks the partner to switch over every account
  whose home is this node. Otherwise :class:`~ownership.errors.NotCaughtUp`,
  naming what is pending.

Failover, switchover and failback call every proxy hook of the node they run
on (:mod:`peerd.pair.hooks`) with the routes that changed and report which
acknowledged; a forwarded request reports the partner's hooks too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from functools import partial
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy.orm import Session

from engine.errors import EngineError, InvalidArgument
from ownership import table as ownership_table
from ownership.errors import NotCaughtUp, PartnerReachable, PartnerUnreachable, UnknownNode
from ownership.fence import row_view
from peerd.control.api import NODE_KEY, json_body, pending_json
from peerd.control.openapi import OPERATIONS, Operation
from peerd.node.node import Node
from peerd.pair.hooks import HOOKS_KEY, Hooks, routes_for
from peerd.replication.client import PartnerDown, SyncClient, exchange_rows

__all__ = ["add_routes", "check_caught_up", "exchange_at_start"]

log = logging.getLogger("peerd.pair.failover")

CLIENT: web.AppKey[SyncClient] = web.AppKey("failover_sync_client", SyncClient)


async def partner_answers(client: SyncClient, timeout: float = 2.0) -> bool:
    try:
        await asyncio.wait_for(client.hello(), timeout)
    except (PartnerDown, EngineError, TimeoutError):
        return False
    return True


async def exchange_at_start(node: Node, client: SyncClient) -> None:
    released = await node.store.write(lambda s: ownership_table.release_interrupted(s, node.name))
    pruned = await node.store.write(ownership_table.prune_deleted)
    if pruned:
        log.info("at start: dropped the rows of deleted accounts %s", ", ".join(pruned))
    if released:
        log.warning(
            "at start: %d account(s) were left moving by an interrupted switchover; "
            "taking their writes again: %s",
            len(released),
            ", ".join(released),
        )
    try:
        changed = await asyncio.wait_for(exchange_rows(node, client), 5)
    except (PartnerDown, EngineError, TimeoutError) as exc:
        node.startup_note = (
            f"partner unreachable at start ({exc}); serving only the accounts this node "
            "owned at its last known epoch"
        )
        log.warning("%s", node.startup_note)
        # Keep trying in the background: both nodes of a pair often start
        # together (a power cut), each before the other listens.
        task = asyncio.create_task(_exchange_once_reachable(node, client), name="exchange")
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
        return
    node.startup_note = (
        f"ownership exchanged with the partner at start; {len(changed)} row(s) learned"
    )
    await _hand_over(node, client, changed)


# Strong references to background tasks (the loop keeps only weak ones);
# asyncio.run cancels whatever is left when the daemon stops.
_BACKGROUND: set[asyncio.Task[None]] = set()


async def _exchange_once_reachable(node: Node, client: SyncClient) -> None:
    delay = 0.5
    maxwait = max(1.0, node.config.sync.sync_reconnect_maxwait.total_seconds())
    while True:
        await asyncio.sleep(delay)
        try:
            changed = await asyncio.wait_for(exchange_rows(node, client), 5)
        except (PartnerDown, EngineError, TimeoutError):
            delay = min(maxwait, delay * 2)
            continue
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        node.startup_note = (
            f"partner unreachable at start; ownership exchanged when it answered at {stamp}, "
            f"{len(changed)} row(s) learned"
        )
        log.warning("%s", node.startup_note)
        await _hand_over(node, client, changed)
        return


async def _hand_over(node: Node, client: SyncClient, changed: list[str]) -> None:
    """Accounts the partner owns now: ask it to pull what we hold of them."""
    for account in changed:
        log.warning("%s is owned by the partner now; this node is its replica", account)
    if changed:
        try:
            await client.call("request_sync", _json({"accounts": changed}), compressed=False)
        except (PartnerDown, EngineError) as exc:
            log.warning("could not ask the partner to sync %d account(s): %s", len(changed), exc)


def _json(value: Any) -> bytes:
    from engine.syncwire import encode_json

    return encode_json(value)


async def partner_api(node: Node, method: str, path: str, body: Any = None) -> Any:
    config = node.config
    if not config.partner.api:
        raise PartnerUnreachable("no [partner] api configured")
    token = config.partner.token or config.api.token
    timeout = aiohttp.ClientTimeout(total=600)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(
                method,
                config.partner.api.rstrip("/") + path,
                json=body,
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            answer = await response.json(content_type=None)
            if response.status >= 400:
                detail = answer.get("detail", "") if isinstance(answer, dict) else ""
                raise PartnerUnreachable(f"partner refused {path}: {response.status} {detail}")
            return answer
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise PartnerUnreachable(f"partner API unreachable: {exc}") from exc


# -- routes -----------------------------------------------------------------------


async def owner_route(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    account = request.match_info["account"]

    def read(session: Session) -> dict[str, Any]:
        row = ownership_table.get(session, account)
        if row is None:
            from engine.errors import NoSuchAccount

            raise NoSuchAccount(f"no such account: {account}")
        body = row_view(row).to_json()
        body["reason"] = row.reason
        body["updated_at"] = row.updated_at.isoformat()
        return body

    return web.json_response(await node.store.read(read))


async def tell_partner(node: Node, client: SyncClient, why: str) -> bool:
    """Send our ownership rows now (adopting its newer ones); False if it did not answer.

    A node that just gave accounts away must not leave the partner unaware:
    until it learns, both refuse writes for them. A few quick tries, then
    the operator is told (the answer says ``partner_informed: false``).
    """
    tries = 3
    for attempt in range(1, tries + 1):
        try:
            await exchange_rows(node, client)
            return True
        except (PartnerDown, EngineError) as exc:
            log.warning("%s: sending ownership rows failed (try %d): %s", why, attempt, exc)
        if attempt < tries:
            await asyncio.sleep(0.2 * attempt)
    return False


async def failover_route(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    client = request.app[CLIENT]
    hooks = request.app[HOOKS_KEY]
    data = await json_body(request)
    force = data.get("force", False)
    if not isinstance(force, bool):
        raise InvalidArgument("force must be true or false")
    if not node.partner:
        raise UnknownNode("this node has no partner to take over from")
    reachable = await partner_answers(client)
    if reachable and not force:
        raise PartnerReachable(
            f"{node.partner} answers on the sync channel: use switchover, or --force"
        )
    started = time.perf_counter()

    def take(session: Session) -> list[dict[str, Any]]:
        rows = ownership_table.take_over(session, node.name, node.partner, "failover")
        session.flush()
        return [row_view(r).to_json() for r in rows]

    taken = await node.store.write(take)
    accounts = [str(t["account"]) for t in taken]
    node.counters.inc("failovers")
    log.warning("failover: took %d account(s) from %s", len(taken), node.partner)
    await node.close_sessions(accounts)
    informed = None
    if reachable and taken:
        # Forced while the partner answers: it would keep taking writes for
        # these accounts until its next sync is refused. Tell it now.
        informed = await tell_partner(node, client, "forced failover")
    acked = await hooks.notify(await routes_for(node, accounts))
    return web.json_response(
        {
            "taken": taken,
            "forced_while_partner_answered": reachable,
            "partner_informed": informed,
            "hooks": acked,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )


async def _switchover_accounts(node: Node, data: dict[str, Any]) -> list[str]:
    accounts = data.get("accounts")
    all_from = data.get("all_from")
    if accounts is not None and all_from is not None:
        raise InvalidArgument("give accounts or all_from, not both")
    if accounts is None and isinstance(all_from, str):
        if all_from not in (node.name, node.partner):
            raise UnknownNode(f"{all_from!r} is neither {node.name} nor {node.partner}")
        return list(
            await node.store.read(
                lambda s: [r.account for r in ownership_table.list_rows(s, owner=all_from)]
            )
        )
    if not isinstance(accounts, list) or not all(isinstance(a, str) for a in accounts):
        raise InvalidArgument("give accounts (a list) or all_from (a node name)")
    return accounts


async def switchover_route(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    client = request.app[CLIENT]
    hooks = request.app[HOOKS_KEY]
    data = await json_body(request)
    accounts = await _switchover_accounts(node, data)
    target = data.get("to")
    if target is not None and target not in (node.name, node.partner):
        raise UnknownNode(f"{target!r} is neither {node.name} nor {node.partner}")
    rows = await node.store.read(
        lambda s: {a: (r.owner if (r := ownership_table.get(s, a)) else None) for a in accounts}
    )
    missing = [a for a, owner in rows.items() if owner is None]
    if missing:
        from engine.errors import NoSuchAccount

        raise NoSuchAccount(f"no such account: {', '.join(missing)}")
    already = [a for a, owner in rows.items() if target is not None and owner == target]
    theirs = [a for a, owner in rows.items() if owner != node.name and a not in already]
    ours = [a for a, owner in rows.items() if owner == node.name and a not in already]
    result: dict[str, Any] = {
        "moved": [],
        "already": already,
        "forwarded": None,
        "partner_informed": None,
        "hooks": [],
    }
    changed: list[str] = []
    started = time.perf_counter()
    if theirs:
        # The owner runs a switchover; ask it. ``to`` keeps it from
        # forwarding back if its table disagrees with ours.
        forwarded = await partner_api(
            node, "POST", "/v1/switchover", {"accounts": theirs, "to": node.name}
        )
        result["forwarded"] = forwarded
        changed += [str(r["account"]) for r in forwarded.get("moved", [])]
        if changed and not forwarded.get("partner_informed", True):
            # The owner could not send us the new rows; fetch them ourselves
            # before telling our proxies.
            result["partner_informed"] = await tell_partner(node, client, "switchover")
    if ours:
        if not await partner_answers(client):
            raise PartnerUnreachable(
                f"{node.partner} does not answer: a switchover needs it (use failover)"
            )
        previous = await node.store.write(lambda s: ownership_table.mark_moving(s, ours, node.name))
        moving = list(previous)
        await node.close_sessions(moving)
        try:
            for account in moving:
                # Drain: a full sync while local writes are refused. Repeat
                # until nothing is left in the log for it.
                for _ in range(3):
                    await client.sync_account(account)
                    depth = await node.store.read(partial(_depth, account=account))
                    if depth == 0:
                        break
        except EngineError:
            await node.store.write(lambda s: ownership_table.unmark_moving(s, previous))
            raise

        def flip(session: Session) -> list[dict[str, Any]]:
            out = []
            for account in moving:
                row = ownership_table.set_owner(
                    session,
                    account,
                    node.partner,
                    state="normal",
                    reason=f"switchover from {node.name}",
                )
                out.append(row_view(row).to_json())
            return out

        flipped = await node.store.write(flip)
        node.counters.inc("switchovers")
        result["moved"] = flipped
        result["partner_informed"] = await tell_partner(node, client, "switchover")
        changed += moving
    result["hooks"] = await hooks.notify(await routes_for(node, changed))
    result["seconds"] = round(time.perf_counter() - started, 3)
    return web.json_response(result)


def _depth(session: Session, account: str) -> int:
    from engine import synclog

    return synclog.depth(session, account)


def _listing(items: list[str], limit: int = 10) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


async def check_caught_up(node: Node, accounts: list[str], grace: float = 2.0) -> None:
    """Raise :class:`NotCaughtUp` unless neither node has a sync-log row for ``accounts``.

    Here, a row is a change this node accepted and has not handed to the
    owner yet (it returned with unreplicated mail); on the partner, a change
    the owner made that has not reached this replica. Either way the replica
    here is behind, and moving the accounts now would make them wait for the
    drain (or, if it failed, leave them behind). A row can also be a sync in
    flight, acknowledged milliseconds later: ``grace`` seconds of looking
    again keep that from refusing a node that is in fact caught up.
    """
    wanted = set(accounts)
    deadline = time.monotonic() + grace
    while True:
        here = await node.store.read(lambda s: pending_json(s, accounts))
        answer = await partner_api(node, "GET", "/v1/synclog")
        listed = answer.get("pending", []) if isinstance(answer, dict) else []
        there = [p for p in listed if isinstance(p, dict) and p.get("account") in wanted]
        if not here and not there:
            return
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.1)
    words = [
        f"{p['account']}: {p['changes']} change(s) here not yet handed to {node.partner} "
        f"(oldest {p['oldest']})"
        for p in here
    ] + [
        f"{p['account']}: {p['changes']} change(s) on {node.partner} not yet replicated "
        f"here (oldest {p['oldest']})"
        for p in there
    ]
    raise NotCaughtUp(
        f"{node.name} has not caught up with {node.partner}: {_listing(words)}. "
        "Retry once `peerctl status -u USER` shows sync log depth 0 on both nodes "
        f"(`peerctl replicate -u USER` on {node.partner} syncs one now)",
        [dict(p, node=node.name) for p in here] + [dict(p, node=node.partner) for p in there],
    )


async def failback_route(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    client = request.app[CLIENT]
    hooks = request.app[HOOKS_KEY]
    accounts = await node.store.read(
        lambda s: [
            r.account
            for r in ownership_table.list_rows(s)
            if r.home == node.name and r.owner != node.name
        ]
    )
    if not accounts:
        return web.json_response(
            {
                "requested": [],
                "partner": None,
                "hooks": [],
                "detail": "every account whose home is here is here",
            }
        )
    started = time.perf_counter()
    await check_caught_up(node, accounts)
    answer = await partner_api(
        node, "POST", "/v1/switchover", {"accounts": accounts, "to": node.name}
    )
    moved = [str(r["account"]) for r in answer.get("moved", [])]
    informed = None
    if moved and not answer.get("partner_informed", True):
        # The partner flipped them but could not tell us: ask for the rows,
        # or our proxies would be told the old owner.
        informed = await tell_partner(node, client, "failback")
    acked = await hooks.notify(await routes_for(node, moved))
    return web.json_response(
        {
            "requested": accounts,
            "partner": answer,
            "partner_informed": informed,
            "hooks": acked,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )


async def move_route(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    client = request.app[CLIENT]
    account = request.match_info["name"]
    data = await json_body(request)
    target = data.get("to")
    if target not in (node.name, node.partner):
        raise UnknownNode(f"{target!r} is neither {node.name} nor {node.partner}")

    def write(session: Session) -> dict[str, Any]:
        row = ownership_table.set_home(session, account, str(target))
        return row_view(row).to_json()

    row = await node.store.write(write)
    try:
        await exchange_rows(node, client)
    except (PartnerDown, EngineError) as exc:
        log.warning("home of %s changed; the partner learns it later: %s", account, exc)
    return web.json_response(row)


OPERATIONS.extend(
    [
        Operation("get", "/v1/owner/{account}", "An account's ownership row", responses=(200, 404)),
        Operation(
            "post",
            "/v1/failover",
            "Take every account the (dead) partner owns",
            body={
                "type": "object",
                "properties": {"force": {"type": "boolean"}},
                "additionalProperties": False,
            },
            responses=(200, 409, 422),
        ),
        Operation(
            "post",
            "/v1/switchover",
            "Move accounts to the partner (planned, both up)",
            body={
                "type": "object",
                "properties": {
                    "accounts": {"type": "array", "items": {"type": "string", "minLength": 1}},
                    "all_from": {"type": "string", "minLength": 1},
                    "to": {"type": "string", "minLength": 1},
                },
                "additionalProperties": False,
            },
            responses=(200, 404, 409, 422, 503),
        ),
        Operation(
            "post",
            "/v1/failback",
            "Bring home every account whose home is this node, once it has caught up",
            responses=(200, 409, 503),
        ),
        Operation(
            "post",
            "/v1/accounts/{name}/move",
            "Change an account's home",
            body={
                "type": "object",
                "required": ["to"],
                "properties": {"to": {"type": "string", "minLength": 1}},
                "additionalProperties": False,
            },
            responses=(200, 404, 422),
        ),
    ]
)


def add_routes(app: web.Application, client: SyncClient, hooks: Hooks) -> None:
    app[CLIENT] = client
    app[HOOKS_KEY] = hooks
    app.router.add_get("/v1/owner/{account}", owner_route)
    app.router.add_post("/v1/failover", failover_route)
    app.router.add_post("/v1/switchover", switchover_route)
    app.router.add_post("/v1/failback", failback_route)
    app.router.add_post("/v1/accounts/{name}/move", move_route)
