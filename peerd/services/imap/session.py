"""One IMAP connection: the loop that moves bytes between the socket and the core.

How this works: a :class:`Session` feeds the bytes it reads to a
:class:`~peerd.protocols.imap.parser.CommandReader` and gets typed events
back: a command, a continuation request for a synchronizing literal, or a
protocol error that already knows its reply. Each command is counted
against the command rate (:mod:`~peerd.protocols.imap.ratelimit`), checked
against the state table (:data:`~peerd.protocols.imap.states.ALLOWED`), and
run by the handler the server's table names for its class
(:mod:`peerd.services.imap.handlers`); this loop knows no command. A
handler returns a :class:`Reply` (the tagged answer) or refuses with
:class:`~peerd.protocols.imap.responses.CommandError`; store and ownership
errors become ``NO``/``BAD`` in :func:`peerd.node.errormap.imap_code`.

The selected mailbox's rules (what may be told when) are the core's
(:class:`~peerd.protocols.imap.selected.Selected`); the session only reads
the store when the core says the snapshot is stale, and writes what the core
returns (:meth:`Session.report`). The store's change listener reaches the
session through :meth:`Session.changed`, which also wakes IDLE.

What stays here is what the core must not do: the socket, the idle timeout
(RFC 3501 5.4: at least 30 minutes), time for the rate limit, room in the
node's input budget for literals, and ending the session.

Literals and the input budget (:mod:`peerd.node.inputbudget`): the core
says when a literal is announced, before it takes an octet of it. For a
synchronizing ``{n}`` the session finds room before it writes ``+`` (the
client waits for it: that is the backpressure); for a non-synchronizing
``{n+}`` it reads nothing more from the socket until it has room (the
client's octets wait in the socket buffers: TCP backpressure). No room
within ``[limits] input_wait``: the command is refused, ``NO
[UNAVAILABLE]`` (or ``[LIMIT]`` when the account's own connections hold
its share), the client sends the octets of a synchronizing literal not at
all and those of a non-synchronizing one are dropped as they come. What a
command held is given back when it is answered, and whatever the session
held when it ends, however it ends (the core lets go of its buffers too).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from engine.errors import EngineError
from ownership.errors import OwnershipError
from peerd.node.errormap import client_text, imap_code
from peerd.node.inputbudget import NoRoom
from peerd.node.node import Node
from peerd.protocols.imap import commands as c
from peerd.protocols.imap.capabilities import capabilities
from peerd.protocols.imap.fetchreply import RenderedGroups, StructureCache
from peerd.protocols.imap.parser import (
    CommandReader,
    ContinuationNeeded,
    ProtocolError,
    RoomNeeded,
)
from peerd.protocols.imap.ratelimit import CommandRate, Verdict
from peerd.protocols.imap.records import Record
from peerd.protocols.imap.responses import (
    CODE_CAPABILITY,
    CODE_LIMIT,
    CODE_UNAVAILABLE,
    CommandError,
    Raw,
    response_code,
    tagged,
    untagged_status,
)
from peerd.protocols.imap.selected import (
    Extensions,
    Selected,
    highestmodseq_response,
    may_expunge,
)
from peerd.protocols.imap.sort import Criterion, RecordCache, SortItem
from peerd.protocols.imap.states import ALLOWED, State
from peerd.services import stall
from peerd.services.imap.fanout import Fanout
from peerd.services.mailstore import AccountStore
from peerd.services.starttls import same_host

__all__ = ["Closed", "Handler", "Host", "Reply", "Selection", "Session"]

_READ_SIZE: Final = 65536


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's tagged answer: ``tag status [code] text``."""

    text: str
    code: bytes | None = None
    status: Literal["OK", "NO", "BAD"] = "OK"


@dataclass(frozen=True, slots=True)
class Selection:
    """The selected mailbox: the store's names for it, the core's state, and
    the mail of the account that owns it (another account's, for a shared
    mailbox: its writes are that account's)."""

    mailbox_id: int
    uniqueid: str
    box: Selected
    owner: str
    mail: AccountStore


class Closed(Exception):
    """The session is over (client gone, timed out, or cut off)."""


Handler = Callable[["Session", Any], Awaitable[Reply | None]]


class Host(Protocol):
    """What sessions share, kept by the server (:class:`peerd.services.imap.server.ImapServer`)."""

    node: Node
    tls: ssl.SSLContext | None
    structures: StructureCache
    rendered: RenderedGroups
    sort_records: RecordCache
    sessions: set[Session]
    fanout: Fanout

    def count(self, account: str) -> int:
        """The logged-in sessions of ``account``."""
        ...

    def enter(self, session: Session) -> None:
        """``session`` logged in."""
        ...

    def leave(self, session: Session) -> None:
        """``session`` ended."""
        ...

    def watch(self, session: Session, owner: str | None) -> None:
        """``session`` has a mailbox of ``owner``, another account, selected (``None``: not)."""
        ...


class Session:
    def __init__(
        self,
        server: Host,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handlers: Mapping[type[c.Command], Handler],
    ) -> None:
        self.server = server
        self.node = server.node
        self.reader = reader
        self.writer = writer
        self.handlers = handlers
        config = self.node.config.imap
        # Before login a command is small: a stranger cannot make us hold more.
        prelogin = min(config.login_input_limit, config.max_line)
        self.core = CommandReader(
            max_line=prelogin, max_literal=config.login_input_limit, ask_room=True
        )
        # Room for literals in the node's input budget (an account's, after login).
        self.hold = self.node.input_budget.hold()
        self.login_by = time.monotonic() + config.login_timeout.total_seconds()
        self.rate = CommandRate(config.commands_per_second)
        self.state = State.NOT_AUTHENTICATED
        self.account = ""
        self._mail: AccountStore | None = None
        self._others: dict[str, AccountStore] = {}
        self.selection: Selection | None = None
        # The last SORT/THREAD ALL's items and the records list they came from.
        self.sort_items: tuple[list[Record], bool, list[SortItem]] | None = None
        # The orders SORT ALL gave for one view (the records list and UID or
        # not: sort_orders_view), by criteria: the same view sorted the same
        # way (a webmail's every page) is not sorted again.
        self.sort_orders: dict[tuple[Criterion, ...], tuple[int, ...]] = {}
        self.sort_orders_view: tuple[list[Record], bool] | None = None
        self.ext = Extensions()
        self.failures = 0
        # Set while IDLE waits: resolved by a change or a move (see wake()).
        self._waiter: asyncio.Future[None] | None = None
        # IDLE waits with nothing pending: the server may write to it (idle.py).
        self.parked = False
        self.closing: str | None = None
        self.tls = False
        self.local = same_host(writer)

    # -- I/O ----------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await stall.drain(self.writer, self.write_timeout(), "imap")

    async def drain(self) -> None:
        """Wait for the client to take what was written (see :meth:`write_timeout`)."""
        await stall.drain(self.writer, self.write_timeout(), "imap")

    def write_timeout(self) -> float:
        """How long the client may take none of what we send: the time left
        to log in, then the idle timeout (a client that never reads must not
        hold its connection for ever, :mod:`peerd.services.stall`)."""
        if self.state is State.NOT_AUTHENTICATED:
            return self.login_by - time.monotonic()
        return self.node.config.imap.idle_timeout.total_seconds()

    async def read_more(self, timeout: float) -> None:
        before_login = self.state is State.NOT_AUTHENTICATED
        if before_login:
            timeout = min(timeout, max(self.login_by - time.monotonic(), 0.0))
        try:
            data = await asyncio.wait_for(self.reader.read(_READ_SIZE), timeout)
        except TimeoutError as exc:
            why = "no login in time" if before_login else "autologout; idle for too long"
            await self.send(untagged_status("BYE", why, CODE_UNAVAILABLE))
            raise Closed from exc
        if not data:
            raise Closed
        self.core.feed(data)

    async def read_some(self) -> bytes:
        """One read off the socket, no timeout (IDLE waits with its own)."""
        return await self.reader.read(_READ_SIZE)

    async def next_line(self, timeout: float) -> bytes:
        """A raw line (AUTHENTICATE); a fatal over-long line ends the session."""
        while (line := self.core.next_line()) is None:
            await self.read_more(timeout)
        if isinstance(line, ProtocolError):
            await self.send(line.reply())
            raise Closed
        return line.data

    async def run(self) -> None:
        idle = self.node.config.imap.idle_timeout.total_seconds()
        await self.send(
            untagged_status(
                "OK",
                f"peerd IMAP4rev1 {self.node.name} ready",
                response_code(CODE_CAPABILITY, Raw(self.capabilities().encode())),
            )
        )
        try:
            while self.state is not State.LOGOUT:
                event = self.core.next_event()
                if event is None:
                    await self.read_more(idle)
                elif isinstance(event, ContinuationNeeded):
                    if await self.room(event.size):
                        await self.send(event.reply())  # RFC 3501 7.5
                elif isinstance(event, RoomNeeded):
                    # Nothing is read until there is room: TCP backpressure.
                    await self.room(event.size)
                elif isinstance(event, ProtocolError):
                    self.hold.release()
                    await self.send(event.reply())
                    if event.fatal:
                        return
                else:
                    if await self.admit(event):
                        await self.dispatch(event)
                    self.hold.release()
                    if self.closing:
                        await self.send(untagged_status("BYE", self.closing, CODE_UNAVAILABLE))
                        return
        except (Closed, ConnectionError):
            pass
        finally:
            self.hold.release()
            # A cut connection's session may wait for the garbage collector
            # (its reader's exception holds the frames): its buffers go now.
            self.core.close()
            self.server.leave(self)
            stall.close(self.writer, self.write_timeout())

    async def room(self, size: int) -> bool:
        """Room in the input budget for a literal of ``size`` octets the core
        announced; False (the command refused, the client told or about to
        be) when none came in time."""
        try:
            # Shielded: the wait ending must not cancel the stream's own close waiter.
            closing = self.writer.wait_closed
            if not await self.hold.take_before(size, lambda: asyncio.shield(closing())):
                raise Closed  # cut off while it waited
        except NoRoom as exc:
            self.hold.release()
            _, code = imap_code(exc)
            refusal = self.core.refuse(exc.message, code.encode() if code else None)
            if refusal is not None:
                await self.send(refusal.reply())
            return False
        return True

    async def admit(self, cmd: c.Command) -> bool:
        """The command rate (``[imap] commands_per_second``): run, refuse, or close."""
        now = time.monotonic()
        verdict = self.rate.check(now, exempt=isinstance(cmd, c.Logout))
        if verdict is Verdict.RUN:
            return True
        limit = self.rate.per_second
        if verdict is Verdict.CLOSE:
            await self.send(
                untagged_status("BYE", f"too many commands (over {limit} per second)", CODE_LIMIT)
            )
            raise Closed
        wait = self.rate.retry_after(now)
        await self.send(
            tagged(
                cmd.tag,
                "NO",
                f"too many commands: at most {limit} per second; retry in {wait:.1f}s",
                CODE_LIMIT,
            )
        )
        return False

    async def dispatch(self, cmd: c.Command) -> None:
        if type(cmd) not in ALLOWED[self.state]:
            # RFC 3501 6: a command in the wrong state is a protocol error.
            await self.send(
                tagged(cmd.tag, "BAD", f"{cmd.name} is not allowed now ({self.state.value})")
            )
            return
        try:
            reply = await self.handlers[type(cmd)](self, cmd)
        except CommandError as exc:
            await self.send(tagged(cmd.tag, exc.status, exc.text, exc.code))
            return
        except (EngineError, OwnershipError) as exc:
            status, code = imap_code(exc)
            result: Literal["NO", "BAD"] = "BAD" if status == "BAD" else "NO"
            text = client_text(exc, "imap")
            await self.send(tagged(cmd.tag, result, text, code.encode() if code else None))
            return
        if reply is not None:
            await self.send(tagged(cmd.tag, reply.status, reply.text, reply.code))

    def capabilities(self) -> str:
        before_login = self.state is State.NOT_AUTHENTICATED
        starttls = self.server.tls is not None and not self.tls and before_login
        return capabilities(starttls=starttls, logindisabled=before_login and not self.may_login())

    def may_login(self) -> bool:
        """A password may be sent on this connection (``allow_plaintext_auth``)."""
        config = self.node.config
        return self.tls or self.local or config.plaintext_auth(config.imap.allow_plaintext_auth)

    # -- states -------------------------------------------------------------------

    def logged_in(self, account: str) -> None:
        """LOGIN/AUTHENTICATE succeeded for ``account``."""
        self.account = account
        self._mail = AccountStore(self.node, account, on_write=self._wrote)
        self.hold.rekey(account)
        config = self.node.config.imap
        self.core.max_line = config.max_line
        self.core.max_literal = config.max_literal
        self.state = State.AUTHENTICATED
        self.server.enter(self)

    @property
    def mail(self) -> AccountStore:
        """The account's mail (the state table runs mail commands only after login)."""
        assert self._mail is not None
        return self._mail

    def mail_of(self, owner: str) -> AccountStore:
        """The mail of ``owner``: the session's own, or another account's whose
        mailbox is shared with this user (its writes go through that account's
        fence, :meth:`~peerd.node.node.Node.write_owned`)."""
        if owner == self.account:
            return self.mail
        store = self._others.get(owner)
        if store is None:
            store = self._others[owner] = AccountStore(self.node, owner, on_write=self._wrote)
        return store

    def watches(self) -> tuple[str, ...]:
        """The accounts whose changes this session must hear of: its own, and
        the owner of the selected mailbox."""
        selection = self.selection
        if selection is None or selection.owner == self.account:
            return (self.account,)
        return (self.account, selection.owner)

    def select(self, selection: Selection) -> None:
        self.selection = selection
        self.state = State.SELECTED
        self.server.watch(self, selection.owner if selection.owner != self.account else None)

    def unselect(self) -> None:
        self.selection = None
        self.state = State.AUTHENTICATED
        self.server.watch(self, None)

    def selected(self) -> Selection:
        """The selected mailbox (the state table allows these commands only then)."""
        assert self.selection is not None
        return self.selection

    async def admit_condstore(self, cmd: c.Fetch | c.Store | c.Search) -> None:
        """Note a CONDSTORE-enabling command; the first one tells the selected
        mailbox's HIGHESTMODSEQ (RFC 7162 3.1)."""
        selection = self.selection
        if self.ext.admit(cmd) and selection is not None:
            # The store's value: our own writes may not be in the snapshot yet.
            version = await selection.mail.version(selection.mailbox_id)
            top = selection.box.highestmodseq if version is None else version.highestmodseq
            await self.send(highestmodseq_response(top))

    # -- changes ------------------------------------------------------------------

    def _wrote(self) -> None:
        # Our own change: the store's listener tells us too, but possibly
        # after this command's reply; look at the next report.
        if self.selection is not None:
            self.selection.box.changed()

    def changed(self, uniqueids: set[str]) -> None:
        """The store committed changes to these mailboxes (any session, LMTP,
        replication from the partner)."""
        if self.selection is not None and self.selection.uniqueid in uniqueids:
            self.selection.box.changed()
            self.wake()

    def arm(self) -> asyncio.Future[None]:
        """A future the next :meth:`wake` resolves (IDLE waits on it): armed
        before IDLE reads the mailbox, so a change during the read is not lost."""
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def disarm(self) -> None:
        """IDLE ended: nothing waits for :meth:`wake` now."""
        self._waiter = None

    def wake(self) -> None:
        """Something for an idling session to look at: a change, or the end."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def poll(self) -> None:
        """Look at the mailbox itself: a change committed by another process or
        session may reach us through the listener only after this command."""
        selection = self.selection
        if selection is None or selection.box.stale:
            return
        version = await selection.mail.version(selection.mailbox_id)
        if version is None:
            selection.box.changed()
        else:
            selection.box.outdated_by(version.highestmodseq, version.uidnext)

    async def report(self, cmd: c.Command, *, shared: bool = False) -> None:
        """Tell the client what changed in the selected mailbox, as far as the
        core allows after ``cmd`` (RFC 3501 7.4.1). ``shared``: a wake-up that
        may join the read and the claim of other sessions of the mailbox
        (:class:`~peerd.services.imap.fanout.Fanout`; never after a command of
        this session's own, whose writes a shared read may predate)."""
        selection = self.selection
        if selection is None or not selection.box.take_stale():
            return
        mailbox_id = selection.mailbox_id
        mail = selection.mail
        if shared:
            fanout = self.server.fanout
            fresh = await fanout.snapshot(selection.uniqueid, lambda: mail.snapshot_of(mailbox_id))
        else:
            fresh = await mail.snapshot_of(mailbox_id)
        box = selection.box
        if box.needs_claim(fresh, fresh.recentuid):
            # New mail no session was told of yet: \Recent here (RFC 3501 2.3.2).
            if shared:
                claimed = await fanout.claim(
                    selection.uniqueid,
                    fresh.uidnext - 1,
                    lambda: mail.claim_recent(mailbox_id),
                )
            else:
                claimed = await mail.claim_recent(mailbox_id)
            box.claimed(*claimed)
        out = box.update(fresh, expunges=may_expunge(cmd))
        if out:
            await self.send(out)
