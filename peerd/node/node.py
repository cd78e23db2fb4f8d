"""The node: the store plus this node's identity and policy, as services see it.

How this works: the services (LMTP, IMAP, POP3, the control API, the sync
listener) never reach into the database on their own. They hold a
:class:`Node`, which owns the :class:`~engine.store.Store`, knows the node's
name and partner, applies the ownership fence, verifies passwords, and
counts what the daemon reports in ``status`` and ``/metrics``. Dependencies
run one way: peerd → ownership → engine.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from engine import accounts as engine_accounts
from engine.dbcheck import DbCheck
from engine.errors import EngineError, InvalidArgument, NoSuchAccount
from engine.models import Account
from engine.passwords import hash_password, needs_rehash, verify_password
from engine.store import Store
from engine.synclog import Change
from ownership import table as ownership_table
from ownership.errors import NotOwner
from peerd.node import maillog
from peerd.node.config import Config
from peerd.node.damage import DamageBook
from peerd.node.fairqueue import FairSlots
from peerd.node.inputbudget import InputBudget
from peerd.node.throttle import FailureThrottle

__all__ = ["AuthResult", "Node"]

log = logging.getLogger("peerd.node.node")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The outcome of a login attempt; ``owner`` is set when the account lives elsewhere."""

    ok: bool
    account: str
    owner: str | None = None
    epoch: int = 0
    throttled: bool = False  # refused unchecked: too many recent failures


@dataclass(slots=True)
class Counters:
    values: Counter[str] = field(default_factory=Counter)

    def inc(self, name: str, n: int = 1) -> None:
        self.values[name] += n


class Node:
    """One peerd node: configuration, store, fence and counters."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.name = config.node.name
        self.partner = config.partner.name
        self.started = time.time()
        self.counters = Counters()
        # Bodies known damaged here until repaired (peerd.node.damage).
        self.damage = DamageBook(config.node.data_dir / "damage.json", self.counters)
        # The last database integrity check (at start, or asked for).
        self.db_check: DbCheck | None = None
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Hooks later parts plug in: called after a delivery committed
        # (synchronous replication waits there), and when ownership moves.
        self.after_delivery: list[Callable[[list[str]], Awaitable[None]]] = []
        # Called with the accounts whose ownership is changing (IMAP/POP3
        # close their sessions with BYE [UNAVAILABLE]): by failover and
        # switchover as they go, and after any committed row change that
        # leaves an account no longer served here (a row learned from the
        # partner: a failover forced while this node was up).
        self.on_ownership_change: list[Callable[[list[str]], Awaitable[None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.watch_ownership(self._rows_changed)
        # What the ownership exchange at start found (peerd.pair.returning),
        # shown as ``startup`` in ``status``.
        self.startup_note = ""
        auth = config.auth
        self.login_failures = FailureThrottle(auth.failure_window.total_seconds())
        # Password checks wait here, queued per client address (a flood from
        # one address waits behind itself, not in front of everyone).
        self._hashing = FairSlots(auth.max_concurrent_hashes)
        # Client input held in memory, whatever the number of connections
        # (IMAP and ManageSieve literals, control API and sync request bodies).
        limits = config.limits
        self.input_budget = InputBudget(
            limits.input_memory,
            per_key=limits.input_memory_per_account,
            wait=limits.input_wait.total_seconds(),
            count=self.counters.inc,
        )

    # -- the fence ---------------------------------------------------------

    def guard(self, session: Session, account: str) -> None:
        """Raise :class:`NotOwner` unless this node may write ``account`` now.

        Called inside the writing transaction, so a switchover that commits
        between a check and a write cannot slip a write past the fence.
        """
        ownership_table.check_owner(session, account, self.name)

    async def write_owned(
        self, account: str, fn: Callable[[Session, Account], T], **kwargs: Any
    ) -> T:
        """Run ``fn(session, account_row)`` in the next group commit, behind the fence.

        Every write a service or the control API makes for one account goes
        through here: the account is looked up and :meth:`guard` runs inside the
        same transaction as ``fn``, so no write path can forget the fence and a
        switchover that commits first always wins. ``kwargs`` go to
        :meth:`engine.store.Store.write`.
        """

        def fenced(session: Session) -> T:
            row = engine_accounts.get_account(session, account)
            self.guard(session, row.name)
            return fn(session, row)

        return await self.store.write(fenced, **kwargs)

    async def write_owned_many(
        self, accounts: Iterable[str], fn: Callable[[Session, frozenset[str]], T]
    ) -> T:
        """:meth:`write_owned` for a write that touches many accounts (the
        ``\\Recent`` claim of one wake-up of IMAP sessions): ``fn(session,
        allowed)`` runs in the next group commit with the accounts the fence
        lets this node write now (:meth:`guard_many`, in the same transaction);
        ``fn`` must leave the others alone."""
        names = frozenset(accounts)

        def fenced(session: Session) -> T:
            refused = self.guard_many(session, names)
            return fn(session, names - refused.keys())

        return await self.store.write(fenced)

    def guard_many(self, session: Session, accounts: Iterable[str]) -> dict[str, NotOwner]:
        """:meth:`guard` for many accounts in one query: the refusals, by account."""
        return ownership_table.fence_many(session, accounts, self.name)

    def watch_ownership(self, callback: Callable[[list[str]], None]) -> Callable[[], None]:
        """Call ``callback`` with the accounts after every commit that changed
        their ownership rows (on the store's loop); returns what stops it."""

        def listener(changes: list[Change]) -> None:
            accounts = sorted({c.account for c in changes if c.kind == ownership_table.CHANGED})
            if accounts:
                callback(accounts)

        self.store.add_listener(listener)
        return lambda: self.store.remove_listener(listener)

    def _rows_changed(self, accounts: list[str]) -> None:
        if not self.on_ownership_change:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # told outside the event loop: no sessions to close there
        task = loop.create_task(self._close_moved(accounts))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_moved(self, accounts: list[str]) -> None:
        try:
            away = await self.store.read(lambda s: list(self.guard_many(s, accounts)))
        except EngineError as exc:
            log.warning("could not check which accounts moved away: %s", exc.message)
            return
        except Exception:  # the store is closing (the daemon stops)
            log.debug("ownership check after a row change skipped", exc_info=True)
            return
        if away:
            await self.close_sessions(away)

    async def close_sessions(self, accounts: list[str]) -> None:
        """Call every :attr:`on_ownership_change` hook; one that fails does not stop the others."""
        for close in self.on_ownership_change:
            try:
                await close(accounts)
            except Exception:
                log.exception("closing the sessions of %s failed", ", ".join(accounts))

    async def check_owner(self, account: str) -> None:
        await self.store.read(lambda s: ownership_table.check_owner(s, account, self.name))

    # -- authentication ----------------------------------------------------

    async def authenticate(
        self, user: str, password: str, protocol: str = "", rip: str = ""
    ) -> AuthResult:
        """Verify a password; report the owner when it is not this node.

        ``protocol`` names the caller (``imap``, ``pop3``, ``auth_http/imap``)
        and ``rip`` the client's address for the mail log's one line per
        attempt (the line fail2ban reads, :mod:`peerd.node.maillog`). The
        throttle counts failures per account and, when ``rip`` is known, per
        address; a login it refuses is not hashed at all. The password check
        runs off the event loop, at most ``[auth] max_concurrent_hashes`` at
        a time (scrypt is deliberately slow and takes 32 MiB per check),
        waiting in a queue per client address (:mod:`peerd.node.fairqueue`);
        the throttle is asked again when its turn comes.
        """
        result = await self._authenticate(user, password, rip or None)
        maillog.login(result.ok, rip, protocol or "-", user, result.account if result.ok else "")
        return result

    async def _authenticate(self, user: str, password: str, peer: str | None) -> AuthResult:
        # The name as the lookup reads it; one longer than any account name
        # keys by its start (it can be no account: the throttle keeps its
        # keys short).
        account_key = "account:" + user.strip(engine_accounts.NAME_SPACE)[:256].lower()
        ip_key = "ip:" + peer if peer else None
        if self._throttled(account_key, ip_key):
            return AuthResult(False, user, throttled=True)

        lowercase = self.config.accounts.lowercase_names

        def lookup(session: Session) -> tuple[str, str]:
            names = engine_accounts.lookup_names(user, lowercase)
            account = engine_accounts.find_any(session, names)
            if account is None:
                raise NoSuchAccount(f"no such account: {names[0]}")
            return account.name, account.password_hash

        known = True
        try:
            name, stored = await self.store.read(lookup)
        except (NoSuchAccount, InvalidArgument):
            name, stored, known = user, _DUMMY_HASH, False
        async with self._hashing.slot(ip_key or account_key):
            # Failures counted while this attempt waited may have put its
            # address or account over the throttle: refuse it unhashed.
            if self._throttled(account_key, ip_key):
                return AuthResult(False, name, throttled=True)
            # An unknown account costs the same as a real check, so timing
            # does not reveal which accounts exist.
            right = await asyncio.to_thread(verify_password, password, stored)
        if not (right and known):
            self._failed("bad password", account_key, ip_key)
            return AuthResult(False, name)
        try:
            await self.check_owner(name)
        except NotOwner as exc:
            return AuthResult(True, name, owner=exc.owner, epoch=exc.epoch)
        if needs_rehash(stored, self.config.auth.scrypt_cost):
            await self._rehash(name, password, stored, ip_key or account_key)
        return AuthResult(True, name)

    async def hash_password(self, password: str, queue: str = "admin") -> str:
        """A new hash of ``password`` at ``[auth] scrypt_cost``, made off the
        event loop in one of the hashing slots (queued by ``queue``), never
        inside a write of the store: 32 MiB and tens of ms of CPU would hold
        the committer, and every delivery behind it."""
        async with self._hashing.slot(queue):
            return await asyncio.to_thread(hash_password, password, self.config.auth.scrypt_cost)

    async def _rehash(self, name: str, password: str, stored: str, queue: str) -> None:
        """Replace a legacy hash (an imported SHA-crypt one) with the node's
        current scheme now that a login proved the password: a write of the
        owner like ``account passwd``, so the partner gets it by replication.
        Only if the hash is still the one verified (a password change in
        between wins); a failure leaves the old hash, and the login stands."""
        fresh = await self.hash_password(password, queue)

        def replace(session: Session, row: Account) -> bool:
            if row.password_hash != stored:
                return False
            engine_accounts.set_password_hash(session, row.name, fresh)
            return True

        try:
            if await self.write_owned(name, replace):
                log.info("password hash of %s upgraded to the current scheme", name)
        except (EngineError, NotOwner) as exc:
            log.warning("could not upgrade the password hash of %s: %s", name, exc)

    def _throttled(self, account_key: str, ip_key: str | None) -> bool:
        """True (and counted as a throttled failure) if either key is over its limit."""
        auth = self.config.auth
        if self.login_failures.blocked(account_key, auth.max_failures_per_account) or (
            ip_key is not None and self.login_failures.blocked(ip_key, auth.max_failures_per_ip)
        ):
            self.counters.inc("auth_throttled")
            self._failed("throttled", account_key, ip_key)
            return True
        return False

    def _failed(self, reason: str, *keys: str | None) -> None:
        """Count one failed login, and (unless the throttle refused it
        unchecked) count it against the account and the address."""
        self.counters.inc("auth_failures")
        if reason != "throttled":
            for key in keys:
                if key is not None:
                    self.login_failures.fail(key)

    # -- in-flight work, for a clean shutdown ------------------------------

    def begin(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def end(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def drain(self, timeout: dt.timedelta) -> bool:
        """Wait for in-flight deliveries; True if they all finished in time."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout.total_seconds())
        except TimeoutError:
            return False
        return True


_DUMMY_HASH = (
    "$scrypt$ln=15,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
)
