"""The IMAP service: the listener, the open sessions, and what reaches them from outside.

How this works: :func:`start_imap` listens and runs one
:class:`~peerd.services.imap.session.Session` per connection, with the handler
table of :mod:`peerd.services.imap.handlers`. The :class:`ImapServer` keeps
the logged-in sessions by account, so that the store's change listener can
mark the sessions whose selected mailbox changed (another session, LMTP,
replication from the partner) with work per changed account, not per open
session, and a move of an account to the other node can end its sessions
with ``* BYE [UNAVAILABLE]``. It also holds what sessions share: the
STARTTLS context, the cache of message structures FETCH renders, the
groups of FETCH responses already rendered (served again to the same
FETCH of the same messages), the cache
of sort records SORT and THREAD read, and the reads that sessions woken
together share (:mod:`peerd.services.imap.fanout`). The sessions parked in
IDLE on a changed mailbox are told by :mod:`peerd.services.imap.wakeup`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from engine.synclog import Change
from peerd.node.node import Node
from peerd.node.tls import starttls_context
from peerd.protocols.imap import commands as c
from peerd.protocols.imap.fetchreply import RenderedGroups, StructureCache
from peerd.protocols.imap.responses import CODE_UNAVAILABLE, untagged_status
from peerd.protocols.imap.sort import RecordCache
from peerd.services import stall
from peerd.services.gate import ConnectionGate, Refused
from peerd.services.imap import wakeup
from peerd.services.imap.fanout import Fanout
from peerd.services.imap.handlers import HANDLERS
from peerd.services.imap.session import Handler, Session

__all__ = ["ImapServer", "start_imap"]

log = logging.getLogger("peerd.services.imap")

_STREAM_LIMIT = 64 << 10


class ImapServer:
    def __init__(self, node: Node, handlers: Mapping[type[c.Command], Handler] = HANDLERS) -> None:
        self.node = node
        self.handlers = handlers
        self.sessions: set[Session] = set()
        self._by_account: dict[str, set[Session]] = {}
        # Sessions with another account's shared mailbox selected, by that account.
        self._foreign: dict[str, set[Session]] = {}
        self._watching: dict[Session, str] = {}
        self.fanout = Fanout()
        self._pushes: set[asyncio.Future[None]] = set()
        self.tls = starttls_context(node.config)
        self.structures = StructureCache()
        self.rendered = RenderedGroups()
        self.sort_records = RecordCache()
        config = node.config.imap
        self.gate = ConnectionGate("imap", config.max_connections, config.max_connections_per_ip)
        node.store.add_listener(self.on_change)
        node.on_ownership_change.append(self.close_accounts)

    def on_change(self, changes: list[Change]) -> None:
        by_account: dict[str, set[str]] = {}
        for change in changes:
            by_account.setdefault(change.account, set()).add(change.mailbox)
        for touched in by_account.values():
            self.fanout.changed(touched)
        parked: dict[str, list[Session]] = {}
        for account, touched in by_account.items():
            # Its own sessions, and those with one of its shared mailboxes selected.
            watchers = [*self._by_account.get(account, ()), *self._foreign.get(account, ())]
            for session in watchers:
                selection = session.selection
                if session.parked and selection is not None and selection.uniqueid in touched:
                    parked.setdefault(selection.uniqueid, []).append(session)
                else:
                    session.changed(touched)
        if parked:
            task = asyncio.ensure_future(wakeup.tell(self.node, parked))
            self._pushes.add(task)
            task.add_done_callback(self._pushes.discard)

    def enter(self, session: Session) -> None:
        """A session logged in (as ``session.account``)."""
        self.sessions.add(session)
        self._by_account.setdefault(session.account, set()).add(session)

    def leave(self, session: Session) -> None:
        """A session ended (logged in or not)."""
        self.sessions.discard(session)
        self.watch(session, None)
        same = self._by_account.get(session.account)
        if same is not None:
            same.discard(session)
            if not same:
                del self._by_account[session.account]

    def watch(self, session: Session, owner: str | None) -> None:
        """``session`` has a mailbox of ``owner`` selected, another account's
        (shared with it); ``None``: its own or none. Its changes reach it."""
        before = self._watching.pop(session, None)
        if before is not None:
            same = self._foreign[before]
            same.discard(session)
            if not same:
                del self._foreign[before]
        if owner is not None:
            self._watching[session] = owner
            self._foreign.setdefault(owner, set()).add(session)

    async def close_accounts(self, accounts: list[str]) -> None:
        wanted = set(accounts)
        for session in list(self.sessions):
            # A session with another account's shared mailbox selected ends
            # too: that mailbox is served by the account's new owner.
            if wanted.intersection(session.watches()) and not session.closing:
                session.closing = "account moved to another node"
                session.wake()
                # Written, not drained: a client that does not read must not
                # hold up the switchover; close() sends what is buffered.
                try:
                    session.writer.write(untagged_status("BYE", session.closing, CODE_UNAVAILABLE))
                    stall.close(session.writer, session.write_timeout())
                except Exception:
                    log.exception("closing the session of %s failed", session.account)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            counted = self.gate.admit(writer)
        except Refused as exc:
            # RFC 3501 7.1.5: BYE as the greeting, then close.
            writer.write(untagged_status("BYE", str(exc), CODE_UNAVAILABLE))
            writer.close()
            return
        session = Session(self, reader, writer, self.handlers)
        try:
            await session.run()
        except asyncio.CancelledError:
            # The daemon is stopping. Python 3.11's stream callback calls
            # task.exception() on a cancelled handler and logs the
            # CancelledError as an error; the session simply ends here.
            writer.close()
        except Exception:
            log.exception("IMAP session failed")
            stall.close(writer, session.write_timeout())
        finally:
            self.gate.release(counted)

    def count(self, account: str) -> int:
        return len(self._by_account.get(account, ()))


async def start_imap(node: Node, host: str, port: int) -> tuple[ImapServer, asyncio.Server]:
    server = ImapServer(node)
    # The stream buffers at most twice this before it stops reading the socket:
    # what a connection holds outside the input budget while it waits for room.
    listener = await asyncio.start_server(server.handle, host, port, limit=_STREAM_LIMIT)
    return server, listener
