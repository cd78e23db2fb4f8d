"""The spool sweep: removing the bytes that no live record names any more.

How this works: a message's file stays in the spool while at least one live
(not expunged) record on this node names its GUID. Tombstones keep their GUID
but need no bytes: nothing serves or sends the bytes of an expunged record.
A file becomes garbage when its last record is expunged, when its mailbox or
account is deleted, or when a delivery fails after its group commit's flush
has already put the file in place.

A :class:`Sweeper` works in two passes, at least ``grace`` apart:

1. **Condemn.** List the spool's files older than ``grace`` (a newer one may
   be waiting for the record that will name it: a sync uploads the bytes in
   one request and applies the records in the next) and ask the database
   which of them no live record names. Those are condemned, with the time.
2. **Remove.** The files condemned at least ``grace`` ago are checked again
   and the ones still unnamed are unlinked, in one write of the store's
   committer that runs in a batch of its own (``Store.write(alone=True)``):
   no other write's statements and no spool flush run beside the check and
   the unlink.

Why no record can end up naming a removed file: a write that names a GUID
whose bytes it did not bring itself checks, inside the committer, that the
file is there. A delivery or APPEND whose bytes were spooled already
(``Staged.tmp`` is None) is checked by :meth:`engine.spool.Spool.commit`; a
sync's records by :func:`engine.apply.apply_push`'s and
:func:`engine.apply.apply_repairs`' ``has``. COPY and MOVE name a live
record's GUID in the same transaction, which the sweep's check sees. A write
that finds its file gone fails as a temporary failure (LMTP ``451``: the MTA
sends the bytes again; a sync is retried). The grace also serves readers: an
IMAP session that still shows a message another session expunged, or a sync
reading bytes it is about to send, finds them for at least that long.

Bytes about to be named again are marked used (:meth:`Spool.keep` sets
their mtime: a delivery or APPEND of bytes already spooled, a sync's RESERVE
or repair that finds them here), and the removing pass leaves a file changed
within the grace, so a file condemned and then reused is not removed between
"I have it" and the write that names it.

A safety stop: when more than half of the files considered (and at least
``SUSPICIOUS_MIN``) turn out unnamed, the database is more likely the wrong
one (a mistyped URL, a restore older than the spool) than the mail gone, and
the next removing pass is held back until a sweep is run with ``force``.

The condemned list lives in memory: after a restart the grace starts again.
The argument needs the daemon's committer to be the only writer of records;
a second process opening the store (``Store(owner=False)``: an admin tool, a
test) may read, but must not write records while a daemon sweeps.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from engine import parsed, textindex
from engine.models import Message, MessageMeta
from engine.spool import GUID_RE
from engine.store import Store

__all__ = ["SweepResult", "Sweeper", "named_guids"]

_CHUNK = 500
# Files removed per write of the committer.
REMOVE_SLICE = 250
# The safety stop (see the module docstring).
SUSPICIOUS_SHARE = 0.5
SUSPICIOUS_MIN = 100


@dataclass(slots=True)
class SweepResult:
    """One sweep, for ``status`` and the API."""

    started_at: str = ""
    seconds: float = 0.0
    files_checked: int = 0  # spool files old enough to be considered
    condemned: int = 0  # unnamed, waiting out the grace
    removed: int = 0
    bytes_freed: int = 0
    trigger: str = ""
    held_back: str = ""  # why nothing was removed although files were due
    errors: list[str] = field(default_factory=list)


def named_guids(session: Session, guids: Iterable[str]) -> set[str]:
    """The ones among ``guids`` that a live record names."""
    wanted = sorted(set(guids))
    named: set[str] = set()
    for i in range(0, len(wanted), _CHUNK):
        named.update(
            session.scalars(
                select(Message.guid)
                .where(Message.guid.in_(wanted[i : i + _CHUNK]), Message.expunged.is_(False))
                .distinct()
            )
        )
    return named


def _old_files(directory: str, older_than: float) -> dict[str, int]:
    """GUID → size of the spooled files in ``directory`` last changed before ``older_than``."""
    found: dict[str, int] = {}
    for entry in os.scandir(directory):
        if not GUID_RE.match(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if info.st_mtime < older_than:
            found[entry.name] = info.st_size
    return found


class Sweeper:
    """The spool sweep of one store; see the module docstring."""

    def __init__(self, store: Store, grace: dt.timedelta) -> None:
        self.store = store
        self.grace = grace.total_seconds()
        # GUID → when it was first found unnamed (time.monotonic()).
        self.condemned: dict[str, float] = {}
        self.last: SweepResult | None = None
        self.runs = 0
        # Set by a condemning pass that found most files unnamed.
        self.suspicious = ""

    async def run(self, trigger: str = "manual", *, force: bool = False) -> SweepResult:
        """One sweep: remove what is due, then condemn. ``force``: past the safety stop."""
        started = time.perf_counter()
        result = SweepResult(started_at=dt.datetime.now(dt.UTC).isoformat(), trigger=trigger)
        now = time.monotonic()
        due = [g for g, since in self.condemned.items() if now - since >= self.grace]
        if due and self.suspicious and not force:
            result.held_back = self.suspicious
            due = []
        # In slices: each holds the committer (every delivery waits) while it runs.
        for i in range(0, len(due), REMOVE_SLICE):
            part = due[i : i + REMOVE_SLICE]
            removed, errors = await self.store.write(partial(self._remove, guids=part), alone=True)
            if removed:
                # The text goes with the bytes, by the index's own writer
                # (its own file on SQLite: engine.store); a row left behind
                # names a GUID no record names, and answers nothing.
                await self.store.index_write(partial(textindex.forget, guids=list(removed)))
            for guid in part:
                self.condemned.pop(guid, None)
            result.removed += len(removed)
            result.bytes_freed += sum(removed.values())
            result.errors.extend(errors[: max(0, 20 - len(result.errors))])
        # One spool directory (1/256 of the files) at a time: a large spool
        # is never held in memory whole.
        older_than = time.time() - self.grace
        # GUID -> when this pass found it unnamed: the grace runs from then,
        # not from the start of a pass that may take longer than the grace.
        unnamed: dict[str, float] = {}
        for directory in self.store.spool.directories():
            files = await self.store.run_blocking(partial(_old_files, directory, older_than))
            if files:
                result.files_checked += len(files)
                named = await self.store.read(partial(named_guids, guids=list(files)))
                found = time.monotonic()
                unnamed.update((guid, found) for guid in set(files) - named)
        self.condemned = {g: self.condemned.get(g, found) for g, found in unnamed.items()}
        result.condemned = len(self.condemned)
        self.suspicious = ""
        if (
            len(unnamed) >= SUSPICIOUS_MIN
            and len(unnamed) > SUSPICIOUS_SHARE * result.files_checked
        ):
            self.suspicious = (
                f"{len(unnamed)} of {result.files_checked} spool files are named by no message: "
                "is this the node's database? (sweep with force to remove them)"
            )
        result.seconds = round(time.perf_counter() - started, 3)
        self.last = result
        self.runs += 1
        return result

    def _remove(self, session: Session, guids: list[str]) -> tuple[dict[str, int], list[str]]:
        """In the committer, alone: unlink the files still unnamed.
        Returns GUID → size of those removed, and what could not be."""
        named = named_guids(session, guids)
        used_since = time.time() - self.grace
        removed: dict[str, int] = {}
        errors: list[str] = []
        for guid in guids:
            if guid in named:
                continue
            path = self.store.spool.path(guid)
            try:
                info = path.stat()
                if info.st_mtime >= used_since:
                    continue  # kept for a write about to name it (Spool.keep)
                size = info.st_size
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                # Left in place (and found again by the next sweep).
                errors.append(f"{guid}: {exc.strerror or exc}")
                continue
            removed[guid] = size
        gone = sorted(removed)
        for i in range(0, len(gone), _CHUNK):
            session.execute(delete(MessageMeta).where(MessageMeta.guid.in_(gone[i : i + _CHUNK])))
        # The parsed data goes with the bytes: no live record names them (the
        # text too, by the index's writer: Sweeper.run).
        parsed.forget(session, gone)
        return removed, errors
