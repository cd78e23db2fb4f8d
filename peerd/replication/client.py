"""The sync client: what an owner does to bring its partner's replica up to date.

How this works, for one account (the steps are printed in Cyrus's words by
``peerctl replicate -v``):

1. MAILBOXES / USER_SOME: read our summaries and the sync-log rows we are
   about to cover; send the summaries; the replica answers with its own and,
   for each mailbox that differs, its records (all, or a delta since its
   ``sync_base``). Equal mailboxes cost nothing more. Summaries that outgrow
   one request go in parts, answered in pages that fit what we read
   (:mod:`engine.userparts`, sync protocol 2); to a partner that speaks
   only version 1 they go in one request, or the account waits for its
   upgrade with an error that says so.
2. Compare (:mod:`engine.compare`). If the replica holds mail we never had,
   or a UID names two messages, FETCH those bytes, repair here (copy in with
   new UIDs), and start again from 1 — our state changed (the rounds are
   :func:`engine.rounds.converge`).
3. RESERVE: ask which GUIDs the replica lacks; UPLOAD only those, in large
   frame batches (a moved or copied message is never sent again).
4. APPLY: CREATE/RENAME/DELETE mailboxes, EXPUNGE, SETFLAGS/SETSEEN, SUB,
   QUOTA in one request, fenced by our epoch. ENDUSER: the sync-log rows read
   in step 1 are acknowledged (rows changed meanwhile stay).

One keep-alive HTTP session per partner; requests are batched, so a
10,000-message account is a handful of round trips. The first request to a
partner (a ``hello``) settles the protocol version both speak
(:meth:`SyncClient.speak`) and learns its ``sync_max_request``; every
request is cut to the lower limit of the two, every answer read is bounded. ``replicate --all`` sends
the same steps for many accounts per request (:mod:`peerd.replication.batch`).

Why one module of about 640 lines: the steps above share one session, one
account's sync-log rows and one request budget, and read best in order; the
parts that stand alone already live elsewhere (the compare, apply and wire
format in :mod:`engine`, the rounds in :mod:`engine.rounds`, the back-off in
:mod:`peerd.node.backoff`).

The rolling worker takes a fast path first (``fast=True``; :mod:`engine.delta`):
after a sync that left the replica equal to us, we keep the state we pushed
(the mark); the next change to that account that touches only records goes
as one DELTA request (push and new messages together), which the replica
applies only if it is still in the marked state. Anything else, or a 412
from the replica, and the steps above run in full. A 409 from the fence
means the partner owns the account or knows a higher epoch: we adopt its row
(never lowering ours) and stop pushing that account.

A client with a ``channel`` pushes to that backup channel's node
(``[sync.channels.NAME]``) instead, with its own credentials, TLS and sync-log
rows. The steps are the same; the backup's fence takes our ownership row as
any replica's does. With ``sync_log_chain`` it also pushes accounts the
partner owns (the row it sends names the owner); those it never repairs
here: a backup that holds mail we lack is refused, not copied in, since we
do not own the account.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy.orm import Session

from engine import synclog
from engine.apply import apply_repairs
from engine.compare import Push, Repairs, compare
from engine.delta import Delta, mark_of, owner_delta
from engine.errors import (
    PartnerDown,
    PartnerLacksRequest,
    PartnerRejected,
    SyncProtocolError,
    SyncRefused,
    SyncVersionMismatch,
    TemporaryFailure,
    TooLargeForPartner,
)
from engine.rounds import converge
from engine.syncstate import (
    AccountState,
    MailboxSummary,
    account_digests,
    owner_view,
    read_account_state,
)
from engine.syncwire import (
    MAX_REQUEST_HEADER,
    OFF_LOOP,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    USER_PARTS,
    body_budget,
    compress,
    decode_account_state,
    decode_frames,
    decode_json,
    decode_user_page,
    decompress,
    encode_account_state,
    encode_delta,
    encode_frames,
    encode_json,
    encode_push,
    encode_summary,
    encode_user_part,
    peer_max_request,
    peer_protocol,
    split_push,
)
from engine.userparts import Pages, split_summaries
from ownership import table as ownership_table
from ownership.errors import SyncFenced
from ownership.rows import OwnershipView, parse_row, row_view
from peerd.node.config import Address
from peerd.node.node import Node
from peerd.replication.trace import push_steps

__all__ = ["SyncClient", "SyncReport", "size_batches"]

log = logging.getLogger("peerd.sync.client")

UPLOAD_BATCH = 8 << 20
# A push larger than this goes as several APPLY requests (engine.syncwire.split_push):
# each is encoded here and decoded at the partner on an event loop, about 0.1 s
# for 4 MB, so a first sync of a large account never holds either loop long.
APPLY_BATCH = 4 << 20
# GUIDs in one RESERVE request (the partner takes up to 1,000,000).
RESERVE_BATCH = 100_000
# GUIDs in one FETCH request (the partner takes up to 100,000).
FETCH_BATCH = 10_000
# What a message's frame adds to its bytes, for the batches' budgets.
FRAME_HEADER = 64
# UPLOAD requests at the partner at once (client.upload).
UPLOADS_IN_FLIGHT = 2
# The most JSON of summaries one request of USER_SOME in parts carries (each
# is decoded at the partner on its event loop), and of one batch_user_some.
PART_BATCH = 8 << 20
# The most we read of one answer but a page of USER_SOME, which is cut to our
# own sync_max_request (engine.userparts): the bound of every answer before
# the pages, now also on the bytes as they arrive, not only once inflated.
ANSWER_LIMIT = 1 << 31
# A rolling delta's sync-log acknowledgement rides (Store.write's ``ride``)
# for up to this long: it joins the next commit (on a busy owner the next
# delivery's, a few milliseconds later) instead of adding a commit and a
# WAL flush of its own for every message replicated. A change to the same
# account is itself a commit, so it never waits behind the rider.
ACK_RIDE = 0.1


@dataclass(slots=True)
class SyncReport:
    account: str
    steps: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    uploaded: int = 0
    upload_bytes: int = 0
    expunged: int = 0
    setflags: int = 0
    mailboxes_created: int = 0
    mailboxes_deleted: int = 0
    copied_back: int = 0
    reassigned: int = 0
    # Messages the replica had expunged or moved away that came back
    # (the owner still had them: nothing is dropped to make two sides agree).
    resurrected: int = 0
    records_compared: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    refused: str = ""
    repairs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def size_batches(
    guids: Sequence[str], sizes: Sequence[int], budget: int, most: int | None = None
) -> list[list[str]]:
    """``guids`` in order, cut into batches whose messages (each with a frame's
    header) stay within ``budget`` octets and number at most ``most``. A batch
    ends before the message that would take it past the budget; a message
    larger than the budget goes alone (the partner says whether it takes it)."""
    batches: list[list[str]] = []
    size = 0
    for guid, length in zip(guids, sizes, strict=True):
        cost = length + FRAME_HEADER
        if not batches or size + cost > budget or len(batches[-1]) == most:
            batches.append([])
            size = 0
        batches[-1].append(guid)
        size += cost
    return batches


class SyncClient:
    """The owner side of replication to one partner."""

    # A sync acknowledges the sync-log rows it covered: they are this
    # client's (the partner's replication). A copy to another pair's node
    # leaves them to the partner (peerd.directory.transfer).
    owns_sync_log = True

    def __init__(self, node: Node, target: Address | None = None, *, channel: str = "") -> None:
        self.node = node
        sync = node.config.sync
        self.channel = channel
        if channel:
            settings = sync.channels[channel]
            target = Address(settings.sync_host.strip("[]"), settings.sync_port)
        self.target = target or node.config.sync_partner
        self.compress_default = sync.sync_compress
        self._session: aiohttp.ClientSession | None = None
        self._retired: list[aiohttp.ClientSession] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        # account -> (epoch, the state the replica was left in): see engine.delta.
        self._marks: dict[str, tuple[int, AccountState]] = {}
        authname, password = sync.sync_authname, sync.sync_password
        if channel:
            authname = sync.channels[channel].sync_authname or authname
            password = sync.channels[channel].sync_password or password
        token = base64.b64encode(f"{authname}:{password}".encode()).decode()
        self._auth = f"Basic {token}"
        self.bytes_sent = 0
        self.bytes_received = 0
        # Told after every request whether the partner answered (True) or
        # could not be reached (False, why): whoever uses this client (the
        # rolling worker, a reconcile, a manual replicate, the scrub), the
        # worker's view of the partner is the one `status` shows.
        self._reach_listeners: list[Callable[[bool, str], None]] = []
        self.reachable: bool | None = None  # what the last request saw; None: none yet
        # Whether the partner takes batch requests (peerd.replication.batch):
        # None until a batch was tried, False after a 404 (an older release).
        self.batches: bool | None = None
        # The partner's sync_max_request, as its last answer said (None: not yet).
        self.partner_max_request: int | None = None
        # The sync protocol version spoken with the partner (speak(); None: not yet).
        self.version: int | None = None
        self._negotiating = asyncio.Lock()

    def add_reach_listener(self, listener: Callable[[bool, str], None]) -> None:
        self._reach_listeners.append(listener)

    def remove_reach_listener(self, listener: Callable[[bool, str], None]) -> None:
        if listener in self._reach_listeners:
            self._reach_listeners.remove(listener)

    def _reached(self, answered: bool, why: str = "") -> None:
        self.reachable = answered
        for listener in list(self._reach_listeners):
            listener(answered, why)

    def _tls(self) -> tuple[bool, Path | None]:
        """(TLS on, the CA file) for this client's node: the channel's, else [sync]'s."""
        sync = self.node.config.sync
        settings = sync.channels.get(self.channel) if self.channel else None
        if settings is None or settings.sync_tls is None:
            return sync.sync_tls, (settings.sync_tls_ca if settings else None) or sync.sync_tls_ca
        return settings.sync_tls, settings.sync_tls_ca or sync.sync_tls_ca

    @property
    def base(self) -> str:
        if self.target is None:
            raise SyncProtocolError("no partner configured ([sync] sync_host)")
        scheme = "https" if self._tls()[0] else "http"
        return f"{scheme}://{self.target}/sync/v1"

    def _ssl(self) -> ssl.SSLContext | bool:
        tls, ca = self._tls()
        if not tls:
            return False
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
        return context

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # sync_timeout is the connection's idle timeout (Cyrus's): to
            # connect, and between two reads of an answer; a whole request
            # (an 8 MB UPLOAD on a slow link) may take ten times it.
            idle = self.node.config.sync.sync_timeout.total_seconds()
            timeout = aiohttp.ClientTimeout(total=10 * idle, sock_connect=idle, sock_read=idle)
            connector = aiohttp.TCPConnector(limit=8, ssl=self._ssl(), keepalive_timeout=60)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=timeout, auto_decompress=False
            )
        return self._session

    async def close(self) -> None:
        for task in self._closing:
            task.cancel()
        if self._session is not None:
            await self._session.close()
        for retired in self._retired:
            await retired.close()

    async def reconfigure(self) -> None:
        """After a reload (SIGHUP): later requests open a new session with the
        config's TLS settings and timeout; the old one is closed once the
        requests it carries have had their time (``sync_timeout``)."""
        self.compress_default = self.node.config.sync.sync_compress
        self.version = None
        old, self._session = self._session, None
        if old is None:
            return
        self._retired.append(old)

        async def close_later() -> None:
            await asyncio.sleep(self.node.config.sync.sync_timeout.total_seconds())
            self._retired.remove(old)
            await old.close()

        task = asyncio.create_task(close_later(), name="sync-session-retire")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def wire_row(self, row: OwnershipView) -> dict[str, object]:
        """The ownership row as this client's requests carry it (a move
        between pairs names its owner with the pair: peerd.directory.transfer)."""
        return row.to_json()

    def lock(self, account: str) -> asyncio.Lock:
        return self._locks.setdefault(account, asyncio.Lock())

    def mark(self, account: str, epoch: int, state: AccountState | None) -> None:
        """Remember the state a sync left the replica in (``None``: forget it);
        the next change to the account may then go as a delta."""
        if state is None:
            self._marks.pop(account, None)
        else:
            self._marks[account] = (epoch, mark_of(state))

    async def speak(self) -> int:
        """The sync protocol version to speak with the partner: the newest
        both speak, learnt from one ``hello`` the first time (and again
        after the partner refused a version: it may run another release)."""
        if self.version is None:
            async with self._negotiating:
                if self.version is None:
                    self.version = await self._negotiate()
        return self.version

    async def _negotiate(self) -> int:
        """``hello`` in our newest version: a partner that speaks it answers;
        one that does not refuses with ``sync_version`` and names its newest
        in the answer's header (a node of an older release does the same:
        it answers everything in its only version), which we then speak. A
        partner newer than all we speak is refused by :meth:`_exchange`."""
        status, raw, spoken = await self._exchange(
            "hello", b"{}", compressed=False, version=PROTOCOL_VERSION
        )
        if status == 400 and spoken < PROTOCOL_VERSION:
            try:
                refused = decode_json(raw).get("error") == SyncVersionMismatch.code
            except SyncProtocolError:
                refused = False
            if refused:
                log.info(
                    "%s speaks sync protocol %d: requests to it are in that version",
                    self.node.partner or self.target,
                    spoken,
                )
                return spoken
        self._answer("hello", status, raw)
        return PROTOCOL_VERSION

    async def call(
        self,
        path: str,
        body: bytes,
        *,
        compressed: bool,
        report: SyncReport | None = None,
        content_type: str = "application/json",
        timeout: float | None = None,
        version: int | None = None,
        limit: int = ANSWER_LIMIT,
    ) -> bytes:
        """POST one request in ``version`` (default: :meth:`speak`'s) and read
        its answer of at most ``limit`` octets; ``timeout``: seconds for
        this one instead of ``sync_timeout`` (a verify reads whole accounts)."""
        if version is None:
            version = await self.speak()
        status, raw, _ = await self._exchange(
            path,
            body,
            compressed=compressed,
            report=report,
            content_type=content_type,
            timeout=timeout,
            version=version,
            limit=limit,
        )
        return self._answer(path, status, raw)

    async def _exchange(
        self,
        path: str,
        body: bytes,
        *,
        compressed: bool,
        version: int,
        report: SyncReport | None = None,
        content_type: str = "application/json",
        timeout: float | None = None,
        limit: int = ANSWER_LIMIT,
    ) -> tuple[int, bytes, int]:
        """One request and its answer: (status, body, the answer's version)."""
        headers = {
            "Authorization": self._auth,
            "Content-Type": content_type,
            PROTOCOL_HEADER: str(version),
            # The most we read of one answer: a partner answering USER_SOME in
            # parts cuts its pages to it.
            MAX_REQUEST_HEADER: str(self.node.config.sync.sync_max_request),
        }
        if compressed:
            # A large body (an 8 MB UPLOAD) is compressed in a thread: zlib lets
            # go of the interpreter lock, and the loop goes on meanwhile.
            body = (
                compress(body) if len(body) < OFF_LOOP else await asyncio.to_thread(compress, body)
            )
            headers["X-Sync-Encoding"] = "zlib"
        session = await self.session()
        try:
            options: dict[str, Any] = {}
            if timeout is not None:
                options["timeout"] = aiohttp.ClientTimeout(total=timeout)
            async with session.post(
                f"{self.base}/{path}", data=body, headers=headers, **options
            ) as response:
                raw = await _read_at_most(response, limit, path)
                status = response.status
                encoded = response.headers.get("X-Sync-Encoding") == "zlib"
                spoken = response.headers.get(PROTOCOL_HEADER)
                theirs = peer_max_request(response.headers.get(MAX_REQUEST_HEADER))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            down = PartnerDown(f"partner {self.target} unreachable: {exc}")
            self._reached(False, down.message)
            raise down from exc
        self._reached(True)
        if theirs is not None:
            self.partner_max_request = theirs
        self.bytes_sent += len(body)
        self.bytes_received += len(raw)
        self.node.counters.inc("sync_bytes_sent", len(body))
        self.node.counters.inc("sync_bytes_received", len(raw))
        if report is not None:
            report.bytes_sent += len(body)
            report.bytes_received += len(raw)
            report.requests.append(
                f"POST /sync/v1/{path} ({len(body)} bytes) -> {status} ({len(raw)} bytes)"
            )
        if encoded:
            raw = (
                decompress(raw, limit)
                if len(raw) < OFF_LOOP
                else await asyncio.to_thread(decompress, raw, limit)
            )
        # An answer in a version this node does not read is not read.
        try:
            answered = peer_protocol(spoken, self.node.name, self.node.partner or "the partner")
        except SyncVersionMismatch:
            self.version = None  # the partner runs another release: ask again next time
            raise
        return status, raw, answered

    def _answer(self, path: str, status: int, raw: bytes) -> bytes:
        """An answer's body, or the error its status says."""
        if status == 409:
            problem = decode_json(raw)
            try:
                current = parse_row(problem.get("ownership"))
            except SyncProtocolError:
                current = None  # nothing to learn (or nothing we can read)
            raise SyncFenced(str(problem.get("detail", "refused")), current)
        if status == 401:
            raise SyncRefused(
                f"partner {self.target} refused our credentials (sync_authname/sync_password)"
            )
        if status >= 400:
            try:
                problem = decode_json(raw)
                detail = str(problem.get("detail", ""))
            except SyncProtocolError:
                problem, detail = {}, raw[:200].decode("utf-8", "replace")
            if problem.get("error") == SyncVersionMismatch.code:
                self.version = None  # the partner runs another release: ask again next time
                raise SyncVersionMismatch(detail)
            if status == 404:
                raise PartnerLacksRequest(f"partner answered 404 to {path}: {detail}")
            if status < 500:
                raise PartnerRejected(f"partner answered {status} to {path}: {detail}")
            raise SyncProtocolError(f"partner answered {status} to {path}: {detail}")
        return raw

    async def differing(self, accounts: list[str]) -> tuple[set[str], set[str]]:
        """(accounts that differ on the partner, accounts its fence refuses),
        comparing one digest per account in batches of 500."""
        store = self.node.store

        def local(session: Session) -> list[dict[str, Any]]:
            digests = account_digests(session, accounts)
            rows = {r.account: r for r in ownership_table.list_rows(session)}
            out = []
            for name in accounts:
                row = rows.get(name)
                if name in digests and row is not None:
                    out.append(
                        {
                            "account": name,
                            "ownership": row_view(row).to_json(),
                            "digest": digests[name],
                        }
                    )
            return out

        items = await store.read(local)
        differ: set[str] = set(accounts) - {i["account"] for i in items}
        refused: set[str] = set()
        for start in range(0, len(items), 500):
            body = {"accounts": items[start : start + 500]}
            raw = await self.call("digests", encode_json(body), compressed=self.compress_default)
            answer = decode_json(raw)
            differ.update(str(a) for a in answer.get("differ", []))
            refused.update(str(a) for a in answer.get("refused", []))
        return differ, refused

    async def hello(self) -> dict[str, Any]:
        return decode_json(await self.call("hello", b"{}", compressed=False))

    # -- one account -------------------------------------------------------

    async def sync_account(
        self,
        account: str,
        *,
        mailboxes: list[str] | None = None,
        compressed: bool | None = None,
        fast: bool = False,
    ) -> SyncReport:
        """Sync one account; ``fast``: try the delta first (the rolling worker)."""
        report = SyncReport(account)
        use_zlib = self.compress_default if compressed is None else compressed
        started = time.perf_counter()
        async with self.lock(account):
            try:
                try:
                    await self._sync_once(account, mailboxes, use_zlib, fast, report)
                except SyncVersionMismatch:
                    # The partner was restarted into another release since we
                    # asked which version it speaks: ask again and sync once
                    # more (what the first try applied, the compare finds).
                    report.steps.append("VERSION the partner speaks another version: asked again")
                    await self._sync_once(account, mailboxes, use_zlib, fast, report)
            except BaseException:
                self._marks.pop(account, None)
                raise
            finally:
                report.seconds = time.perf_counter() - started
        self.node.counters.inc("syncs")
        return report

    async def _sync_once(
        self,
        account: str,
        mailboxes: list[str] | None,
        use_zlib: bool,
        fast: bool,
        report: SyncReport,
    ) -> None:
        # The delta's plan reads the renames too (one trip to a reader
        # thread fewer on the rolling path): with any, it leaves the sync to
        # the full path, which sends them first.
        done = fast and mailboxes is None and await self._sync_fast(account, use_zlib, report)
        if not done:
            await self._send_renames(account, use_zlib, report)
            await self._sync(account, mailboxes, use_zlib, report)

    async def _send_renames(self, account: str, use_zlib: bool, report: SyncReport) -> None:
        """RENAME: the renames onto ``account`` the partner has not taken, before
        anything else is synced for it (the replica must hold the mailboxes
        under the new name before the compare, or it would see them as new)."""
        store = self.node.store

        def read(session: Session) -> tuple[OwnershipView | None, list[tuple[str, str]]]:
            return ownership_table.view(session, account), ownership_table.renames_to(
                session, account
            )

        row, renames = await store.read(read)
        if not renames or row is None or row.owner != self.node.name:
            return
        for old, new in renames:
            report.steps.append(f"RENAME {old} {new}")
            body = {
                "account": old,
                "new": new,
                "ownership": replace(row, account=old).to_json(),
            }
            await self.call("rename", encode_json(body), compressed=use_zlib, report=report)
            await store.write(partial(ownership_table.rename_done, old=old, new=new))
            self._marks.pop(old, None)

    async def _sync(
        self, account: str, mailbox_names: list[str] | None, use_zlib: bool, report: SyncReport
    ) -> None:
        store = self.node.store

        async def plan() -> _Round:
            local = await store.read(lambda s: self._local(s, account, mailbox_names))
            own_row, rows, summaries, include = local
            if own_row is None or not self.may_push(own_row):
                owner = own_row.owner if own_row else "nobody"
                raise SyncRefused(f"{self.node.name} does not own {account} (owner {owner})")
            names = " ".join(summaries_names(summaries)) or account
            report.steps.append(f"MAILBOXES {names}")
            report.steps.append(f"USER_SOME {account}")
            replica = await self.user_some(
                account,
                own_row,
                summaries,
                named_only=include is not None,
                use_zlib=use_zlib,
                report=report,
            )
            if include is not None:
                replica = _restrict(replica, include)
            owner_state, owner_records, known = await store.read(
                partial(owner_view, account=account, replica=replica, include=include)
            )
            report.records_compared += sum(len(r) for r in owner_records.values()) + sum(
                len(m.records) for m in replica.mailboxes
            )
            repairs, push = compare(owner_state, owner_records, replica, known)
            if own_row.owner != self.node.name and repairs.import_cursors is not None:
                # A chained account: only its owner keeps the merged cursors;
                # the push carries them, so the backup loses none it has.
                repairs = replace(repairs, import_cursors=None)
            known_names = {m.summary.uniqueid: m.summary.name for m in replica.mailboxes}
            delta = any(m.mode == "delta" for m in replica.mailboxes)
            return _Round(own_row, rows, owner_state, include, repairs, push, known_names, delta)

        async def repair(planned: _Round) -> None:
            if planned.own_row.owner != self.node.name:
                # A chained account (sync_log_chain): the backup holds mail
                # we lack; only the owner may copy it in.
                raise SyncProtocolError(
                    f"{account}: channel {self.channel} holds mail {self.node.name} lacks;"
                    f" {planned.own_row.owner} owns the account: replicate it from there"
                )
            await self._repair(account, planned.own_row, planned.repairs, use_zlib, report)

        planned = await converge(account, plan, repair)
        own_row, push = planned.own_row, planned.push
        equal = push.empty or await self._push(
            account, own_row, push, use_zlib, report, planned.replica_names
        )
        if not equal and planned.delta:
            # The replica sent only what changed since its sync_base, and is
            # still not equal after the push: it changed without a modseq
            # (damage, rows lost). The apply dropped its sync_base, so one
            # more compare, now in full, repairs it in this same sync.
            report.steps.append("FULL COMPARE (the replica differs after a delta)")
            planned = await converge(account, plan, repair)
            own_row, push = planned.own_row, planned.push
            equal = push.empty or await self._push(
                account, own_row, push, use_zlib, report, planned.replica_names
            )
        if not equal:
            # Its log rows stay (nothing is acknowledged): the rolling worker
            # tries again, in full, with its back-off; replicate says so.
            raise SyncProtocolError(
                f"{account}: the replica still differs after the sync; its changes stay"
                " logged and the next sync compares in full"
            )
        if planned.include is None and planned.owner_state.exists:
            self._marks[account] = (own_row.epoch, mark_of(planned.owner_state))
        else:
            self._marks.pop(account, None)
        report.steps.append("ENDUSER")
        if planned.rows and self.owns_sync_log:
            await store.write(partial(synclog.acknowledge, rows=planned.rows))

    async def user_some(
        self,
        account: str,
        own_row: OwnershipView,
        summaries: Sequence[MailboxSummary],
        *,
        named_only: bool,
        use_zlib: bool,
        report: SyncReport,
    ) -> AccountState:
        """USER_SOME: the replica's state of ``account``, given our ``summaries``.

        In parts (version 2, :mod:`engine.userparts`) when the partner speaks
        it; to a partner that speaks only version 1, in one request, which
        must fit in it: else :class:`PartnerLacksRequest` names the reason
        (the account waits for the partner's upgrade, not for a limit)."""
        ownership = self.wire_row(own_row)
        version = await self.speak()
        if version < USER_PARTS:
            request = {
                "account": account,
                "ownership": ownership,
                "summaries": [encode_summary(s) for s in summaries],
            }
            body = encode_json(request)
            if len(body) <= self.request_limit:
                raw = await self.call("user_some", body, compressed=use_zlib, report=report)
                return decode_account_state(decode_json(raw).get("state"))
            self.version = None  # upgraded since we asked?
            version = await self.speak()
            if version < USER_PARTS:
                partner = self.node.partner or str(self.target)
                raise PartnerLacksRequest(
                    f"{account}: the summaries of its {len(summaries)} mailboxes take"
                    f" {len(body)} bytes, more than one request to {partner} may"
                    f" ({self.request_limit}: the lower sync_max_request of the two nodes);"
                    f" sending them in parts needs sync protocol {USER_PARTS}, and {partner}"
                    f" speaks {version}: upgrade {partner} (docs/upgrading.md)"
                )
        parts = split_summaries(
            account, ownership, summaries, self.part_budget, named_only=named_only
        )
        pages = Pages(account)
        requests = 0
        for part in parts:
            while True:
                body = encode_json(encode_user_part(account, ownership, part))
                raw = await self.call(
                    "user_some",
                    body,
                    compressed=use_zlib,
                    report=report,
                    version=version,
                    limit=self.node.config.sync.sync_max_request,
                )
                requests += 1
                state, mailboxes, after = decode_user_page(decode_json(raw))
                if any(not part.covers(m.summary.uniqueid) for m in mailboxes):
                    raise SyncProtocolError(f"partner answered {account} outside the part asked")
                pages.add(state, mailboxes)
                if after is None:
                    break
                if not part.covers(after[0]) or (part.resume is not None and after <= part.resume):
                    raise SyncProtocolError(f"partner's pages of {account} do not go forward")
                part = replace(part, resume=after)
        if requests > 1:
            report.steps.append(f"USER_SOME in {requests} requests ({len(parts)} parts)")
        return pages.state()

    def tally(self, report: SyncReport, push: Push) -> None:
        """Count what ``push`` does into ``report`` (one account's, alone or in a batch)."""
        report.mailboxes_deleted += len(push.deletes)
        report.mailboxes_created += sum(1 for mp in push.mailboxes if mp.create)
        report.expunged += sum(len(mp.expunges) for mp in push.mailboxes)
        if push.resurrected:
            report.resurrected += push.resurrected
            self.node.counters.inc("messages_resurrected", push.resurrected)
            report.repairs.append(
                f"{push.resurrected} messages expunged or moved away on {self.node.partner} "
                "come back (the owner still has them)"
            )

    def may_push(self, row: OwnershipView) -> bool:
        """We push accounts we own; to a backup channel with sync_log_chain,
        also those the partner owns (never one the channel's node would own)."""
        if row.owner == self.node.name:
            return True
        return bool(
            self.channel and self.node.config.sync.sync_log_chain and row.owner != self.channel
        )

    def _local(
        self, session: Session, account: str, mailbox_names: list[str] | None
    ) -> tuple[OwnershipView | None, list[tuple[int, int]], list[Any], set[str] | None]:
        row = ownership_table.get(session, account)
        view = row_view(row) if row is not None else None
        pending = synclog.pending(session, [account], self.channel)
        rows = pending[0].rows if pending else []
        state = read_account_state(session, account)
        include: set[str] | None = None
        if mailbox_names is not None:
            wanted = set(mailbox_names)
            include = {m.summary.uniqueid for m in state.mailboxes if m.summary.name in wanted}
            unknown = wanted - {m.summary.name for m in state.mailboxes}
            if unknown:
                raise SyncProtocolError(
                    f"no such mailbox in {account}: {', '.join(sorted(unknown))}"
                )
        summaries = [
            m.summary for m in state.mailboxes if include is None or m.summary.uniqueid in include
        ]
        if view is None and state.exists:
            # An account from before ownership rows existed is ours.
            view = OwnershipView(account, self.node.name, self.node.name, 0, "normal")
        if view is None and not state.exists:
            view = OwnershipView(account, self.node.name, self.node.name, 0, "normal")
        return view, rows, summaries, include

    async def _repair(
        self,
        account: str,
        own_row: OwnershipView,
        repairs: Repairs,
        use_zlib: bool,
        report: SyncReport,
    ) -> None:
        guids = sorted({r.guid for p in repairs.pulls for r in p.records})
        store = self.node.store
        dirs: set[Path] = set()
        if guids:
            missing = [g for g in guids if not store.spool.keep(g)]
            if missing:
                report.steps.append(f"FETCH [{len(missing)} msgs]")
                # In batches, as UPLOAD goes: the partner builds each answer in
                # memory, and refuses more than FETCH_BATCH GUIDs at once. The
                # sizes are the records' (the partner's word, only a bound here).
                sizes = {r.guid: r.size for p in repairs.pulls for r in p.records}
                batches = size_batches(
                    missing, [sizes[g] for g in missing], self.upload_budget, FETCH_BATCH
                )
                for batch in batches:
                    body = {"account": account, "ownership": self.wire_row(own_row), "guids": batch}
                    raw = await self.call(
                        "fetch", encode_json(body), compressed=use_zlib, report=report
                    )
                    frames = decode_frames(raw)
                    if len(frames) != len(batch):
                        raise SyncProtocolError(
                            f"partner sent {len(frames)} of {len(batch)} messages we must keep"
                        )
                    dirs |= await store.run_blocking(
                        partial(store.spool.put_many, frames, verified=True)
                    )
        result = await store.write(
            lambda s: apply_repairs(s, account, repairs, store.spool.has), dirs=dirs
        )
        report.copied_back += result.copied
        report.reassigned += result.reassigned
        report.repairs.extend(result.details)
        self.node.counters.inc("conflicts_repaired", result.copied + result.reassigned)
        report.steps.append(f"REPAIR [{result.copied} copied, {result.reassigned} renumbered]")

    async def _sync_fast(self, account: str, use_zlib: bool, report: SyncReport) -> bool:
        """The delta (see the module docstring); False: sync in full instead."""
        marked = self._marks.pop(account, None)
        if marked is None:
            return False
        epoch, mark = marked
        store = self.node.store

        def plan(
            session: Session,
        ) -> tuple[
            OwnershipView | None, list[tuple[int, int]], Delta | None, list[tuple[str, bytes]]
        ]:
            if ownership_table.renames_to(session, account):
                return None, [], None, []  # RENAME first: the full path sends it
            row = ownership_table.view(session, account)
            pending = synclog.pending(session, [account], self.channel)
            delta = owner_delta(session, account, mark)
            # The new messages' bytes in the same trip to a reader thread:
            # each hand-off between the loop and a thread is latency here.
            frames = (
                [(g, store.spool.read(g)) for g in delta.upload]
                if delta is not None and not delta.push.empty
                else []
            )
            return (
                row,
                pending[0].rows if pending else [],
                delta,
                frames,
            )

        own_row, rows, delta, frames = await store.read(plan)
        if delta is None or own_row is None or not self.may_push(own_row) or own_row.epoch != epoch:
            return False
        if not delta.push.empty:
            control = {
                "account": account,
                "ownership": self.wire_row(own_row),
                "expect": encode_account_state(mark),
                "push": encode_push(delta.push),
            }
            body = encode_delta(control, frames)
            if len(body) > self.request_limit:
                # Too much for one request (many records changed, or large
                # new mail): the full path sends it in several.
                return False
            try:
                raw = await self.call(
                    "delta",
                    body,
                    compressed=use_zlib,
                    report=report,
                    content_type="application/octet-stream",
                )
            except SyncProtocolError as exc:
                # 412 (not in the marked state) or a GUID it lacks after all:
                # the full compare finds out what it is and repairs it.
                log.info("%s: delta refused (%s); syncing in full", account, exc.message)
                self.node.counters.inc("sync_delta_fallbacks")
                return False
            if decode_json(raw).get("mismatched"):
                self.node.counters.inc("sync_delta_fallbacks")
                return False
            self.node.counters.inc("sync_deltas")
            report.uploaded += len(frames)
            report.upload_bytes += sum(len(d) for _, d in frames)
            report.steps.append(
                f"DELTA {account} [{len(delta.push.mailboxes)} mailboxes, {len(frames)} msgs]"
            )
        self._marks[account] = (epoch, delta.state)
        report.steps.append("ENDUSER")
        if rows and self.owns_sync_log:
            await store.write(partial(synclog.acknowledge, rows=rows), ride=ACK_RIDE)
        return True

    async def _push(
        self,
        account: str,
        own_row: OwnershipView,
        push: Push,
        use_zlib: bool,
        report: SyncReport,
        replica_names: dict[str, str],
    ) -> bool:
        """Send the push; True when the replica reports every mailbox equal."""
        self.tally(report, push)
        guids = sorted({r.guid for mp in push.mailboxes for r in mp.upserts})
        missing: list[str] = []
        if guids:
            missing = await self.reserve(guids, use_zlib, report, account)
        report.steps.extend(push_steps(push, replica_names, len(guids), set(missing)))
        if missing:
            await self.upload(missing, use_zlib, report)
        report.setflags += _flag_updates(push, set(missing))
        # One APPLY, or several when the push would outgrow a request (its
        # records are many): a mailbox is judged by the last one naming it.
        # In a thread: a push of a million records takes seconds to cut, and
        # the loop serves IMAP meanwhile (the interpreter switches every few ms).
        parts = await asyncio.to_thread(split_push, push, self.apply_budget, replica_names)
        last = {mp.summary.uniqueid: i for i, part in enumerate(parts) for mp in part.mailboxes}
        mismatched: list[str] = []
        for i, part in enumerate(parts):
            body: dict[str, Any] = {
                "account": account,
                "ownership": self.wire_row(own_row),
                "push": encode_push(part),
            }
            data = encode_json(body)
            if len(data) > self.request_limit and len(part.mailboxes) == 1:
                # One summary (with no more than one record: split_push cuts
                # the rest) past the partner's limit: no way of cutting the
                # push sends it.
                box = part.mailboxes[0].summary
                raise TooLargeForPartner(
                    f"{account}: mailbox {box.name!r} ({box.uniqueid}, an ACL of {len(box.acl)}"
                    f" characters) needs a request of {len(data)} bytes, more than"
                    f" {self.request_limit} (the lower sync_max_request of the two nodes)"
                )
            raw = await self.call("apply", data, compressed=use_zlib, report=report)
            mismatched += [u for u in decode_json(raw).get("mismatched", []) if last.get(u) == i]
        if len(parts) > 1:
            report.steps.append(f"APPLY in {len(parts)} requests")
        if mismatched:
            log.warning(
                "%s: replica differs after apply in %s; its sync_base is reset,"
                " the next compare is in full",
                account,
                mismatched,
            )
            return False
        return True

    @property
    def request_limit(self) -> int:
        """The largest request body to send: this node's ``sync_max_request``,
        or the partner's when its answers said it takes less."""
        own = self.node.config.sync.sync_max_request
        theirs = self.partner_max_request
        return own if theirs is None else min(own, theirs)

    @property
    def part_budget(self) -> int:
        """The most JSON one request of USER_SOME in parts (or one
        batch_user_some) carries: :data:`PART_BATCH`, or what the
        :attr:`request_limit` leaves when that is less."""
        return min(PART_BATCH, body_budget(self.request_limit))

    @property
    def apply_budget(self) -> int:
        """The most JSON one APPLY carries: :data:`APPLY_BATCH`, or half the
        :attr:`request_limit` when that is less."""
        return min(APPLY_BATCH, self.request_limit // 2)

    @property
    def upload_budget(self) -> int:
        """The most message bytes one UPLOAD carries: :data:`UPLOAD_BATCH`, or
        less when the :attr:`request_limit` is near it, with the room the
        config leaves a message (engine.limits, ``peerd.node.config``): the
        frames' headers, and zlib's growth on bytes it cannot shrink."""
        limit = self.request_limit
        return min(UPLOAD_BATCH, limit - limit // 1024 - (4 << 10))

    async def reserve(
        self, guids: list[str], use_zlib: bool, report: SyncReport | None, account: str = ""
    ) -> list[str]:
        """RESERVE: which of ``guids`` the partner lacks, asked in requests of
        at most :data:`RESERVE_BATCH` GUIDs (a first sync of a large account
        names millions) that each fit in half a ``sync_max_request``."""
        step = max(1, min(RESERVE_BATCH, self.apply_budget // 44))
        missing: list[str] = []
        for start in range(0, len(guids), step):
            body: dict[str, Any] = {"guids": guids[start : start + step]}
            if account:
                body = {"account": account, **body}
            raw = await self.call("reserve", encode_json(body), compressed=use_zlib, report=report)
            missing += decode_json(raw).get("missing", [])
        return missing

    async def upload(self, guids: list[str], use_zlib: bool, report: SyncReport) -> None:
        """UPLOAD in batches of about :data:`UPLOAD_BATCH` bytes, pipelined:
        :data:`UPLOADS_IN_FLIGHT` requests at the partner at all times (it
        verifies and stores each in a thread of its own: hashing, writing and
        flushing let go of the interpreter lock, so two use both its cores),
        and the next batch read and framed here meanwhile."""
        store = self.node.store
        spool = store.spool
        try:
            sizes = await store.run_blocking(lambda: [spool.size(g) for g in guids])
        except FileNotFoundError as exc:
            # Expunged (and swept) since the compare: the next sync sees it.
            raise TemporaryFailure(f"a message to upload left the spool: {exc.filename}") from exc
        # No UPLOAD outgrows the partner's sync_max_request (size_batches).
        batches = size_batches(guids, sizes, self.upload_budget)
        # A batch holds a slot of ``held`` from its read until the partner's
        # answer, and one of ``sending`` for its request: the batch after the
        # ones in flight is read while they are stored, never after (reading
        # inside the request's slot made the two sides take turns).
        held = asyncio.Semaphore(UPLOADS_IN_FLIGHT + 1)
        sending = asyncio.Semaphore(UPLOADS_IN_FLIGHT)

        def frame(items: list[str]) -> bytes:
            return b"".join(encode_frames((g, spool.read_verified(g)) for g in items))

        async def send(items: list[str]) -> None:
            async with held:
                data = await store.run_blocking(partial(frame, items))
                async with sending:
                    await self.call(
                        "upload",
                        data,
                        compressed=use_zlib,
                        report=report,
                        content_type="application/octet-stream",
                    )
                report.uploaded += len(items)
                report.upload_bytes += len(data)

        tasks = [asyncio.ensure_future(send(items)) for items in batches]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            # One failed (the partner refused or went away): the rest would
            # only be refused too, or store bytes no apply will name yet.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise


async def _read_at_most(response: aiohttp.ClientResponse, limit: int, path: str) -> bytes:
    """An answer's body, refused past ``limit`` octets (as they arrive: a
    partner never makes us hold more than that of one answer)."""
    length = response.content_length
    if length is not None and length > limit:
        raise SyncProtocolError(
            f"partner's answer to {path} is {length} bytes, more than the {limit} we read"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(1 << 20):
        size += len(chunk)
        if size > limit:
            raise SyncProtocolError(
                f"partner's answer to {path} is more than the {limit} bytes we read"
            )
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True, slots=True)
class _Round:
    """One round's compare (:func:`engine.rounds.converge`) and what sending its push needs."""

    own_row: OwnershipView
    rows: list[tuple[int, int]]
    owner_state: AccountState
    include: set[str] | None
    repairs: Repairs
    push: Push
    replica_names: dict[str, str]  # uniqueid -> the replica's name (RENAME in the trace)
    delta: bool  # the replica sent a delta for some mailbox (not all its records)


def summaries_names(summaries: list[Any]) -> list[str]:
    return [s.name for s in summaries]


def _restrict(state: AccountState, include: set[str]) -> AccountState:
    return replace(
        state, mailboxes=tuple(m for m in state.mailboxes if m.summary.uniqueid in include)
    )


def _flag_updates(push: Push, uploaded: set[str]) -> int:
    """Records the replica already holds whose flags change (SETFLAGS, for -v)."""
    return sum(
        1 for mp in push.mailboxes if not mp.create for r in mp.upserts if r.guid not in uploaded
    )
