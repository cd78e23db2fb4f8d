"""The store: one database, one spool, one writer with group commit.

How this works: every write is a function ``fn(session) -> T`` handed to
:meth:`Store.write`. A single committer thread takes whatever writes are
queued, runs each inside its own SAVEPOINT of one transaction (so one failing
write — over quota, unknown user — rolls back alone), fsyncs the spool
directories the batch's new messages were renamed into, and commits once. A
burst of concurrent deliveries thus shares one database commit and one
spool flush: group commit, with durability on. The spool flush runs in a
thread of its own while the batch's SQL runs; the COMMIT waits for both.
While one batch commits, the next one queues, so batches grow exactly when
the disk is the bottleneck.

Reads run on a small thread pool with their own sessions (SQLite in WAL mode
lets them run beside the writer).

Writes of one kind can be *grouped*: :meth:`Store.write_grouped` hands the
committer an operation and a runner ``runner(session, ops) -> outcomes``, and
every operation of that runner in a batch goes to one call of it, in one
savepoint (none when the batch is that group alone: the transaction is the
savepoint then). A runner turns a hundred deliveries into a handful of statements
(one ``executemany`` per table, one UPDATE per mailbox) instead of a dozen
statements each. It returns one outcome per operation, a result or the
exception that operation failed with; an operation that fails must have
written nothing. If the runner raises, the group's savepoint (or the whole
transaction) is rolled back and each operation runs again alone, so one
broken operation fails alone.

A write marked ``background`` (the full-text indexer's, the parse
walker's: large, and due at no particular moment) waits while a
:meth:`Store.quiet` section is open, so a short critical section (a move's
cut-over, with writes held) does not queue behind one of them.

A write may *ride* (``Store.write(..., ride=seconds)``): it starts no
commit of its own for up to that long, and joins the next batch another
write starts. The background walkers' derived rows (the parse walker's) ride
on the deliveries' commits, so a stream of deliveries does not get one more
commit and WAL flush of theirs between each two of its own.

On SQLite the writer's connections never checkpoint (``wal_autocheckpoint=0``):
a thread of the store copies the WAL back into the database file every
:data:`CHECKPOINT_COMMITS` commits or after :data:`CHECKPOINT_IDLE` seconds
(SQLite's PASSIVE checkpoint, which neither waits for nor blocks the
commits). Left to SQLite, the commit that crossed 1,000 WAL pages did it:
megabytes written and the database file fsynced before that batch's writers
heard of their commit.

On SQLite the full-text index (:mod:`engine.textindex`) lives in a database
file of its own (:func:`engine.textindex.index_file`) with a writer of its
own (:meth:`Store.index_write`, one thread, its own connection): SQLite
locks per file, so the index's FTS5 inserts (milliseconds a text, flushed
at the write's end) never hold the committer while a delivery or a
replicated DELTA waits. The read connections ``ATTACH`` it, so a read sees
``fulltext`` and ``fulltext_docs`` beside ``messages`` under their plain
names; the committer's connection does not (a ``BEGIN IMMEDIATE`` there
would lock the index file too). On PostgreSQL the index is a table of the
one database and :meth:`Store.index_write` is a background write. The
index writer's thread runs at a lower scheduling priority
(:data:`INDEX_NICE`): on a busy machine the inserts wait for a free core,
not the deliveries and DELTAs.

After a commit, listeners get the list of :class:`~engine.synclog.Change`
the batch made (the rolling replication worker and IMAP IDLE use it), on the
event loop that started the store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from engine import textindex
from engine.db import make_engine
from engine.errors import DatabaseBusy, EngineError, TemporaryFailure
from engine.spool import Spool, Staged
from engine.synclog import Change

__all__ = ["GroupRunner", "Listener", "Store"]

T = TypeVar("T")
Listener = Callable[[list[Change]], None]
# runner(session, ops) -> one result or exception per op, in order.
GroupRunner = Callable[[Session, list[Any]], list[Any]]
log = logging.getLogger("peerd.store")

BATCH_MAX = 512
# SQLite: the checkpointer copies the WAL into the database file after this
# many commits, or after CHECKPOINT_IDLE seconds with any (see Store.checkpoint).
CHECKPOINT_COMMITS = 200
CHECKPOINT_IDLE = 1.0


# How much less the index writer's thread gets of a busy CPU (nice(2) steps
# on Linux): its FTS5 inserts (SQLite's C code, without the interpreter
# lock) run when the deliveries' and DELTAs' threads leave a core free.
INDEX_NICE = 10


def _lower_priority() -> None:
    """In the index writer's thread: lower its own scheduling priority (Linux
    schedules threads one by one: ``setpriority`` of a thread id; elsewhere
    nothing changes)."""
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + INDEX_NICE)


@dataclass(slots=True)
class _Item:
    fn: Callable[[Session], Any]
    future: concurrent.futures.Future[Any]
    dirs: frozenset[Path]
    replaying: bool
    staged: tuple[Staged, ...] = ()
    # A grouped write: ``fn`` is unused; ``runner`` gets ``op`` with the others.
    runner: GroupRunner | None = None
    op: Any = None
    # An async caller's future, settled on its loop (one wake-up per batch).
    waiter: asyncio.Future[Any] | None = None
    # Runs in a batch of its own: no other write's SQL, no spool flush beside it.
    alone: bool = False
    # A rider (Store.write's ``ride``): the time.monotonic() by which it
    # commits even if no other write came to share its commit; None: now.
    due: float | None = None


@dataclass(slots=True)
class _Stats:
    batches: int = 0
    writes: int = 0
    largest_batch: int = 0
    # Reads asked for through Store.read (from the event loop's thread only).
    reads: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def translate_db_error(exc: BaseException) -> BaseException:
    """Database trouble is temporary for the callers: nothing was committed."""
    if isinstance(exc, OperationalError):
        return DatabaseBusy(f"database unavailable: {exc.orig}")
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return DatabaseBusy(f"database connection lost: {exc.orig}")
    return exc


def _outcome(value: Any) -> Any:
    """What a write's caller gets: an error of the database's own (a
    constraint, a trigger, a value it refuses) is a temporary failure,
    nothing of the write was committed, as when a whole batch fails; the
    caller never sees SQLAlchemy's exception, whose text holds the statement
    and its parameters (the log has it)."""
    if isinstance(value, SQLAlchemyError):
        log.error("write failed: %s", value)
        return TemporaryFailure(f"write failed: {value}")
    return value


def _wake(
    waiters: list[tuple[asyncio.Future[Any], bool, Any]],
    listeners: Sequence[Listener] = (),
    changes: list[Change] | None = None,
) -> None:
    for waiter, ok, value in waiters:
        if waiter.done():
            continue  # its caller was cancelled meanwhile
        if ok:
            waiter.set_result(value)
        else:
            waiter.set_exception(value)
    if listeners:
        _tell(listeners, changes or [])


def _tell(listeners: Sequence[Listener], changes: list[Change]) -> None:
    """Each listener in turn; one that fails is reported and the others still hear."""
    for listener in listeners:
        try:
            listener(changes)
        except Exception as exc:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop: the store's was closed, or never bound
                log.exception("store listener %r failed", listener)
                continue
            loop.call_exception_handler(
                {"message": f"store listener {listener!r} failed", "exception": exc}
            )


def _unused(session: Session) -> None:
    raise AssertionError("a grouped write has no fn of its own")


# What Store._take returns when a rider has waited its time.
_DUE = _Item(_unused, concurrent.futures.Future(), frozenset(), False)


class Store:
    """The mail store of one node."""

    def __init__(
        self, url: str, data_dir: Path | str, *, owner: bool = True, flush: str = "filesystem"
    ) -> None:
        """``owner`` False: a second process (an admin tool, a test) opening a
        running node's store; it must not clean the node's spool. ``flush``:
        how a group commit's spool files are made durable (see :mod:`engine.spool`)."""
        self.url = url
        self.data_dir = Path(data_dir)
        self.spool = Spool(self.data_dir / "spool", clean=owner, flush=flush)
        self.engine: Engine = make_engine(url, immediate=True, autocheckpoint=False)
        self.read_engine: Engine = make_engine(url)
        # SQLite: the full-text index's own file, writer and thread (module docstring).
        self.index_engine: Engine | None = None
        self._index_writer: concurrent.futures.ThreadPoolExecutor | None = None
        index_path = textindex.index_file(self.engine)
        if index_path is not None:
            textindex.create_index_file(index_path)
            self.index_engine = make_engine(f"sqlite:///{index_path}", immediate=True)
            event.listen(self.index_engine, "connect", textindex.cache_connection)
            event.listen(self.read_engine, "connect", partial(textindex.attach, path=index_path))
            self._index_writer = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="store-index", initializer=_lower_priority
            )
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._readers = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="store-read")
        self._listeners: list[Listener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-flush")
        self._thread = threading.Thread(target=self._run, name="store-commit", daemon=True)
        self._closed = False
        self._quiet = 0
        self._loud = asyncio.Event()  # set while no quiet() section is open
        self._loud.set()
        self._committing = False
        # SQLite: the committer keeps one connection for its life (see _bind).
        self._held: Connection | None = None
        self._hold = self.engine.dialect.name == "sqlite"
        # The backup channels every local change is also logged for, and
        # whether changes applied from the partner are too (sync_log_chain).
        self.channels: tuple[str, ...] = ()
        self.chain = False
        self.stats = _Stats()
        self._thread.start()
        # SQLite: commits do not checkpoint (a checkpoint in the commit path
        # writes up to 4 MB back and fsyncs the database file before the
        # batch's writers hear of their commit); this thread does.
        self._since_checkpoint = 0
        self._checkpoint_due = threading.Event()
        self._checkpoints_stop = False
        self._checkpointer: threading.Thread | None = None
        if self.engine.dialect.name == "sqlite":
            self._checkpointer = threading.Thread(
                target=self._checkpoints, name="store-checkpoint", daemon=True
            )
            self._checkpointer.start()

    # -- lifecycle ---------------------------------------------------------

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver change notifications on ``loop``."""
        self._loop = loop

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def close(self) -> None:
        """Finish every queued write, then stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        if self._checkpointer is not None:
            self._checkpoints_stop = True
            self._checkpoint_due.set()
            self._checkpointer.join()
        self._flusher.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        if self._index_writer is not None:
            self._index_writer.shutdown(wait=True)
        self.spool.close()
        self.engine.dispose()
        self.read_engine.dispose()
        if self.index_engine is not None:
            self.index_engine.dispose()

    # -- writes ------------------------------------------------------------

    def submit(
        self,
        fn: Callable[[Session], T],
        *,
        dirs: Iterable[Path] = (),
        replaying: bool = False,
        staged: Iterable[Staged] = (),
    ) -> concurrent.futures.Future[T]:
        if self._closed:
            raise TemporaryFailure("the store is shutting down")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put(_Item(fn, future, frozenset(dirs), replaying, tuple(staged)))
        return future

    async def write(
        self,
        fn: Callable[[Session], T],
        *,
        dirs: Iterable[Path] = (),
        replaying: bool = False,
        staged: Iterable[Staged] = (),
        alone: bool = False,
        background: bool = False,
        ride: float | None = None,
    ) -> T:
        """Run ``fn`` in the next group commit. ``staged`` spool files are made
        durable and visible (one flush for the whole batch) before it commits.
        ``alone``: in a transaction of its own, between two batches (the spool
        sweep's check and unlink must not interleave with another write).
        ``background``: not queued while a :meth:`quiet` section is open.
        ``ride``: the write starts no commit of its own for up to that many
        seconds; it joins the next batch another write starts (a rider: the
        background walkers' derived rows, which need no flush of their own
        beside every delivery's)."""
        while background and self._quiet:
            await self._loud.wait()
        if self._closed:
            raise TemporaryFailure("the store is shutting down")
        item = _Item(fn, concurrent.futures.Future(), frozenset(dirs), replaying, tuple(staged))
        item.alone = alone
        if ride is not None and not alone:
            item.due = time.monotonic() + ride
        result: T = await self._wait(item)
        return result

    @contextlib.asynccontextmanager
    async def quiet(self) -> AsyncIterator[None]:
        """While open, background writes wait (module docstring); those already
        queued still run. Keep it short: full-text indexing waits meanwhile."""
        self._quiet += 1
        self._loud.clear()
        try:
            yield
        finally:
            self._quiet -= 1
            if not self._quiet:
                self._loud.set()

    async def write_grouped(
        self, runner: GroupRunner, op: Any, *, staged: Iterable[Staged] = ()
    ) -> Any:
        """Run ``op`` in the next group commit, together with every other op of
        ``runner`` in that batch (see the module docstring). Returns its outcome,
        or raises the exception the runner gave for it."""
        if self._closed:
            raise TemporaryFailure("the store is shutting down")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        item = _Item(_unused, future, frozenset(), False, tuple(staged), runner, op)
        return await self._wait(item)

    async def _wait(self, item: _Item) -> Any:
        """Queue ``item`` and wait for its outcome on this loop.

        Not ``asyncio.wrap_future``: that wakes the loop once per write; the
        committer settles a whole batch's waiters with one wake-up per loop.
        A caller cancelled before its write runs takes it out of the batch.
        """
        item.waiter = asyncio.get_running_loop().create_future()
        self._queue.put(item)
        try:
            return await item.waiter
        except asyncio.CancelledError:
            item.future.cancel()  # refused once the committer has started it
            raise

    def write_sync(
        self, fn: Callable[[Session], T], *, dirs: Iterable[Path] = (), replaying: bool = False
    ) -> T:
        return self.submit(fn, dirs=dirs, replaying=replaying).result()

    # -- the full-text index's writes -------------------------------------

    def index_write_sync(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in a transaction of the full-text index's own writer
        (SQLite; module docstring), or as a write of the committer
        (PostgreSQL, where the index is a table of the one database). Only
        :mod:`engine.textindex`'s tables are there on SQLite."""
        if self.index_engine is None:
            return self.write_sync(fn)
        if self._closed:
            raise TemporaryFailure("the store is shutting down")
        try:
            with Session(self.index_engine, expire_on_commit=False) as session, session.begin():
                return fn(session)
        except (OperationalError, DBAPIError) as exc:
            raise translate_db_error(exc) from exc

    async def index_write(self, fn: Callable[[Session], T]) -> T:
        """:meth:`index_write_sync` off the event loop: on the index's one
        writer thread (SQLite), or a background write of the committer."""
        if self._index_writer is None:
            return await self.write(fn, background=True)
        if self._closed:
            raise TemporaryFailure("the store is shutting down")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._index_writer, self.index_write_sync, fn)

    # -- reads -------------------------------------------------------------

    def read_sync(self, fn: Callable[[Session], T]) -> T:
        try:
            with Session(self.read_engine, expire_on_commit=False) as session, session.begin():
                return fn(session)
        except (OperationalError, DBAPIError) as exc:
            raise translate_db_error(exc) from exc

    async def read(self, fn: Callable[[Session], T]) -> T:
        loop = asyncio.get_running_loop()
        self.stats.reads += 1
        return await loop.run_in_executor(self._readers, self.read_sync, fn)

    async def run_blocking(self, fn: Callable[[], T]) -> T:
        """Run blocking I/O (spool reads and writes) off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, fn)

    # -- the committer -----------------------------------------------------

    def _run(self) -> None:
        try:
            self._run_batches()
        finally:
            self._release()

    def _bind(self) -> Engine | Connection:
        """What a batch's session is bound to. On SQLite, one connection the
        committer holds from its first batch to its end: a check-out from
        the pool and its return (with the pool's reset) for every commit cost
        about 0.1 ms of CPU, a quarter of what a lone delivery's session and
        transaction cost (``docs/benchmarks.md``). A file-backed SQLite
        connection does not go stale, and every batch ends its transaction
        (commit or rollback) before the next begins. PostgreSQL keeps the
        pool, whose pre-ping replaces a connection the server closed."""
        if not self._hold:
            return self.engine
        held = self._held
        if held is None or held.closed or held.invalidated:
            self._release()
            held = self._held = self.engine.connect()
        return held

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            with contextlib.suppress(Exception):
                held.close()

    def _run_batches(self) -> None:
        stopping = False
        held: _Item | None = None  # a write that waits for a batch of its own
        riders: list[_Item] = []  # writes that wait to share another's commit
        while not stopping:
            first = held if held is not None else self._take(riders)
            held = None
            if first is None:
                stopping = True
            if first is None or first is _DUE:
                # Stopping, or a rider waited long enough: the riders commit alone.
                batch, riders = riders, []
                if not batch:
                    break
            else:
                batch = [first]
                if not first.alone:
                    # The riders go first: they were asked for before it.
                    batch, riders = [*riders, first], []
                while not first.alone and len(batch) < BATCH_MAX:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    if item.alone:
                        held = item
                        break
                    batch.append(item)
            self._committing = True
            try:
                self._commit(batch)
            finally:
                self._committing = False
        if riders:  # asked for after the stop (close() waits for nothing else)
            self._commit(riders)

    def _take(self, riders: list[_Item]) -> _Item | None:
        """The next write that starts a batch (None: stop); a rider is kept in
        ``riders`` instead, and :data:`_DUE` comes back once one of them has
        waited its time."""
        while True:
            if riders:
                wait = min(r.due or 0.0 for r in riders) - time.monotonic()
                if wait <= 0:
                    return _DUE
                try:
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    return _DUE
            else:
                item = self._queue.get()
            if item is not None and item.due is not None:
                riders.append(item)
                continue
            return item

    def busy(self) -> bool:
        """Whether a write is queued or committing now (a hint: it may change
        the moment after; the full-text indexer waits for pauses with it)."""
        return self._committing or not self._queue.empty()

    def _commit(self, batch: list[_Item]) -> None:
        # A caller that gave up before its turn (a cancelled delivery) is
        # skipped; once running, a write can no longer be cancelled.
        batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if batch:
            self._commit_running(batch)

    def _commit_running(self, batch: list[_Item]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        changes: list[Change] = []
        staged = [s for item in batch for s in item.staged]
        dirs: set[Path] = set().union(*(item.dirs for item in batch))
        # The spool's flush (files durable, renamed, directory entries
        # durable) runs in its own thread while this one runs the batch's
        # SQL: it has to be done before the COMMIT, not before the statements,
        # since no reader sees a record before the COMMIT.
        flush = self._flusher.submit(self._flush_spool, staged, dirs) if staged or dirs else None
        try:
            with Session(self._bind(), expire_on_commit=False) as session, session.begin():
                session.info["channels"] = self.channels
                session.info["chain"] = self.chain
                groups: dict[GroupRunner, list[int]] = {}
                for index, item in enumerate(batch):
                    outcomes.append((False, None))
                    if item.runner is not None:
                        groups.setdefault(item.runner, []).append(index)
                        continue
                    ok, value = self._run_one(session, item.fn, item.replaying, changes)
                    outcomes[index] = (ok, value)
                # A batch that is one group alone (a burst of deliveries) needs
                # no savepoint: if its runner raises, the whole transaction
                # rolls back and each op runs again alone (below).
                alone = len(groups) == 1 and len(next(iter(groups.values()))) == len(batch)
                for runner, indexes in groups.items():
                    ops = [batch[i].op for i in indexes]
                    results = (
                        self._run_bare(session, runner, ops, changes)
                        if alone
                        else self._run_group(session, runner, ops, changes)
                    )
                    for index, outcome in zip(indexes, results, strict=True):
                        outcomes[index] = outcome
                if flush is not None:
                    flush.result()  # its error rolls the batch back
                    flush = None
        except Exception as exc:
            # A connection in trouble is not kept (the next batch takes a new one).
            self._release()
            if flush is not None:
                # The SQL failed first: let the flush end before any retry
                # touches the same files.
                with contextlib.suppress(Exception):
                    flush.result()
            if len(batch) > 1 and not isinstance(translate_db_error(exc), DatabaseBusy):
                # One write can break the whole transaction (a failed flush
                # does): nothing was committed, so run each write again
                # alone and let only the broken one fail.
                for item in batch:
                    self._commit_running([item])
                return
            error = translate_db_error(exc)
            if not isinstance(error, EngineError):
                log.exception("write batch failed")
                error = TemporaryFailure(f"write failed: {exc}")
            self._settle([(item, False, error) for item in batch if not item.future.done()])
            return
        self.stats.batches += 1
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_COMMITS:
            self._checkpoint_due.set()
        self.stats.writes += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        self._settle(
            [(item, ok, value) for item, (ok, value) in zip(batch, outcomes, strict=True)],
            changes,
        )

    # -- the checkpointer (SQLite) --------------------------------------------

    def _checkpoints(self) -> None:
        while True:
            self._checkpoint_due.wait(CHECKPOINT_IDLE)
            self._checkpoint_due.clear()
            if self._checkpoints_stop:
                return  # the last connection's close checkpoints what is left
            if self._since_checkpoint:
                self._since_checkpoint = 0
                self.checkpoint()

    def checkpoint(self) -> tuple[int, int, int] | None:
        """Copy what the WAL holds into the database file (SQLite's PASSIVE
        checkpoint: it never waits for the writer or the readers, and the
        commits go on beside it). Returns SQLite's (busy, frames in the WAL,
        frames copied), or None when it failed (it is tried again later)."""
        try:
            raw = self.engine.raw_connection()
            try:
                cursor = raw.cursor()
                row = cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                cursor.close()
            finally:
                raw.close()
        except (sqlite3.Error, DBAPIError, OSError) as exc:
            log.warning("WAL checkpoint failed (tried again later): %s", exc)
            return None
        self.stats.extra["checkpoints"] = self.stats.extra.get("checkpoints", 0) + 1
        return (int(row[0]), int(row[1]), int(row[2])) if row is not None else None

    def _settle(
        self, outcomes: list[tuple[_Item, bool, Any]], changes: list[Change] | None = None
    ) -> None:
        """Set each write's outcome, then tell the listeners the batch's
        ``changes``. Each loop is called once a batch: its waiters are woken
        and (on the store's loop) the listeners told in one callback. A
        callback from another thread writes to the loop's wake-up pipe, so
        one a listener, as before, was a system call each, half a dozen a
        commit."""
        waiting: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for item, ok, value in outcomes:
            if ok:
                item.future.set_result(value)
            else:
                item.future.set_exception(value)
            if item.waiter is not None:
                waiting.setdefault(item.waiter.get_loop(), []).append((item.waiter, ok, value))
        listeners = list(self._listeners) if changes else []
        loop = self._loop
        if listeners and (loop is None or loop.is_closed()):
            _tell(listeners, changes or [])
            listeners = []
        for waiter_loop, waiters in waiting.items():
            if waiter_loop.is_closed():
                continue
            if waiter_loop is loop and listeners:
                waiter_loop.call_soon_threadsafe(_wake, waiters, listeners, changes)
                listeners = []
            else:
                waiter_loop.call_soon_threadsafe(_wake, waiters)
        if listeners and loop is not None:
            loop.call_soon_threadsafe(_tell, listeners, changes or [])

    def _flush_spool(self, staged: list[Staged], dirs: set[Path]) -> None:
        """Make the batch's new spool files durable and visible, and the
        directories the batch's writes name."""
        spooled = self.spool.commit(staged) if staged else set()
        if spooled or dirs:
            self.spool.fsync_dirs(spooled | dirs)

    @staticmethod
    def _run_one(
        session: Session, fn: Callable[[Session], Any], replaying: bool, changes: list[Change]
    ) -> tuple[bool, Any]:
        """One write in its own savepoint: (True, result) or (False, exception)."""
        session.info["replaying"] = replaying
        session.info["changes"] = []
        savepoint = session.begin_nested()
        try:
            result = fn(session)
            savepoint.commit()
        except Exception as exc:
            if savepoint.is_active:
                savepoint.rollback()
            if isinstance(exc, OperationalError) or (
                isinstance(exc, DBAPIError) and exc.connection_invalidated
            ):
                raise  # the database itself is in trouble: fail the batch
            return False, _outcome(exc)
        changes.extend(session.info["changes"])
        return True, result

    @staticmethod
    def _run_bare(
        session: Session, runner: GroupRunner, ops: list[Any], changes: list[Change]
    ) -> list[tuple[bool, Any]]:
        """A runner's ops with no savepoint of their own; an exception propagates."""
        session.info["replaying"] = False
        session.info["changes"] = []
        value = runner(session, ops)
        if not isinstance(value, list) or len(value) != len(ops):
            raise RuntimeError(f"{runner!r} returned a bad outcome list for {len(ops)} ops")
        changes.extend(session.info["changes"])
        return [(not isinstance(v, Exception), _outcome(v)) for v in value]

    def _run_group(
        self, session: Session, runner: GroupRunner, ops: list[Any], changes: list[Change]
    ) -> list[tuple[bool, Any]]:
        """A runner's ops in one savepoint; if it raises, each op alone."""
        ok, value = self._run_one(session, lambda s: runner(s, ops), False, changes)
        if ok and isinstance(value, list) and len(value) == len(ops):
            return [(not isinstance(v, Exception), _outcome(v)) for v in value]
        if ok:
            raise RuntimeError(f"{runner!r} returned {len(value)} outcomes for {len(ops)} ops")
        if len(ops) == 1:
            return [(False, value)]
        self.stats.extra["group_retries"] = self.stats.extra.get("group_retries", 0) + 1
        out: list[tuple[bool, Any]] = []
        for op in ops:
            out.extend(self._run_group(session, runner, [op], changes))
        return out
