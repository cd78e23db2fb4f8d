"""The bodies known damaged on this node, until they are repaired.

How this works: a body is damaged when its spool file is missing or its
bytes do not hash to its GUID. Three things find damage: the scrub (it reads
every body), a verify the partner asks for before ownership moves here, and
any read (IMAP FETCH, POP3 RETR, a sync's UPLOAD: :attr:`Spool.on_damage`).
Each finding is entered here once (:meth:`DamageBook.found`); a finding by a
read wakes the repair worker at once (:attr:`DamageBook.wake`). The repair
(``peerd.replication.scrub``) fetches the body from the partner by GUID and
either enters it :meth:`repaired` (the entry goes) or :meth:`unrepairable`
(the partner has no good copy either: the entry stays, shown in ``status``,
never replaced by bad bytes) or notes why it could not ask
(:meth:`attempt_failed`: the partner is down; tried again later).

The book is kept in ``<data_dir>/damage.json`` (written whole, through a
temp file and a rename), so what a scrub found survives a restart. Counters
in the node's :class:`~peerd.node.node.Counters`: ``bodies_damaged`` (entries
made), ``bodies_repaired``, ``bodies_unrepairable`` (entries found
unrepairable).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from engine.spool import GUID_RE, Spool

__all__ = ["DamageBook", "Damaged"]

log = logging.getLogger("peerd.node.damage")

SHOWN = 50  # entries listed in ``status`` (all are counted)


class _Counting(Protocol):
    def inc(self, name: str, n: int = 1) -> None: ...


@dataclass(frozen=True, slots=True)
class Damaged:
    """One damaged body: what is wrong, who found it and when, whether the
    partner was asked and had no good copy, and the last failed attempt."""

    guid: str
    what: str
    found_by: str  # scrub, read or verify
    found_at: str  # ISO 8601
    unrepairable: bool = False
    last_error: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class DamageBook:
    """Known damaged bodies (see the module docstring)."""

    def __init__(self, path: Path, counters: _Counting) -> None:
        self.path = path
        self.counters = counters
        self.entries: dict[str, Damaged] = {}
        self._wake: asyncio.Event | None = None
        self._load()

    @property
    def wake(self) -> asyncio.Event:
        """Set when a read found new damage (the repair worker waits on it)."""
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    # -- findings ------------------------------------------------------------

    def found(self, guid: str, what: str, by: str) -> bool:
        """Enter a damaged body; True when it was not known yet."""
        if guid in self.entries:
            return False
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.entries[guid] = Damaged(guid, what, by, now)
        self.counters.inc("bodies_damaged")
        log.warning("damaged body %s (%s), found by %s", guid, what, by)
        self._save()
        return True

    def repaired(self, guid: str) -> None:
        if self.entries.pop(guid, None) is not None:
            self.counters.inc("bodies_repaired")
            log.info("body %s repaired from the partner", guid)
            self._save()

    def unrepairable(self, guid: str, why: str) -> None:
        entry = self.entries.get(guid)
        if entry is None:
            return
        if not entry.unrepairable:
            self.counters.inc("bodies_unrepairable")
            log.error("body %s is damaged here and %s: unrepairable", guid, why)
        self.entries[guid] = replace(entry, unrepairable=True, last_error=why)
        self._save()

    def attempt_failed(self, guid: str, why: str) -> None:
        entry = self.entries.get(guid)
        if entry is not None and entry.last_error != why:
            self.entries[guid] = replace(entry, last_error=why)
            self._save()

    def whole(self, guids: Iterable[str]) -> None:
        """These bodies were read whole since (restored another way): forget them."""
        gone = [g for g in guids if self.entries.pop(g, None) is not None]
        if gone:
            self._save()

    def keep_only(self, named: set[str]) -> None:
        """Forget entries no live record names any more (expunged since)."""
        gone = [g for g in self.entries if g not in named]
        for guid in gone:
            del self.entries[guid]
        if gone:
            self._save()

    # -- reading -------------------------------------------------------------

    def pending(self) -> list[str]:
        """Damaged bodies whose repair has not been refused by the partner."""
        return [g for g, e in self.entries.items() if not e.unrepairable]

    @property
    def damaged(self) -> int:
        return len(self.entries)

    @property
    def unrepairable_count(self) -> int:
        return sum(1 for e in self.entries.values() if e.unrepairable)

    def shown(self) -> list[Damaged]:
        return sorted(self.entries.values(), key=lambda e: (e.found_at, e.guid))[:SHOWN]

    # -- reads find damage ---------------------------------------------------

    def listen(self, spool: Spool, loop: asyncio.AbstractEventLoop) -> None:
        """Hear of damage every read of ``spool`` finds (in any thread)."""

        def heard(guid: str, what: str) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._read_found, guid, what)

        spool.on_damage.append(heard)

    def _read_found(self, guid: str, what: str) -> None:
        if self.found(guid, what, "read"):
            self.wake.set()

    # -- the file ------------------------------------------------------------

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s): starting with no known damage", self.path, exc)
            return
        for item in data.get("damaged", []) if isinstance(data, dict) else []:
            with contextlib.suppress(TypeError, KeyError, AttributeError):
                entry = Damaged(
                    guid=str(item["guid"]),
                    what=str(item["what"]),
                    found_by=str(item["found_by"]),
                    found_at=str(item["found_at"]),
                    unrepairable=bool(item.get("unrepairable", False)),
                    last_error=str(item.get("last_error", "")),
                )
                if GUID_RE.match(entry.guid):
                    self.entries[entry.guid] = entry

    def _save(self) -> None:
        body = json.dumps({"damaged": [e.to_json() for e in self.entries.values()]}, indent=1)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(body)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc)
