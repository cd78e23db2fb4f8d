"""``peerd run``: the daemon's life from start to clean stop.

How this works: read the config, migrate the database (Alembic, always to
head), open the store, then start each service whose ``[listen]`` address is
set. Each service is a :class:`Service`: an async ``start`` returning
something with ``close()``/``wait_closed()``-style shutdown through a
``stop`` coroutine. When every listener is up, ``READY=1`` goes to systemd.

On SIGTERM or SIGINT: ``STOPPING=1``, stop accepting connections, let
in-flight deliveries finish (up to ``[lmtp] shutdown_grace``; any still
running then fails with a 4xx and stores nothing), stop the background
workers, drain the store's write queue, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

import migrations
from engine.store import Store
from peerd.app.notify import sd_notify
from peerd.control.api import build_app
from peerd.node.config import Config
from peerd.node.logs import setup_logging
from peerd.node.node import Node

__all__ = ["Service", "run_daemon", "serve"]

log = logging.getLogger("peerd.app.daemon")


@dataclass(slots=True)
class Service:
    """A started part of the daemon and how to stop it."""

    name: str
    stop: Callable[[], Awaitable[None]]


Starter = Callable[[Node, web.Application], Awaitable[list[Service]]]

# Parts that arrive later register here (replication, ownership, IMAP, POP3):
# each gets the node and the control API application before it starts serving.
STARTERS: list[Starter] = []


def _server_service(name: str, server: asyncio.Server) -> Service:
    async def stop() -> None:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)

    return Service(name, stop)


def default_indexer() -> Callable[[bytes], bytes] | None:
    """What IMAP wants cached per message, if the IMAP service is installed."""
    try:
        module = importlib.import_module("peerd.protocols.imap.summary")
    except ImportError:
        return None
    summarize = module.summarize

    def index(data: bytes) -> bytes:
        meta = summarize(data).to_json()
        return meta if isinstance(meta, bytes) else str(meta).encode()

    return index


async def _start_lmtp(node: Node) -> Service:
    """LMTP in ``[lmtp] workers`` processes of its own, or in the daemon (0)."""
    from peerd.services.lmtp.backend import StoreBackend
    from peerd.services.lmtp.front import FrontSettings, LmtpHandler, serve_lmtp

    config = node.config
    address = config.listen.lmtp
    assert address is not None
    backend = StoreBackend(node)
    workers = config.lmtp.workers if config.path is not None else 0
    if workers == 0:
        handler = LmtpHandler(FrontSettings.of(config), node.store.spool, backend)
        unwatch = backend.watch_ownership(handler.forget_recipients)
        server = await serve_lmtp(handler, host=address.host, port=address.port)
        log.info("LMTP listening on %s", address)

        async def stop() -> None:
            unwatch()
            server.close()
            await handler.goodbye(config.lmtp.shutdown_grace.total_seconds())
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1)

        return Service("lmtp", stop)
    from peerd.services.lmtp.worker import WorkerPool

    pool = WorkerPool(backend, config, address, workers)
    await pool.start()
    node.extra_status["lmtp"] = pool.status
    log.info("LMTP listening on %s (%d worker process(es))", address, workers)
    grace = config.lmtp.shutdown_grace.total_seconds()
    return Service("lmtp", lambda: pool.stop(grace))


async def serve(config: Config, stop_event: asyncio.Event | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop_event = stop_event or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop_event.set)

    config.node.data_dir.mkdir(parents=True, exist_ok=True)
    url = config.database_url
    log.info("node %s: migrating %s", config.node.name, url.split("@")[-1])
    await asyncio.to_thread(migrations.upgrade, url)
    store = Store(url, config.node.data_dir, flush=config.node.spool_flush)
    store.bind_loop(loop)
    node = Node(config, store)
    node.indexer = default_indexer()
    app = build_app(node)
    services: list[Service] = []
    runner: web.AppRunner | None = None
    try:
        from peerd.control import routing
        from peerd.pair import sweep
        from peerd.replication import rolling as replication

        for starter in [replication.start, routing.start, sweep.start, *STARTERS]:
            services.extend(await starter(node, app))
        if config.listen.lmtp is not None:
            services.append(await _start_lmtp(node))
        if config.listen.imap is not None:
            from peerd.services.imap import start_imap

            imap = config.listen.imap
            _, imap_listener = await start_imap(node, imap.host, imap.port)
            services.append(_server_service("imap", imap_listener))
            log.info("IMAP listening on %s", imap)
        if config.listen.pop3 is not None:
            from peerd.services.pop3 import start_pop3

            pop3 = config.listen.pop3
            services.append(_server_service("pop3", await start_pop3(node, pop3.host, pop3.port)))
            log.info("POP3 listening on %s", pop3)
        if config.listen.http is not None:
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, config.listen.http.host, config.listen.http.port)
            await site.start()
            log.info("control API listening on %s", config.listen.http)
        sd_notify("READY=1")
        log.info("node %s ready", config.node.name)
        await stop_event.wait()
    finally:
        sd_notify("STOPPING=1")
        log.info("node %s stopping", config.node.name)
        # Listeners first (no new work), then in-flight deliveries, then
        # the background workers and the API, then the store.
        for service in reversed(services):
            if service.name in ("lmtp", "imap", "pop3", "socketmap"):
                await service.stop()
        if not await node.drain(config.lmtp.shutdown_grace):
            log.warning("in-flight deliveries did not finish in time; they fail with 4xx")
        for service in reversed(services):
            if service.name not in ("lmtp", "imap", "pop3", "socketmap"):
                await service.stop()
        if runner is not None:
            await runner.cleanup()
        await asyncio.to_thread(store.close)
        log.info("node %s stopped", config.node.name)


def run_daemon(config: Config, log_format: str | None = None) -> int:
    setup_logging(log_format or config.log.format, config.log.level, config.node.name)
    asyncio.run(serve(config))
    return 0
