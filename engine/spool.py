"""The content-addressed message spool.

How this works: a message's bytes live once per node in
``<data_dir>/spool/<g[0:2]>/<guid>``, where the GUID is the SHA-1 of the
bytes (each of the 256 folders is made, and the spool's root fsynced, when
the first file goes into it). Writing goes temp file → fsync → rename →
(later, batched) fsync of the directory, so a name in the spool always has
all its bytes on disk, and a crash leaves at worst an orphan temp file,
never a half message under a GUID. The directory fsyncs are collected by
the caller and done once per group commit, just before the database
transaction that references the new GUIDs commits: the bytes are durable
before any record points at them.

How a group commit's files are flushed is the ``flush`` policy:

- ``"filesystem"`` (the default where Linux's syncfs(2) exists): one
  ``syncfs`` makes every staged file of the batch durable, and one more after
  the renames makes the directory entries durable. Two system calls per
  batch instead of one fsync per file and per directory; on this project's
  machines that is a third of the CPU per message. It also flushes whatever
  else is dirty on that filesystem, so the spool belongs on a filesystem of
  its own when other programs write a lot beside it.
- ``"file"``: fsync each file and each directory (side by side, in a small
  pool, so the journal commits them together). Portable, and unaffected by
  other writers.

A batch of one file is always flushed file by file.

Reads verify the SHA-1: a GUID whose bytes do not match is ``Corrupt`` and
is never served. :meth:`Spool.open_verified` is the read for a server that
sends the bytes itself (``sendfile``): it hashes a file once and remembers
what ``fstat`` said of it then (inode, size, mtime, ctime); an open file that
still says the same is not hashed again (any write to it changes its mtime
and ctime, a restore or a new file its inode). Whoever wants to hear of it (the daemon queues a repair from
the partner) adds a callback to :attr:`Spool.on_damage`; it is called in the
reading thread with the GUID and what is wrong. :meth:`Spool.restore` puts
good bytes (checked against the GUID) in place of a damaged or missing file.

Files leave the spool only through the sweep (:mod:`engine.sweep`), once no
live record names them; :meth:`Spool.commit` refuses a staged reuse of bytes
the sweep has removed meanwhile.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import errno
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from engine.errors import Corrupt, InvalidArgument, StorageFull, TemporaryFailure

__all__ = ["GUID_RE", "Spool", "Staged", "damage_of", "guid_of"]

# How many files' fstat identities Spool.open_verified remembers.
VERIFIED_MAX = 100_000  # about 25 MB of identities at most


@dataclass(frozen=True, slots=True)
class Staged:
    """Bytes written under a temp name (``tmp``; None when already spooled)."""

    guid: str
    tmp: Path | None
    final: Path


def _translate(exc: OSError) -> Exception:
    if exc.errno in _FULL_ERRNOS:
        return StorageFull(f"spool is full: {exc.strerror}")
    return TemporaryFailure(f"spool write failed: {exc}")


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
FLUSH_POLICIES = ("filesystem", "file")

GUID_RE = re.compile(r"\A[0-9a-f]{40}\Z")
# The 256 folders a GUID's first two hex digits name.
_FOLDERS = tuple(f"{i:02x}" for i in range(256))
_FOLDER_SET = frozenset(_FOLDERS)
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _fsync_path(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def guid_of(data: bytes | memoryview) -> str:
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def damage_of(length: int, expected: int | None) -> str:
    """What is wrong with a file whose bytes do not hash to its name."""
    if expected is not None and length < expected:
        return f"truncated ({length} of {expected} bytes)"
    return f"bytes do not match the GUID ({length} bytes)"


class Spool:
    """The GUID spool under ``root``. Thread-safe: every method may run in any thread."""

    def __init__(self, root: Path | str, *, clean: bool = True, flush: str = "filesystem") -> None:
        if flush not in FLUSH_POLICIES:
            raise ValueError(f"spool flush must be one of {FLUSH_POLICIES}, not {flush!r}")
        self.root = Path(root)
        self._root = str(self.root)  # for the reads' paths: no Path object a read
        # syncfs where the policy asks for it and the system has it.
        self._syncfs = _syncfs if flush == "filesystem" else None
        self.tmp = self.root / "tmp"
        self._counter = 0
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        # Called (in the reading thread) with (guid, what is wrong) when a read
        # finds a file missing or not matching its GUID.
        self.on_damage: list[Callable[[str, str], None]] = []
        # GUID -> the fstat identity its file had when its bytes were hashed.
        self._verified: dict[str, tuple[int, int, int, int, int]] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(exist_ok=True)
        # The GUID folders (``00``..``ff``) are made as the first file goes
        # into each (:meth:`_folder`), not all 256 at every new spool: one
        # read of the root says which are here. Something else where a
        # folder belongs is refused now, not at the first delivery into it.
        self._folders: set[str] = set()
        with os.scandir(self._root) as entries:
            for entry in entries:
                if entry.name in _FOLDER_SET:
                    if not entry.is_dir():
                        raise FileExistsError(
                            errno.EEXIST, f"{entry.path} is in the spool and is not a folder"
                        )
                    self._folders.add(entry.name)
        self._folder_lock = threading.Lock()
        # Temp files left by a crash are never referenced: drop them (only
        # the daemon that owns the spool does this, at start).
        if clean:
            self.clean_temp()

    def _folder(self, prefix: str) -> None:
        """Make sure the folder ``prefix`` (a GUID's first two hex digits) is
        here and its name durable, before a file is renamed into it: made
        on first use, then the root fsynced, so no record can name a file
        whose folder a crash could lose. Once a folder is known, free."""
        if prefix in self._folders:
            return
        with self._folder_lock:
            if prefix in self._folders:
                return
            path = f"{self._root}/{prefix}"
            try:
                os.mkdir(path)
            except FileExistsError:
                if not os.path.isdir(path):
                    raise
            _fsync_dir(self._root)
            self._folders.add(prefix)

    def _place(self, tmp: Path | str, final: Path | str, prefix: str) -> None:
        """Rename a flushed temp file to its name in folder ``prefix``, made
        first if need be (:meth:`_folder`); a folder removed since this
        spool made it is made again."""
        self._folder(prefix)
        try:
            os.rename(tmp, final)
        except FileNotFoundError:
            if not os.path.exists(tmp):
                raise
            self._folders.discard(prefix)
            self._folder(prefix)
            os.rename(tmp, final)

    def clean_temp(self, pid: int | None = None) -> int:
        """Remove temp files (only those process ``pid`` wrote, if given): left
        by a crash, they are never referenced. Returns how many went."""
        removed = 0
        for leftover in self.tmp.iterdir():
            if pid is None or leftover.name.split(".")[1:2] == [str(pid)]:
                leftover.unlink(missing_ok=True)
                removed += 1
        return removed

    def path(self, guid: str) -> Path:
        if not GUID_RE.match(guid):
            raise InvalidArgument(f"not a GUID: {guid!r}")
        return self.root / guid[:2] / guid

    def _name(self, guid: str) -> str:
        """:meth:`path` as a string: no ``Path`` built for each of the
        thousands of GUIDs a RESERVE, an UPLOAD or an apply checks."""
        if not GUID_RE.match(guid):
            raise InvalidArgument(f"not a GUID: {guid!r}")
        return f"{self._root}/{guid[:2]}/{guid}"

    def has(self, guid: str) -> bool:
        return os.path.exists(self._name(guid))

    def size(self, guid: str) -> int:
        """The length of the message's file (``FileNotFoundError`` if it is not here)."""
        return os.stat(self._name(guid)).st_size

    def keep(self, guid: str) -> bool:
        """:meth:`has`, for bytes about to be named again: marks them just used
        (their mtime), so the sweep leaves them alone for a grace."""
        name = self._name(guid)
        try:
            os.utime(name)
        except FileNotFoundError:
            return False
        except OSError:
            return os.path.exists(name)
        return True

    def stage(self, data: bytes, guid: str | None = None, *, verified: bool = False) -> Staged:
        """Write ``data`` to a temp file, not yet durable nor visible.

        :meth:`commit` makes a list of staged files durable with one flush
        and renames them into place; the store's committer does that for a
        whole group commit. When ``guid`` is given (replication), it must
        match the bytes; ``verified``: the caller has just hashed them
        (:func:`engine.syncwire.decode_frames` does), so they are not hashed
        twice.
        """
        if guid is not None and verified:
            actual = guid
        else:
            actual = guid_of(data)
            if guid is not None and guid != actual:
                raise Corrupt(f"bytes do not match GUID {guid} (they hash to {actual})")
        final = self.path(actual)
        if self.keep(actual):
            return Staged(actual, None, final)
        with self._lock:
            self._counter += 1
            n = self._counter
        tmp = self.tmp / f"{actual}.{os.getpid()}.{threading.get_ident()}.{n}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _translate(exc) from exc
        return Staged(actual, tmp, final)

    def commit(self, staged: Iterable[Staged]) -> set[Path]:
        """Make staged files durable (one ``syncfs(2)`` for all of them, or an
        fsync each where syncfs is missing), then rename them into place.

        Returns the directories to fsync before records that use them commit.
        """
        # The same file may come more than once (one message, many recipients).
        items = list({(s.guid, s.tmp): s for s in staged}.values())
        # Bytes found already spooled when they were staged: the sweep
        # (engine.sweep) may have removed them since, and no record may
        # name a GUID whose file is gone. Checked in the committer, which
        # is where the sweep removes files.
        gone = [s.guid for s in items if s.tmp is None and not s.final.exists()]
        if gone:
            raise TemporaryFailure(f"message {gone[0]} left the spool before it was stored")
        # A batch run again after a failed write finds its files in place.
        fresh = [
            s for s in items if s.tmp is not None and not (s.final.exists() and not s.tmp.exists())
        ]
        try:
            if fresh:
                self._flush_files([s.tmp for s in fresh if s.tmp is not None])
            for item in fresh:
                assert item.tmp is not None
                self._place(item.tmp, item.final, item.guid[:2])
        except OSError as exc:
            for item in fresh:
                if item.tmp is not None:
                    item.tmp.unlink(missing_ok=True)
            raise _translate(exc) from exc
        return {item.final.parent for item in items}

    def discard(self, staged: Iterable[Staged]) -> None:
        for item in staged:
            if item.tmp is not None:
                item.tmp.unlink(missing_ok=True)

    def put(self, data: bytes, guid: str | None = None) -> tuple[str, Path]:
        """Store one message durably now; returns its GUID and the directory to fsync."""
        item = self.stage(data, guid)
        (directory,) = self.commit([item])
        return item.guid, directory

    def put_many(
        self, items: Iterable[tuple[str, bytes | memoryview]], *, verified: bool = False
    ) -> set[Path]:
        """Store many messages with one flush of the filesystem (``verified``:
        their GUIDs were just checked against the bytes); returns the
        directories to fsync before records that use them commit.

        What :meth:`stage` and :meth:`commit` do for a group commit, with
        only what a batch of fresh files needs: per file a ``utime`` (the
        bytes may be here already: :meth:`keep`), an ``open``, a ``write``,
        a ``close`` and, after the flush, a ``rename``, on names built as
        strings. An UPLOAD stores a few hundred files a request this way.
        """
        fresh: list[tuple[str, str, str]] = []  # (temp name, final name, folder)
        prefixes: set[str] = set()
        tag = f"{os.getpid()}.{threading.get_ident()}"
        tmp_dir = str(self.tmp)
        try:
            for guid, data in items:
                if not verified:
                    actual = guid_of(data)
                    if guid != actual:
                        raise Corrupt(f"bytes do not match GUID {guid} (they hash to {actual})")
                final = self._name(guid)
                prefixes.add(guid[:2])
                if self.keep(guid):
                    continue
                with self._lock:
                    self._counter += 1
                    n = self._counter
                tmp = f"{tmp_dir}/{guid}.{tag}.{n}"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                fresh.append((tmp, final, guid[:2]))
                try:
                    written = os.write(fd, data)
                    if written < len(data):  # a short write (rare on a regular file)
                        view = memoryview(data)[written:]
                        while view:
                            view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
            if fresh:
                self._flush_files([tmp for tmp, _, _ in fresh])
            for tmp, final, folder in fresh:
                self._place(tmp, final, folder)
        except OSError as exc:
            self._unlink(tmp for tmp, _, _ in fresh)
            raise _translate(exc) from exc
        except BaseException:
            self._unlink(tmp for tmp, _, _ in fresh)
            raise
        return {self.root / prefix for prefix in prefixes}

    @staticmethod
    def _unlink(names: Iterable[str]) -> None:
        for name in names:
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass

    def _flush_files(self, paths: Sequence[Path | str]) -> None:
        if len(paths) > 1 and self._sync_filesystem():
            return
        self._fsync_each(_fsync_path, paths)

    def fsync_dirs(self, dirs: Iterable[Path]) -> None:
        """Make renames into ``dirs`` durable (see the module docstring)."""
        unique = list(set(dirs))
        try:
            if len(unique) > 1 and self._sync_filesystem():
                return
            self._fsync_each(_fsync_dir, unique)
        except OSError as exc:
            raise TemporaryFailure(f"spool directory sync failed: {exc}") from exc

    def _sync_filesystem(self) -> bool:
        """syncfs(2) on the spool's filesystem; False where it is off or failed."""
        if self._syncfs is None:
            return False
        fd = os.open(self.tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return self._syncfs(fd) == 0
        finally:
            os.close(fd)

    def _fsync_each(self, fsync: Callable[[Path | str], None], paths: Sequence[Path | str]) -> None:
        # Side by side, the filesystem commits them in one journal transaction.
        if len(paths) == 1:
            fsync(paths[0])
        elif paths:
            list(self._sync_pool().map(fsync, paths))

    def _sync_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    8, thread_name_prefix="spool-sync"
                )
            return self._pool

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def read(self, guid: str) -> bytes:
        """The message's bytes, verified against the GUID (``Corrupt`` if not;
        :attr:`on_damage` hears of it)."""
        try:
            data = self.path(guid).read_bytes()
        except FileNotFoundError as exc:
            self._damaged(guid, "missing")
            raise Corrupt(f"message {guid} is missing from the spool") from exc
        if guid_of(data) != guid:
            self._damaged(guid, damage_of(len(data), None))
            raise Corrupt(f"message {guid} does not match its bytes; not served")
        return data

    def open_verified(self, guid: str) -> tuple[BinaryIO, int]:
        """The message's file, open for reading at offset 0, and its size;
        its bytes match the GUID (hashed now, or earlier while the file said
        the same to ``fstat``: see the module docstring). ``Corrupt`` (and
        :attr:`on_damage` hears of it) if not. The caller closes the file
        (unbuffered, opened by its name as a string: no ``Path`` built and
        no buffer allocated per message of a FETCH of thousands)."""
        if not GUID_RE.match(guid):
            raise InvalidArgument(f"not a GUID: {guid!r}")
        try:
            file = open(f"{self._root}/{guid[:2]}/{guid}", "rb", buffering=0)  # noqa: SIM115 (the caller closes it)
        except FileNotFoundError as exc:
            self._damaged(guid, "missing")
            raise Corrupt(f"message {guid} is missing from the spool") from exc
        try:
            st = os.fstat(file.fileno())
            identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if self._verified.get(guid) != identity:
                data = file.read()
                if guid_of(data) != guid:
                    self._damaged(guid, damage_of(len(data), None))
                    raise Corrupt(f"message {guid} does not match its bytes; not served")
                file.seek(0)
                self._remember(guid, identity)
        except BaseException:
            file.close()
            raise
        return file, st.st_size

    def read_verified(self, guid: str) -> bytes:
        """:meth:`read`, but a file hashed before and unchanged since (the
        same ``fstat`` identity, as :meth:`open_verified` keeps them) is not
        hashed again: per message an open, an fstat, a read and a close, with
        no Python file object (a FETCH reads thousands of small messages)."""
        if not GUID_RE.match(guid):
            raise InvalidArgument(f"not a GUID: {guid!r}")
        try:
            fd = os.open(f"{self._root}/{guid[:2]}/{guid}", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            self._damaged(guid, "missing")
            raise Corrupt(f"message {guid} is missing from the spool") from exc
        try:
            st = os.fstat(fd)
            data = os.read(fd, st.st_size)
            while len(data) < st.st_size:  # a short read (rare on a regular file)
                more = os.read(fd, st.st_size - len(data))
                if not more:
                    break
                data += more
            identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if self._verified.get(guid) != identity:
                if guid_of(data) != guid:
                    self._damaged(guid, damage_of(len(data), None))
                    raise Corrupt(f"message {guid} does not match its bytes; not served")
                self._remember(guid, identity)
            return data
        finally:
            os.close(fd)

    def _remember(self, guid: str, identity: tuple[int, int, int, int, int]) -> None:
        if len(self._verified) >= VERIFIED_MAX:
            self._verified.clear()  # rare: hashing again is the whole cost
        self._verified[guid] = identity

    def check(self, guid: str, size: int | None = None) -> tuple[int, str | None]:
        """Read and hash one file: (bytes read, None if whole, else what is
        wrong; ``size``: the length its records give it). Tells nobody: the
        caller (the scrub) keeps the account."""
        try:
            data = self.path(guid).read_bytes()
        except FileNotFoundError:
            return 0, "missing"
        except OSError as exc:
            return 0, f"unreadable: {exc.strerror}"
        if guid_of(data) != guid:
            return len(data), damage_of(len(data), size)
        return len(data), None

    def restore(self, guid: str, data: bytes) -> Path:
        """Put ``data`` (which must hash to ``guid``) in place of a damaged or
        missing file: temp file, fsync, rename over the old name, fsync of the
        directory. A reader sees the old file or the new one, never a mix."""
        if guid_of(data) != guid:
            raise Corrupt(f"bytes do not match GUID {guid}; not restored")
        final = self.path(guid)
        with self._lock:
            self._counter += 1
            n = self._counter
        tmp = self.tmp / f"{guid}.{os.getpid()}.{threading.get_ident()}.{n}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            self._place(tmp, final, guid[:2])
            _fsync_dir(final.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _translate(exc) from exc
        return final

    def _damaged(self, guid: str, what: str) -> None:
        for callback in list(self.on_damage):
            try:
                callback(guid, what)
            except Exception:  # a listener's trouble must not hide the Corrupt
                logging.getLogger("peerd.spool").exception("a spool damage listener failed")

    def directories(self) -> list[str]:
        """The directories the GUIDs are spread over (of the 256 a GUID's
        first two hex digits name, those made so far), in order."""
        with os.scandir(self._root) as entries:
            names = [e.name for e in entries if e.name in _FOLDER_SET and e.is_dir()]
        return [f"{self._root}/{name}" for name in sorted(names)]
