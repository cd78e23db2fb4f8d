"""The partner as the pair operations reach it: the sync channel and its control API.

How this works: a :class:`Pair` is what every pair operation is given: this
node, its sync client (the partner's sync listener) and its proxy hooks.
:func:`partner_answers` asks the sync listener ``hello``; :func:`tell_partner`
exchanges ownership rows at once (a node that just gave accounts away must
not leave the partner unaware); :func:`partner_api` calls the partner's
control API (``[partner] api``), e.g. to forward a switchover to the owner.
:func:`exchange_rows` is the exchange itself: the sync listener's
``ownership`` request (``docs/protocol.md``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from sqlalchemy.orm import Session

from engine.errors import EngineError, SyncProtocolError
from engine.syncwire import decode_json, encode_json
from ownership import table as ownership_table
from ownership.errors import PartnerUnreachable
from ownership.rows import parse_row
from peerd.node.node import Node
from peerd.pair.hooks import Hooks
from peerd.replication.client import SyncClient

__all__ = [
    "Pair",
    "exchange_rows",
    "partner_answers",
    "partner_api",
    "partner_knows",
    "tell_partner",
]

log = logging.getLogger("peerd.pair.partner")

# How long the partner's control API may take (a forwarded switchover drains).
PARTNER_API_TIMEOUT = 600.0
# An LMTP RCPT waits for this lookup: short, and 4xx when it runs out.
PARTNER_LOOKUP_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class Pair:
    """This node and the ways to reach its partner and its proxies."""

    node: Node
    client: SyncClient
    hooks: Hooks


async def partner_answers(client: SyncClient, timeout: float = 2.0) -> bool:
    """True if the partner's sync listener answers ``hello`` within ``timeout``."""
    try:
        await asyncio.wait_for(client.hello(), timeout)
    except (EngineError, TimeoutError):
        return False
    return True


async def exchange_rows(node: Node, client: SyncClient) -> list[str]:
    """Send all our ownership rows; adopt the partner's newer ones.

    Returns the accounts whose owner changed to someone else here.
    """
    rows = await node.store.read(lambda s: [v.to_json() for v in ownership_table.views(s)])
    raw = await client.call("ownership", encode_json({"rows": rows}), compressed=False)
    answer = decode_json(raw).get("rows", [])
    theirs = []
    for item in answer if isinstance(answer, list) else []:
        try:
            theirs.append(parse_row(item))
        except SyncProtocolError as exc:
            log.warning("ownership exchange: %s skipped: %s", node.partner, exc.message)

    def adopt(session: Session) -> list[str]:
        before = ownership_table.views_of(session, [row.account for row in theirs])
        mine = {name for name, view in before.items() if view.owner == node.name}
        learned = ownership_table.adopt_views(session, theirs, f"learned from {node.partner}")
        changed = (
            row.account
            for row, new in zip(theirs, learned, strict=True)
            if new and row.account in mine and row.owner != node.name
        )
        return list(dict.fromkeys(changed))

    return await node.store.write(adopt)


async def tell_partner(pair: Pair, why: str, tries: int = 3) -> bool:
    """Send our ownership rows now (adopting its newer ones); False if it did not answer.

    Until the partner learns, both nodes refuse writes for the accounts that
    moved. A few quick tries, then the operator is told (the answer says
    ``partner_informed: false``).
    """
    for attempt in range(1, tries + 1):
        try:
            await exchange_rows(pair.node, pair.client)
            return True
        except EngineError as exc:
            log.warning("%s: sending ownership rows failed (try %d): %s", why, attempt, exc)
        if attempt < tries:
            await asyncio.sleep(0.2 * attempt)
    return False


async def partner_api(node: Node, method: str, path: str, body: Any = None) -> Any:
    """Call the partner's control API; its JSON answer. Any failure, a refusal
    included, is :class:`~ownership.errors.PartnerUnreachable`."""
    config = node.config
    if not config.partner.api:
        raise PartnerUnreachable("no [partner] api configured")
    token = config.partner.token or config.api.token
    timeout = aiohttp.ClientTimeout(total=PARTNER_API_TIMEOUT)
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


async def partner_knows(node: Node, names: Sequence[str]) -> bool | None:
    """Whether the partner has an account named one of ``names``: True or
    False, or None when it cannot tell (no ``[partner] api``, unreachable,
    any other answer). LMTP asks before it answers ``550`` for a recipient
    this node does not know: an account just created there reaches us only
    with the next sync."""
    config = node.config
    if not config.partner.api:
        return None
    token = config.partner.token or config.api.token
    timeout = aiohttp.ClientTimeout(total=PARTNER_LOOKUP_TIMEOUT)
    base = config.partner.api.rstrip("/") + "/v1/accounts/"
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for name in names:
                async with session.get(
                    base + quote(name, safe=""), headers={"Authorization": f"Bearer {token}"}
                ) as response:
                    if response.status == 200:
                        return True
                    if response.status != 404:
                        return None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.info("asking %s about %s failed: %s", node.partner, ", ".join(names), exc)
        return None
    return False
