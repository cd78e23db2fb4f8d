"""The IMAP service: the listener, the open sessions, and what reaches them from outside.

How this works: :func:`start_imap` listens and runs one
:class:`~peerd.services.imap.session.Session` per connection, with the handler
table of :mod:`peerd.services.imap.handlers`. The :class:`ImapServer` keeps
the logged-in sessions, so that the store's change listener can mark the
sessions whose selected mailbox changed (another session, LMTP, replication
from the partner), and a move of an account to the other node can end its
sessions with ``* BYE [UNAVAILABLE]``. It also holds what sessions share: the
STARTTLS context, the cache of message structures FETCH renders and the
cache of sort records SORT and THREAD read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from engine.synclog import Change
from peerd.node.node import Node
from peerd.node.tls import starttls_context
from peerd.protocols.imap import commands as c
from peerd.protocols.imap.fetchreply import StructureCache
from peerd.protocols.imap.responses import CODE_UNAVAILABLE, untagged_status
from peerd.protocols.imap.sort import RecordCache
from peerd.services.gate import ConnectionGate, Refused
from peerd.services.imap.handlers import HANDLERS
from peerd.services.imap.session import Handler, Session

__all__ = ["ImapServer", "start_imap"]

log = logging.getLogger("peerd.services.imap")


class ImapServer:
    def __init__(self, node: Node, handlers: Mapping[type[c.Command], Handler] = HANDLERS) -> None:
        self.node = node
        self.handlers = handlers
        self.sessions: set[Session] = set()
        self.tls = starttls_context(node.config)
        self.structures = StructureCache()
        self.sort_records = RecordCache()
        config = node.config.imap
        self.gate = ConnectionGate("imap", config.max_connections, config.max_connections_per_ip)
        node.store.add_listener(self.on_change)
        node.on_ownership_change.append(self.close_accounts)

    def on_change(self, changes: list[Change]) -> None:
        by_account: dict[str, set[str]] = {}
        for change in changes:
            by_account.setdefault(change.account, set()).add(change.mailbox)
        for session in list(self.sessions):
            for account in session.watches():
                touched = by_account.get(account)
                if touched:
                    session.changed(touched)

    async def close_accounts(self, accounts: list[str]) -> None:
        wanted = set(accounts)
        for session in list(self.sessions):
            # A session with another account's shared mailbox selected ends
            # too: that mailbox is served by the account's new owner.
            if wanted.intersection(session.watches()) and not session.closing:
                session.closing = "account moved to another node"
                session.idle_wake.set()
                # Written, not drained: a client that does not read must not
                # hold up the switchover; close() sends what is buffered.
                try:
                    session.writer.write(untagged_status("BYE", session.closing, CODE_UNAVAILABLE))
                    session.writer.close()
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
            writer.close()
        finally:
            self.gate.release(counted)

    def count(self, account: str) -> int:
        return sum(1 for s in self.sessions if s.account == account)


async def start_imap(node: Node, host: str, port: int) -> tuple[ImapServer, asyncio.Server]:
    server = ImapServer(node)
    listener = await asyncio.start_server(server.handle, host, port, limit=1 << 20)
    return server, listener
