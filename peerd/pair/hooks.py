"""Push routing changes to proxies: HTTP hooks and commands, retried until they take.

How this works: ``[[routing.hooks]]`` in the config lists hooks, each with a
``url`` (an HTTP POST of ``{"routes": [...]}``, acknowledged by any 2xx) or a
``command`` (run with the same JSON on standard input, acknowledged by exit
status 0; e.g. a script that rewrites a Postfix map and reloads). Failover,
switchover and failback call every hook and report which acknowledged; a hook
that failed is retried in the background with back-off (1 s doubling to 60 s),
each retry carrying the accounts' routes as they are at that moment, and its
state (ok, failures, last error, accounts waiting) shows in ``status`` and
``/metrics`` (:meth:`Hooks.status`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from sqlalchemy.orm import Session

from ownership import table as ownership_table
from peerd.node.backoff import Backoff
from peerd.node.config import Address, ProxyHook
from peerd.node.node import Node

__all__ = ["AccountRoute", "HookAck", "HookStatus", "Hooks", "address_of", "route_of", "routes_for"]

log = logging.getLogger("peerd.pair.hooks")


@dataclass(slots=True)
class HookState:
    """One hook as ``status`` shows it.

    ``pending`` holds account names, not routes: a retry sends each account's
    route as the ownership table has it then, so a retry can never tell a
    proxy an owner older than one a later call already delivered.
    """

    ok: bool = True
    failures: int = 0
    last_error: str = ""
    last_ok_at: str | None = None
    pending: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class HookStatus:
    """One hook in ``status`` (``proxy_hooks``) and ``peerd_proxy_hook_ok``."""

    ok: bool
    failures: int
    last_error: str
    last_ok_at: str | None
    pending: int

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_ok_at": self.last_ok_at,
            "pending": self.pending,
        }


@dataclass(frozen=True, slots=True)
class HookAck:
    """Whether one hook acknowledged a call (``hooks`` in a pair operation's answer)."""

    hook: str
    acknowledged: bool
    error: str

    def to_json(self) -> dict[str, Any]:
        return {"hook": self.hook, "acknowledged": self.acknowledged, "error": self.error}

    @classmethod
    def from_json(cls, value: Any) -> HookAck:
        if not isinstance(value, dict):
            raise ValueError("a hook acknowledgement must be an object")
        return cls(str(value["hook"]), bool(value["acknowledged"]), str(value.get("error", "")))


@dataclass(frozen=True, slots=True)
class AccountRoute:
    """Where proxies reach an account: its owner and the owner's addresses."""

    account: str
    owner: str
    epoch: int
    state: str
    imap: str | None
    pop3: str | None
    lmtp: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "owner": self.owner,
            "epoch": self.epoch,
            "state": self.state,
            "imap": self.imap,
            "pop3": self.pop3,
            "lmtp": self.lmtp,
        }


RETRY_FIRST, RETRY_MAX = 1.0, 60.0


class Hooks:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.hooks = node.config.routing.hooks
        self.state = {h.name: HookState() for h in self.hooks}
        self.tasks: set[asyncio.Task[None]] = set()

    def configure(self, hooks: tuple[ProxyHook, ...]) -> None:
        """The hooks of a reloaded config (SIGHUP): the next pair operation
        calls these; a hook kept by name keeps its state."""
        self.hooks = hooks
        self.state = {h.name: self.state.get(h.name, HookState()) for h in hooks}

    async def call(
        self,
        hook: ProxyHook,
        routes: list[AccountRoute],
        renamed: dict[str, str] | None = None,
    ) -> str:
        """'' when acknowledged, else why not. ``renamed``: old name -> new
        name (an account rename: the old name has no route any more)."""
        payload: dict[str, Any] = {"node": self.node.name, "routes": [r.to_json() for r in routes]}
        if renamed:
            payload["renamed"] = renamed
        body = json.dumps(payload)
        timeout = hook.timeout.total_seconds()
        try:
            if hook.url:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
                    session.post(
                        hook.url, data=body, headers={"Content-Type": "application/json"}
                    ) as response,
                ):
                    return "" if 200 <= response.status < 300 else f"HTTP {response.status}"
            if not hook.command:
                return "the hook has neither url nor command"
            process = await asyncio.create_subprocess_exec(
                *hook.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                _, err = await asyncio.wait_for(process.communicate(body.encode()), timeout)
            except TimeoutError:
                process.kill()
                await process.wait()
                return "timed out"
            return (
                ""
                if process.returncode == 0
                else f"exit {process.returncode}: {err.decode(errors='replace')[:200]}"
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return str(exc) or type(exc).__name__

    async def notify(
        self, routes: list[AccountRoute], renamed: dict[str, str] | None = None
    ) -> tuple[HookAck, ...]:
        """Call every hook with ``routes``; whether each acknowledged. A retry
        sends the routes again (the new names), not ``renamed``."""
        if not routes or not self.hooks:
            return ()
        results = await asyncio.gather(*(self.call(h, routes, renamed) for h in self.hooks))
        accounts = {r.account for r in routes}
        report = []
        for hook, error in zip(self.hooks, results, strict=True):
            self._record(hook, accounts, error)
            if error:
                log.warning(
                    "proxy hook %s failed: %s (retrying in the background)", hook.name, error
                )
                self._retry(hook)
            report.append(HookAck(hook.name, not error, error))
        return tuple(report)

    def _record(self, hook: ProxyHook, accounts: set[str], error: str) -> None:
        state = self.state[hook.name]
        state.ok = not error
        state.last_error = error
        if error:
            state.failures += 1
            state.pending |= accounts
            self.node.counters.inc("proxy_hook_failures")
        else:
            # These accounts' current routes are delivered; older failures
            # for them need no retry.
            state.pending -= accounts
            state.last_ok_at = dt.datetime.now(dt.UTC).isoformat()

    def _retry(self, hook: ProxyHook) -> None:
        async def again() -> None:
            backoff = Backoff(RETRY_FIRST, RETRY_MAX)
            state = self.state[hook.name]
            while state.pending:
                await asyncio.sleep(backoff.next())
                accounts = set(state.pending)
                if not accounts:
                    return
                routes = await routes_for(self.node, sorted(accounts))
                # An account deleted meanwhile has no route left to tell.
                state.pending -= accounts - {r.account for r in routes}
                if not routes:
                    continue
                error = await self.call(hook, routes)
                self._record(hook, {r.account for r in routes}, error)
                if not error:
                    log.info("proxy hook %s acknowledged on retry", hook.name)
                    backoff.reset()

        # A task that has left its loop but not yet run its done-callback
        # would take no new work: only a live one counts.
        if not any(t.get_name() == f"hook-{hook.name}" and not t.done() for t in self.tasks):
            task = asyncio.create_task(again(), name=f"hook-{hook.name}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def status(self) -> dict[str, HookStatus]:
        return {
            name: HookStatus(s.ok, s.failures, s.last_error, s.last_ok_at, len(s.pending))
            for name, s in self.state.items()
        }

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def address_of(node: Node, owner: str, service: str) -> Address | None:
    """Where proxies reach ``service`` (imap, pop3, lmtp) on ``owner``."""
    routing = node.config.routing
    found: Address | None
    if owner == node.name:
        found = getattr(routing, f"{service}_address") or getattr(node.config.listen, service)
    else:
        found = getattr(routing, f"partner_{service}")
    return found


async def routes_for(node: Node, accounts: list[str]) -> list[AccountRoute]:
    """The routes of ``accounts`` as the ownership table has them now (none for
    an account without a row)."""

    def read(session: Session) -> list[AccountRoute]:
        out = []
        for account in accounts:
            row = ownership_table.view(session, account)
            if row is not None:
                out.append(route_of(node, account, row.owner, row.epoch, row.state))
        return out

    return await node.store.read(read)


def route_of(node: Node, account: str, owner: str, epoch: int, state: str) -> AccountRoute:
    def at(service: str) -> str | None:
        where = address_of(node, owner, service)
        return str(where) if where else None

    return AccountRoute(account, owner, epoch, state, at("imap"), at("pop3"), at("lmtp"))
