"""One account's mail as IMAP and POP3 reach it: typed reads, fenced writes, message bytes.

How this works: a logged-in session holds an :class:`AccountStore` for its
account. Each method is one store transaction running one function of
:mod:`engine.mailview` and returns its frozen values; no service builds a
query or holds an ORM row. Reads run in the store's reader threads; every
write goes through :meth:`peerd.node.node.Node.write_owned`, so the ownership
fence runs in the same transaction as the change and a switchover that
commits first always wins. Message bytes are read off the event loop and
verified against their GUID (:meth:`reader` is the same read, for code that
already runs in a worker thread).

``on_write`` is called after each committed write: the IMAP session marks its
selected mailbox stale there, as the store's change notice for its own write
may arrive only after the command's reply.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import BinaryIO, TypeVar

from sqlalchemy.orm import Session

from engine import mailview, parsed, textindex
from engine.fulltext import Key
from engine.mailview import (
    Appended,
    CopyResult,
    FlagMode,
    FlagsStored,
    Listing,
    MailboxStatus,
    Snapshot,
    Version,
)
from engine.models import Account
from peerd.node.node import Node
from peerd.protocols.imap.parsed import PARSE_VERSION, Structure
from peerd.protocols.imap.records import Record

__all__ = ["AccountStore"]

T = TypeVar("T")

# Past this many GUIDs, stored sort keys are read by mailbox in one query.
_WHOLE_MAILBOX = 2000
# A flag change of more messages is written this many at a time, each its
# own write: the store has one writer for the node, and STORE 1:* of 20,000
# messages in one held every other account's writes for a second (five for
# 100,000). RFC 3501 6.4.6 does not make STORE atomic, as it does COPY.
STORE_CHUNK = 1000


class AccountStore:
    """The mail of ``account`` on ``node``."""

    def __init__(
        self, node: Node, account: str, on_write: Callable[[], None] | None = None
    ) -> None:
        self.node = node
        self.account = account
        self.on_write = on_write
        self.reader: Callable[[str], bytes] = node.store.spool.read
        # The message's file, open, and its size; verified as the reader's bytes
        # are, but hashed again only when the file changed (Spool.open_verified).
        self.opener: Callable[[str], tuple[BinaryIO, int]] = node.store.spool.open_verified
        self.cached_reader: Callable[[str], bytes] = node.store.spool.read_verified
        """The verified bytes of a message by GUID; blocking (worker threads only)."""

    # -- reads --------------------------------------------------------------------

    async def snapshot(self, name: str) -> Snapshot:
        account = self.account
        return await self.node.store.read(lambda s: mailview.snapshot(s, account, name))

    async def snapshot_of(self, mailbox_id: int) -> Snapshot:
        return await self.node.store.read(lambda s: mailview.snapshot_of(s, mailbox_id))

    async def snapshot_and_vanished(
        self, name: str, uidvalidity: int, modseq: int
    ) -> tuple[Snapshot, tuple[int, ...]]:
        """The mailbox and, if its UIDVALIDITY is ``uidvalidity``, the UIDs
        expunged after ``modseq``, in one read: no UID is both live and vanished."""
        account = self.account
        return await self.node.store.read(
            lambda s: mailview.snapshot_and_vanished(s, account, name, uidvalidity, modseq)
        )

    async def version(self, mailbox_id: int) -> Version | None:
        return await self.node.store.read(lambda s: mailview.version(s, mailbox_id))

    async def vanished(self, mailbox_id: int, modseq: int) -> tuple[int, ...]:
        return await self.node.store.read(lambda s: mailview.vanished(s, mailbox_id, modseq))

    async def live_uids(self, mailbox_id: int, uids: Sequence[int]) -> tuple[int, ...]:
        return await self.node.store.read(lambda s: mailview.live_uids(s, mailbox_id, uids))

    async def listing(self) -> Listing:
        account = self.account
        return await self.node.store.read(lambda s: mailview.listing(s, account))

    async def status(self, name: str) -> MailboxStatus:
        account = self.account
        return await self.node.store.read(lambda s: mailview.status(s, account, name))

    async def statuses(self, names: Sequence[str]) -> dict[str, MailboxStatus]:
        """:meth:`status` of many mailboxes in one read (a name that names no
        mailbox any more is left out)."""
        account = self.account
        return await self.node.store.read(lambda s: mailview.statuses(s, account, names))

    async def text_search(
        self, mailbox_id: int, questions: Sequence[tuple[Key, str]]
    ) -> textindex.TextSearch:
        """SEARCH BODY/TEXT answers for a mailbox: the full-text index's for
        what it holds, decoding the bytes for what it does not hold yet."""
        answer = await self.node.store.read(lambda s: textindex.ask(s, mailbox_id, questions))
        return textindex.TextSearch(answer, self.reader)

    async def stored_sortkeys(
        self, mailbox_id: int, guids: Sequence[str], records: Sequence[Record]
    ) -> parsed.SortKeys:
        """The sort keys stored for ``guids`` (records of ``mailbox_id``) when
        their messages were stored; a GUID not parsed yet is left out. For
        most of a mailbox (``records``: its records, in UID order), those of
        all its records, read in one aggregated row for each run of up to
        :data:`~engine.parsed.SORTKEY_SPAN` records (one read beats many IN
        lists; the records held already are the same again)."""
        if len(guids) <= _WHOLE_MAILBOX or not records:
            found = await self.node.store.read(lambda s: parsed.sortkeys(s, PARSE_VERSION, guids))
            return parsed.SortKeys.of(found)
        span, count = parsed.SORTKEY_SPAN, len(records)
        spans = [
            (records[i].uid, records[min(i + span, count) - 1].uid) for i in range(0, count, span)
        ]

        def read(s: Session) -> parsed.SortKeys:
            return parsed.SortKeys.joined_parts(
                [parsed.mailbox_sortkeys(s, PARSE_VERSION, mailbox_id, run) for run in spans]
            )

        return await self.node.store.read(read)

    async def stored_structures(self, guids: Sequence[str]) -> dict[str, Structure]:
        """ENVELOPE, BODYSTRUCTURE and BODY stored for ``guids``; a GUID not
        parsed yet is left out."""
        return await self.node.store.read(lambda s: parsed.structures(s, PARSE_VERSION, guids))

    # -- bytes ----------------------------------------------------------------------

    async def message(self, guid: str) -> bytes:
        reader = self.reader
        return await self.node.store.run_blocking(lambda: reader(guid))

    async def run_blocking(self, fn: Callable[[], T]) -> T:
        """Run CPU- or disk-bound work (rendering, searching) off the event loop."""
        return await self.node.store.run_blocking(fn)

    # -- writes ---------------------------------------------------------------------

    def _wrote(self) -> None:
        if self.on_write is not None:
            self.on_write()

    async def create_mailbox(self, name: str, *, inherit_acl: bool = False) -> None:
        await self.node.write_owned(
            self.account,
            lambda s, a: mailview.create_mailbox(s, a, name, inherit_acl=inherit_acl),
        )
        self._wrote()

    async def delete_mailbox(self, name: str) -> None:
        await self.node.write_owned(self.account, lambda s, a: mailview.delete_mailbox(s, a, name))
        self._wrote()

    async def rename_mailbox(self, old: str, new: str) -> None:
        await self.node.write_owned(
            self.account, lambda s, a: mailview.rename_mailbox(s, a, old, new)
        )
        self._wrote()

    async def subscribe(self, name: str) -> None:
        await self.node.write_owned(self.account, lambda s, a: mailview.subscribe(s, a, name))
        self._wrote()

    async def unsubscribe(self, name: str) -> None:
        await self.node.write_owned(self.account, lambda s, a: mailview.unsubscribe(s, a, name))
        self._wrote()

    async def append(
        self, name: str, data: bytes, flags: Sequence[str], when: dt.datetime
    ) -> Appended:
        """Spool ``data`` (off the loop), then add its record to ``name``."""
        spool = self.node.store.spool
        staged = await self.node.store.run_blocking(lambda: spool.stage(data))
        size = len(data)
        appended = await self.node.write_owned(
            self.account,
            lambda s, a: mailview.append(
                s, a, name, guid=staged.guid, size=size, flags=flags, internaldate=when
            ),
            staged=[staged],
        )
        self._wrote()
        return appended

    async def append_many(
        self, name: str, messages: Sequence[tuple[bytes, Sequence[str], dt.datetime]]
    ) -> tuple[Appended, ...]:
        """Spool each message, then add all their records to ``name`` in one
        transaction: all of them, or none (RFC 3502 MULTIAPPEND)."""
        spool = self.node.store.spool
        blobs = [data for data, _, _ in messages]
        staged = await self.node.store.run_blocking(lambda: [spool.stage(b) for b in blobs])
        items = [
            (st.guid, len(data), flags, when)
            for st, (data, flags, when) in zip(staged, messages, strict=True)
        ]
        appended = await self.node.write_owned(
            self.account, lambda s, a: mailview.append_many(s, a, name, items), staged=staged
        )
        self._wrote()
        return appended

    async def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        flags: Sequence[str],
        *,
        mode: FlagMode,
        unchangedsince: int | None = None,
    ) -> FlagsStored:
        """The flags of ``uids`` changed, :data:`STORE_CHUNK` messages a write."""
        changed: list[mailview.Record] = []
        modified: list[int] = []

        def write(part: Sequence[int]) -> Callable[[Session, Account], FlagsStored]:
            return lambda s, a: mailview.store_flags(
                s, a, mailbox_id, part, flags, mode=mode, unchangedsince=unchangedsince
            )

        try:
            for start in range(0, max(len(uids), 1), STORE_CHUNK):
                part = uids[start : start + STORE_CHUNK]
                stored = await self.node.write_owned(self.account, write(part))
                changed += stored.changed
                modified += stored.modified
        finally:
            self._wrote()
        return FlagsStored(tuple(changed), tuple(modified))

    async def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> tuple[int, ...]:
        expunged = await self.node.write_owned(
            self.account, lambda s, a: mailview.expunge(s, a, mailbox_id, uids)
        )
        self._wrote()
        return expunged

    async def claim_recent(self, mailbox_id: int) -> tuple[int, int]:
        """Claim the mailbox's unclaimed UIDs as \\Recent (:func:`engine.mailview.claim_recent`)."""
        return await self.node.write_owned(
            self.account, lambda s, a: mailview.claim_recent(s, a, mailbox_id)
        )

    async def copy_messages(
        self, mailbox_id: int, uids: Sequence[int], dest: str, *, move: bool
    ) -> CopyResult:
        copied = await self.node.write_owned(
            self.account,
            lambda s, a: mailview.copy_messages(s, a, mailbox_id, uids, dest, move=move),
        )
        self._wrote()
        return copied
