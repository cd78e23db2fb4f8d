"""``peerd run``: the daemon's life from start to clean stop; it builds and wires every part.

How this works: read the config, fork the LMTP worker processes while the
process has one thread and no event loop
(:func:`~peerd.services.lmtp.worker.fork_workers`; they wait for their
sockets until step 4), check the database's integrity (a damaged
one stops the node with one line and exit status 65:
:mod:`peerd.app.dbcheck`), migrate it (Alembic, always to head), open the
store and make the node. Then each part is built here and
handed what it needs, in order:

1. the sync listener (``[listen] sync``): what a replica answers;
2. with a partner (``[sync] sync_host``): the sync client and the proxy
   hooks; the ownership exchange at start (:mod:`peerd.pair.returning`,
   retried in the background if the partner does not answer); the rolling
   worker, the scheduled reconcile, and in ``synchronous`` mode the worker's
   wait as the node's ``after_delivery`` hook;
3. the scrub and the repair of damaged bodies (:mod:`peerd.replication.scrub`),
   the socketmap listener (``[listen] socketmap``), the spool sweep timer and
   the full-text indexer (:mod:`peerd.pair.indexer`) and the parse walker
   (:mod:`peerd.pair.parsewalk`);
4. LMTP, IMAP and POP3;
5. the control API, given every part (:class:`~peerd.control.call.Parts`)
   so ``/v1/status``, ``/metrics`` and the pair operations reach them.

Each started part is a :class:`~peerd.node.service.Service`. When every
listener is up, ``READY=1`` goes to systemd.

On SIGHUP: :mod:`peerd.app.reload` reads the config again and applies what
can change while running (``RELOADING=1`` to systemd meanwhile).

On SIGTERM or SIGINT: ``STOPPING=1``, stop accepting connections, let
in-flight deliveries finish (up to ``[lmtp] shutdown_grace``; any still
running then fails with a 4xx and stores nothing), stop the background
workers, drain the store's write queue, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

import migrations
from engine import accounts as engine_accounts
from engine.dbcheck import is_damage
from engine.store import Store
from peerd.app.dbcheck import EXIT_DATABASE_DAMAGED, DatabaseDamaged, check_at_start, damage_line
from peerd.app.notify import sd_notify
from peerd.app.reload import Reloader
from peerd.app.startup import EXIT_CONFIG, StartRefused, lock_data_dir, start_error
from peerd.control.app import build_app
from peerd.control.call import Parts, StatusSource
from peerd.control.routing import start_socketmap
from peerd.directory import Directory, DirectoryWriter
from peerd.directory.transfer import Mover
from peerd.node.config import Config
from peerd.node.httplimits import GuardedSite, runner_options
from peerd.node.logs import setup_logging
from peerd.node.node import Node
from peerd.node.service import Service, server_service
from peerd.pair.hooks import Hooks
from peerd.pair.indexer import Indexer
from peerd.pair.parsewalk import ParseWalker
from peerd.pair.partner import Pair
from peerd.pair.returning import exchange_at_start, exchange_once_reachable
from peerd.pair.sweep import SpoolSweep
from peerd.replication.client import SyncClient
from peerd.replication.reconcile import Reconciler
from peerd.replication.rolling import RollingWorker
from peerd.replication.scrub import Scrubber
from peerd.replication.server import SyncServer, start_sync_listener

if TYPE_CHECKING:
    from peerd.services.lmtp.worker import Forked

__all__ = ["run_daemon", "serve"]

log = logging.getLogger("peerd.app.daemon")

# How long a thread that holds the interpreter lock keeps it while another
# waits (sys.setswitchinterval; Python's default is 5 ms). The daemon runs
# CPU-bound background work in threads (the parse walker and the full-text
# indexer parse whole messages) beside a chain of short hand-offs on the
# delivery and replication paths (event loop -> committer -> flush thread ->
# event loop), each of which waited up to the interval for the lock: with a
# parser thread busy, a hand-off's p90 was 5.6-10.5 ms at 5 ms and 2.8-6.8 ms
# at 0.5 ms (p99 36-45 against 13-20 ms; docs/benchmarks.md).
SWITCH_INTERVAL = 0.0005


@dataclass(slots=True)
class _Started:
    """The parts started so far, and how to stop them."""

    services: list[Service] = field(default_factory=list)
    pair: Pair | None = None
    worker: RollingWorker | None = None
    channels: dict[str, RollingWorker] = field(default_factory=dict)
    reconciler: Reconciler | None = None
    sweep: SpoolSweep | None = None
    indexer: Indexer | None = None
    sync_server: SyncServer | None = None
    lmtp: StatusSource | None = None
    # Awaited before the node says it is ready (the LMTP workers starting).
    pending: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    scrubber: Scrubber | None = None
    api: web.AppRunner | None = None
    directory: Directory | None = None
    directory_writer: DirectoryWriter | None = None
    mover: Mover | None = None
    # Server TLS contexts the listeners hold (IMAP STARTTLS, the sync listener).
    tls: list[ssl.SSLContext] = field(default_factory=list)
    # LMTP workers forked before the event loop, waiting for their sockets.
    forked: list[Forked] = field(default_factory=list)


async def _start_sync_listener(node: Node, started: _Started) -> None:
    where = node.config.listen.sync
    if where is None:
        return
    server, runner = await start_sync_listener(node, where.host, where.port)
    log.info("sync listener on %s", where)
    started.sync_server = server
    if server.tls is not None:
        started.tls.append(server.tls)
    started.services.append(Service("sync-listener", runner.cleanup))


async def _start_replication(node: Node, started: _Started) -> None:
    """The partner side: client, hooks, the return exchange, rolling, reconcile."""
    config = node.config
    if config.sync_partner is None:
        return
    client = SyncClient(node)
    hooks = Hooks(node)
    # Return of a node: learn the partner's newer ownership before serving.
    returned = await exchange_at_start(node, client)
    retrying: asyncio.Task[object] | None = None
    if not returned.partner_answered:
        retrying = asyncio.create_task(exchange_once_reachable(node, client), name="exchange")
    worker = RollingWorker(node, client)
    reconciler = Reconciler(node, client)
    reconciler.start_schedule()
    if config.sync.sync_mode == "synchronous":
        node.after_delivery.append(worker.wait_for_partner)
    if config.sync.sync_log:
        worker.start()

    async def stop() -> None:
        if retrying is not None:
            retrying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retrying
        reconciler.stop()
        await worker.stop()
        await hooks.stop()
        await client.close()

    started.pair = Pair(node, client, hooks)
    started.worker, started.reconciler = worker, reconciler
    started.services.append(Service("rolling", stop))


async def _start_channels(node: Node, started: _Started) -> None:
    """The backup channels ([sync.channels.NAME]): a client and a rolling
    worker each, beside the partner's."""
    for name in node.config.sync.channels:
        client = SyncClient(node, channel=name)
        worker = RollingWorker(node, client)
        if node.config.sync.sync_log:
            worker.start()
        log.info("backup channel %s: replicating to %s", name, client.target)

        async def stop(worker: RollingWorker = worker, client: SyncClient = client) -> None:
            await worker.stop()
            await client.close()

        started.channels[name] = worker
        started.services.append(Service(f"channel-{name}", stop))


async def _start_integrity(node: Node, started: _Started) -> None:
    """The scrub (scheduled and on demand), the repair of what reads find
    damaged, and the sync listener's ``verify``."""
    client = started.pair.client if started.pair is not None else None
    scrubber = Scrubber(node, client)
    node.damage.listen(node.store.spool, asyncio.get_running_loop())
    scrubber.start()
    if started.sync_server is not None:
        started.sync_server.scrubber = scrubber
    started.scrubber = scrubber
    started.services.append(Service("scrub", scrubber.stop))


async def _start_directory(node: Node, started: _Started) -> None:
    """The routing directory of many pairs, when ``[routing] directory_url``
    names one: this pair's rows written through, lookups of other pairs'.
    A directory that does not answer yet delays nothing: the writer keeps
    trying, lookups answer "try again later" for accounts not local."""
    routing = node.config.routing
    if not routing.directory_url:
        return
    directory = Directory(routing.directory_url, routing.pair, routing.directory_cache_ttl)
    writer = DirectoryWriter(node, directory)
    writer.start()
    mover = Mover(node, directory)  # resumes this node's unfinished moves between pairs
    mover.start()

    async def stop() -> None:
        await mover.stop()
        await writer.stop()
        await asyncio.to_thread(directory.close)

    started.directory, started.directory_writer, started.mover = directory, writer, mover
    started.services.append(Service("directory", stop))


async def _start_upkeep(node: Node, started: _Started) -> None:
    """The socketmap listener, the spool sweep timer, the full-text indexer
    and the parse walker."""
    if node.config.listen.socketmap is not None:
        started.services.append(
            await start_socketmap(node, node.config.listen.socketmap, started.directory)
        )
    sweep = SpoolSweep(node)
    sweep.start()
    started.sweep = sweep
    started.services.append(Service("spool_sweep", sweep.stop))
    indexer = Indexer(node)
    indexer.start()
    started.indexer = indexer
    started.services.append(Service("fulltext_indexer", indexer.stop))
    walker = ParseWalker(node)  # SORT keys and FETCH structures, once per message
    walker.start()
    started.services.append(Service("parse_walker", walker.stop))


async def _start_lmtp(node: Node, started: _Started) -> None:
    """LMTP in ``[lmtp] workers`` processes of its own, or in the daemon (0)."""
    from peerd.services.lmtp.backend import StoreBackend
    from peerd.services.lmtp.front import FrontSettings, LmtpHandler, serve_lmtp

    config = node.config
    address = config.listen.lmtp
    assert address is not None
    from peerd.pair.partner import partner_knows

    asker = (lambda names: partner_knows(node, names)) if config.sync_partner else None
    backend = StoreBackend(node, asker)
    workers = config.lmtp.workers if config.path is not None else 0
    if workers == 0:
        handler = LmtpHandler(
            FrontSettings.of(config), node.store.spool, backend, count=node.counters.inc
        )
        unwatch = backend.watch_ownership(handler.forget_recipients)
        server = await serve_lmtp(handler, host=address.host, port=address.port)
        log.info("LMTP listening on %s", address)

        async def stop() -> None:
            unwatch()
            server.close()
            await handler.goodbye(config.lmtp.shutdown_grace.total_seconds())
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1)

        started.services.append(Service("lmtp", stop))
        return
    from peerd.services.lmtp.worker import WorkerPool

    pool = WorkerPool(backend, config, address, workers, started.forked)
    await pool.start()
    started.lmtp = pool
    started.pending.append(pool.wait_ready)
    log.info("LMTP listening on %s (%d worker process(es))", address, workers)
    grace = config.lmtp.shutdown_grace.total_seconds()
    started.services.append(Service("lmtp", lambda: pool.stop(grace)))


async def _start_mail_services(node: Node, started: _Started) -> None:
    config = node.config
    if config.listen.lmtp is not None:
        await _start_lmtp(node, started)
    if config.listen.imap is not None:
        from peerd.services.imap import start_imap

        imap = config.listen.imap
        imap_server, imap_listener = await start_imap(node, imap.host, imap.port)
        if imap_server.tls is not None:
            started.tls.append(imap_server.tls)
        started.services.append(server_service("imap", imap_listener))
        log.info("IMAP listening on %s", imap)
    if config.listen.pop3 is not None:
        from peerd.services.pop3 import start_pop3

        pop3 = config.listen.pop3
        started.services.append(
            server_service("pop3", await start_pop3(node, pop3.host, pop3.port))
        )
        log.info("POP3 listening on %s", pop3)
    if config.managesieve.listen is not None:
        from peerd.services.managesieve import start_managesieve

        sieve = config.managesieve.listen
        started.services.append(
            server_service("managesieve", await start_managesieve(node, sieve.host, sieve.port))
        )
        log.info("ManageSieve listening on %s", sieve)


def _parts(node: Node, started: _Started) -> Parts:
    return Parts(
        node=node,
        pair=started.pair,
        worker=started.worker,
        channels=started.channels,
        reconciler=started.reconciler,
        sweep=started.sweep,
        indexer=started.indexer,
        sync_server=started.sync_server,
        lmtp=started.lmtp,
        scrubber=started.scrubber,
        directory=started.directory,
        directory_writer=started.directory_writer,
        mover=started.mover,
    )


def _on_sighup(loop: asyncio.AbstractEventLoop, reloader: Reloader) -> None:
    """SIGHUP: one reload at a time; a signal during one starts another after it."""
    running: list[asyncio.Task[object]] = []

    async def reload_after(previous: asyncio.Task[object] | None) -> object:
        if previous is not None:
            await asyncio.wait([previous])
        sd_notify("RELOADING=1")
        try:
            return await reloader.reload()
        except Exception:
            log.exception("SIGHUP: reload failed")
            return None
        finally:
            sd_notify("READY=1")

    def handler() -> None:
        previous = running[-1] if running and not running[-1].done() else None
        running[:] = [loop.create_task(reload_after(previous), name="reload")]

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, handler)


async def serve(
    config: Config, stop_event: asyncio.Event | None = None, forked: list[Forked] | None = None
) -> None:
    """The daemon until ``stop_event`` (SIGTERM, SIGINT); ``forked`` are the LMTP
    workers :func:`~peerd.services.lmtp.worker.fork_workers` made for it."""
    loop = asyncio.get_running_loop()
    stop_event = stop_event or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop_event.set)

    created = not config.node.data_dir.exists()
    try:
        config.node.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # check-config saw it fine; it changed since, or another user
        raise StartRefused(
            f"[node] data_dir {config.node.data_dir}: cannot make it: {exc.strerror};"
            " give a directory this user may write"
        ) from exc
    lock = lock_data_dir(config.node.data_dir)
    try:
        await _serve_locked(config, stop_event, created, forked or [])
    finally:
        lock.close()


async def _serve_locked(
    config: Config, stop_event: asyncio.Event, created: bool, forked: list[Forked]
) -> None:
    loop = asyncio.get_running_loop()
    try:
        node, store = await _open(config, loop)
    except Exception as exc:
        refused = start_error(config, exc)
        if refused is not None:
            raise refused from exc
        raise
    if created:
        await _say_created(config, node)
    started = _Started(forked=forked)
    ready = False
    try:
        await _start_parts(node, started, loop)
        ready = True
        sd_notify("READY=1")
        log.info("node %s ready", config.node.name)
        # What start-up made (modules, the models, the config) lives as long
        # as the process: out of the collector's sight, a collection does
        # not walk it again, and the exit does not spend seconds on it.
        gc.freeze()
        await stop_event.wait()
    except Exception as exc:
        refused = None if ready else start_error(config, exc)
        if refused is not None:
            raise refused from exc
        raise
    finally:
        await _stop(node, store, started)


async def _open(config: Config, loop: asyncio.AbstractEventLoop) -> tuple[Node, Store]:
    """Check the database, migrate it, open the store: the node, not yet serving."""
    url = config.database_url
    # Before anything reads it: a damaged database stops the node here.
    checked = await check_at_start(config)
    log.info("node %s: migrating %s", config.node.name, url.split("@")[-1])
    try:
        await asyncio.to_thread(migrations.upgrade, url)
    except Exception as exc:
        _stop_if_damaged(config, exc)
        raise
    store = Store(url, config.node.data_dir, flush=config.node.spool_flush)
    # Every local change is logged for the backup channels too (and, with
    # sync_log_chain, every change applied from the partner).
    store.channels = tuple(config.sync.channels)
    store.chain = config.sync.sync_log_chain
    store.bind_loop(loop)
    node = Node(config, store)
    node.db_check = checked
    return node, store


async def _say_created(config: Config, node: Node) -> None:
    """A data_dir that did not exist: most often the wrong working directory
    (a relative ``data_dir``) or a typo, so say so where an admin looks first."""
    accounts = len(await node.store.read(engine_accounts.list_accounts))
    log.warning(
        "data_dir %s did not exist and was just created (working directory %s): this node"
        " starts with %d account(s); if it should have data, stop it and fix [node] data_dir",
        config.node.data_dir.resolve(),
        Path.cwd(),
        accounts,
    )


async def _start_parts(node: Node, started: _Started, loop: asyncio.AbstractEventLoop) -> None:
    """Start every part in order, each in ``started`` as soon as it runs."""
    config = node.config
    await _start_sync_listener(node, started)
    try:
        await _start_replication(node, started)
        await _start_channels(node, started)
    except Exception as exc:
        _stop_if_damaged(config, exc)
        raise
    await _start_integrity(node, started)
    await _start_directory(node, started)
    await _start_upkeep(node, started)
    await _start_mail_services(node, started)
    await asyncio.gather(*(wait() for wait in started.pending))
    if config.listen.http is not None:
        runner = started.api = web.AppRunner(
            build_app(_parts(node, started)),
            access_log=None,
            handle_signals=False,
            # Bodies are never inflated by HTTP Content-Encoding (refused
            # with 415): a gzip bomb or garbage costs nothing.
            auto_decompress=False,
            **runner_options(config.http),
        )
        await runner.setup()
        site = GuardedSite(
            runner,
            config.listen.http.host,
            config.listen.http.port,
            limits=config.http,
            what="control API",
        )
        await site.start()
        log.info("control API listening on %s", config.listen.http)
    _on_sighup(
        loop,
        Reloader(
            node,
            started.tls,
            client=started.pair.client if started.pair else None,
            hooks=started.pair.hooks if started.pair else None,
            workers=([started.worker] if started.worker else []) + list(started.channels.values()),
        ),
    )


async def _stop(node: Node, store: Store, started: _Started) -> None:
    config = node.config
    sd_notify("STOPPING=1")
    log.info("node %s stopping", config.node.name)
    # Listeners first (no new work), then in-flight deliveries, then
    # the background workers and the API, then the store.
    for service in reversed(started.services):
        if service.listener:
            await service.stop()
    if not await node.drain(config.lmtp.shutdown_grace):
        log.warning("in-flight deliveries did not finish in time; they fail with 4xx")
    for service in reversed(started.services):
        if not service.listener:
            await service.stop()
    if started.api is not None:
        await started.api.cleanup()
    await asyncio.to_thread(store.close)
    log.info("node %s stopped", config.node.name)


def _stop_if_damaged(config: Config, exc: BaseException) -> None:
    """A start step failed: if the database said it is damaged, stop with the line."""
    if is_damage(exc):
        orig = getattr(exc, "orig", None) or exc.__cause__ or exc
        raise DatabaseDamaged(damage_line(config, " ".join(str(orig).split())[:240])) from exc


def raise_open_files() -> tuple[int, int]:
    """The soft limit on open files raised to the hard one: every IMAP, POP3
    and LMTP connection is a descriptor (10,000 idle IMAP sessions are
    10,000), and the usual soft default of 1,024 would refuse them long
    before ``[imap] max_connections``. The hard limit is the administrator's
    (``LimitNOFILE=`` in the systemd unit, ``ulimit -Hn``). Returns
    ``(soft, hard)`` as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def run_daemon(config: Config, log_format: str | None = None) -> int:
    if log_format is not None:
        # The format in force travels with the config, to the LMTP workers too.
        config = replace(config, log=replace(config.log, format=log_format))
    setup_logging(config.log.format, config.log.level, config.node.name)
    sys.setswitchinterval(SWITCH_INTERVAL)
    soft, _ = raise_open_files()
    if soft != resource.RLIM_INFINITY and soft < 4096:
        log.warning(
            "open files limited to %d: each connection takes one (raise LimitNOFILE / ulimit -Hn)",
            soft,
        )
    from peerd.services.lmtp.worker import fork_workers, release_forked

    # Before the event loop and any thread: see fork_workers.
    forked = fork_workers(config)
    try:
        asyncio.run(serve(config, forked=forked))
    except DatabaseDamaged as exc:
        log.critical("%s", exc)
        return EXIT_DATABASE_DAMAGED
    except StartRefused as exc:
        log.critical("%s (exit status %d)", exc, EXIT_CONFIG)
        return EXIT_CONFIG
    finally:
        release_forked(forked)
    return 0
