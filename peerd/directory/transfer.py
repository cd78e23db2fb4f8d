"""Moving an account to another pair (Cyrus's XFER), driven by its owner.

How this works, for one account, on the node that owns it (the source):

1. **begin** (:meth:`Mover.begin`): the target is a node of the other pair
   that is up; ``directory_moves`` records the move (step ``copy``) and the
   routing row turns ``moving`` to that pair. Nothing else changes yet.
2. **copy**: the replication engine copies the account to the target's sync
   listener (:class:`TransferClient`: the same steps as a sync to the
   partner, the ownership row naming this node as ``PAIR/NODE`` so the
   target's fence never takes it for itself, and the sync log left alone:
   it belongs to the partner). Rounds repeat while a round still uploads
   many messages: the source serves all the while. After the first round a
   round that finds only changed records is one DELTA request (the rolling
   fast path, :mod:`engine.delta`), the final delta under the hold too.
3. **cutover** (the step is recorded first): a catch-up first (fast deltas
   while the source serves, until one carries at most :data:`TINY_ROUND`
   messages), with the node's indexers quiet (:meth:`engine.store.Store.quiet`)
   from there to the flip; then the row is marked ``moving``,
   so the fence refuses new writes (LMTP ``451 4.3.0``, IMAP ``NO
   [UNAVAILABLE]``); one more sync (the final delta); then, in one local
   transaction, the row goes to the target at epoch + 1 (owner
   ``PAIR/NODE``): this node and its partner refuse the account from then
   on, and its open sessions are closed. Writes were held from the mark to
   this commit; the time is logged and kept with the move.
4. The target is told its new row (epoch + 1, owner itself) over the sync
   channel and asked to replicate the account to its own partner (the
   normal rolling path); then the routing row moves to the target pair at
   epoch + 1, ``active`` (one statement: :func:`peerd.directory.moves.flip`),
   and the step is ``flipped`` with the time the source's copy may go.
5. After ``[routing] transfer_grace`` the partner's copy is deleted (a sync
   ``apply`` that deletes the account, fenced by the epoch + 1 row), then
   ours (its ownership row stays, naming the target: the fence keeps
   refusing the account here); the step is ``done``.

**Abort** (:meth:`Mover.abort`), before the local flip only: the task is
cancelled, a write releases a held row (queued after any flip the task had
queued, so it reads the final row: a flip found there refuses the abort and
the move goes on), the target's copy is deleted by a fenced ``apply``, and
the directory forgets the move (:func:`peerd.directory.moves.abort`).

Every step can be repeated: a restart of this node resumes its unfinished
moves (:meth:`Mover.resume`), and running the command again continues. A
restart during the cut-over before the local flip releases the held row
(:func:`ownership.table.release_interrupted`) and the move copies and cuts
over again; after the flip, it goes on from step 4. Failures (the target or
the partner down, the directory away) are retried with back-off. Nothing the
source acknowledged is lost: every write it accepted committed before the
mark, so the final sync (which must succeed before the flip) carried it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from engine import accounts as engine_accounts
from engine import quota
from engine.compare import Push
from engine.errors import EngineError, NoSuchAccount, NotFound, SyncProtocolError
from engine.syncwire import decode_json, encode_json, encode_push
from ownership import table as ownership_table
from ownership.errors import NotCaughtUp, OwnershipError
from ownership.rows import OwnershipView, row_view
from peerd.directory import moves
from peerd.directory.client import Directory
from peerd.directory.errors import TransferCommitted, TransferRefused, TransferStuck
from peerd.directory.moves import MoveEntry
from peerd.node import failpoints
from peerd.node.backoff import Backoff
from peerd.node.config import Address, parse_address
from peerd.node.node import Node
from peerd.replication.client import SyncClient

__all__ = ["Mover", "TransferClient", "qualified"]

log = logging.getLogger("peerd.directory.transfer")

# A copy round that uploads at most this many messages is the last before
# the cut-over (the final delta, writes held, is then small); at most this
# many rounds in all.
SMALL_ROUND = 50
# The catch-up just before the fence repeats until a delta carries at most this many.
TINY_ROUND = 2
MAX_ROUNDS = 6
# Writes are held at most this long; past it the cut-over is undone (the
# source serves again) and tried anew after a catch-up round.
HOLD_LIMIT = 15.0
RETRY_FIRST, RETRY_MAX = 0.5, 10.0


def _committed(move: MoveEntry) -> str:
    return (
        f"the move of {move.account} to pair {move.to_pair} has cut over: that pair serves"
        f" it (or will in a moment); to bring it back, move it to pair {move.from_pair}"
    )


def qualified(pair: str, node: str) -> str:
    """A node as another pair's ownership rows name it: ``PAIR/NODE``."""
    return node if "/" in node else f"{pair}/{node}"


class TransferClient(SyncClient):
    """A sync client to a node of another pair: the rows it sends name this
    node with its pair, and it neither reads nor acknowledges the sync log
    (that is the partner's replication's)."""

    owns_sync_log = False

    def __init__(self, node: Node, target: Address, pair: str) -> None:
        super().__init__(node, target)
        self.pair = pair

    def wire_row(self, row: OwnershipView) -> dict[str, object]:
        return {
            **row.to_json(),
            "owner": qualified(self.pair, row.owner),
            "home": qualified(self.pair, row.home),
        }

    async def _send_renames(self, account: str, use_zlib: bool, report: Any) -> None:
        return None  # renames are the partner's: the copy is by the new name


@dataclass(slots=True)
class Progress:
    """A running move as this node sees it (what ``GET …/transfer`` adds)."""

    running: bool = False
    rounds: int = 0
    uploaded: int = 0
    bytes_sent: int = 0
    last_error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "rounds": self.rounds,
            "uploaded": self.uploaded,
            "bytes_sent_now": self.bytes_sent,
            "last_error": self.last_error,
        }


class Mover:
    def __init__(self, node: Node, directory: Directory) -> None:
        self.node = node
        self.directory = directory
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.progress: dict[str, Progress] = {}
        self._resumer: asyncio.Task[None] | None = None

    @property
    def pair(self) -> str:
        return self.directory.pair

    # -- life cycle ----------------------------------------------------------

    def start(self) -> None:
        self._resumer = asyncio.create_task(self.resume(), name="transfer-resume")

    async def stop(self) -> None:
        tasks = [t for t in (self._resumer, *self.tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def resume(self) -> None:
        """This node's unfinished moves, once the directory answers."""
        backoff = Backoff(RETRY_FIRST, RETRY_MAX)
        while True:
            try:
                found = await self.directory.run(
                    lambda c: moves.pending(c, self.pair, self.node.name)
                )
                break
            except EngineError:
                await asyncio.sleep(backoff.next())
        for move in found:
            log.warning(
                "move of %s to pair %s: resuming at %s", move.account, move.to_pair, move.step
            )
            self._spawn(move.account)

    # -- the API's side ------------------------------------------------------

    async def begin(self, account: str, to_pair: str) -> MoveEntry:
        """Start (or continue) moving ``account`` to ``to_pair``."""
        node = self.node
        if to_pair == self.pair:
            raise TransferRefused(f"{account} is in pair {to_pair} already")
        view = await node.store.read(lambda s: ownership_table.view(s, account))
        exists = await node.store.read(lambda s: engine_accounts.find_account(s, account))
        existing = await self.directory.run(lambda c: moves.get(c, account))
        if existing is not None and existing.step != "done":
            if existing.to_pair != to_pair:
                raise TransferRefused(
                    f"{account} is being moved to pair {existing.to_pair} already"
                )
            if (existing.from_pair, existing.source) == (self.pair, node.name):
                self._spawn(account)  # continue it, if it is not running
            return existing  # else its source drives it: only report
        if exists is None or view is None:
            raise NoSuchAccount(f"no such account: {account}")
        if view.owner != node.name or view.state == "moving":
            raise TransferRefused(
                f"{node.name} does not own {account} (owner {view.owner}): run the move there"
            )
        target = await self._choose_target(to_pair)
        move = await self.directory.run(
            lambda c: moves.begin(c, account, self.pair, to_pair, node.name, target, view.epoch)
        )
        log.info("move of %s to pair %s (node %s) begins", account, to_pair, target)
        self._spawn(account)
        return move

    async def _choose_target(self, to_pair: str) -> str:
        nodes = await self.directory.run(lambda c: moves.pair_nodes(c, to_pair))
        if not nodes:
            raise TransferRefused(f"no such pair in the directory: {to_pair}")
        up_within = 3 * self.node.config.routing.directory_heartbeat.total_seconds()
        for name, sync, age in nodes:
            if sync and age <= up_within:
                return name
        raise TransferRefused(f"no node of pair {to_pair} is up with a sync listener")

    async def abort(self, account: str) -> MoveEntry:
        """Abandon the move of ``account`` before its cut-over: the move task
        stops, writes are taken again if they were held, the target's copy
        is deleted, and the directory forgets the move (the routing row is
        this pair's again, ``active``). After the cut-over committed here
        (the row names the target) it is refused and the move goes on."""
        node = self.node
        move = await self.directory.run(lambda c: moves.get(c, account))
        if move is None or move.step == "done":
            raise NotFound(f"no move of {account} is under way")
        if (move.from_pair, move.source) != (self.pair, node.name):
            raise TransferRefused(
                f"the move of {account} is driven by {move.source} of pair {move.from_pair}:"
                " abort it there"
            )
        if move.step not in ("copy", "cutover"):
            raise TransferCommitted(_committed(move))
        task = self.tasks.pop(account, None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        target_owner = qualified(move.to_pair, move.target)

        def release(session: Session) -> OwnershipView | None:
            # A write: it runs after any flip the stopped task had queued, so
            # the row read here is final.
            row = ownership_table.get(session, account)
            if row is not None and row.owner == node.name and row.state == "moving":
                ownership_table.unmark_moving(session, {account: "normal"})
            return row_view(row) if row is not None else None

        view = await node.store.write(release)
        if view is not None and view.owner == target_owner:
            self._spawn(account)
            raise TransferCommitted(_committed(move))
        if view is None:
            raise TransferStuck(f"{account} has no ownership row here: see docs/failover.md")
        # (A stuck move, the account owned by the partner now, is abandoned
        # the same way: the partner's row, at a higher epoch, fences the delete.)
        client = await self._client(move)
        try:
            # The target holds the copy under this node's row (PAIR/NODE):
            # an apply that deletes the account, fenced by that row, removes
            # it and its row there.
            body = {
                "account": account,
                "ownership": client.wire_row(view),
                "push": encode_push(Push(account, delete_account=True)),
            }
            await client.call("apply", encode_json(body), compressed=False)
        finally:
            await client.close()
        if not await self.directory.run(lambda c: moves.abort(c, move)):
            raise TransferCommitted(_committed(move))
        self.directory.cache.forget(account)
        self.progress.pop(account, None)
        log.warning(
            "move of %s to pair %s aborted: the copy on %s is deleted, %s serves it",
            account,
            move.to_pair,
            move.target,
            node.name,
        )
        return move

    async def status(self, account: str) -> dict[str, Any] | None:
        move = await self.directory.run(lambda c: moves.get(c, account))
        if move is None:
            return None
        progress = self.progress.get(account, Progress())
        return {**move.to_json(), **progress.to_json()}

    # -- driving one move ------------------------------------------------------

    def _spawn(self, account: str) -> None:
        task = self.tasks.get(account)
        if task is not None and not task.done():
            return
        self.tasks[account] = asyncio.create_task(self._drive(account), name=f"move-{account}")

    async def _drive(self, account: str) -> None:
        progress = self.progress.setdefault(account, Progress())
        progress.running = True
        backoff = Backoff(RETRY_FIRST, RETRY_MAX)
        try:
            while True:
                try:
                    await self._run(account, progress)
                    progress.last_error = ""
                    return
                except TransferStuck as exc:
                    progress.last_error = exc.message
                    log.error("move of %s stopped: %s", account, exc.message)
                    with contextlib.suppress(EngineError):
                        await self._note(account, exc.message)
                    return
                except (EngineError, OwnershipError) as exc:
                    progress.last_error = exc.message
                    wait = backoff.next()
                    log.warning("move of %s: %s (again in %.1f s)", account, exc.message, wait)
                    await asyncio.sleep(wait)
        finally:
            progress.running = False

    async def _note(self, account: str, note: str) -> None:
        move = await self.directory.run(lambda c: moves.get(c, account))
        if move is not None:
            await self.directory.run(
                lambda c: moves.set_step(c, account, move.step, note=note[:500])
            )

    async def _run(self, account: str, progress: Progress) -> None:
        move = await self.directory.run(lambda c: moves.get(c, account))
        if move is None or move.step == "done":
            return
        if move.step in ("copy", "cutover"):
            client = await self._client(move)
            try:
                move = await self._copy_and_cut_over(move, client, progress)
            finally:
                await client.close()
        if move.step == "flipped":
            await self._delete_after_grace(move)

    async def _client(self, move: MoveEntry) -> TransferClient:
        nodes = await self.directory.run(lambda c: moves.pair_nodes(c, move.to_pair))
        sync = next((s for n, s, _ in nodes if n == move.target), None)
        if not sync:
            raise TransferRefused(f"node {move.target} of pair {move.to_pair} has no sync listener")
        return TransferClient(self.node, parse_address(sync), self.pair)

    async def _copy_and_cut_over(
        self, move: MoveEntry, client: TransferClient, progress: Progress
    ) -> MoveEntry:
        node, account = self.node, move.account
        target_owner = qualified(move.to_pair, move.target)
        view = await node.store.read(lambda s: ownership_table.view(s, account))
        if view is None:
            raise TransferStuck(f"{account} has no ownership row here")
        if view.owner == node.name:
            if view.epoch != move.epoch:
                # A switchover and back meanwhile: the copy is still good; the
                # flip goes one above the epoch in force.
                await self.directory.run(lambda c: moves.set_epoch(c, account, view.epoch))
                move = await self._reread(account)
            await failpoints.pause("transfer.copy")
            await self._copy(move, client, progress)
            await self.directory.run(lambda c: moves.set_step(c, account, "cutover"))
            await failpoints.pause("transfer.copied")
            held = await self._cut_over(move, client, target_owner)
            await self.directory.run(
                lambda c: moves.set_step(c, account, "cutover", held_seconds=held)
            )
        elif not (view.owner == target_owner and view.epoch == move.epoch + 1):
            raise TransferStuck(
                f"{account} is owned by {view.owner} at epoch {view.epoch} now (the move began "
                f"at epoch {move.epoch} on {node.name}): the move cannot go on; see "
                "docs/failover.md"
            )
        await failpoints.pause("transfer.flipped_here")
        await self._tell_target(move, client)
        grace = node.config.routing.transfer_grace
        delete_after = dt.datetime.now(dt.UTC) + grace

        def flip(conn: Any) -> None:
            moves.flip(conn, move)
            moves.set_step(conn, account, "flipped", delete_after=delete_after, note="")

        await self.directory.run(flip)
        self.directory.cache.forget(account)
        moved = await self._reread(account)
        log.info(
            "move of %s to pair %s: served there at epoch %d; writes were held %.3f s;"
            " the copy here goes after %s",
            account,
            move.to_pair,
            move.epoch + 1,
            moved.held_seconds,
            delete_after.isoformat(timespec="seconds"),
        )
        return moved

    async def _reread(self, account: str) -> MoveEntry:
        move = await self.directory.run(lambda c: moves.get(c, account))
        if move is None:
            raise TransferStuck(f"the move of {account} is gone from the directory")
        return move

    async def _copy(self, move: MoveEntry, client: TransferClient, progress: Progress) -> None:
        """Rounds of the replication engine until one has little left to send."""
        account = move.account
        for _ in range(MAX_ROUNDS):
            # After the first round, a round that finds only new or changed
            # messages is one DELTA request (the rolling fast path).
            report = await client.sync_account(account, compressed=True, fast=True)
            progress.rounds += 1
            progress.uploaded += report.uploaded
            progress.bytes_sent += report.bytes_sent
            if report.uploaded <= SMALL_ROUND:
                break
        usage = await self.node.store.read(lambda s: quota.usage(s, account))
        sent = progress.bytes_sent
        await self.directory.run(
            lambda c: moves.set_step(
                c,
                account,
                "copy",
                bytes_sent=move.bytes_sent + sent,
                mailbox_bytes=usage.used,
                messages=usage.messages,
            )
        )
        progress.bytes_sent = 0

    async def _cut_over(self, move: MoveEntry, client: TransferClient, target_owner: str) -> float:
        """Hold writes, send the final delta, give the row to the target here;
        how long writes were held."""
        # The full-text indexer and the parse walker write nothing from the
        # catch-up to the flip: the mark and the flip never wait behind one
        # of their large transactions.
        async with self.node.store.quiet():
            return await self._held(move, client, target_owner)

    async def _held(self, move: MoveEntry, client: TransferClient, target_owner: str) -> float:
        node, account = self.node, move.account
        await self._catch_up(move, client)
        previous = await node.store.write(
            lambda s: ownership_table.mark_moving(s, [account], node.name)
        )
        held_since = time.perf_counter()
        try:
            await failpoints.pause("transfer.held")
            synced_at = time.perf_counter()
            report = await asyncio.wait_for(
                client.sync_account(account, compressed=True, fast=True), HOLD_LIMIT
            )
            synced = time.perf_counter() - synced_at
        except TimeoutError:
            await node.store.write(lambda s: ownership_table.unmark_moving(s, previous))
            raise NotCaughtUp(
                f"the final delta of {account} took more than {HOLD_LIMIT:g} s; writes taken "
                "again, the move catches up and tries again",
                [{"account": account, "node": node.name}],
            ) from None
        except BaseException:
            await node.store.write(lambda s: ownership_table.unmark_moving(s, previous))
            raise

        def flip(session: Session) -> OwnershipView:
            row = ownership_table.set_owner(
                session,
                account,
                target_owner,
                state="normal",
                reason=f"moved to pair {move.to_pair}",
                epoch=move.epoch + 1,
                home=target_owner,
            )
            return row_view(row)

        await node.store.write(flip)
        held = time.perf_counter() - held_since
        # Open sessions end now (BYE [UNAVAILABLE]); while writes were held
        # the fence refused each of their writes, so they need not end
        # sooner, and the hold does not wait for them.
        await node.close_sessions([account])
        node.counters.inc("transfers")
        log.info(
            "move of %s: writes held %.3f s (final delta %.3f s, %d request(s), %d message(s),"
            " %d bytes; the rest: the flip's commit)",
            account,
            held,
            synced,
            len(report.requests),
            report.uploaded,
            report.bytes_sent,
        )
        return held

    async def _catch_up(self, move: MoveEntry, client: TransferClient) -> None:
        """Fast deltas just before the fence, while the source still serves,
        until one carries at most :data:`TINY_ROUND` messages: the delta sent
        with writes held then holds only what arrived while the account was
        being marked (often nothing: no request at all), so the held window
        does not grow with the account, the copy rounds' length or the time
        since the last of them."""
        for _ in range(MAX_ROUNDS):
            report = await client.sync_account(move.account, compressed=True, fast=True)
            if report.uploaded <= TINY_ROUND:
                return

    async def _tell_target(self, move: MoveEntry, client: TransferClient) -> None:
        """The target's row: itself, at epoch + 1; then it replicates to its partner."""
        row = OwnershipView(move.account, move.target, move.target, move.epoch + 1, "normal")
        raw = await client.call(
            "ownership", encode_json({"rows": [row.to_json()]}), compressed=False
        )
        theirs = [r for r in decode_json(raw).get("rows", []) if r.get("account") == move.account]
        if not theirs or int(theirs[0].get("epoch", 0)) < move.epoch + 1:
            raise SyncProtocolError(
                f"{move.target} did not take {move.account} at epoch {move.epoch + 1}"
            )
        await client.call(
            "request_sync", encode_json({"accounts": [move.account]}), compressed=False
        )

    async def _delete_after_grace(self, move: MoveEntry) -> None:
        """The partner's copy, then ours: the source no longer holds the account."""
        node, account = self.node, move.account
        if move.delete_after is not None:
            wait = (move.delete_after - dt.datetime.now(dt.UTC)).total_seconds()
            if wait > 0:
                await asyncio.sleep(wait)
        await failpoints.pause("transfer.delete")
        view = await node.store.read(lambda s: ownership_table.view(s, account))
        if view is not None and view.owner == node.name:
            raise TransferStuck(f"{account} is owned here again: its copy is not deleted")
        if view is not None and node.config.sync_partner is not None:
            partner = SyncClient(node)
            try:
                body = {
                    "account": account,
                    "ownership": view.to_json(),
                    "push": encode_push(Push(account, delete_account=True)),
                }
                await partner.call("apply", encode_json(body), compressed=False)
            finally:
                await partner.close()

        def delete(session: Session) -> None:
            # The ownership row stays (it names the target at epoch + 1): a
            # login that raced the delete is refused by the fence, not
            # taken for an account of this node's.
            if engine_accounts.find_account(session, account) is not None:
                engine_accounts.delete_account(session, account)

        await node.store.write(delete, replaying=True)
        await self.directory.run(lambda c: moves.set_step(c, account, "done"))
        log.info("move of %s to pair %s done: the copy here is deleted", account, move.to_pair)
