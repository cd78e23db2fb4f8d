"""The ManageSieve service (RFC 5804): asyncio sessions over :mod:`peerd.protocols.managesieve`.

How this works: a :class:`SieveSession` writes the core's greeting, feeds it
the bytes it reads and answers the requests the core hands back; everything
a client sees on the wire comes from the core (parsing, the state table,
SASL PLAIN, CHECKSCRIPT, script compilation and the size cap). What stays
here is the outside world: the socket, STARTTLS with the node's ``[tls]``
certificate (RFC 5804 section 2.2; PLAIN only after it when a certificate
is configured, in the clear otherwise, as IMAP), the idle timeout, logins by IMAP's rules
(``Node.authenticate``: a failed login waits ``login_failure_delay`` and
``max_login_failures`` end the connection; an account this node does not
own is refused with ``TRYLATER`` naming the owner), and the store: every
script write goes through ``Node.write_owned`` (the fence in the same
transaction) into :mod:`engine.sieve`, which logs it for replication. When
the account moves to the other node an idle session is closed with ``BYE``.
A literal (a script, after login) takes room in the node's input budget
before its octets are kept (:mod:`peerd.node.inputbudget`; the socket is
not read meanwhile); none within ``[limits] input_wait`` is ``NO
(TRYLATER)``. The room goes back once the command is answered, and when
the session ends.
Store and ownership errors become ``NO`` replies in
:func:`peerd.node.errormap.managesieve_refusal`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

from sqlalchemy.orm import Session as DbSession

from engine import accounts as engine_accounts
from engine import sieve as sieve_store
from engine.errors import EngineError
from engine.models import Account
from ownership.errors import OwnershipError
from peerd.node.errormap import managesieve_refusal
from peerd.node.inputbudget import NoRoom
from peerd.node.maillog import peer_ip
from peerd.node.node import Node
from peerd.node.tls import server_context
from peerd.protocols.managesieve import (
    NEED_DATA,
    QUOTA_MAXSCRIPTS,
    TRYLATER,
    Close,
    Config,
    DeleteScript,
    Done,
    GetScript,
    HaveSpace,
    ListScripts,
    Login,
    PutScript,
    Refused,
    RenameScript,
    Reply,
    Request,
    Response,
    RoomNeeded,
    ScriptContent,
    Scripts,
    Send,
    Session,
    SetActive,
    StartTlsNow,
    State,
)
from peerd.services import stall
from peerd.services.gate import ConnectionGate
from peerd.services.gate import Refused as OverCap
from peerd.services.starttls import injected

__all__ = ["SieveServer", "start_managesieve"]

log = logging.getLogger("peerd.services.managesieve")

_READ_SIZE = 64 << 10
# Input the core holds past which its next event is worked out in a thread:
# a command with a script in it is compiled there (CHECKSCRIPT, PUTSCRIPT),
# half a second of CPU for one near the size cap, which on the event loop
# stalled every session, delivery and sync of the node each time.
_INLINE_INPUT = 8 << 10
_BYE_MOVED = b'BYE (TRYLATER) "the account moved to another node"\r\n'
_BYE_IDLE = b'BYE "idle for too long"\r\n'
_BYE_LOGIN = b'BYE "no login in time"\r\n'


class _Closed(Exception):
    """The session is over."""


class SieveSession:
    def __init__(
        self,
        node: Node,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        tls_context: ssl.SSLContext | None,
    ) -> None:
        self.node = node
        self.reader = reader
        self.writer = writer
        self.tls_context = tls_context
        # PLAIN only over TLS when TLS is offered (RFC 5804 section 2.1); with
        # no certificate PLAIN goes in the clear, as IMAP's LOGIN does.
        tls = tls_context is not None
        self.core = Session(Config(tls_available=tls, plain_needs_tls=tls, ask_room=True))
        self.hold = node.input_budget.hold()
        self.config = node.config.managesieve
        self.account = ""
        self.failures = 0
        self.busy = False
        self.moved = False
        self.login_by = time.monotonic() + self.config.login_timeout.total_seconds()

    @property
    def logged_in(self) -> bool:
        return self.core.state is not State.NON_AUTHENTICATED

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await stall.drain(self.writer, self.write_timeout(), "managesieve")

    def write_timeout(self) -> float:
        """How long the client may take none of what we send: the time left
        to log in, then the idle timeout (:mod:`peerd.services.stall`)."""
        if not self.logged_in:
            return self.login_by - time.monotonic()
        return self.config.idle_timeout.total_seconds()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.hold.release()

    async def room(self, size: int) -> None:
        """Room for a literal of ``size`` octets before the core keeps it; the
        command is refused (TRYLATER) when none comes in time."""
        try:
            # Shielded: the wait ending must not cancel the stream's own close waiter.
            closing = self.writer.wait_closed
            if not await self.hold.take_before(size, lambda: asyncio.shield(closing())):
                raise _Closed  # cut off while it waited
        except NoRoom as exc:
            self.hold.release()
            self.core.refuse_literal(managesieve_refusal(exc)[0])

    async def _run(self) -> None:
        idle = self.config.idle_timeout.total_seconds()
        await self.send(self.core.greeting())
        ended = False
        unread = 0  # bytes fed to the core since it last needed data
        while True:
            if unread > _INLINE_INPUT:
                # The session is this coroutine's alone: it waits for the thread.
                event = await asyncio.to_thread(self.core.next_event)
            else:
                event = self.core.next_event()
            if event is NEED_DATA:
                unread = 0
                if ended:
                    return
                if self.account and not self.logged_in:
                    # UNAUTHENTICATE (RFC 5804 2.14.1): logged out; a new login, in time.
                    self.account = ""
                    self.hold.rekey("")  # its room no longer counts as the account's
                    self.login_by = time.monotonic() + self.config.login_timeout.total_seconds()
                # Before login, [managesieve] login_timeout in all, however
                # active the client is (a byte at a time never ends a line).
                wait = idle if self.logged_in else min(idle, self.write_timeout())
                try:
                    data = await asyncio.wait_for(self.reader.read(_READ_SIZE), max(wait, 0.0))
                except TimeoutError:
                    await self.send(_BYE_IDLE if self.logged_in else _BYE_LOGIN)
                    return
                ended = not data
                unread += len(data)
                self.core.receive_data(data)  # b"": the end of input
                continue
            if isinstance(event, RoomNeeded):
                await self.room(event.size)  # nothing is read meanwhile
                continue
            if isinstance(event, (Send, Close, StartTlsNow)):
                # The command the room was for is answered (or refused) now;
                # a request holds its room until it is answered (below).
                self.hold.release()
            if isinstance(event, Send):
                await self.send(event.data)
            elif isinstance(event, Close):
                return
            elif isinstance(event, StartTlsNow):
                assert self.tls_context is not None  # the core offers it only then
                if injected(self.reader, 0):
                    # RFC 5804 section 2.2: the core dropped what it held of
                    # what came after STARTTLS, but the stream holds more; it
                    # came in the clear and would be read as if over TLS (the
                    # STARTTLS command-injection flaw). End the connection.
                    log.warning(
                        "ManageSieve %s sent data between STARTTLS and the handshake; closed",
                        peer_ip(self.writer),
                    )
                    return
                await self.writer.start_tls(self.tls_context)
                await self.send(self.core.tls_started())
            else:
                self.busy = True
                try:
                    reply = await self.answer(event)
                finally:
                    self.busy = False
                await self.send(self.core.answer(reply))
                self.hold.release()
                if self.moved:
                    await self.send(_BYE_MOVED)
                    return

    async def answer(self, request: Request) -> Reply:
        if isinstance(request, Login):
            return await self.login(request)
        try:
            return await self.store(request)
        except (EngineError, OwnershipError) as exc:
            text, code = managesieve_refusal(exc)
            return Refused(text, code)

    async def login(self, request: Login) -> Reply:
        result = await self.node.authenticate(
            request.user, request.password, "sieve", peer_ip(self.writer)
        )
        if not result.ok:
            self.failures += 1
            await asyncio.sleep(self.config.login_failure_delay.total_seconds())
            if self.failures >= self.config.max_login_failures:
                await self.send(b'BYE "too many failed logins"\r\n')
                raise _Closed
            return Refused("Authentication failed")
        if result.owner is not None:
            return Refused(f"{result.account} is served by {result.owner}", TRYLATER)
        self.account = result.account
        self.hold.rekey(result.account)  # its scripts' room counts as the account's
        return Done()

    async def store(self, request: Request) -> Reply:
        account = self.account
        max_scripts = self.config.max_scripts
        if isinstance(request, ListScripts):

            def listing(session: DbSession) -> list[tuple[str, bool]]:
                row = engine_accounts.get_account(session, account)
                return sieve_store.list_scripts(session, row)

            return Scripts(tuple(await self.node.store.read(listing)))
        if isinstance(request, GetScript):
            name = request.name

            def get(session: DbSession) -> str:
                row = engine_accounts.get_account(session, account)
                return sieve_store.get_script(session, row, name)

            return ScriptContent(await self.node.store.read(get))
        if isinstance(request, HaveSpace):
            name = request.name

            def room(session: DbSession) -> bool:
                row = engine_accounts.get_account(session, account)
                names = [n for n, _ in sieve_store.list_scripts(session, row)]
                return name in names or len(names) < max_scripts

            if await self.node.store.read(room):
                return Done()
            return Refused(f"at most {max_scripts} scripts", QUOTA_MAXSCRIPTS)
        await self.node.write_owned(account, lambda s, a: _write(s, a, request, max_scripts))
        return Done()


def _write(session: DbSession, account: Account, request: Request, max_scripts: int) -> None:
    if isinstance(request, PutScript):
        sieve_store.put_script(
            session, account, request.name, request.content, max_scripts=max_scripts
        )
    elif isinstance(request, SetActive):
        sieve_store.set_active(session, account, request.name)
    elif isinstance(request, DeleteScript):
        sieve_store.delete_script(session, account, request.name)
    elif isinstance(request, RenameScript):
        sieve_store.rename_script(session, account, request.old, request.new)
    else:  # pragma: no cover - the core sends no other request
        raise TypeError(f"unexpected request {request!r}")


class SieveServer:
    """The open sessions, so that a move of their account can end them."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.sessions: set[SieveSession] = set()
        config = node.config
        self.tls_context = server_context(config) if config.managesieve.starttls else None
        managesieve = config.managesieve
        self.gate = ConnectionGate(
            "managesieve", managesieve.max_connections, managesieve.max_connections_per_ip
        )
        node.on_ownership_change.append(self.close_accounts)

    async def close_accounts(self, accounts: list[str]) -> None:
        wanted = set(accounts)
        for session in list(self.sessions):
            if session.account not in wanted or session.moved:
                continue
            session.moved = True
            if session.busy:
                continue  # it ends itself once this command's reply is out
            try:
                session.writer.write(_BYE_MOVED)
                stall.close(session.writer, session.write_timeout())
            except Exception:
                log.exception("closing the ManageSieve session of %s failed", session.account)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            counted = self.gate.admit(writer)
        except OverCap as exc:
            # RFC 5804 section 1.3: TRYLATER, the client may come back.
            writer.write(Response("BYE", str(exc), TRYLATER).encode())
            writer.close()
            return
        session = SieveSession(self.node, reader, writer, self.tls_context)
        self.sessions.add(session)
        try:
            await session.run()
        except (_Closed, ConnectionError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass  # the daemon is stopping
        except Exception:
            log.exception("ManageSieve session failed")
        finally:
            self.gate.release(counted)
            self.sessions.discard(session)
            stall.close(writer, session.write_timeout())


async def start_managesieve(node: Node, host: str, port: int) -> asyncio.Server:
    return await asyncio.start_server(SieveServer(node).handle, host, port)
