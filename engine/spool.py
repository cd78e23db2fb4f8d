"""The content-addressed message spool.

How this works: a message's bytes live once per node in
``<data_dir>/spool/<g[0:2]>/<guid>``, where the GUID is the SHA-1 of the
bytes. Writing goes temp file → fsync → rename → (later, batched) fsync of
the directory, so a name in the spool always has all its bytes on disk, and
a crash leaves at worst an orphan temp file, never a half message under a
GUID. The directory fsyncs are collected by the caller and done once per
group commit, just before the database transaction that references the new
GUIDs commits: the bytes are durable before any record points at them.

Reads verify the SHA-1: a GUID whose bytes do not match is ``Corrupt`` and
is never served.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from engine.errors import Corrupt, InvalidArgument, StorageFull, TemporaryFailure

__all__ = ["GUID_RE", "Spool", "guid_of"]


def _load_syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2) through libc, or None where it does not exist."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_syncfs = _load_syncfs()

GUID_RE = re.compile(r"\A[0-9a-f]{40}\Z")
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def guid_of(data: bytes) -> str:
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


class Spool:
    """The GUID spool under ``root``. Thread-safe: every method may run in any thread."""

    def __init__(self, root: Path | str, *, clean: bool = True) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self._counter = 0
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(exist_ok=True)
        created = False
        for i in range(256):
            d = self.root / f"{i:02x}"
            if not d.is_dir():
                d.mkdir()
                created = True
        if created:
            self.fsync_dirs([self.root])
        # Temp files left by a crash are never referenced: drop them (only
        # the daemon that owns the spool does this, at start).
        if clean:
            for leftover in self.tmp.iterdir():
                leftover.unlink(missing_ok=True)

    def path(self, guid: str) -> Path:
        if not GUID_RE.match(guid):
            raise InvalidArgument(f"not a GUID: {guid!r}")
        return self.root / guid[:2] / guid

    def has(self, guid: str) -> bool:
        return self.path(guid).exists()

    def put(self, data: bytes, guid: str | None = None) -> tuple[str, Path]:
        """Store ``data`` durably (file fsynced, renamed into place).

        Returns the GUID and the directory whose fsync the caller must batch
        (see :meth:`fsync_dirs`) before committing records that use it. When
        ``guid`` is given (replication), it must match the bytes.
        """
        actual = guid_of(data)
        if guid is not None and guid != actual:
            raise Corrupt(f"bytes do not match GUID {guid} (they hash to {actual})")
        final = self.path(actual)
        if final.exists():
            return actual, final.parent
        with self._lock:
            self._counter += 1
            n = self._counter
        tmp = self.tmp / f"{actual}.{os.getpid()}.{threading.get_ident()}.{n}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in _FULL_ERRNOS:
                raise StorageFull(f"spool is full: {exc.strerror}") from exc
            raise TemporaryFailure(f"spool write failed: {exc}") from exc
        return actual, final.parent

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> set[Path]:
        """Store many verified messages with one flush of the filesystem.

        Each file is written to a temp name without its own fsync; then one
        ``syncfs(2)`` makes all of them durable at once (falling back to an
        fsync per file where syncfs is missing), and only then are they
        renamed into place. Returns the directories to fsync before commit.
        """
        pending: list[tuple[Path, Path]] = []
        try:
            for guid, data in items:
                final = self.path(guid)
                if final.exists():
                    pending.append((final, final))
                    continue
                with self._lock:
                    self._counter += 1
                    n = self._counter
                tmp = self.tmp / f"{guid}.{os.getpid()}.{threading.get_ident()}.{n}"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
                pending.append((tmp, final))
            fresh = [(tmp, final) for tmp, final in pending if tmp != final]
            if fresh:
                self._flush_files([tmp for tmp, _ in fresh])
            for tmp, final in fresh:
                os.rename(tmp, final)
        except OSError as exc:
            for tmp, final in pending:
                if tmp != final:
                    tmp.unlink(missing_ok=True)
            if exc.errno in _FULL_ERRNOS:
                raise StorageFull(f"spool is full: {exc.strerror}") from exc
            raise TemporaryFailure(f"spool write failed: {exc}") from exc
        return {final.parent for _, final in pending}

    def _flush_files(self, paths: list[Path]) -> None:
        if _syncfs is not None and len(paths) > 1:
            fd = os.open(self.tmp, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if _syncfs(fd) == 0:
                    return
            finally:
                os.close(fd)
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def fsync_dirs(self, dirs: Iterable[Path]) -> None:
        """fsync each directory once, so renames into it survive a crash."""
        try:
            for d in set(dirs):
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise TemporaryFailure(f"spool directory sync failed: {exc}") from exc

    def read(self, guid: str) -> bytes:
        """The message's bytes, verified against the GUID."""
        try:
            data = self.path(guid).read_bytes()
        except FileNotFoundError as exc:
            raise Corrupt(f"message {guid} is missing from the spool") from exc
        if guid_of(data) != guid:
            raise Corrupt(f"message {guid} does not match its bytes; not served")
        return data

    def remove(self, guid: str) -> None:
        self.path(guid).unlink(missing_ok=True)

    def guids(self) -> Iterable[str]:
        for sub in sorted(self.root.iterdir()):
            if sub.name == "tmp" or not sub.is_dir():
                continue
            for f in sub.iterdir():
                if GUID_RE.match(f.name):
                    yield f.name
