"""A damaged database stops the node at start, with one line and exit status 65.

How this works: before it migrates or opens anything, ``peerd run`` runs the
database's own integrity check (:func:`engine.dbcheck.check_database`;
``[database] check_at_start``: ``quick``, the default, ``full`` or ``off``).
Damage found there, or a "database disk image is malformed" from anything
later in the start (a migration, the ownership exchange), is
:class:`DatabaseDamaged`: the daemon logs one line saying what is damaged and
what to do, and exits with :data:`EXIT_DATABASE_DAMAGED` (65, EX_DATAERR in
sysexits.h), which ``configs/peerd.service`` lists in
``RestartPreventExitStatus``: systemd leaves it stopped instead of starting
it again every two seconds. Serving from a damaged database would answer
every delivery ``451`` for ever; the node is rebuilt from its partner
instead (:mod:`peerd.app.rebuild`). ``peerd check-db -c FILE`` runs the same
check with the daemon stopped, and prints the same line.
"""

from __future__ import annotations

import asyncio
import logging

from engine import textindex
from engine.dbcheck import DbCheck, check_database
from peerd.node.config import Config

__all__ = ["EXIT_DATABASE_DAMAGED", "DatabaseDamaged", "check_at_start", "damage_line"]

log = logging.getLogger("peerd.app.dbcheck")

EXIT_DATABASE_DAMAGED = 65


class DatabaseDamaged(Exception):
    """The node's database is damaged; the message is the one line to print."""


def _where(config: Config) -> str:
    url = config.database_url
    if url.startswith("sqlite"):
        return url.split(":///", 1)[-1]
    return url.rsplit("@", 1)[-1]


def _check_index_file(url: str, full: bool) -> None:
    """The full-text index's own SQLite file (:func:`engine.textindex.index_file`),
    checked the same way. Damage there does not stop the node: the index is a
    cache of the spool's bytes, so the file is set aside and the store makes a
    new one, which the indexer refills (a search decodes what it lacks meanwhile)."""
    path = textindex.index_file(url)
    if path is None or not path.exists():
        return
    result = check_database(f"sqlite:///{path}", full=full)
    if result.ok:
        return
    aside = textindex.set_aside(path)
    log.warning(
        "full-text index damaged (%s): %s; set aside as %s, the indexer refills a new one",
        path,
        result.summary,
        aside.name,
    )


def damage_line(config: Config, what: str) -> str:
    """The one line: what is damaged, and what to do."""
    return (
        f"database damaged ({_where(config)}): {what}. This node must not serve from it: "
        f"rebuild it from its partner (peerd rebuild --from-partner -c FILE; "
        f"docs/failover.md, 'Damaged database'). Exit status {EXIT_DATABASE_DAMAGED}: "
        "systemd does not restart it."
    )


async def check_at_start(config: Config) -> DbCheck | None:
    """The check at start (None when ``check_at_start = "off"`` or there is no
    database yet); raises
    :class:`DatabaseDamaged` on damage."""
    mode = config.database.check_at_start
    if mode == "off":
        return None
    result = await asyncio.to_thread(check_database, config.database_url, full=mode == "full")
    if not result.ok:
        raise DatabaseDamaged(damage_line(config, result.summary))
    await asyncio.to_thread(_check_index_file, config.database_url, mode == "full")
    if result.checked:
        log.info("database check (%s): ok in %.2fs", result.method, result.seconds)
        return result
    if result.backend == "postgresql":
        log.warning("database not checked: %s", result.note)
        return result
    return None  # a new node: nothing to check yet
