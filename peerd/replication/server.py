"""The sync listener (the csync service, default port 2005): what a replica answers.

How this works: an aiohttp application under ``/sync/v1`` on its own
listener. The partner authenticates with HTTP Basic as ``sync_authname`` /
``sync_password`` — the pair's replication admin; anything else is refused
with 401 and logged. TLS is on when ``[tls] cert``/``key`` are set. Bodies are
JSON or message frames (:mod:`engine.syncwire`), zlib-compressed when the
request says ``X-Sync-Encoding: zlib`` (the answer is then compressed too).
Requests that change an account pass the ownership fence
(:mod:`ownership.fence`) inside the transaction that applies them; a refusal
is a 409 whose body carries this node's ownership row. ``docs/protocol.md``
lists every request.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine import accounts as engine_accounts
from engine import synclog
from engine.accounts import normalize_account_name
from engine.apply import ApplyResult, apply_push
from engine.applybulk import apply_new_accounts, is_fresh
from engine.bulkstate import read_states
from engine.delta import matches
from engine.errors import Corrupt, EngineError, SyncProtocolError, SyncStale, TemporaryFailure
from engine.spool import GUID_RE, Staged
from engine.syncstate import account_digests, known_guids, read_account_state
from engine.syncwire import (
    MAX_REQUEST_HEADER,
    OFF_LOOP,
    PROTOCOL_HEADER,
    USER_PARTS,
    UserPart,
    answer_version,
    body_budget,
    compress,
    decode_account_state,
    decode_delta,
    decode_frame_views,
    decode_json,
    decode_push,
    decode_summary,
    decode_user_part,
    decompress,
    encode_account_state,
    encode_frames,
    encode_json,
    encode_summary,
    peer_max_request,
    peer_protocol,
)
from engine.userparts import read_page
from ownership import table as ownership_table
from ownership.errors import SyncFenced
from ownership.fence import check_sync, needs_adoption
from ownership.rows import OwnershipView, parse_row
from peerd.node.errormap import client_text, http_status
from peerd.node.httplimits import (
    GuardedSite,
    body_deadline,
    body_room,
    body_room_trim,
    header_octets,
    room_release,
    runner_options,
)
from peerd.node.node import Node
from peerd.replication.scrub import Scrubber

__all__ = ["SyncServer", "SyncServerStatus", "start_sync_listener"]

log = logging.getLogger("peerd.sync.server")

# A DELTA whose messages are this many bytes or fewer is staged on the event loop.
INLINE_STAGE = 256 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BODIES = 10_000  # GUIDs in one ``bodies`` request
# The largest page of a USER_SOME answer in parts (engine.userparts): built
# in a reader thread, compressed on the loop when the asker wants zlib.
PAGE_BATCH = 8 << 20
# Where the middleware leaves the version a request is written in.
_VERSION: Final = web.RequestKey("sync_protocol", int)
MAX_BATCH = 1_000  # accounts in one ``batch_user_some`` or ``batch_apply`` request


@dataclass(frozen=True, slots=True)
class SyncServerStatus:
    """``sync_server`` in ``status``: what the listener took and gave, and
    how many requests it refused for wrong credentials."""

    bytes_in: int
    bytes_out: int
    refused: int

    def to_json(self) -> dict[str, Any]:
        return {"bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "refused": self.refused}


class SyncServer:
    """Handlers of the sync listener, bound to one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        sync = node.config.sync
        self.max_request = sync.sync_max_request
        self._expected = (
            "Basic "
            + base64.b64encode(f"{sync.sync_authname}:{sync.sync_password}".encode()).decode()
        ).encode()
        self.bytes_in = 0
        self.bytes_out = 0
        self.refused = 0
        # The scrub answers ``verify``; the daemon sets it once it is built.
        self.scrubber: Scrubber | None = None
        # HTTPS: the listener's context, reloaded in place on SIGHUP.
        self.tls: ssl.SSLContext | None = None

    def status(self) -> SyncServerStatus:
        return SyncServerStatus(self.bytes_in, self.bytes_out, self.refused)

    # -- plumbing ----------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await self._checked(request, handler)
        # Every answer says the protocol version it is written in (the
        # request's, so an older partner reads it; this node's newest when
        # it refuses the request's) and, to the partner, the largest request
        # this node takes.
        response.headers[PROTOCOL_HEADER] = str(
            answer_version(request.headers.get(PROTOCOL_HEADER))
        )
        if response.status != 401:
            response.headers[MAX_REQUEST_HEADER] = str(self.max_request)
        return response

    async def _checked(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        sync = self.node.config.sync
        given = header_octets(request, "Authorization")
        if (
            not sync.sync_authname
            or not sync.sync_password
            or not hmac.compare_digest(given, self._expected)
        ):
            self.refused += 1
            self.node.counters.inc("sync_auth_failures")
            log.warning(
                "sync: refused %s from %s: wrong or missing credentials",
                request.path,
                request.remote,
            )
            return web.json_response(
                {"error": "unauthorized", "detail": "sync_authname/sync_password required"},
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="peerd-sync"'},
            )
        try:
            request[_VERSION] = peer_protocol(
                request.headers.get(PROTOCOL_HEADER), self.node.name, self.node.partner or "partner"
            )
            return await handler(request)
        except SyncFenced as exc:
            self.node.counters.inc("sync_fenced")
            log.warning("sync: %s", exc.message)
            body: dict[str, Any] = {"error": exc.code, "detail": exc.message}
            if exc.current is not None:
                body["ownership"] = exc.current.to_json()
            return web.json_response(body, status=409)
        except EngineError as exc:
            detail = client_text(exc, "sync listener")  # logs what it does not tell
            if detail == exc.message:
                log.warning("sync: %s refused: %s", request.path, exc.message)
            return web.json_response({"error": exc.code, "detail": detail}, status=http_status(exc))
        except ConnectionResetError as exc:
            # The peer went away mid-request (it restarted, the network cut):
            # nothing was applied, the client retries. One line, no traceback.
            self.node.counters.inc("sync_connection_resets")
            log.info("sync: %s from %s: connection reset (%s)", request.path, request.remote, exc)
            # Nobody reads it: the connection is gone.
            return web.Response(status=499)

    async def body(self, request: web.Request) -> bytes:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            # The channel compresses with X-Sync-Encoding, bounded by
            # sync_max_request; an HTTP-level encoding is never sent.
            raise SyncProtocolError("Content-Encoding is not accepted (use X-Sync-Encoding)")
        if request.content_length is not None and request.content_length > self.max_request:
            raise SyncProtocolError(
                f"request of {request.content_length} bytes exceeds {self.max_request}"
            )
        # Room in the node's input budget before a byte is read (chunked:
        # the most a request may be); none in time is a 503, which the
        # partner's client retries like any temporary failure.
        budget = self.node.input_budget
        length = request.content_length
        await body_room(request, budget, self.max_request if length is None else length)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            # No Content-Length (chunked): aiohttp stops reading at its cap.
            # Say so as the protocol does, not as aiohttp's plain-text 413.
            raise SyncProtocolError(
                f"request of more than {self.max_request} bytes exceeds {self.max_request}"
            ) from exc
        if len(raw) > self.max_request:
            raise SyncProtocolError(f"request of {len(raw)} bytes exceeds {self.max_request}")
        if length is None:
            body_room_trim(request, len(raw))  # it took room for the most a request may be
        self.bytes_in += len(raw)
        self.node.counters.inc("sync_bytes_received", len(raw))
        if request.headers.get("X-Sync-Encoding") == "zlib":
            # zlib lets go of the interpreter lock: an 8 MB UPLOAD inflates
            # in a thread while the loop serves other requests.
            if len(raw) < OFF_LOOP:
                inflated = decompress(raw, self.max_request)
            else:
                inflated = await asyncio.to_thread(decompress, raw, self.max_request)
            # Its size is known only now (at most sync_max_request): the
            # request holds it as long as it runs, so it counts from here.
            await body_room(request, budget, len(inflated))
            return inflated
        return raw

    def reply(
        self, request: web.Request, data: bytes, content_type: str = "application/json"
    ) -> web.Response:
        headers = {}
        if request.headers.get("X-Sync-Encoding") == "zlib":
            data = compress(data, messages=content_type == "application/octet-stream")
            headers["X-Sync-Encoding"] = "zlib"
        self.bytes_out += len(data)
        self.node.counters.inc("sync_bytes_sent", len(data))
        return web.Response(body=data, content_type=content_type, headers=headers)

    @staticmethod
    def sender(body: dict[str, Any]) -> OwnershipView:
        account = body.get("account")
        if not isinstance(account, str) or not account:
            raise SyncProtocolError("account is required")
        return parse_row(body.get("ownership"), account)

    # -- requests ----------------------------------------------------------

    async def hello(self, request: web.Request) -> web.Response:
        await self.body(request)
        return self.reply(request, encode_json({"node": self.node.name, "service": "peerd-sync/1"}))

    def answer_budget(self, request: web.Request) -> int:
        """The most JSON one answer of a part of USER_SOME holds: what the
        asker says it reads (its ``X-Sync-Max-Request``; else our own limit),
        and at most :data:`PAGE_BATCH`."""
        stated = peer_max_request(request.headers.get(MAX_REQUEST_HEADER))
        return min(PAGE_BATCH, body_budget(stated or self.max_request))

    async def user_some(self, request: web.Request) -> web.Response:
        body = decode_json(await self.body(request))
        view = self.sender(body)
        if request[_VERSION] >= USER_PARTS:
            return await self.user_part(request, view, decode_user_part(body))
        summaries = {}
        for item in body.get("summaries", []) if isinstance(body.get("summaries"), list) else []:
            summary = decode_summary(item)
            summaries[summary.uniqueid] = summary

        def read(session: Session) -> dict[str, Any]:
            check_sync(session, self.node.name, view.account, view, adopt=False)
            state = read_account_state(session, view.account, records_for=summaries)
            return encode_account_state(state)

        # Reads fence too: a node that owns the account never serves its
        # state as a replica's (the caller would take it as stale). Only a
        # newer ownership row costs a write; the common case is a plain read.
        await self._adopt_if_needed(view)
        state = await self.node.store.read(read)
        return self.reply(request, encode_json({"state": state}))

    async def user_part(
        self, request: web.Request, view: OwnershipView, part: UserPart
    ) -> web.Response:
        """USER_SOME in parts (version 2, :mod:`engine.userparts`): one page of
        our answer to one part of the owner's summaries."""
        budget = self.answer_budget(request)

        def read(session: Session) -> bytes:
            check_sync(session, self.node.name, view.account, view, adopt=False)
            return read_page(session, view.account, part, budget)

        await self._adopt_if_needed(view)
        return self.reply(request, await self.node.store.read(read))

    async def _adopt_if_needed(self, view: OwnershipView) -> None:
        store = self.node.store
        if await store.read(lambda s: needs_adoption(s, view.account, view)):
            await store.write(
                lambda s: check_sync(s, self.node.name, view.account, view), replaying=True
            )

    # -- many accounts in one request (replicate --all) -------------------

    def batch_items(self, body: dict[str, Any]) -> list[tuple[OwnershipView, dict[str, Any]]]:
        """The ``accounts`` of a batch request, each with its sender's row; a
        malformed item refuses the whole request (nothing was read or applied)."""
        items = body.get("accounts")
        if not isinstance(items, list) or len(items) > MAX_BATCH:
            raise SyncProtocolError(f"accounts must be a list of at most {MAX_BATCH}")
        out: dict[str, tuple[OwnershipView, dict[str, Any]]] = {}
        for item in items:
            if not isinstance(item, dict):
                raise SyncProtocolError("each account must be an object")
            view = self.sender(item)
            out[view.account] = (view, item)
        return list(out.values())

    async def batch_user_some(self, request: web.Request) -> web.Response:
        """USER_SOME for many accounts: each answered as ``user_some`` would,
        or with its own refusal (``error``, ``detail``, ``ownership``)."""
        items = self.batch_items(decode_json(await self.body(request)))
        summaries: dict[str, dict[str, Any]] = {}
        for view, item in items:
            raw = item.get("summaries", [])
            decoded = (decode_summary(x) for x in (raw if isinstance(raw, list) else []))
            summaries[view.account] = {s.uniqueid: s for s in decoded}
        me = self.node.name
        store = self.node.store
        refused: dict[str, SyncFenced] = {}
        stated = peer_max_request(request.headers.get(MAX_REQUEST_HEADER))
        budget = None if stated is None else body_budget(stated)

        def stale(session: Session) -> list[OwnershipView]:
            held = ownership_table.rows_of(session, (v.account for v, _ in items))
            return [v for v, _ in items if v.account not in held or v.epoch > held[v.account].epoch]

        newer = await store.read(stale)
        if newer:
            # As user_some: a newer row (or none here yet) is adopted first, in one write.
            def adopt(session: Session) -> dict[str, SyncFenced]:
                out = {}
                for view in newer:
                    try:
                        check_sync(session, me, view.account, view)
                    except SyncFenced as exc:
                        out[view.account] = exc
                return out

            refused.update(await store.write(adopt, replaying=True))

        def read(session: Session) -> list[bytes]:
            allowed = []
            held = ownership_table.rows_of(session, (v.account for v, _ in items))
            for view, _ in items:
                if view.account in refused:
                    continue
                try:
                    check_sync(session, me, view.account, view, adopt=False)
                except SyncFenced as exc:
                    refused[view.account] = exc
                    continue
                allowed.append(view.account)
            del held
            states = read_states(session, allowed, records_for=summaries)
            # Each answer encoded once: its size is what the budget counts.
            answers: list[bytes] = []
            used = 0
            for v, _ in items:
                if v.account not in states:
                    answers.append(encode_json(_refusal(v.account, refused[v.account])))
                    continue
                state = encode_account_state(states[v.account])
                answer = encode_json({"account": v.account, "state": state})
                if budget is not None:
                    # The asker reads answers of at most its limit: an account
                    # that would take this one past it is left out, and the
                    # asker syncs it alone, in parts.
                    cost = len(answer) + 64
                    if used + cost > budget:
                        continue
                    used += cost
                answers.append(answer)
            return answers

        answers = await store.read(read)
        self._count_refusals(refused)
        # encode_json({"accounts": [...]}), joined from the answers as encoded.
        return self.reply(request, b'{"accounts":[' + b",".join(answers) + b"]}")

    async def batch_apply(self, request: web.Request) -> web.Response:
        """APPLY for many accounts in one write: each account in its own
        savepoint, fenced by its own row, answered as ``apply`` would or
        with its own refusal; one refused account does not stop the others."""
        items = self.batch_items(decode_json(await self.body(request)))
        pushes = []
        for view, item in items:
            push = decode_push(item.get("push"))
            if push.account != view.account:
                raise SyncProtocolError("push.account differs from account")
            pushes.append((view, push))
        me = self.node.name
        spool = self.node.store.spool
        refused: dict[str, SyncFenced] = {}

        def write(session: Session) -> list[dict[str, Any]]:
            answers: dict[str, dict[str, Any]] = {}
            changes: list[Any] = session.info.setdefault("changes", [])
            held = ownership_table.rows_of(session, (v.account for v, _ in pushes))
            for view, _ in pushes:
                try:
                    check_sync(session, me, view.account, view, adopt=False)
                except SyncFenced as exc:
                    refused[view.account] = exc
                    answers[view.account] = _refusal(view.account, exc)
            # New accounts (a first sync) in one savepoint, a few statements
            # for all; if that fails, each alone below.
            fresh = [(v, p) for v, p in pushes if v.account not in answers and is_fresh(p)]
            if len(fresh) > 1:
                noted = len(changes)
                savepoint = session.begin_nested()
                try:
                    for view, _ in fresh:
                        check_sync(session, me, view.account, view)
                    results = apply_new_accounts(session, [p for _, p in fresh], spool.has)
                    savepoint.commit()
                except (EngineError, IntegrityError) as exc:
                    savepoint.rollback()
                    del changes[noted:]
                    log.info("sync: a batch of new accounts goes one by one: %s", exc)
                else:
                    for (view, _), result in zip(fresh, results, strict=True):
                        answers[view.account] = _applied(view.account, result)
            for view, push in pushes:
                if view.account in answers:
                    continue
                noted = len(changes)
                savepoint = session.begin_nested()
                try:
                    check_sync(session, me, view.account, view)
                    result = apply_push(session, push, spool.has)
                    if push.delete_account:
                        ownership_table.delete(session, view.account)
                    savepoint.commit()
                except (EngineError, IntegrityError) as exc:
                    savepoint.rollback()
                    del changes[noted:]  # nothing of it happened
                    error = (
                        exc
                        if isinstance(exc, EngineError)
                        else SyncProtocolError(f"{view.account}: {exc.orig}")
                    )
                    answers[view.account] = _refusal(view.account, error)
                    continue
                answers[view.account] = _applied(view.account, result)
            del held  # the fence's reads above cost no query while held
            return [answers[v.account] for v, _ in pushes]

        answer = await self.node.store.write(write, replaying=True)
        self._count_refusals(refused)
        self.node.counters.inc("sync_applied", len(pushes) - sum(1 for a in answer if "error" in a))
        return self.reply(request, encode_json({"accounts": answer}))

    def _count_refusals(self, refused: dict[str, SyncFenced]) -> None:
        for exc in refused.values():
            self.node.counters.inc("sync_fenced")
            log.warning("sync: %s", exc.message)

    async def reserve(self, request: web.Request) -> web.Response:
        """Which of these GUIDs do we lack? (Cyrus RESERVE: held ones are never sent.)"""
        body = decode_json(await self.body(request))
        guids = body.get("guids")
        if not isinstance(guids, list) or len(guids) > 1_000_000:
            raise SyncProtocolError("guids must be a list")
        spool = self.node.store.spool

        def missing() -> list[str]:
            # Those we have are kept (Spool.keep): the apply that names them follows.
            return [g for g in guids if isinstance(g, str) and not spool.keep(g)]

        result = await self.node.store.run_blocking(missing)
        return self.reply(request, encode_json({"missing": result}))

    async def upload(self, request: web.Request) -> web.Response:
        """Message bytes, as frames; verified, then made durable with one
        filesystem flush (and one more for the directories) before the answer.
        The owner keeps two in flight (``client.upload``): each is stored in
        a thread of its own, written from the request's buffer without a copy."""
        data = await self.body(request)
        spool = self.node.store.spool

        def store() -> int:
            frames = decode_frame_views(data)
            dirs = spool.put_many(frames, verified=True)
            spool.fsync_dirs(dirs)
            return len(frames)

        stored = await self.node.store.run_blocking(store)
        self.node.counters.inc("sync_messages_received", stored)
        return self.reply(request, encode_json({"stored": stored}))

    async def apply(self, request: web.Request) -> web.Response:
        body = decode_json(await self.body(request))
        view = self.sender(body)
        push = decode_push(body.get("push"))
        if push.account != view.account:
            raise SyncProtocolError("push.account differs from account")
        spool = self.node.store.spool

        def write(session: Session) -> dict[str, Any]:
            check_sync(session, self.node.name, view.account, view)
            result = apply_push(session, push, spool.has)
            if push.delete_account:
                ownership_table.delete(session, view.account)
            return {
                "summaries": [encode_summary(s) for s in result.summaries],
                "mismatched": result.mismatched,
            }

        result = await self.node.store.write(write, replaying=True)
        self.node.counters.inc("sync_applied")
        return self.reply(request, encode_json(result))

    async def delta(self, request: web.Request) -> web.Response:
        """The rolling fast path (:mod:`engine.delta`): a push planned from the
        state the owner last left us in, with the bytes it needs, in one
        request. Applied only if we are still exactly in that state (else 412
        ``sync_stale``: the owner syncs in full)."""
        control, frames = decode_delta(await self.body(request))
        view = self.sender(control)
        push = decode_push(control.get("push"))
        expect = decode_account_state(control.get("expect"))
        if push.account != view.account or expect.name != view.account:
            raise SyncProtocolError("push.account and expect.name must be the account")
        spool = self.node.store.spool

        def stage() -> list[Staged]:
            return [spool.stage(data, guid, verified=True) for guid, data in frames]

        # A delta of a few messages (a delivery's) is written to its temp
        # files here, into the page cache: a hand-off to a thread and back
        # cost more than the write, on the path the rolling lag is made of.
        if sum(len(data) for _, data in frames) <= INLINE_STAGE:
            staged = stage()
        else:
            staged = await self.node.store.run_blocking(stage)
        have = {s.guid for s in staged}

        def write(session: Session) -> dict[str, Any]:
            check_sync(session, self.node.name, view.account, view)
            if not matches(read_account_state(session, view.account), expect):
                raise SyncStale(f"{view.account} is not in the state the delta starts from")
            result = apply_push(session, push, lambda g: g in have or spool.has(g))
            return {
                "summaries": [encode_summary(s) for s in result.summaries],
                "mismatched": result.mismatched,
            }

        try:
            if "/" in view.owner:
                # A node of another pair moving the account here: its last
                # deltas come with the source's writes held, so this node's
                # indexers queue no write in front of them (a move sends a
                # few; the partner's rolling deltas do not quiet them).
                async with self.node.store.quiet():
                    result = await self.node.store.write(write, replaying=True, staged=staged)
            else:
                result = await self.node.store.write(write, replaying=True, staged=staged)
        except EngineError:
            spool.discard(staged)
            raise
        self.node.counters.inc("sync_applied")
        self.node.counters.inc("sync_messages_received", len(frames))
        return self.reply(request, encode_json(result))

    async def rename(self, request: web.Request) -> web.Response:
        """The owner renamed an account (Cyrus's RENAME of a user): rename ours.

        Fenced on the old name with the owner's row. Idempotent: a replica
        that already has the new name, or neither name (the account has not
        arrived yet), answers ``renamed: false`` and the owner's next sync
        brings what is missing. The ownership row moves to the new name at
        the owner's epoch; sync-log rows pending here for the old name follow.
        """
        body = decode_json(await self.body(request))
        view = self.sender(body)
        new = body.get("new")
        if not isinstance(new, str) or not new:
            raise SyncProtocolError("new is required")
        new = normalize_account_name(new)
        me = self.node.name

        def write(session: Session) -> dict[str, Any]:
            check_sync(session, me, view.account, view, adopt=False)
            target = ownership_table.get(session, new)
            if target is not None and target.owner == me:
                raise SyncFenced(f"{me} owns {new}; refusing a rename onto it", None)
            has_old = engine_accounts.find_account(session, view.account) is not None
            has_new = engine_accounts.find_account(session, new) is not None
            if has_old and has_new:
                raise SyncProtocolError(
                    f"cannot rename {view.account} to {new}: both exist on {me}"
                )
            if has_old:
                engine_accounts.rename_account(session, view.account, new)
            if has_old or ownership_table.get(session, view.account) is not None:
                like = OwnershipView(new, view.owner, view.home, view.epoch, view.state)
                ownership_table.rename(session, view.account, new, me, remember=False, like=like)
            return {"renamed": has_old}

        result = await self.node.store.write(write, replaying=True)
        if result["renamed"]:
            log.info("%s renamed to %s by %s", view.account, new, view.owner)
            await self.node.close_sessions([view.account])
        return self.reply(request, encode_json(result))

    async def fetch(self, request: web.Request) -> web.Response:
        """Bytes of messages only we hold, for the owner's no-loss repairs."""
        body = decode_json(await self.body(request))
        view = self.sender(body)
        guids = body.get("guids")
        if not isinstance(guids, list) or len(guids) > 100_000:
            raise SyncProtocolError("guids must be a list")

        def allowed(session: Session) -> frozenset[str]:
            check_sync(session, self.node.name, view.account, view, adopt=False)
            return known_guids(session, view.account, [g for g in guids if isinstance(g, str)])

        await self._adopt_if_needed(view)
        permitted = await self.node.store.read(allowed)
        spool = self.node.store.spool

        def read() -> bytes:
            return b"".join(encode_frames((g, spool.read(g)) for g in sorted(permitted)))

        return self.reply(
            request, await self.node.store.run_blocking(read), "application/octet-stream"
        )

    async def ownership(self, request: web.Request) -> web.Response:
        """Exchange ownership rows: adopt the sender's higher epochs, answer with ours."""
        body = decode_json(await self.body(request))
        rows = body.get("rows", [])
        if not isinstance(rows, list):
            raise SyncProtocolError("rows must be a list")
        parsed = [parse_row(item) for item in rows]

        def exchange(session: Session) -> list[dict[str, object]]:
            ownership_table.adopt_views(session, parsed, "learned from partner")
            session.flush()
            return [v.to_json() for v in ownership_table.views(session)]

        result = await self.node.store.write(exchange, replaying=True)
        return self.reply(request, encode_json({"rows": result}))

    async def digests(self, request: web.Request) -> web.Response:
        """Which of these accounts differ here? One request for many accounts."""
        body = decode_json(await self.body(request))
        items = body.get("accounts")
        if not isinstance(items, list) or len(items) > 100_000:
            raise SyncProtocolError("accounts must be a list")
        views: dict[str, tuple[OwnershipView, str]] = {}
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("digest"), str):
                raise SyncProtocolError("each account needs account, ownership and digest")
            view = self.sender(item)
            views[view.account] = (view, item["digest"])

        def read(session: Session) -> dict[str, list[str]]:
            differ, refused = [], []
            held = ownership_table.rows_of(session, views)  # check_sync reads them: no query each
            mine = account_digests(session, views)
            for name, (view, digest) in views.items():
                try:
                    check_sync(session, self.node.name, name, view, adopt=False)
                except SyncFenced:
                    refused.append(name)
                    continue
                if mine.get(name) != digest or needs_adoption(session, name, view):
                    differ.append(name)
            del held
            return {"differ": differ, "refused": refused}

        return self.reply(request, encode_json(await self.node.store.read(read)))

    async def request_sync(self, request: web.Request) -> web.Response:
        """The partner asks us to sync these accounts to it (it just became their replica)."""
        body = decode_json(await self.body(request))
        accounts = body.get("accounts", [])
        if not isinstance(accounts, list) or len(accounts) > 1_000_000:
            raise SyncProtocolError("accounts must be a list")

        def queue(session: Session) -> int:
            n = 0
            for name in accounts:
                row = ownership_table.get(session, str(name))
                if row is not None and row.owner == self.node.name:
                    synclog.record(session, row.account, "", "account")
                    n += 1
            return n

        queued = await self.node.store.write(queue)
        return self.reply(request, encode_json({"queued": queued}))

    async def bodies(self, request: web.Request) -> web.Response:
        """Whole copies of message bodies by GUID, whatever account names them
        (the partner heals a damaged file from ours). A GUID we hold no whole
        copy of is left out of the answer; the answer stops before it would
        outgrow ``sync_max_request``."""
        body = decode_json(await self.body(request))
        guids = body.get("guids")
        if not isinstance(guids, list) or len(guids) > MAX_BODIES:
            raise SyncProtocolError(f"guids must be a list of at most {MAX_BODIES}")
        if not all(isinstance(g, str) and GUID_RE.match(g) for g in guids):
            raise SyncProtocolError("guids must be GUIDs (40 lower-case hex digits)")
        spool = self.node.store.spool
        limit = self.max_request

        def read() -> bytes:
            frames: list[bytes] = []
            size = 0
            for guid in dict.fromkeys(guids):
                if not spool.has(guid):
                    continue
                try:
                    data = spool.read(guid)  # damaged here too: not sent (and noted)
                except Corrupt:
                    continue
                if frames and size + len(data) > limit:
                    break
                frames.extend(encode_frames([(guid, data)]))
                size += len(data)
            return b"".join(frames)

        answer = await self.node.store.run_blocking(read)
        return self.reply(request, answer, "application/octet-stream")

    async def verify(self, request: web.Request) -> web.Response:
        """The partner is about to move these accounts here: read their bodies
        (``full`` false: only look for missing and known-damaged ones), repair
        what is damaged from the partner, and say what stays damaged."""
        body = decode_json(await self.body(request))
        accounts = body.get("accounts")
        if (
            not isinstance(accounts, list)
            or len(accounts) > 1_000_000
            or not all(isinstance(a, str) and a for a in accounts)
        ):
            raise SyncProtocolError("accounts must be a list of account names")
        if self.scrubber is None:
            raise TemporaryFailure(f"{self.node.name} is still starting; try again")
        result = await self.scrubber.verify(accounts, full=body.get("full") is not False)
        return self.reply(request, encode_json(result.to_json()))

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[
                body_deadline(self.node.config.http, "sync listener"),
                room_release,
                self.middleware,
            ],
            client_max_size=self.max_request + 1024,
        )
        app.router.add_post("/sync/v1/hello", self.hello)
        app.router.add_post("/sync/v1/user_some", self.user_some)
        app.router.add_post("/sync/v1/reserve", self.reserve)
        app.router.add_post("/sync/v1/upload", self.upload)
        app.router.add_post("/sync/v1/apply", self.apply)
        app.router.add_post("/sync/v1/batch_user_some", self.batch_user_some)
        app.router.add_post("/sync/v1/batch_apply", self.batch_apply)
        app.router.add_post("/sync/v1/delta", self.delta)
        app.router.add_post("/sync/v1/fetch", self.fetch)
        app.router.add_post("/sync/v1/rename", self.rename)
        app.router.add_post("/sync/v1/ownership", self.ownership)
        app.router.add_post("/sync/v1/request_sync", self.request_sync)
        app.router.add_post("/sync/v1/digests", self.digests)
        app.router.add_post("/sync/v1/bodies", self.bodies)
        app.router.add_post("/sync/v1/verify", self.verify)
        return app


def _applied(account: str, result: ApplyResult) -> dict[str, Any]:
    return {
        "account": account,
        "summaries": [encode_summary(s) for s in result.summaries],
        "mismatched": result.mismatched,
    }


def _refusal(account: str, exc: EngineError) -> dict[str, Any]:
    """One account's refusal inside a batch answer: what a request for it
    alone would have answered (``error``, ``detail``, and the fence's row)."""
    detail = client_text(exc, "sync listener")
    item: dict[str, Any] = {"account": account, "error": exc.code, "detail": detail}
    if isinstance(exc, SyncFenced) and exc.current is not None:
        item["ownership"] = exc.current.to_json()
    return item


def server_tls(node: Node) -> ssl.SSLContext | None:
    tls = node.config.tls
    if tls.cert is None or tls.key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    return context


async def start_sync_listener(node: Node, host: str, port: int) -> tuple[SyncServer, web.AppRunner]:
    server = SyncServer(node)
    server.tls = server_tls(node)
    runner = web.AppRunner(
        server.app(),
        access_log=None,
        handle_signals=False,
        auto_decompress=False,  # Content-Encoding is refused, never inflated
        **runner_options(node.config.http),
    )
    await runner.setup()
    site = GuardedSite(
        runner,
        host,
        port,
        limits=node.config.http,
        what="sync listener",
        ssl_context=server.tls,
        reuse_address=True,
    )
    await site.start()
    return server, runner
