"""SIGHUP: read the config file again and apply what can change while the node runs.

How this works: the daemon calls :meth:`Reloader.reload` on SIGHUP
(``systemctl reload peerd``). The file is read and checked as at start; a
file with an error changes nothing (the error is logged). :data:`RELOADABLE`
says, table by table, which keys take effect at once:

=============  ==============================================================
``[log]``      ``level`` (the daemon's loggers)
``[tls]``      ``cert``, ``key``: the files are read again even when their
               paths did not change (a renewed certificate in place), and the
               IMAP and sync listeners' contexts load them for new connections
               (POP3 reads them per connection)
``[imap]``     every key but ``starttls``: for new sessions and commands
``[pop3]``     every key: for new sessions and commands
``[routing]``  every key, the proxy hooks included, but the directory's
               (``directory_url``, ``pair``, ``directory_cache_ttl``,
               ``directory_heartbeat``, ``api_url``): for the next lookup or
               pair operation
``[partner]``  ``api``, ``token``: for the next call to the partner's API
``[sync]``     ``sync_compress``, ``sync_timeout``, ``sync_tls``,
               ``sync_tls_ca``: the sync client opens a new session with them;
               ``sync_batchsize``, ``sync_shutdown_file``: the rolling
               worker's next pass (and a worker stopped by the shutdown file
               resumes if the file is gone)
=============  ==============================================================

Every other key that changed is logged as needing a restart, and keeps its
old value in the running node, so what runs is always one coherent
:class:`~peerd.node.config.Config`. Certificates are loaded into a scratch
context first: a bad certificate or key is logged and the running one stays.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any, Final

from peerd.node.config import Config, ConfigError, load_for_service
from peerd.node.node import Node
from peerd.pair.hooks import Hooks
from peerd.replication.client import SyncClient
from peerd.replication.rolling import RollingWorker

__all__ = ["RELOADABLE", "Reloaded", "Reloader", "changed_keys", "merge", "reloadable"]

log = logging.getLogger("peerd.app.reload")

# table -> the keys that apply at once: "*" every key, "-key" but that one.
RELOADABLE: Final[dict[str, frozenset[str]]] = {
    "log": frozenset({"level"}),
    "tls": frozenset({"cert", "key"}),
    "imap": frozenset({"*", "-starttls"}),
    "pop3": frozenset({"*"}),
    "routing": frozenset(
        {
            "*",
            "-directory_url",
            "-pair",
            "-directory_cache_ttl",
            "-directory_heartbeat",
            "-api_url",
        }
    ),
    "partner": frozenset({"api", "token"}),
    "sync": frozenset(
        {
            "sync_compress",
            "sync_timeout",
            "sync_tls",
            "sync_tls_ca",
            "sync_batchsize",
            "sync_shutdown_file",
        }
    ),
}


def reloadable(table: str, key: str) -> bool:
    """Whether ``[table] key`` takes effect on SIGHUP."""
    keys = RELOADABLE.get(table, frozenset())
    return f"-{key}" not in keys and ("*" in keys or key in keys)


def changed_keys(old: Config, new: Config) -> list[tuple[str, str]]:
    """(table, key) of every setting whose value differs."""
    out = []
    for table in dataclasses.fields(Config):
        if table.name == "path":
            continue
        before, after = getattr(old, table.name), getattr(new, table.name)
        for key in dataclasses.fields(before):
            if getattr(before, key.name) != getattr(after, key.name):
                out.append((table.name, key.name))
    return out


def merge(old: Config, new: Config) -> tuple[Config, list[str], list[str]]:
    """(the config to run with, "[table] key" applied, "[table] key" that need a restart)."""
    applied: list[str] = []
    restart: list[str] = []
    sections: dict[str, Any] = {}
    for table, key in changed_keys(old, new):
        name = f"[{table}] {key}"
        if reloadable(table, key):
            applied.append(name)
            sections.setdefault(table, {})[key] = getattr(getattr(new, table), key)
        else:
            restart.append(name)
    replaced = {
        table: dataclasses.replace(getattr(old, table), **values)
        for table, values in sections.items()
    }
    return dataclasses.replace(old, **replaced), applied, restart


@dataclass(frozen=True, slots=True)
class Reloaded:
    """What one SIGHUP did (also logged)."""

    applied: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    certificates: int = 0
    error: str = ""


@dataclass(slots=True)
class Reloader:
    """The running parts a reload reaches. ``contexts``: the server TLS
    contexts listeners hold (reloaded in place, so new handshakes use the
    new certificate)."""

    node: Node
    contexts: list[ssl.SSLContext]
    client: SyncClient | None = None
    hooks: Hooks | None = None
    workers: list[RollingWorker] = field(default_factory=list)

    async def reload(self) -> Reloaded:
        node = self.node
        path = node.config.path
        if path is None:
            return Reloaded(error="the node was not started from a file")
        try:
            # Checked as check-config and run check it: a secret left at the
            # example's, a CA file that does not load, is refused here too.
            fresh = await asyncio.to_thread(load_for_service, path)  # it may resolve names
        except ConfigError as exc:
            node.counters.inc("config_reload_failures")
            log.error("SIGHUP: config not reloaded, the running one stays: %s", exc)
            return Reloaded(error=str(exc))
        # ``peerd run --log-format`` outranks the file's [log] format for the run.
        fresh = dataclasses.replace(
            fresh, log=dataclasses.replace(fresh.log, format=node.config.log.format)
        )
        config, applied, restart = merge(node.config, fresh)
        loaded = 0
        cert, key = config.tls.cert, config.tls.key
        if cert is not None and key is not None and self.contexts:
            try:
                # Into a scratch context first: a bad pair leaves the running one alone.
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as exc:
                node.counters.inc("config_reload_failures")
                log.error("SIGHUP: certificate %s not loaded, the running one stays: %s", cert, exc)
                config = dataclasses.replace(config, tls=node.config.tls)
                applied = [a for a in applied if not a.startswith("[tls]")]
            else:
                for context in self.contexts:
                    context.load_cert_chain(cert, key)
                    loaded += 1
        node.config = config
        logging.getLogger().setLevel(config.log.level.upper())
        if self.client is not None:
            await self.client.reconfigure()
        if self.hooks is not None:
            self.hooks.configure(config.routing.hooks)
        for worker in self.workers:
            worker.resume()
        node.counters.inc("config_reloads")
        log.info(
            "SIGHUP: %s reloaded; %s; certificates loaded into %d listener(s)",
            path,
            "changed: " + ", ".join(applied) if applied else "no reloadable setting changed",
            loaded,
        )
        if restart:
            log.warning(
                "SIGHUP: changed in %s but only a restart applies them (kept as they were): %s",
                path,
                ", ".join(restart),
            )
        return Reloaded(tuple(applied), tuple(restart), loaded)
