"""The POP3 service: asyncio sessions over the sans-I/O core :mod:`peerd.protocols.pop3`.

How this works: a :class:`Pop3Session` feeds the bytes it reads to a
:class:`~peerd.protocols.pop3.CommandReader` and runs each command the core hands
back, after asking the core's state table whether the session's state allows
it. Everything a client sees comes from the core: parsing, the state table,
``+OK``/``-ERR`` replies with response codes, dot-stuffing, TOP, UIDL, CAPA,
and the numbered maildrop with its DELE marks. What stays here is what
touches the outside world: sockets, STLS (RFC 2595), the idle timeout,
delayed and counted failed logins, and the store, reached through
:class:`~peerd.services.mailstore.AccountStore` (typed values; every write
behind the ownership fence).

After a login the session loads INBOX's live messages in UID order (the
snapshot IMAP's SELECT reads too) into a :class:`~peerd.protocols.pop3.Maildrop`;
the marked messages are expunged at QUIT (the UPDATE state, RFC 1939 section
6) in one store write, fenced like every write. Logins for an account another node owns get ``-ERR [SYS/TEMP]`` naming
the owner; wrong passwords get ``-ERR [AUTH]`` (RFC 3206) after a delay.
When the account moves to the other node (switchover, failover) an open
session gets ``-ERR [SYS/TEMP]`` and is closed, without UPDATE: its DELE
marks are dropped. A session in the middle of a command finishes its reply
first, so the ``-ERR`` never lands inside a RETR.
Store and ownership errors become ``-ERR`` replies in
:func:`peerd.node.errormap.pop3_reply`, never here.
"""

from __future__ import annotations

import asyncio
import logging
import time

from engine.errors import EngineError, NoSuchMailbox
from ownership.errors import OwnershipError
from peerd.node.errormap import pop3_account_moved, pop3_not_owner, pop3_reply
from peerd.node.maillog import peer_ip
from peerd.node.node import Node
from peerd.node.tls import starttls_context
from peerd.protocols.pop3 import (
    CODE_AUTH,
    CODE_SYS_TEMP,
    TEXT_NO_SUCH_MESSAGE,
    TEXT_NOT_ALLOWED,
    Auth,
    Capa,
    Command,
    CommandError,
    CommandReader,
    ConnectionClosed,
    Continuation,
    Dele,
    Entry,
    Err,
    Event,
    List,
    Maildrop,
    NeedData,
    Noop,
    Ok,
    Pass,
    Quit,
    Retr,
    Rset,
    SaslCancel,
    SaslResponse,
    Stat,
    State,
    Stls,
    Top,
    Uidl,
    User,
    allowed,
    capa_reply,
    message_reply,
    plain_credentials,
    top_text,
)
from peerd.services import stall
from peerd.services.gate import ConnectionGate, Refused
from peerd.services.mailstore import AccountStore
from peerd.services.starttls import TlsFailed, injected, same_host, upgrade

# RFC 2595 section 4's advice, in Dovecot's words admins already grep for.
TEXT_PRIVACY = "Plaintext authentication disallowed on non-secure (SSL/TLS) connections"

__all__ = ["Pop3Server", "Pop3Session", "start_pop3"]

log = logging.getLogger("peerd.services.pop3")

# How much one read takes off the socket: the core caps lines, this only
# bounds one read.
_READ_SIZE = 65536
# A SASL response has its own, shorter, wait: the client is in mid-exchange.
_SASL_TIMEOUT = 60.0


class _Closed(Exception):
    """The session is over (client gone, timed out, or cut off)."""


class Pop3Session:
    def __init__(
        self, node: Node, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.node = node
        self.reader = reader
        self.writer = writer
        config = node.config.pop3
        self.core = CommandReader(max_line=max(config.max_line, 8))
        self.state = State.AUTHORIZATION
        self.user = ""  # the name from USER, for PASS (RFC 1939 section 7)
        self.account = ""
        self.mail: AccountStore | None = None
        self.mailbox_id = 0
        self.maildrop = Maildrop("-", ())
        self.failures = 0
        self.tls = False
        self.done = False  # QUIT answered: the connection closes
        self.busy = False  # a command is being answered
        self.moved = False  # the account left this node: cut off after the reply
        self.tls_context = starttls_context(node.config)
        self.local = same_host(writer)
        self.login_by = time.monotonic() + config.login_timeout.total_seconds()

    def may_login(self) -> bool:
        """A password may be sent on this connection (``allow_plaintext_auth``)."""
        config = self.node.config
        return self.tls or self.local or config.plaintext_auth(config.pop3.allow_plaintext_auth)

    # -- I/O ------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await stall.drain(self.writer, self.write_timeout(), "pop3")

    def write_timeout(self) -> float:
        """How long the client may take none of what we send: the time left
        to log in, then the idle timeout (:mod:`peerd.services.stall`)."""
        if self.state is State.AUTHORIZATION:
            return self.login_by - time.monotonic()
        return self.node.config.pop3.idle_timeout.total_seconds()

    async def next_event(self, timeout: float) -> Event:
        """The core's next event, reading from the socket as long as it needs data."""
        while isinstance(event := self.core.next_event(), NeedData):
            before_login = self.state is State.AUTHORIZATION
            if before_login:
                timeout = min(timeout, max(self.login_by - time.monotonic(), 0.0))
            try:
                data = await asyncio.wait_for(self.reader.read(_READ_SIZE), timeout)
            except TimeoutError:
                # RFC 1939 section 3: an inactivity autologout timer of at
                # least 10 minutes; the session ends without UPDATE. Before
                # login, [pop3] login_timeout in all.
                why = "no login in time" if before_login else "autologout: idle for too long"
                await self.send(Err(why).encode())
                raise _Closed from None
            self.core.receive_data(data)
        return event

    async def run(self) -> None:
        idle = self.node.config.pop3.idle_timeout.total_seconds()
        await self.send(Ok(f"peerd POP3 server ready ({self.node.name})").encode())
        while not self.done:
            event = await self.next_event(idle)
            if isinstance(event, ConnectionClosed):
                return  # no QUIT: no UPDATE state, nothing removed (RFC 1939 section 6)
            if isinstance(event, CommandError):
                await self.send(Err(event.text).encode())
                continue
            if isinstance(event, SaslResponse | SaslCancel):
                # Only read as such after "+ "; anything else is a reader bug.
                await self.send(Err("no authentication exchange in progress").encode())
                continue
            if not allowed(self.state, event):
                await self.send(Err(TEXT_NOT_ALLOWED).encode())
                continue
            self.busy = True
            try:
                await self.dispatch(event)
            except (EngineError, OwnershipError) as exc:
                await self.send(pop3_reply(exc).encode())
            finally:
                self.busy = False
            if self.moved and not self.done:
                await self.cut_off()

    async def cut_off(self) -> None:
        """The account moved away: say so, and end the session (no UPDATE)."""
        try:
            await self.send(pop3_account_moved(self.account).encode())
        except ConnectionError:
            pass
        stall.close(self.writer, self.write_timeout())
        raise _Closed

    async def dispatch(self, command: Command) -> None:
        match command:
            case Capa():
                stls = self.tls_context is not None and not self.tls
                await self.send(capa_reply(self.state, stls=stls, login=self.may_login()))
            case Stls():
                await self.stls()
            case User() | Pass() | Auth() if not self.may_login():
                await self.send(Err(TEXT_PRIVACY, CODE_AUTH).encode())
            case User(name):
                self.user = name
                await self.send(Ok("send PASS").encode())
            case Pass(password):
                if not self.user:
                    await self.send(Err("USER first").encode())  # RFC 1939 section 7
                else:
                    await self.login(self.user, password)
            case Auth(mechanism, initial):
                await self.auth(mechanism, initial)
            case Quit():
                await self.quit()
            case Stat():
                await self.send(self.maildrop.stat())
            case List(msg):
                await self.send(self.maildrop.scan_listing(msg))
            case Uidl(msg):
                await self.send(self.maildrop.unique_id_listing(msg))
            case Retr(msg):
                entry = await self.entry(msg)
                if entry is not None:
                    await self.send(message_reply(await self.read_message(entry)))
            case Top(msg, lines):
                entry = await self.entry(msg)
                if entry is not None:
                    text = top_text(await self.read_message(entry), lines)
                    await self.send(message_reply(text, Ok("top of message follows")))
            case Dele(msg):
                await self.send(self.maildrop.dele(msg))
            case Rset():
                await self.send(self.maildrop.rset())
            case Noop():
                await self.send(Ok().encode())

    # -- AUTHORIZATION --------------------------------------------------------

    async def stls(self) -> None:
        """RFC 2595 section 4: STLS, then the handshake; the state table keeps it pre-login."""
        if self.tls_context is None or self.tls:
            await self.send(Err("STLS not available").encode())
            return
        if injected(self.reader, self.core.buffered):
            # Bytes sent after STLS but before the handshake would be read as
            # if they came over TLS (the STARTTLS command-injection flaw).
            await self.send(Err("STLS must be the last command before the handshake").encode())
            return
        await self.send(Ok("begin TLS negotiation").encode())
        try:
            await upgrade(
                self.reader,
                self.writer,
                self.tls_context,
                core_buffered=self.core.buffered,
                service="pop3",
            )
        except TlsFailed as exc:
            raise _Closed from exc
        self.tls = True
        self.user = ""  # RFC 2595 section 4: forget what came before TLS

    async def auth(self, mechanism: str, initial: bytes | None) -> None:
        if mechanism != "PLAIN":
            await self.send(Err(f"unsupported mechanism {mechanism}; use PLAIN").encode())
            return
        response = initial
        if response is None:
            await self.send(Continuation().encode())
            self.core.expect_sasl_response()
            event = await self.next_event(_SASL_TIMEOUT)
            if isinstance(event, ConnectionClosed):
                raise _Closed
            if isinstance(event, SaslCancel):
                await self.send(Err("authentication cancelled").encode())  # RFC 5034 section 4
                return
            if isinstance(event, CommandError):
                await self.send(Err(event.text).encode())
                return
            if not isinstance(event, SaslResponse):  # the reader only gives SASL events now
                raise AssertionError(f"unexpected {event!r} after a continuation")
            response = event.data
        try:
            user, password = plain_credentials(response)
        except ValueError as exc:
            await self.send(Err(str(exc)).encode())
            return
        await self.login(user, password)

    async def login(self, user: str, password: str) -> None:
        config = self.node.config.pop3
        result = await self.node.authenticate(user, password, "pop3", peer_ip(self.writer))
        if not result.ok:
            self.failures += 1
            await asyncio.sleep(config.login_failure_delay.total_seconds())
            await self.send(Err("authentication failed", CODE_AUTH).encode())
            if self.failures >= config.max_login_failures:
                raise _Closed
            return
        if result.owner is not None:
            await self.send(pop3_not_owner(result.account, result.owner).encode())
            return
        # Set before the maildrop loads, so that a move meanwhile ends the session.
        self.account = result.account
        self.mail = AccountStore(self.node, result.account)
        inbox = await self.mail.snapshot("INBOX")
        self.mailbox_id = inbox.mailbox_id
        self.maildrop = Maildrop(
            inbox.uniqueid, [Entry(r.uid, r.size, r.guid) for r in inbox.records]
        )
        self.state = State.TRANSACTION
        await self.send(self.maildrop.greeting())

    # -- TRANSACTION and UPDATE -----------------------------------------------

    async def entry(self, msg: int) -> Entry | None:
        entry = self.maildrop.get(msg)
        if entry is None:
            await self.send(Err(TEXT_NO_SUCH_MESSAGE).encode())
        return entry

    async def read_message(self, entry: Entry) -> bytes:
        assert self.mail is not None  # TRANSACTION state: logged in
        return await self.mail.message(entry.key)

    async def quit(self) -> None:
        """QUIT: in TRANSACTION the UPDATE state removes the marked messages (RFC 1939 6);
        in AUTHORIZATION the session just ends (RFC 1939 section 4)."""
        self.done = True
        if self.state is State.TRANSACTION:
            self.state = State.UPDATE
            doomed = [entry.uid for entry in self.maildrop.marked()]
            if doomed:
                try:
                    await self.expunge(doomed)
                except (EngineError, OwnershipError) as exc:
                    # RFC 1939 section 6: -ERR when some marked messages were not removed.
                    await self.send(pop3_reply(exc, "messages not removed: ").encode())
                    return
        await self.send(Ok("bye").encode())

    async def expunge(self, uids: list[int]) -> None:
        assert self.mail is not None  # UPDATE state: logged in
        try:
            await self.mail.expunge(self.mailbox_id, uids)
        except NoSuchMailbox:
            pass  # INBOX is gone, and its messages with it


class Pop3Server:
    """The open sessions, so that a move of their account can end them."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.sessions: set[Pop3Session] = set()
        config = node.config.pop3
        self.gate = ConnectionGate("pop3", config.max_connections, config.max_connections_per_ip)
        node.on_ownership_change.append(self.close_accounts)

    async def close_accounts(self, accounts: list[str]) -> None:
        wanted = set(accounts)
        for session in list(self.sessions):
            # Logged in, or logging in (the account is set before the maildrop loads).
            if session.account not in wanted or session.moved or session.done:
                continue
            session.moved = True
            if session.busy:
                continue  # it ends itself once this command's reply is out
            # Waiting for the next command: tell it now. Written, not drained:
            # a client that does not read must not hold up the switchover.
            try:
                session.writer.write(pop3_account_moved(session.account).encode())
                stall.close(session.writer, session.write_timeout())
            except Exception:
                log.exception("closing the POP3 session of %s failed", session.account)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            counted = self.gate.admit(writer)
        except Refused as exc:
            writer.write(Err(str(exc), CODE_SYS_TEMP).encode())
            writer.close()
            return
        session = Pop3Session(self.node, reader, writer)
        self.sessions.add(session)
        try:
            await session.run()
        except (_Closed, ConnectionError):
            pass
        except asyncio.CancelledError:
            # The daemon is stopping. Python 3.11's stream callback would log a
            # cancelled handler's CancelledError as an error; the session ends.
            pass
        except Exception:
            log.exception("POP3 session failed")
        finally:
            self.gate.release(counted)
            self.sessions.discard(session)
            stall.close(writer, session.write_timeout())


async def start_pop3(node: Node, host: str, port: int) -> asyncio.Server:
    return await asyncio.start_server(Pop3Server(node).handle, host, port)
