"""What stops ``peerd run`` before it serves, said in one line with exit status 2.

How this works: the start's usual failures are an admin's to fix, not a bug
to report, so none of them prints a traceback. :func:`lock_data_dir` takes
an exclusive ``flock`` on ``data_dir/peerd.lock`` for the daemon's life (the
kernel drops it when the process ends, however it ends), so a second daemon
on the same ``data_dir`` stops at once instead of sharing a spool and a
database. :func:`start_error` turns what the start raised (a port in use,
a database that does not answer) into :class:`StartRefused`, whose message
is the one line. ``configs/peerd.service`` lists :data:`EXIT_CONFIG` in
``RestartPreventExitStatus``: systemd does not loop on them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
from pathlib import Path
from typing import IO

from sqlalchemy.exc import OperationalError

from peerd.node.config import Config, listeners

__all__ = ["EXIT_CONFIG", "StartRefused", "lock_data_dir", "start_error"]

EXIT_CONFIG = 2  # a config error, or a start an admin must fix (EX_USAGE-like)

LOCK_FILE = "peerd.lock"


class StartRefused(Exception):
    """The node cannot start; the message is the one line to print."""


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold ``data_dir``'s lock (the returned file; closing it releases the
    lock) or raise :class:`StartRefused` naming the daemon that holds it."""
    path = data_dir / LOCK_FILE
    try:
        handle = open(path, "a+")  # noqa: SIM115 - held for the daemon's life
    except OSError as exc:
        raise StartRefused(
            f"cannot open {path}: {exc.strerror}; [node] data_dir must be a directory"
            " this user may write"
        ) from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise StartRefused(f"cannot lock {path}: {exc.strerror}") from exc
        raise StartRefused(
            f"data_dir {data_dir} is in use by another peerd (pid {holder}): stop that one"
            " first, or give this node a data_dir of its own ([node] data_dir)"
        ) from exc
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _port_in_use(config: Config, exc: OSError) -> StartRefused:
    text = str(exc)
    for key, address in listeners(config):
        if re.search(rf"[,:] ?{address.port}\b", text):
            return StartRefused(
                f"{key} = {str(address)!r}: the address is already in use (another peerd,"
                f" or another program: `ss -ltnp 'sport = :{address.port}'` shows which);"
                " stop it or choose another port"
            )
    return StartRefused(f"an address to listen on is already in use ({exc}); see [listen]")


def _database_unreachable(config: Config, exc: BaseException) -> StartRefused:
    orig = getattr(exc, "orig", None) or exc
    first = " ".join(str(orig).split("\n")[0].split())[:200]
    url = config.database_url
    if url.startswith("sqlite"):
        where = url.split(":///", 1)[-1]
        return StartRefused(
            f"cannot open the database {where}: {first}; check that [node] data_dir"
            " exists and is writable by this user, or fix [database] url"
        )
    where = url.rsplit("@", 1)[-1]
    return StartRefused(
        f"cannot reach the database at {where}: {first}; start PostgreSQL (or check"
        " its address, user and password), or fix [database] url"
    )


def start_error(config: Config, exc: BaseException) -> StartRefused | None:
    """The one line for a failure at start an admin fixes, or None for a bug."""
    if isinstance(exc, StartRefused):
        return exc
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return _port_in_use(config, exc)
    if isinstance(exc, OperationalError):
        return _database_unreachable(config, exc)
    return None
