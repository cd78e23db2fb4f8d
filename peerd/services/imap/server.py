"""The IMAP service: asyncio sessions over the sans-I/O core and the store.

How this works: one :class:`Session` per connection feeds the bytes it reads
to a :class:`~peerd.protocols.imap.parser.CommandReader` and gets typed events back: a
:mod:`~peerd.protocols.imap.commands` dataclass, a continuation request for a
synchronizing literal, or a protocol error that already knows its reply.
Each command is checked against the state table
(:data:`~peerd.protocols.imap.states.ALLOWED`), counted against the command rate
(:mod:`~peerd.protocols.imap.ratelimit`), and run by the handler :data:`HANDLERS` names
for its class. Replies are built with :mod:`~peerd.protocols.imap.responses`; a
handler refuses with :class:`~peerd.protocols.imap.responses.CommandError`, and store
and ownership errors become ``NO``/``BAD`` in :func:`peerd.node.errormap.imap_code`.

Handlers reach the store only through ``store.read``/``store.write``, with the
node's ownership fence inside every write. A selected mailbox is a snapshot
(UIDs in sequence order, flags, modseqs); the store's change listener marks
sessions whose mailbox changed (another session, LMTP, replication from the
partner), and the session reports the difference as untagged EXISTS /
EXPUNGE / FETCH at the moments RFC 3501 7.4.1 allows (never EXPUNGE during
FETCH, STORE or SEARCH), and at once while IDLE (RFC 2177); after ENABLE
QRESYNC, expunges are told as ``VANISHED`` in UIDs, and SELECT's QRESYNC
parameter and UID FETCH's VANISHED modifier answer from the expunged
records, which the store keeps with their modseq (RFC 7162 3.2). Logins for an
account another node owns get ``NO [REFERRAL imap://…]`` (RFC 2221); when
ownership moves, the account's sessions end with ``* BYE [UNAVAILABLE]``.

The server owns what the core must not: sockets, STARTTLS, the idle timeout
(RFC 3501 5.4: at least 30 minutes), IDLE's wait, login delays, and time for
the rate limit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Final, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from engine import accounts as engine_accounts
from engine import mailbox as engine_mailbox
from engine import messages as engine_messages
from engine.errors import AlreadyExists, Corrupt, EngineError, InvalidArgument, NoSuchMailbox
from engine.models import Mailbox, Message
from engine.synclog import Change
from ownership.errors import OwnershipError
from peerd.node.errormap import imap_code
from peerd.node.maillog import peer_ip
from peerd.node.node import Node
from peerd.node.tls import starttls_context
from peerd.protocols.imap import commands as c
from peerd.protocols.imap import structure
from peerd.protocols.imap.fetchatt import (
    BodySection,
    FetchAtt,
    Item,
    SectionKind,
    response_name,
    sets_seen,
)
from peerd.protocols.imap.parser import (
    CommandReader,
    ContinuationNeeded,
    Line,
    ProtocolError,
    decode_sasl_response,
    plain_credentials,
)
from peerd.protocols.imap.ratelimit import CommandRate, Verdict
from peerd.protocols.imap.responses import (
    CODE_ALREADYEXISTS,
    CODE_APPENDUID,
    CODE_AUTHENTICATIONFAILED,
    CODE_CANNOT,
    CODE_CAPABILITY,
    CODE_CLOSED,
    CODE_COPYUID,
    CODE_EXPUNGEISSUED,
    CODE_HIGHESTMODSEQ,
    CODE_LIMIT,
    CODE_MODIFIED,
    CODE_PERMANENTFLAGS,
    CODE_READ_ONLY,
    CODE_READ_WRITE,
    CODE_REFERRAL,
    CODE_SERVERBUG,
    CODE_TRYCREATE,
    CODE_UIDNEXT,
    CODE_UIDVALIDITY,
    CODE_UNAVAILABLE,
    CommandError,
    Raw,
    continuation,
    fetch_response,
    internaldate,
    literal,
    mailbox,
    response_code,
    tagged,
    untagged_status,
)
from peerd.protocols.imap.search import compile_search, in_ranges, resolved
from peerd.protocols.imap.sequence import SequenceSet
from peerd.protocols.imap.states import ALLOWED, State

__all__ = ["HANDLERS", "ImapServer", "Reply", "Session", "start_imap"]

log = logging.getLogger("peerd.protocols.imap")

CAPABILITIES: Final = (
    "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS MOVE UNSELECT CHILDREN "
    "LIST-EXTENDED LIST-STATUS SPECIAL-USE CONDSTORE QRESYNC ESEARCH LOGIN-REFERRALS AUTH=PLAIN"
)
SYSTEM_FLAGS: Final = "\\Answered \\Flagged \\Deleted \\Seen \\Draft"
# RFC 6154 2: the attribute a mailbox of this name gets in LIST.
SPECIAL_USE: Final = {
    "sent": "\\Sent",
    "drafts": "\\Drafts",
    "trash": "\\Trash",
    "junk": "\\Junk",
    "archive": "\\Archive",
}
# RFC 3501 5.4: the autologout timer is at least 30 minutes; [imap]
# idle_timeout sets it. A SASL exchange gets this long per step.
_SASL_TIMEOUT: Final = 60.0
_READ_SIZE: Final = 65536
# FETCH renders this many messages per thread hop and per socket write.
_FETCH_GROUP: Final = 256

_CACHE: OrderedDict[str, tuple[bytes, bytes, bytes]] = OrderedDict()
_CACHE_MAX = 50_000


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's tagged answer: ``tag status [code] text``."""

    text: str
    code: bytes | None = None
    status: Literal["OK", "NO", "BAD"] = "OK"


@dataclass(frozen=True, slots=True)
class Record:
    """One message of a session's snapshot. Frozen: snapshots share them."""

    uid: int
    guid: str
    flags: str
    modseq: int
    size: int
    internaldate: dt.datetime


@dataclass(slots=True)
class Selected:
    mailbox_id: int
    uniqueid: str
    name: str
    readonly: bool
    uidvalidity: int
    records: list[Record] = field(default_factory=list)
    highestmodseq: int = 0
    uidnext: int = 1
    dirty: bool = False

    def seq_of(self) -> dict[int, int]:
        return {r.uid: i + 1 for i, r in enumerate(self.records)}


class Closed(Exception):
    pass


def _flag_list(flags: str) -> bytes:
    return b"(" + flags.encode() + b")"


def esearch_response(tag: str, uid: bool, options: tuple[str, ...], found: list[int]) -> bytes:
    """RFC 4731 3.1: ``* ESEARCH (TAG "t") [UID] MIN .. MAX .. ALL .. COUNT ..``.

    ``RETURN ()`` means ALL. With no match MIN, MAX and ALL are left out and
    COUNT, if asked for, is 0. (A tag holds no quote nor backslash, RFC 3501 9.)
    """
    wanted = set(options) or {"ALL"}
    parts = [b'* ESEARCH (TAG "' + tag.encode() + b'")']
    if uid:
        parts.append(b"UID")
    if found:
        if "MIN" in wanted:
            parts.append(b"MIN %d" % min(found))
        if "MAX" in wanted:
            parts.append(b"MAX %d" % max(found))
        if "ALL" in wanted:
            parts.append(b"ALL " + str(SequenceSet.from_numbers(found)).encode())
    if "COUNT" in wanted:
        parts.append(b"COUNT %d" % len(found))
    return b" ".join(parts) + b"\r\n"


class Session:
    def __init__(
        self, server: ImapServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.node = server.node
        self.reader = reader
        self.writer = writer
        config = self.node.config.imap
        self.core = CommandReader(max_line=config.max_line, max_literal=config.max_literal)
        self.rate = CommandRate(config.commands_per_second)
        self.state = State.NOT_AUTHENTICATED
        self.account = ""
        self.selected: Selected | None = None
        self.condstore = False
        # RFC 7162 3.2.3: after ENABLE QRESYNC, VANISHED replaces EXPUNGE.
        self.qresync = False
        self.failures = 0
        self.idle_wake = asyncio.Event()
        self.closing: str | None = None
        self.tls = False

    # -- I/O ----------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_more(self, timeout: float) -> None:
        try:
            data = await asyncio.wait_for(self.reader.read(_READ_SIZE), timeout)
        except TimeoutError as exc:
            await self.send(
                untagged_status("BYE", "autologout; idle for too long", CODE_UNAVAILABLE)
            )
            raise Closed from exc
        if not data:
            raise Closed
        self.core.feed(data)

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
                    await self.send(event.reply())  # RFC 3501 7.5
                elif isinstance(event, ProtocolError):
                    await self.send(event.reply())
                    if event.fatal:
                        return
                elif await self.admit(event):
                    await self.dispatch(event)
                    if self.closing:
                        await self.send(untagged_status("BYE", self.closing, CODE_UNAVAILABLE))
                        return
        except (Closed, ConnectionError):
            pass
        finally:
            self.server.sessions.discard(self)
            self.writer.close()

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

    # -- dispatch -----------------------------------------------------------

    async def dispatch(self, cmd: c.Command) -> None:
        if type(cmd) not in ALLOWED[self.state]:
            # RFC 3501 6: a command in the wrong state is a protocol error.
            await self.send(
                tagged(cmd.tag, "BAD", f"{cmd.name} is not allowed now ({self.state.value})")
            )
            return
        try:
            reply = await HANDLERS[type(cmd)](self, cmd)
        except CommandError as exc:
            await self.send(tagged(cmd.tag, exc.status, exc.text, exc.code))
            return
        except (EngineError, OwnershipError) as exc:
            status, code = imap_code(exc)
            result: Literal["NO", "BAD"] = "BAD" if status == "BAD" else "NO"
            await self.send(tagged(cmd.tag, result, exc.message, code.encode() if code else None))
            return
        if reply is not None:
            await self.send(tagged(cmd.tag, reply.status, reply.text, reply.code))

    # -- any state ----------------------------------------------------------

    def capabilities(self) -> str:
        if self.server.tls is not None and not self.tls and self.state is State.NOT_AUTHENTICATED:
            return CAPABILITIES + " STARTTLS"
        return CAPABILITIES

    async def cmd_capability(self, cmd: c.Capability) -> Reply:
        await self.send(b"* CAPABILITY " + self.capabilities().encode() + b"\r\n")
        return Reply("CAPABILITY completed")

    async def poll(self) -> None:
        """Look at the mailbox itself: a change committed by another process or
        session may reach us through the listener only after this command."""
        box = self.selected
        if box is None or box.dirty:
            return
        mailbox_id = box.mailbox_id
        state = await self.node.store.read(
            lambda s: s.execute(
                select(Mailbox.highestmodseq, Mailbox.last_uid).where(Mailbox.id == mailbox_id)
            ).first()
        )
        if state is None or tuple(state) != (box.highestmodseq, box.uidnext - 1):
            box.dirty = True

    async def cmd_noop(self, cmd: c.Noop | c.Check) -> Reply:
        # RFC 3501 6.1.2 / 6.4.1: the moment to report changes, expunges included.
        await self.poll()
        await self.report_changes(expunges=True)
        return Reply(f"{cmd.name} completed")

    async def cmd_logout(self, cmd: c.Logout) -> Reply:
        await self.send(untagged_status("BYE", "peerd logging out"))
        self.state = State.LOGOUT
        return Reply("LOGOUT completed")

    async def cmd_id(self, cmd: c.Id) -> Reply:
        # RFC 2971 3.2: the server's own fields, whatever the client sent.
        await self.send(b'* ID ("name" "peerd" "vendor" "peerd")\r\n')
        return Reply("ID completed")

    async def cmd_starttls(self, cmd: c.StartTLS) -> Reply | None:
        context = self.server.tls
        if context is None or self.tls:
            raise CommandError("STARTTLS is not available (no certificate, or TLS is on already)")
        if self.core.buffered:
            # RFC 3501 6.2.1: nothing may follow STARTTLS before the handshake.
            raise CommandError("STARTTLS must be the last command sent before the handshake")
        await self.send(tagged(cmd.tag, "OK", "Begin TLS negotiation now"))
        await self.writer.start_tls(context)
        self.tls = True
        return None

    # -- not authenticated --------------------------------------------------

    async def login(self, tag: str, user: str, password: str) -> Reply:
        config = self.node.config.imap
        result = await self.node.authenticate(user, password, "imap", peer_ip(self.writer))
        if not result.ok:
            self.failures += 1
            await asyncio.sleep(config.login_failure_delay.total_seconds())
            failed = tagged(tag, "NO", "Authentication failed", CODE_AUTHENTICATIONFAILED)
            if self.failures >= config.max_login_failures:
                await self.send(failed + untagged_status("BYE", "too many failed logins"))
                raise Closed
            return Reply("Authentication failed", CODE_AUTHENTICATIONFAILED, "NO")
        if result.owner is not None:
            where = self.node.config.routing.partner_imap
            host = str(where) if where else result.owner
            # RFC 2221 4.1: the URL names the server that has the account.
            code = CODE_REFERRAL + f" imap://{result.account}@{host}/".encode()
            return Reply(f"{result.account} is served by {result.owner}", code, "NO")
        if self.server.count(result.account) >= config.max_sessions_per_account:
            return Reply("too many sessions for this account", CODE_LIMIT, "NO")
        self.account = result.account
        self.state = State.AUTHENTICATED
        self.server.sessions.add(self)
        code = response_code(CODE_CAPABILITY, Raw(self.capabilities().encode()))
        return Reply(f"LOGIN completed on {self.node.name}", code)

    async def cmd_login(self, cmd: c.Login) -> Reply:
        return await self.login(cmd.tag, cmd.user, cmd.password)

    async def cmd_authenticate(self, cmd: c.Authenticate) -> Reply:
        if cmd.mechanism != "PLAIN":
            # RFC 3501 6.2.2: NO for an unsupported mechanism.
            return Reply(f"unsupported mechanism {cmd.mechanism[:20]}; use PLAIN", None, "NO")
        response = cmd.initial_response
        if response is None:
            await self.send(continuation(b""))  # PLAIN has no challenge: "+ " (RFC 4616)
            response = decode_sasl_response(await self.next_line(_SASL_TIMEOUT))
            if response is None:
                return Reply("AUTHENTICATE cancelled", None, "BAD")  # RFC 3501 6.2.2
        user, password = plain_credentials(response)
        return await self.login(cmd.tag, user, password)

    # -- authenticated ------------------------------------------------------

    async def cmd_enable(self, cmd: c.Enable) -> Reply:
        # RFC 5161 3.1: name what was enabled; capabilities not offered are ignored.
        enabled = [cap for cap in dict.fromkeys(cmd.caps) if cap in ("CONDSTORE", "QRESYNC")]
        if enabled:
            self.condstore = True  # RFC 7162 3.2.3: QRESYNC implies CONDSTORE
        if "QRESYNC" in enabled:
            self.qresync = True
        await self.send(b"* ENABLED" + b"".join(b" " + e.encode() for e in enabled) + b"\r\n")
        return Reply("ENABLE completed")

    async def cmd_namespace(self, cmd: c.Namespace) -> Reply:
        await self.send(b'* NAMESPACE (("" "/")) NIL NIL\r\n')
        return Reply("NAMESPACE completed")

    @staticmethod
    def mailbox_name(decoded: str) -> str:
        """A decoded mailbox name in the store's form (INBOX's case, no empty levels)."""
        return engine_mailbox.normalize_mailbox_name(decoded)

    async def write(self, fn: Callable[[DbSession, Any], Any], **kwargs: Any) -> Any:
        result = await self.node.write_owned(self.account, fn, **kwargs)
        # Our own change: the store's listener tells us too, but possibly
        # after this command's reply; look now.
        if self.selected is not None:
            self.selected.dirty = True
        return result

    async def read(self, fn: Callable[[DbSession, Any], Any]) -> Any:
        account = self.account
        return await self.node.store.read(lambda s: fn(s, engine_accounts.get_account(s, account)))

    async def cmd_create(self, cmd: c.Create) -> Reply:
        name = self.mailbox_name(cmd.mailbox)
        if name == "INBOX":
            raise CommandError("INBOX always exists", code=CODE_ALREADYEXISTS, status="NO")
        if cmd.special_use:
            # RFC 6154 3: CREATE-SPECIAL-USE is not offered; attributes follow names.
            raise CommandError("CREATE with USE is not offered (no CREATE-SPECIAL-USE)")

        def create(s: DbSession, acct: Any) -> None:
            parts = name.split(engine_mailbox.SEPARATOR)
            for i in range(1, len(parts) + 1):  # RFC 3501 6.3.3: create superiors too
                sub = engine_mailbox.SEPARATOR.join(parts[:i])
                if engine_mailbox.find_mailbox(s, acct, sub) is None:
                    engine_mailbox.create_mailbox(s, acct, sub)
                elif sub == name:
                    raise AlreadyExists(f"mailbox {name} already exists")

        await self.write(create)
        return Reply("CREATE completed")

    async def cmd_delete(self, cmd: c.Delete) -> Reply:
        name = self.mailbox_name(cmd.mailbox)
        await self.write(lambda s, acct: engine_mailbox.delete_mailbox(s, acct, name))
        if self.selected is not None and self.selected.name == name:
            self.selected = None
            self.state = State.AUTHENTICATED
        return Reply("DELETE completed")

    async def cmd_rename(self, cmd: c.Rename) -> Reply:
        old, new = self.mailbox_name(cmd.mailbox), self.mailbox_name(cmd.new_name)

        def rename(s: DbSession, acct: Any) -> None:
            if old == "INBOX":
                # RFC 3501 6.3.5: INBOX's messages move to the new mailbox.
                src = engine_mailbox.get_mailbox(s, acct, "INBOX")
                dst = engine_mailbox.create_mailbox(s, acct, new)
                uids = [r.uid for r in engine_messages.live_records(s, src)]
                engine_messages.move_messages(s, acct, src, dst, uids)
            else:
                engine_mailbox.rename_mailbox(s, acct, old, new)

        await self.write(rename)
        return Reply("RENAME completed")

    async def cmd_subscribe(self, cmd: c.Subscribe) -> Reply:
        name = self.mailbox_name(cmd.mailbox)
        await self.write(lambda s, acct: engine_mailbox.subscribe(s, acct, name))
        return Reply("SUBSCRIBE completed")

    async def cmd_unsubscribe(self, cmd: c.Unsubscribe) -> Reply:
        name = self.mailbox_name(cmd.mailbox)
        await self.write(lambda s, acct: engine_mailbox.unsubscribe(s, acct, name))
        return Reply("UNSUBSCRIBE completed")

    async def cmd_list(self, cmd: c.List) -> Reply:
        # RFC 5258 (LIST-EXTENDED): SUBSCRIBED, REMOTE (there are no remote
        # mailboxes) and RECURSIVEMATCH selection, SPECIAL-USE selection
        # (RFC 6154 5.1), several patterns; CHILDREN, SPECIAL-USE and
        # \Subscribed are always returned (RFC 5258 3.2 lets a server return
        # what was not asked for), and RETURN (STATUS ...) (RFC 5819,
        # LIST-STATUS) adds a STATUS after the LIST responses.
        subscribed = "SUBSCRIBED" in cmd.select_options
        special_only = "SPECIAL-USE" in cmd.select_options
        recursive = "RECURSIVEMATCH" in cmd.select_options
        if recursive and not subscribed:
            # CHILDINFO (RFC 5258 3.5) is given for SUBSCRIBED only.
            raise CommandError("RECURSIVEMATCH is offered with SUBSCRIBED only")
        listed = await self._list(
            "LIST",
            cmd.reference,
            cmd.patterns,
            subscribed,
            special_only=special_only,
            recursive=recursive,
        )
        if cmd.status_items:
            for name in listed:
                await self._status(name, cmd.status_items)
        return Reply("LIST completed")

    async def cmd_lsub(self, cmd: c.Lsub) -> Reply:
        await self._list("LSUB", cmd.reference, (cmd.pattern,), True, lsub=True)
        return Reply("LSUB completed")

    @staticmethod
    def _matches(pattern: str, name: str) -> bool:
        # RFC 3501 6.3.8: "*" matches anything, "%" anything but the separator.
        regex = "".join(
            ".*" if ch == "*" else "[^/]*" if ch == "%" else re.escape(ch) for ch in pattern
        )
        inbox = pattern.upper().startswith("INBOX")
        if inbox and name.upper().startswith("INBOX"):
            name = "INBOX" + name[5:]
        return re.fullmatch(regex, name, re.IGNORECASE if inbox else 0) is not None

    async def _list(
        self,
        command: str,
        reference: str,
        patterns: Sequence[str],
        subscribed_only: bool,
        *,
        lsub: bool = False,
        special_only: bool = False,
        recursive: bool = False,
    ) -> list[str]:
        def read(s: DbSession, acct: Any) -> tuple[list[str], list[str]]:
            names = [m.name for m in engine_mailbox.list_mailboxes(s, acct)]
            return names, engine_mailbox.subscriptions(s, acct)

        names, subs = await self.read(read)
        if any(p == "" for p in patterns):
            # RFC 3501 6.3.8: an empty pattern asks for the hierarchy delimiter.
            await self.send(f'* {command} (\\Noselect) "/" ""\r\n'.encode())
            return []
        existing = set(names)
        subscribed = set(subs)
        candidates = subs if subscribed_only else names
        # RFC 5258 3.5: with RECURSIVEMATCH a parent that is not subscribed
        # itself is listed too when a mailbox below it is, with CHILDINFO;
        # the parent must match the pattern, the child need not.
        parents_of_subscribed = {
            name.rsplit("/", i)[0] for name in subs for i in range(1, name.count("/") + 1)
        }
        if recursive:
            candidates = sorted(subscribed | parents_of_subscribed)
        listed: list[str] = []
        for name in candidates:
            if not any(self._matches(reference + p, name) for p in patterns):
                continue
            special = SPECIAL_USE.get(name.lower())
            if special_only and special is None:
                continue
            attrs = []
            if name not in existing:
                attrs.append("\\Noselect" if lsub else "\\NonExistent")
            children = any(n.startswith(name + "/") for n in names)
            attrs.append("\\HasChildren" if children else "\\HasNoChildren")
            if special:
                attrs.append(special)
            if not lsub and name in subscribed:
                attrs.append("\\Subscribed")
            extended = b""
            if recursive and name in parents_of_subscribed:
                extended = b' ("CHILDINFO" ("SUBSCRIBED"))'
            await self.send(
                f'* {command} ({" ".join(attrs)}) "/" '.encode()
                + mailbox(name)
                + extended
                + b"\r\n"
            )
            if name in existing:
                listed.append(name)
        return listed

    async def cmd_status(self, cmd: c.Status) -> Reply:
        await self._status(self.mailbox_name(cmd.mailbox), cmd.items)
        return Reply("STATUS completed")

    async def _status(self, name: str, items: Sequence[str]) -> None:
        def read(s: DbSession, acct: Any) -> dict[str, int]:
            box = engine_mailbox.get_mailbox(s, acct, name)
            rows = s.execute(
                select(Message.flags, Message.size).where(
                    Message.mailbox_id == box.id, Message.expunged.is_(False)
                )
            ).all()
            flag_sets = [flags.split() for flags, _ in rows]
            return {
                "MESSAGES": box.exists,
                "RECENT": 0,
                "UIDNEXT": box.last_uid + 1,
                "UIDVALIDITY": box.uidvalidity,
                "UNSEEN": sum(1 for f in flag_sets if "\\Seen" not in f),
                "HIGHESTMODSEQ": box.highestmodseq,
                "SIZE": sum(size for _, size in rows),  # RFC 8438
                "DELETED": sum(1 for f in flag_sets if "\\Deleted" in f),  # RFC 9051 6.3.11
            }

        values = await self.read(read)
        parts = " ".join(f"{item} {values[item]}" for item in items)
        await self.send(b"* STATUS " + mailbox(name) + f" ({parts})\r\n".encode())

    async def cmd_append(self, cmd: c.Append) -> Reply:
        name = self.mailbox_name(cmd.mailbox)
        data = cmd.message
        when = (cmd.internaldate or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        if b"\0" in data:
            raise InvalidArgument("message contains NUL")
        flags = list(cmd.flags)
        store = self.node.store
        staged = await store.run_blocking(lambda: store.spool.stage(data))

        def append(s: DbSession, acct: Any) -> tuple[int, int]:
            box = engine_mailbox.find_mailbox(s, acct, name)
            if box is None:
                raise NoSuchMailbox(f"no such mailbox: {name}")
            record = engine_messages.append(
                s, acct, box, guid=staged.guid, size=len(data), flags=flags, internaldate=when
            )
            return box.uidvalidity, record.uid

        try:
            uidvalidity, uid = await self.write(append, staged=[staged])
        except NoSuchMailbox:
            # RFC 3501 6.3.11: TRYCREATE, so the client may CREATE and retry.
            return Reply("no such mailbox", CODE_TRYCREATE, "NO")
        await self.report_changes(expunges=True)
        return Reply("APPEND completed", response_code(CODE_APPENDUID, uidvalidity, uid))

    async def cmd_select(self, cmd: c.Select | c.Examine) -> Reply:
        readonly = isinstance(cmd, c.Examine)
        if cmd.qresync is not None and not self.qresync:
            # RFC 7162 3.2.5: the QRESYNC parameter needs ENABLE QRESYNC first.
            raise CommandError("QRESYNC is not enabled: ENABLE QRESYNC first (RFC 7162 3.2.5)")
        name = self.mailbox_name(cmd.mailbox)
        if cmd.condstore:
            self.condstore = True  # RFC 7162 3.1.8
        if self.selected is not None:
            # RFC 7162 3.2.11 (any client of a server that offers QRESYNC):
            # the old mailbox's responses end here.
            await self.send(untagged_status("OK", "Previous mailbox closed", CODE_CLOSED))
        # RFC 3501 6.3.1: a failed SELECT leaves no mailbox selected.
        self.selected = None
        self.state = State.AUTHENTICATED
        known = cmd.qresync

        def read(s: DbSession, acct: Any) -> tuple[Selected, list[int]]:
            box = load(s, engine_mailbox.get_mailbox(s, acct, name), readonly)
            if known is None or known.uidvalidity != box.uidvalidity:
                return box, []
            # In the same read as the snapshot: no UID is both live and vanished.
            return box, _vanished(s, box.mailbox_id, known.modseq)

        selected, vanished = await self.read(read)
        self.selected = selected
        self.state = State.SELECTED
        flags = SYSTEM_FLAGS.encode()
        await self.send(
            b"".join(
                [
                    b"* FLAGS (" + flags + b")\r\n",
                    b"* %d EXISTS\r\n" % len(selected.records),
                    b"* 0 RECENT\r\n",
                    untagged_status(
                        "OK",
                        "UIDs valid",
                        response_code(CODE_UIDVALIDITY, selected.uidvalidity),
                    ),
                    untagged_status(
                        "OK", "Predicted next UID", response_code(CODE_UIDNEXT, selected.uidnext)
                    ),
                    untagged_status(
                        "OK", "Limited", CODE_PERMANENTFLAGS + b" (" + flags + b" \\*)"
                    ),
                    untagged_status(
                        "OK",
                        "Highest",
                        response_code(CODE_HIGHESTMODSEQ, selected.highestmodseq),
                    ),
                ]
            )
        )
        if known is not None and known.uidvalidity == selected.uidvalidity:
            await self.resync(selected, known, vanished)
        return Reply(f"{cmd.name} completed", CODE_READ_ONLY if readonly else CODE_READ_WRITE)

    async def resync(self, box: Selected, known: c.QResync, vanished: list[int]) -> None:
        """RFC 7162 3.2.5.1: what changed since the client's modseq: the UIDs
        expunged since (VANISHED (EARLIER), within its known UIDs), then the
        flags of every message changed since. (Every expunge is kept as a
        tombstone with its modseq, so the list is exact; the sequence-match
        data, a hint for servers that keep fewer, is not needed.)"""
        largest = box.uidnext - 1
        ranges = resolved(known.known_uids, largest) if known.known_uids is not None else None
        gone = [uid for uid in vanished if ranges is None or in_ranges(uid, ranges)]
        out: list[bytes] = []
        if gone:
            out.append(
                b"* VANISHED (EARLIER) %s\r\n" % str(SequenceSet.from_numbers(gone)).encode()
            )
        for seq, record in enumerate(box.records, 1):
            if record.modseq > known.modseq:
                parts = [b"UID %d" % record.uid, b"FLAGS " + _flag_list(record.flags)]
                out.append(fetch_response(seq, [*parts, b"MODSEQ (%d)" % record.modseq]))
        if out:
            await self.send(b"".join(out))

    async def vanished_since(self, box: Selected, modseq: int) -> list[int]:
        """UIDs of the selected mailbox's records expunged after ``modseq`` that
        this session no longer shows (one it still shows is told as a plain
        VANISHED when it may be, RFC 7162 3.2.6), in order."""
        tombstones = await self.node.store.read(lambda s: _vanished(s, box.mailbox_id, modseq))
        shown = box.seq_of()
        return [uid for uid in tombstones if uid not in shown]

    # -- selected -----------------------------------------------------------

    def box(self) -> Selected:
        assert self.selected is not None  # the state table allows these only when selected
        return self.selected

    def writable(self) -> Selected:
        box = self.box()
        if box.readonly:
            raise CommandError("mailbox is read-only (EXAMINE)", code=CODE_CANNOT, status="NO")
        return box

    async def cmd_unselect(self, cmd: c.Unselect) -> Reply:
        self.selected = None
        self.state = State.AUTHENTICATED
        return Reply("UNSELECT completed")

    async def cmd_close(self, cmd: c.Close) -> Reply:
        box = self.box()
        if not box.readonly:
            # RFC 3501 6.4.2: expunge silently, then leave the selected state.
            await self.write(lambda s, acct: engine_messages.expunge(s, acct, _row(s, box)))
        self.selected = None
        self.state = State.AUTHENTICATED
        return Reply("CLOSE completed")

    async def cmd_expunge(self, cmd: c.Expunge | c.UidExpunge) -> Reply:
        box = self.writable()
        uids: list[int] | None = None
        if isinstance(cmd, c.UidExpunge):
            # RFC 4315 2.1: only the \Deleted messages among these UIDs.
            wanted = resolved(cmd.seqset, box.records[-1].uid if box.records else 0)
            uids = [
                r.uid
                for r in box.records
                if in_ranges(r.uid, wanted) and "\\Deleted" in r.flags.split()
            ]
        expunged = await self.write(
            lambda s, acct: engine_messages.expunge(s, acct, _row(s, box), uids)
        )
        await self.report_changes(expunges=True)
        if expunged and self.qresync:
            # RFC 7162 3.2.7: the new HIGHESTMODSEQ in the tagged OK.
            return Reply(
                f"{cmd.name} completed", response_code(CODE_HIGHESTMODSEQ, box.highestmodseq)
            )
        return Reply(f"{cmd.name} completed")

    def resolve(self, sequence: SequenceSet, uid: bool) -> list[tuple[int, Record]]:
        """The (sequence number, record) pairs a set names, in mailbox order."""
        box = self.box()
        if not box.records:
            resolved(sequence, 0)  # "$" is still refused
            return []
        if uid:
            # RFC 3501 6.4.8: UIDs that do not exist are ignored.
            ranges = resolved(sequence, box.records[-1].uid)
            return [(i + 1, r) for i, r in enumerate(box.records) if in_ranges(r.uid, ranges)]
        count = len(box.records)
        starts, ends = resolved(sequence, count)
        if ends and ends[-1] > count:
            raise CommandError(f"message sequence number out of range (there are {count})")
        return [
            (n, box.records[n - 1])
            for a, b in zip(starts, ends, strict=True)
            for n in range(a, b + 1)
        ]

    async def cmd_search(self, cmd: c.Search) -> Reply:
        if cmd.return_options is not None and "SAVE" in cmd.return_options:
            raise CommandError("SEARCH RETURN (SAVE) needs SEARCHRES, which is not offered")
        box = self.box()
        matcher = compile_search(
            cmd.key, len(box.records), box.records[-1].uid if box.records else 0
        )
        spool = self.node.store.spool
        records = list(box.records)

        def run() -> list[int]:
            return [
                record.uid if cmd.uid else seq
                for seq, record in enumerate(records, 1)
                if matcher(seq, record, spool.read)
            ]

        found = await self.node.store.run_blocking(run)
        if cmd.return_options is None:
            await self.send(b"* SEARCH" + b"".join(b" %d" % n for n in found) + b"\r\n")
        else:
            await self.send(esearch_response(cmd.tag, cmd.uid, cmd.return_options, found))
        # RFC 3501 7.4.1: no EXPUNGE during SEARCH (UID SEARCH may: numbers are UIDs).
        await self.report_changes(expunges=cmd.uid)
        return Reply(f"{'UID ' if cmd.uid else ''}SEARCH completed")

    async def cmd_fetch(self, cmd: c.Fetch) -> Reply:
        if cmd.vanished and not self.qresync:
            raise CommandError("VANISHED needs ENABLE QRESYNC first (RFC 7162 3.2.6)")
        box = self.box()
        items: list[FetchAtt] = list(cmd.items)
        if cmd.uid:
            # RFC 3501 6.4.8: UID FETCH always answers with UIDs; first, as clients expect.
            items = [Item.UID, *(i for i in items if i is not Item.UID)]
        if cmd.changedsince is not None or Item.MODSEQ in items:
            self.condstore = True  # RFC 7162 3.1: a CONDSTORE-enabling command
        targets = self.resolve(cmd.seqset, cmd.uid)
        if cmd.vanished and cmd.changedsince is not None:
            # RFC 7162 3.2.6: the requested UIDs expunged since, before the FETCHes.
            ranges = resolved(cmd.seqset, box.uidnext - 1)
            gone = [
                uid
                for uid in await self.vanished_since(box, cmd.changedsince)
                if in_ranges(uid, ranges)
            ]
            if gone:
                text = str(SequenceSet.from_numbers(gone)).encode()
                await self.send(b"* VANISHED (EARLIER) %s\r\n" % text)
        if cmd.changedsince is not None:
            since = cmd.changedsince
            targets = [(seq, r) for seq, r in targets if r.modseq > since]
        if self.condstore and Item.MODSEQ not in items:
            items.append(Item.MODSEQ)  # RFC 7162 3.1.4.1
        if self.condstore and Item.UID not in items:
            items.insert(0, Item.UID)  # RFC 7162 3.2.4
        if not box.readonly and sets_seen(items):
            unseen = [r.uid for _, r in targets if "\\Seen" not in r.flags.split()]
            if unseen:
                result = await self.write(
                    lambda s, acct: engine_messages.set_flags(
                        s, acct, _row(s, box), unseen, ["\\Seen"], mode="add"
                    )
                )
                self.absorb(result.changed)
                seqs = box.seq_of()
                targets = [
                    (seqs[r.uid], box.records[seqs[r.uid] - 1]) for _, r in targets if r.uid in seqs
                ]
                if Item.FLAGS not in items:
                    items.append(Item.FLAGS)  # RFC 3501 6.4.5: the new flags are reported
        spool = self.node.store.spool
        unreadable: list[int] = []
        # Rendered off the event loop in groups: one thread hop per group,
        # not per message, and one large write per group.
        for start in range(0, len(targets), _FETCH_GROUP):
            group = targets[start : start + _FETCH_GROUP]
            data, failed = await self.node.store.run_blocking(
                partial(render_group, group, items, spool.read)
            )
            unreadable += failed
            await self.send(data)
        # RFC 3501 7.4.1: no EXPUNGE during FETCH (UID FETCH may).
        await self.report_changes(expunges=cmd.uid)
        name = f"{'UID ' if cmd.uid else ''}FETCH"
        if unreadable:
            return await self.unreadable_reply(name, unreadable)
        return Reply(f"{name} completed")

    async def unreadable_reply(self, name: str, uids: list[int]) -> Reply:
        """The NO for a FETCH that could not read some messages' bytes: expunged
        meanwhile by another session (their bytes may have been swept, RFC 5530
        EXPUNGEISSUED), or unreadable although still there (SERVERBUG)."""
        box = self.box()

        def live(session: DbSession) -> list[int]:
            rows = session.scalars(
                select(Message.uid).where(
                    Message.mailbox_id == box.mailbox_id,
                    Message.uid.in_(uids),
                    Message.expunged.is_(False),
                )
            )
            return list(rows)

        damaged = await self.node.store.read(live)
        if not damaged:
            return Reply(f"{name}: some messages were expunged", CODE_EXPUNGEISSUED, "NO")
        log.error("FETCH: unreadable bytes of live messages, UIDs %s", damaged)
        listed = str(SequenceSet.from_numbers(damaged))
        return Reply(f"{name}: the data of UID {listed} cannot be read", CODE_SERVERBUG, "NO")

    async def cmd_store(self, cmd: c.Store) -> Reply:
        box = self.writable()
        if cmd.unchangedsince is not None:
            self.condstore = True  # RFC 7162 3.1
        mode = {"+": "add", "-": "remove", "": "replace"}[cmd.mode]
        targets = self.resolve(cmd.seqset, cmd.uid)
        uids = [r.uid for _, r in targets]
        flags = list(cmd.flags)
        unchangedsince = cmd.unchangedsince
        result = await self.write(
            lambda s, acct: engine_messages.set_flags(
                s,
                acct,
                _row(s, box),
                uids,
                flags,
                mode=mode,
                unchangedsince=unchangedsince,
            )
        )
        changed = {m.uid for m in result.changed}
        self.absorb(result.changed)
        seqs = box.seq_of()
        out: list[bytes] = []
        for _, record in targets:
            if record.uid not in seqs:
                continue
            current = box.records[seqs[record.uid] - 1]
            # RFC 7162 3.2: with CONDSTORE, .SILENT still reports the new MODSEQ.
            if cmd.silent and record.uid in changed and not self.condstore:
                continue
            parts = [b"FLAGS " + _flag_list(current.flags)]
            if cmd.uid or self.condstore:
                # RFC 7162 3.2.4: with CONDSTORE on, every FETCH carries UID and MODSEQ.
                parts.insert(0, b"UID %d" % current.uid)
            if self.condstore:
                parts.append(b"MODSEQ (%d)" % current.modseq)
            out.append(fetch_response(seqs[record.uid], parts))
        if out:
            await self.send(b"".join(out))
        if result.modified:
            # RFC 7162 3.1.3: the UIDs (or numbers) that failed the condition.
            numbers = (
                result.modified if cmd.uid else [seqs[u] for u in result.modified if u in seqs]
            )
            modified = Raw(bytes(SequenceSet.from_numbers(numbers)))
            return Reply("conditional STORE failed", response_code(CODE_MODIFIED, modified))
        return Reply(f"{'UID ' if cmd.uid else ''}STORE completed")

    async def cmd_copy(self, cmd: c.Copy | c.Move) -> Reply:
        move = isinstance(cmd, c.Move)
        box = self.writable() if move else self.box()
        name = self.mailbox_name(cmd.mailbox)
        uids = [r.uid for _, r in self.resolve(cmd.seqset, cmd.uid)]

        def copy(s: DbSession, acct: Any) -> Any:
            src = _row(s, box)
            dst = engine_mailbox.find_mailbox(s, acct, name)
            if dst is None:
                raise NoSuchMailbox(f"no such mailbox: {name}")
            if move:
                return engine_messages.move_messages(s, acct, src, dst, uids)
            return engine_messages.copy_messages(s, acct, src, dst, uids)

        try:
            result = await self.write(copy)
        except NoSuchMailbox:
            return Reply("no such mailbox", CODE_TRYCREATE, "NO")
        code: bytes | None = None
        if result.source_uids:
            # RFC 4315 3: COPYUID uidvalidity source-uids dest-uids.
            code = response_code(
                CODE_COPYUID,
                result.uidvalidity,
                Raw(",".join(str(u) for u in result.source_uids).encode()),
                Raw(",".join(str(u) for u in result.dest_uids).encode()),
            )
        prefix = "UID " if cmd.uid else ""
        if move:
            # RFC 6851 4.3: COPYUID goes in an untagged OK before the EXPUNGEs.
            await self.send(untagged_status("OK", "Moved", code))
            await self.report_changes(expunges=True)
            return Reply(f"{prefix}MOVE completed")
        return Reply(f"{prefix}COPY completed", code)

    async def cmd_idle(self, cmd: c.Idle) -> Reply | None:
        await self.send(continuation("idling"))  # RFC 2177 3
        await self.poll()
        deadline = time.monotonic() + self.node.config.imap.idle_timeout.total_seconds()
        while True:
            await self.report_changes(expunges=True)
            line = self.core.next_line()
            if isinstance(line, ProtocolError):
                await self.send(line.reply())
                raise Closed
            if isinstance(line, Line):
                if line.data.strip().upper() == b"DONE":
                    return Reply("IDLE terminated")
                return Reply("expected DONE", None, "BAD")
            if self.closing:
                return None
            self.idle_wake.clear()
            read = asyncio.ensure_future(self.reader.read(_READ_SIZE))
            wake = asyncio.ensure_future(self.idle_wake.wait())
            done, _ = await asyncio.wait(
                {read, wake},
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if read in done:
                data = read.result()
                if not data:
                    wake.cancel()
                    raise Closed
                self.core.feed(data)
            else:
                read.cancel()
                try:
                    await read
                except asyncio.CancelledError:
                    pass
            wake.cancel()
            if not done:
                await self.send(untagged_status("BYE", "IDLE timed out", CODE_UNAVAILABLE))
                raise Closed

    # -- untagged updates ---------------------------------------------------

    def absorb(self, changed: Iterable[Message]) -> None:
        """Take our own flag changes into the snapshot (they are reported by
        this command's own FETCH responses, not again later)."""
        box = self.box()
        by_uid = {m.uid: m for m in changed}
        if not by_uid:
            return
        for i, record in enumerate(box.records):
            updated = by_uid.get(record.uid)
            if updated is not None:
                box.records[i] = replace(record, flags=updated.flags, modseq=updated.modseq)

    async def refresh(self, report: bool, expunges: bool = True) -> None:
        box = self.selected
        if box is None:
            return
        fresh = await self.node.store.read(lambda s: load(s, _row(s, box), box.readonly))
        old = {r.uid: r for r in box.records}
        new = {r.uid: r for r in fresh.records}
        gone = [uid for uid in old if uid not in new]
        if gone and not expunges:
            # RFC 3501 7.4.1: no EXPUNGE now, so nothing of this change is told
            # yet: the snapshot stays, and stays dirty, until a moment that
            # allows the expunges (a flag change told now would carry a MODSEQ
            # above the unreported expunge's, which a QRESYNC client would take
            # as "seen everything up to here").
            box.dirty = True
            return
        if report:
            out: list[bytes] = []
            seqs = box.seq_of()
            if self.qresync and gone:
                # RFC 7162 3.2.10: once QRESYNC is on, VANISHED says it in UIDs.
                out.append(b"* VANISHED %s\r\n" % str(SequenceSet.from_numbers(gone)).encode())
            else:
                # Each EXPUNGE renumbers the ones after it (RFC 3501 7.4.1).
                for removed, uid in enumerate(sorted(gone, key=lambda u: seqs[u])):
                    out.append(b"* %d EXPUNGE\r\n" % (seqs[uid] - removed))
            kept = [r for r in box.records if r.uid in new]
            for i, record in enumerate(kept, 1):
                now = new[record.uid]
                if now.flags != record.flags or (self.condstore and now.modseq != record.modseq):
                    parts = [b"UID %d" % now.uid, b"FLAGS " + _flag_list(now.flags)]
                    if self.condstore:
                        parts.append(b"MODSEQ (%d)" % now.modseq)
                    out.append(fetch_response(i, parts))
            if len(fresh.records) != len(kept) or gone:
                out.append(b"* %d EXISTS\r\n" % len(fresh.records))
            if out:
                await self.send(b"".join(out))
        box.records = fresh.records
        box.highestmodseq = fresh.highestmodseq
        box.uidnext = fresh.uidnext
        box.dirty = False

    async def report_changes(self, expunges: bool) -> None:
        if self.selected is not None and self.selected.dirty:
            self.selected.dirty = False
            await self.refresh(report=True, expunges=expunges)

    def changed(self, uniqueids: set[str]) -> None:
        if self.selected is not None and self.selected.uniqueid in uniqueids:
            self.selected.dirty = True
            self.idle_wake.set()


Handler = Callable[[Session, Any], Awaitable[Reply | None]]

# The handler for each command class. Which state allows which command is
# the state table's business (peerd.protocols.imap.states), not the handlers'.
HANDLERS: Final[dict[type[c.Command], Handler]] = {
    c.Capability: Session.cmd_capability,
    c.Noop: Session.cmd_noop,
    c.Logout: Session.cmd_logout,
    c.Id: Session.cmd_id,
    c.StartTLS: Session.cmd_starttls,
    c.Login: Session.cmd_login,
    c.Authenticate: Session.cmd_authenticate,
    c.Enable: Session.cmd_enable,
    c.Namespace: Session.cmd_namespace,
    c.Select: Session.cmd_select,
    c.Examine: Session.cmd_select,
    c.Create: Session.cmd_create,
    c.Delete: Session.cmd_delete,
    c.Rename: Session.cmd_rename,
    c.Subscribe: Session.cmd_subscribe,
    c.Unsubscribe: Session.cmd_unsubscribe,
    c.List: Session.cmd_list,
    c.Lsub: Session.cmd_lsub,
    c.Status: Session.cmd_status,
    c.Append: Session.cmd_append,
    c.Idle: Session.cmd_idle,
    c.Check: Session.cmd_noop,
    c.Close: Session.cmd_close,
    c.Unselect: Session.cmd_unselect,
    c.Expunge: Session.cmd_expunge,
    c.UidExpunge: Session.cmd_expunge,
    c.Search: Session.cmd_search,
    c.Fetch: Session.cmd_fetch,
    c.Store: Session.cmd_store,
    c.Copy: Session.cmd_copy,
    c.Move: Session.cmd_copy,
}


def _vanished(session: DbSession, mailbox_id: int, modseq: int) -> list[int]:
    """UIDs of a mailbox's records expunged after ``modseq`` (its tombstones), in order."""
    rows = session.scalars(
        select(Message.uid)
        .where(
            Message.mailbox_id == mailbox_id,
            Message.expunged.is_(True),
            Message.modseq > modseq,
        )
        .order_by(Message.uid)
    )
    return list(rows)


def _row(session: DbSession, box: Selected) -> Mailbox:
    """The selected mailbox's row, inside a transaction; gone if another session deleted it."""
    row = session.get(Mailbox, box.mailbox_id)
    if row is None:
        raise NoSuchMailbox("the selected mailbox was deleted")
    return row


def load(session: DbSession, mailbox_row: Mailbox | None, readonly: bool) -> Selected:
    """A snapshot of the mailbox for a session (SELECT, and each refresh).

    Snapshots are shared between sessions while the mailbox does not change:
    the key covers everything a change to its records changes (UIDVALIDITY,
    highest modseq, last UID, count and content checksum), so a SELECT, NOOP
    or IDLE wake-up of an unchanged mailbox reads no records, however many
    sessions have it open. Each session gets its own list of the shared,
    frozen records.
    """
    if mailbox_row is None:
        raise NoSuchMailbox("the selected mailbox was deleted")
    key = (
        mailbox_row.uidvalidity,
        mailbox_row.highestmodseq,
        mailbox_row.last_uid,
        mailbox_row.exists,
        mailbox_row.checksum,
    )
    with _SNAPSHOT_LOCK:  # loads run in the store's reader threads
        cached = _SNAPSHOTS.get(mailbox_row.id)
        if cached is not None and cached[0] == key:
            _SNAPSHOTS.move_to_end(mailbox_row.id)
    if cached is not None and cached[0] == key:
        records = cached[1]
    else:
        rows = session.execute(
            select(
                Message.uid,
                Message.guid,
                Message.flags,
                Message.modseq,
                Message.size,
                Message.internaldate,
            )
            .where(Message.mailbox_id == mailbox_row.id, Message.expunged.is_(False))
            .order_by(Message.uid)
        )
        records = tuple(Record(*row) for row in rows)
        _remember(mailbox_row.id, key, records)
    selected = Selected(
        mailbox_row.id, mailbox_row.uniqueid, mailbox_row.name, readonly, mailbox_row.uidvalidity
    )
    selected.records = list(records)
    selected.highestmodseq = mailbox_row.highestmodseq
    selected.uidnext = mailbox_row.last_uid + 1
    return selected


_SNAPSHOTS: OrderedDict[int, tuple[tuple[int, ...], tuple[Record, ...]]] = OrderedDict()
_SNAPSHOT_RECORDS = 500_000  # records kept in all shared snapshots together (~50 MB)
_SNAPSHOT_LOCK = threading.Lock()
_snapshot_size = 0


def _remember(mailbox_id: int, key: tuple[int, ...], records: tuple[Record, ...]) -> None:
    """Keep a snapshot (the least recently used ones go past the budget)."""
    global _snapshot_size
    with _SNAPSHOT_LOCK:
        old = _SNAPSHOTS.pop(mailbox_id, None)
        if old is not None:
            _snapshot_size -= len(old[1])
        _SNAPSHOTS[mailbox_id] = (key, records)
        _snapshot_size += len(records)
        while _snapshot_size > _SNAPSHOT_RECORDS and len(_SNAPSHOTS) > 1:
            _, (_, dropped) = _SNAPSHOTS.popitem(last=False)
            _snapshot_size -= len(dropped)


def _structure(guid: str, reader: Callable[[str], bytes]) -> tuple[bytes, bytes, bytes]:
    cached = _CACHE.get(guid)
    if cached is not None:
        _CACHE.move_to_end(guid)
        return cached
    part = structure.parse(reader(guid))
    value = (
        structure.envelope(part),
        structure.bodystructure(part, True),
        structure.bodystructure(part, False),
    )
    _CACHE[guid] = value
    if len(_CACHE) > _CACHE_MAX:
        _CACHE.popitem(last=False)
    return value


def render_group(
    group: list[tuple[int, Record]], items: Sequence[FetchAtt], reader: Callable[[str], bytes]
) -> tuple[bytes, list[int]]:
    """The FETCH responses of a group, and the UIDs whose bytes could not be
    read (missing or not matching their GUID: never served); those are left out."""
    out: list[bytes] = []
    unreadable: list[int] = []
    for seq, record in group:
        try:
            out.append(render_fetch(seq, record, items, reader))
        except Corrupt as exc:
            log.warning("FETCH of UID %d: %s", record.uid, exc.message)
            unreadable.append(record.uid)
        except OSError as exc:  # the spool itself in trouble (EIO, EACCES)
            log.error("FETCH of UID %d: the spool could not be read: %s", record.uid, exc)
            unreadable.append(record.uid)
    return b"".join(out), unreadable


def render_fetch(
    seq: int, record: Record, items: Iterable[FetchAtt], reader: Callable[[str], bytes]
) -> bytes:
    """``* seq FETCH (...)`` for one message (RFC 3501 7.4.2)."""
    parts: list[bytes] = []
    raw: bytes | None = None
    for att in items:
        if att is Item.UID:
            parts.append(b"UID %d" % record.uid)
        elif att is Item.FLAGS:
            parts.append(b"FLAGS " + _flag_list(record.flags))
        elif att is Item.INTERNALDATE:
            parts.append(b"INTERNALDATE " + internaldate(record.internaldate))
        elif att is Item.RFC822_SIZE:
            parts.append(b"RFC822.SIZE %d" % record.size)
        elif att is Item.MODSEQ:
            parts.append(b"MODSEQ (%d)" % record.modseq)
        elif att is Item.ENVELOPE:
            parts.append(b"ENVELOPE " + _structure(record.guid, reader)[0])
        elif att is Item.BODYSTRUCTURE:
            parts.append(b"BODYSTRUCTURE " + _structure(record.guid, reader)[1])
        elif att is Item.BODY:
            parts.append(b"BODY " + _structure(record.guid, reader)[2])
        else:
            if raw is None:
                raw = reader(record.guid)
            parts.append(_body_item(att, raw))
    return fetch_response(seq, parts)


def _body_item(att: FetchAtt, raw: bytes) -> bytes:
    if att is Item.RFC822:
        return b"RFC822 " + literal(raw)
    if att is Item.RFC822_HEADER:
        return b"RFC822.HEADER " + literal(structure.section(raw, (), SectionKind.HEADER) or b"")
    if att is Item.RFC822_TEXT:
        return b"RFC822.TEXT " + literal(structure.section(raw, (), SectionKind.TEXT) or b"")
    assert isinstance(att, BodySection)
    data = structure.section(raw, att.part, att.kind, att.fields)
    if data is not None and att.partial is not None:
        # RFC 3501 6.4.5: <origin.length>; past the end is an empty string.
        origin, length = att.partial
        data = data[origin : origin + length]
    return response_name(att) + b" " + (literal(data) if data is not None else b"NIL")


class ImapServer:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.sessions: set[Session] = set()
        self.tls = starttls_context(node.config)
        node.store.add_listener(self.on_change)
        node.on_ownership_change.append(self.close_accounts)

    def on_change(self, changes: list[Change]) -> None:
        by_account: dict[str, set[str]] = {}
        for change in changes:
            by_account.setdefault(change.account, set()).add(change.mailbox)
        for session in list(self.sessions):
            touched = by_account.get(session.account)
            if touched:
                session.changed(touched)

    async def close_accounts(self, accounts: list[str]) -> None:
        wanted = set(accounts)
        for session in list(self.sessions):
            if session.account in wanted and not session.closing:
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
        session = Session(self, reader, writer)
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

    def count(self, account: str) -> int:
        return sum(1 for s in self.sessions if s.account == account)


async def start_imap(node: Node, host: str, port: int) -> tuple[ImapServer, asyncio.Server]:
    server = ImapServer(node)
    listener = await asyncio.start_server(server.handle, host, port, limit=1 << 20)
    return server, listener
