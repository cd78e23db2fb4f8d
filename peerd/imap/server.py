"""The IMAP service: asyncio sessions over the sans-I/O core and the store.

How this works: one :class:`Session` per connection reads bytes into a
:class:`~peerd.imap.protocol.CommandReader`, answers continuation requests,
checks each command against the state table, and runs its handler. Handlers
reach the store only through ``store.read``/``store.write`` with the node's
ownership fence inside every write. A selected mailbox is a snapshot (UIDs in
sequence order, flags, modseqs); the store's change listener marks sessions
whose mailbox changed (another session, LMTP, replication from the partner),
and the session reports the difference as untagged EXISTS / EXPUNGE / FETCH
at the moments RFC 3501 7.4.1 allows (never EXPUNGE during FETCH, STORE or
SEARCH), and at once while IDLE (RFC 2177). Logins for an account another
node owns get ``NO [REFERRAL imap://…]`` (RFC 2221); when ownership moves,
the account's sessions end with ``* BYE [UNAVAILABLE]``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.utils
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from engine import accounts as engine_accounts
from engine import mailbox as engine_mailbox
from engine import messages as engine_messages
from engine.errors import EngineError, InvalidArgument, NoSuchMailbox
from engine.models import Mailbox, Message
from engine.synclog import Change
from ownership.errors import OwnershipError
from peerd.errormap import imap_code
from peerd.imap import structure
from peerd.imap.protocol import (
    ALLOWED,
    Command,
    CommandReader,
    NeedContinuation,
    ProtocolError,
    SequenceSet,
    as_text,
    astring,
    decode_mailbox,
    encode_mailbox,
    literal,
    tokenize,
)
from peerd.imap.search import compile_search
from peerd.node import Node

__all__ = ["ImapServer", "start_imap"]

log = logging.getLogger("peerd.imap")

CAPABILITIES = (
    "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS MOVE UNSELECT CHILDREN "
    "SPECIAL-USE CONDSTORE LOGIN-REFERRALS AUTH=PLAIN"
)
SYSTEM_FLAGS = "\\Answered \\Flagged \\Deleted \\Seen \\Draft"
SPECIAL_USE = {
    "sent": "\\Sent",
    "drafts": "\\Drafts",
    "trash": "\\Trash",
    "junk": "\\Junk",
    "archive": "\\Archive",
}
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

_CACHE: OrderedDict[str, tuple[bytes, bytes, bytes]] = OrderedDict()
_CACHE_MAX = 50_000


def imap_date(when: dt.datetime) -> str:
    return f"{when.day:02d}-{MONTHS[when.month - 1]}-{when.year:04d} {when:%H:%M:%S} +0000"


@dataclass(slots=True)
class Record:
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
        self.state = "not_authenticated"
        self.account = ""
        self.selected: Selected | None = None
        self.condstore = False
        self.failures = 0
        self.idle_wake = asyncio.Event()
        self.closing: str | None = None
        self.tls = False

    # -- I/O ----------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def untagged(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        await self.send(b"* " + data + b"\r\n")

    async def tagged(self, tag: str, status: str, text: str) -> None:
        await self.send(f"{tag} {status} {text}\r\n".encode())

    async def read_more(self, timeout: float) -> None:
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except TimeoutError as exc:
            await self.untagged("BYE [UNAVAILABLE] autologout; idle for too long")
            raise Closed from exc
        if not data:
            raise Closed
        self.core.feed(data)

    async def run(self) -> None:
        config = self.node.config.imap
        await self.untagged(
            f"OK [CAPABILITY {CAPABILITIES}] peerd IMAP4rev1 {self.node.name} ready"
        )
        window_start = time.monotonic()
        commands = 0
        try:
            while self.state != "logout":
                try:
                    event = self.core.next()
                except ProtocolError as exc:
                    code = f"[{exc.code}] " if exc.code else ""
                    status = "NO" if exc.code == "TOOBIG" and exc.tag != "*" else "BAD"
                    await self.tagged(exc.tag, status, f"{code}{exc}")
                    if exc.fatal:
                        await self.untagged("BYE line too long")
                        return
                    continue
                if event is None:
                    await self.read_more(config.idle_timeout.total_seconds())
                    continue
                if isinstance(event, NeedContinuation):
                    await self.send(b"+ Ready for literal data\r\n")
                    continue
                commands += 1
                now = time.monotonic()
                if now - window_start >= 1:
                    window_start, commands = now, 1
                if commands > config.commands_per_second:
                    await asyncio.sleep(1)  # rate limit: slow the client down
                await self.dispatch(event)
                if self.closing:
                    await self.untagged(f"BYE [UNAVAILABLE] {self.closing}")
                    return
        except (Closed, ConnectionError):
            pass
        finally:
            self.server.sessions.discard(self)
            self.writer.close()

    # -- dispatch -----------------------------------------------------------

    async def dispatch(self, cmd: Command) -> None:
        handler = getattr(self, f"cmd_{cmd.name.lower()}", None)
        if handler is None:
            await self.tagged(cmd.tag, "BAD", f"unknown command {cmd.name[:20]}")
            return
        if cmd.name not in ALLOWED[self.state]:
            await self.tagged(
                cmd.tag, "BAD", f"{cmd.name} is not allowed now ({self.state.replace('_', ' ')})"
            )
            return
        try:
            args = tokenize(cmd.args, cmd.literals)
            result = await handler(cmd, args)
        except ProtocolError as exc:
            await self.tagged(cmd.tag, "BAD", str(exc))
            return
        except (EngineError, OwnershipError) as exc:
            status, code = imap_code(exc)
            text = exc.message
            await self.tagged(cmd.tag, status, f"[{code}] {text}" if code else text)
            return
        except (IndexError, ValueError, TypeError) as exc:
            await self.tagged(cmd.tag, "BAD", f"bad arguments: {exc}")
            return
        if result is not None:
            await self.tagged(cmd.tag, "OK", result)

    # -- any state ----------------------------------------------------------

    def capabilities(self) -> str:
        if self.server.tls is not None and not self.tls and self.state == "not_authenticated":
            return CAPABILITIES + " STARTTLS"
        return CAPABILITIES

    async def cmd_capability(self, cmd: Command, args: list[Any]) -> str:
        await self.untagged(f"CAPABILITY {self.capabilities()}")
        return "CAPABILITY completed"

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

    async def cmd_noop(self, cmd: Command, args: list[Any]) -> str:
        await self.poll()
        await self.report_changes(expunges=True)
        return "NOOP completed"

    async def cmd_check(self, cmd: Command, args: list[Any]) -> str:
        await self.poll()
        await self.report_changes(expunges=True)
        return "CHECK completed"

    async def cmd_logout(self, cmd: Command, args: list[Any]) -> str:
        await self.untagged("BYE peerd logging out")
        self.state = "logout"
        return "LOGOUT completed"

    async def cmd_id(self, cmd: Command, args: list[Any]) -> str:
        await self.untagged('ID ("name" "peerd" "vendor" "peerd")')
        return "ID completed"

    async def cmd_starttls(self, cmd: Command, args: list[Any]) -> str | None:
        context = self.server.tls
        if context is None or self.tls:
            raise ProtocolError("STARTTLS is not available (no certificate, or TLS is on already)")
        if self.core.buffer:
            # RFC 3501 6.2.1: nothing may follow STARTTLS before the handshake.
            raise ProtocolError("STARTTLS must be the last command sent before the handshake")
        await self.tagged(cmd.tag, "OK", "Begin TLS negotiation now")
        await self.writer.start_tls(context)
        self.tls = True
        return None

    # -- not authenticated --------------------------------------------------

    async def login(self, tag: str, user: str, password: str) -> str | None:
        config = self.node.config.imap
        result = await self.node.authenticate(user, password)
        if not result.ok:
            self.failures += 1
            await asyncio.sleep(config.login_failure_delay.total_seconds())
            if self.failures >= config.max_login_failures:
                await self.tagged(tag, "NO", "[AUTHENTICATIONFAILED] Authentication failed")
                await self.untagged("BYE too many failed logins")
                raise Closed
            await self.tagged(tag, "NO", "[AUTHENTICATIONFAILED] Authentication failed")
            return None
        if result.owner is not None:
            where = self.node.config.routing.partner_imap
            host = str(where) if where else result.owner
            await self.tagged(
                tag,
                "NO",
                f"[REFERRAL imap://{result.account}@{host}/] {result.account} is served by {result.owner}",
            )
            return None
        if self.server.count(result.account) >= self.node.config.imap.max_sessions_per_account:
            await self.tagged(tag, "NO", "[LIMIT] too many sessions for this account")
            return None
        self.account = result.account
        self.state = "authenticated"
        self.server.sessions.add(self)
        return f"[CAPABILITY {CAPABILITIES}] LOGIN completed on {self.node.name}"

    async def cmd_login(self, cmd: Command, args: list[Any]) -> str | None:
        if len(args) != 2:
            raise ProtocolError("LOGIN needs a user name and a password")
        return await self.login(cmd.tag, as_text(args[0], "user"), as_text(args[1], "password"))

    async def cmd_authenticate(self, cmd: Command, args: list[Any]) -> str | None:
        if not args or str(args[0]).upper() != "PLAIN":
            raise ProtocolError("only AUTHENTICATE PLAIN is supported")
        if len(args) > 1:
            response = str(args[1]).encode()
        else:
            await self.send(b"+ \r\n")
            while (line := self.core.read_line()) is None:
                await self.read_more(60)
            response = line
        if response.strip() == b"*":
            await self.tagged(cmd.tag, "BAD", "AUTHENTICATE cancelled")
            return None
        try:
            _, user, password = base64.b64decode(response, validate=True).split(b"\0")
        except (ValueError, TypeError) as exc:
            raise ProtocolError("bad SASL PLAIN response") from exc
        return await self.login(
            cmd.tag, user.decode("utf-8", "replace"), password.decode("utf-8", "replace")
        )

    # -- authenticated ------------------------------------------------------

    async def cmd_enable(self, cmd: Command, args: list[Any]) -> str:
        enabled = [a for a in args if isinstance(a, str) and a.upper() == "CONDSTORE"]
        if enabled:
            self.condstore = True
            await self.untagged("ENABLED CONDSTORE")
        return "ENABLE completed"

    async def cmd_namespace(self, cmd: Command, args: list[Any]) -> str:
        await self.untagged('NAMESPACE (("" "/")) NIL NIL')
        return "NAMESPACE completed"

    def mailbox_name(self, value: Any) -> str:
        return engine_mailbox.normalize_mailbox_name(decode_mailbox(as_text(value, "mailbox name")))

    async def write(self, fn: Any, **kwargs: Any) -> Any:
        account = self.account

        def guarded(session: DbSession) -> Any:
            self.node.guard(session, account)
            return fn(session, engine_accounts.get_account(session, account))

        result = await self.node.store.write(guarded, **kwargs)
        # Our own change: the store's listener tells us too, but possibly
        # after this command's reply; look now.
        if self.selected is not None:
            self.selected.dirty = True
        return result

    async def read(self, fn: Any) -> Any:
        account = self.account
        return await self.node.store.read(lambda s: fn(s, engine_accounts.get_account(s, account)))

    async def cmd_create(self, cmd: Command, args: list[Any]) -> str:
        name = self.mailbox_name(args[0])
        if name == "INBOX":
            raise InvalidArgument("INBOX always exists")

        def create(s: DbSession, acct: Any) -> None:
            parts = name.split(engine_mailbox.SEPARATOR)
            for i in range(1, len(parts) + 1):  # RFC 3501 6.3.3: create superiors too
                sub = engine_mailbox.SEPARATOR.join(parts[:i])
                if engine_mailbox.find_mailbox(s, acct, sub) is None:
                    engine_mailbox.create_mailbox(s, acct, sub)
                elif sub == name:
                    from engine.errors import AlreadyExists

                    raise AlreadyExists(f"mailbox {name} already exists")

        await self.write(create)
        return "CREATE completed"

    async def cmd_delete(self, cmd: Command, args: list[Any]) -> str:
        name = self.mailbox_name(args[0])
        await self.write(lambda s, acct: engine_mailbox.delete_mailbox(s, acct, name))
        if self.selected is not None and self.selected.name == name:
            self.selected = None
            self.state = "authenticated"
        return "DELETE completed"

    async def cmd_rename(self, cmd: Command, args: list[Any]) -> str:
        old, new = self.mailbox_name(args[0]), self.mailbox_name(args[1])

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
        return "RENAME completed"

    async def cmd_subscribe(self, cmd: Command, args: list[Any]) -> str:
        name = self.mailbox_name(args[0])
        await self.write(lambda s, acct: engine_mailbox.subscribe(s, acct, name))
        return "SUBSCRIBE completed"

    async def cmd_unsubscribe(self, cmd: Command, args: list[Any]) -> str:
        name = self.mailbox_name(args[0])
        await self.write(lambda s, acct: engine_mailbox.unsubscribe(s, acct, name))
        return "UNSUBSCRIBE completed"

    @staticmethod
    def _matches(pattern: str, name: str) -> bool:
        import re

        regex = "".join(
            ".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern
        )
        if pattern.upper().startswith("INBOX"):
            name = name if not name.upper().startswith("INBOX") else "INBOX" + name[5:]
        return (
            re.fullmatch(regex, name, re.IGNORECASE if pattern.upper().startswith("INBOX") else 0)
            is not None
        )

    async def _list(self, args: list[Any], command: str, subscribed_only: bool) -> None:
        reference = decode_mailbox(as_text(args[0], "reference"))
        patterns = args[1] if isinstance(args[1], list) else [args[1]]
        patterns = [decode_mailbox(as_text(p, "pattern")) for p in patterns]

        def read(s: DbSession, acct: Any) -> tuple[list[str], list[str]]:
            return [
                m.name for m in engine_mailbox.list_mailboxes(s, acct)
            ], engine_mailbox.subscriptions(s, acct)

        names, subs = await self.read(read)
        if any(p == "" for p in patterns):
            await self.untagged(f'{command} (\\Noselect) "/" ""')
            return
        existing = set(names)
        pool = subs if subscribed_only else names
        for name in pool:
            if not any(self._matches(reference + p, name) for p in patterns):
                continue
            attrs = []
            if name not in existing:
                attrs.append("\\NonExistent" if not subscribed_only else "\\Noselect")
            children = any(n.startswith(name + "/") for n in names)
            attrs.append("\\HasChildren" if children else "\\HasNoChildren")
            special = SPECIAL_USE.get(name.lower())
            if special:
                attrs.append(special)
            if subscribed_only is False and name in subs:
                attrs.append("\\Subscribed")
            await self.untagged(
                f'{command} ({" ".join(attrs)}) "/" '.encode() + astring(encode_mailbox(name))
            )

    async def cmd_list(self, cmd: Command, args: list[Any]) -> str:
        if args and isinstance(args[0], list):
            args = args[1:]  # LIST-EXTENDED selection options: basics only
        await self._list(args[:2], "LIST", False)
        return "LIST completed"

    async def cmd_lsub(self, cmd: Command, args: list[Any]) -> str:
        await self._list(args[:2], "LSUB", True)
        return "LSUB completed"

    async def cmd_status(self, cmd: Command, args: list[Any]) -> str:
        name = self.mailbox_name(args[0])
        items = [str(i).upper() for i in args[1]]

        def read(s: DbSession, acct: Any) -> dict[str, int]:
            box = engine_mailbox.get_mailbox(s, acct, name)
            flags = list(
                s.scalars(
                    select(Message.flags).where(
                        Message.mailbox_id == box.id, Message.expunged.is_(False)
                    )
                )
            )
            return {
                "MESSAGES": box.exists,
                "RECENT": 0,
                "UIDNEXT": box.last_uid + 1,
                "UIDVALIDITY": box.uidvalidity,
                "UNSEEN": sum(1 for f in flags if "\\Seen" not in f.split()),
                "HIGHESTMODSEQ": box.highestmodseq,
                "SIZE": 0,
            }

        values = await self.read(read)
        parts = [f"{i} {values[i]}" for i in items if i in values]
        await self.untagged(
            b"STATUS " + astring(encode_mailbox(name)) + f" ({' '.join(parts)})".encode()
        )
        return "STATUS completed"

    async def cmd_append(self, cmd: Command, args: list[Any]) -> str:
        name = self.mailbox_name(args[0])
        rest = args[1:]
        flags: list[str] = []
        when = dt.datetime.now(dt.UTC)
        if rest and isinstance(rest[0], list):
            flags = [str(f) for f in rest.pop(0)]
        if rest and isinstance(rest[0], str):
            parsed = email.utils.parsedate_to_datetime(rest.pop(0).replace("-", " ", 2))
            when = parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
        if not rest or not isinstance(rest[0], bytes):
            raise ProtocolError("APPEND needs the message as a literal")
        data = rest[0]
        if b"\0" in data:
            raise InvalidArgument("message contains NUL")
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
            return_text = "[TRYCREATE] no such mailbox"
            await self.tagged(cmd.tag, "NO", return_text)
            return None  # type: ignore[return-value]
        await self.report_changes(expunges=True)
        return f"[APPENDUID {uidvalidity} {uid}] APPEND completed"

    async def _select(self, cmd: Command, args: list[Any], readonly: bool) -> str:
        name = self.mailbox_name(args[0])
        if (
            len(args) > 1
            and isinstance(args[1], list)
            and any(str(a).upper() == "CONDSTORE" for a in args[1])
        ):
            self.condstore = True
        self.selected = None
        self.state = "authenticated"
        selected = await self.read(
            lambda s, acct: load(s, engine_mailbox.get_mailbox(s, acct, name), readonly)
        )
        self.selected = selected
        self.state = "selected"
        await self.untagged(f"FLAGS ({SYSTEM_FLAGS})")
        await self.untagged(f"{len(selected.records)} EXISTS")
        await self.untagged("0 RECENT")
        await self.untagged(f"OK [UIDVALIDITY {selected.uidvalidity}] UIDs valid")
        await self.untagged(f"OK [UIDNEXT {selected.uidnext}] Predicted next UID")
        await self.untagged(f"OK [PERMANENTFLAGS ({SYSTEM_FLAGS} \\*)] Limited")
        await self.untagged(f"OK [HIGHESTMODSEQ {selected.highestmodseq}] Highest")
        mode = "READ-ONLY" if readonly else "READ-WRITE"
        return f"[{mode}] {cmd.name} completed"

    async def cmd_select(self, cmd: Command, args: list[Any]) -> str:
        return await self._select(cmd, args, readonly=False)

    async def cmd_examine(self, cmd: Command, args: list[Any]) -> str:
        return await self._select(cmd, args, readonly=True)

    # -- selected -----------------------------------------------------------

    def box(self) -> Selected:
        assert self.selected is not None
        return self.selected

    async def cmd_unselect(self, cmd: Command, args: list[Any]) -> str:
        self.selected = None
        self.state = "authenticated"
        return "UNSELECT completed"

    async def cmd_close(self, cmd: Command, args: list[Any]) -> str:
        box = self.box()
        if not box.readonly:
            await self.write(
                lambda s, acct: engine_messages.expunge(s, acct, s.get(Mailbox, box.mailbox_id))
            )
        self.selected = None
        self.state = "authenticated"
        return "CLOSE completed"

    async def cmd_expunge(self, cmd: Command, args: list[Any]) -> str:
        box = self.box()
        if box.readonly:
            raise InvalidArgument("mailbox is read-only")
        uids: list[int] | None = None
        if cmd.uid:
            wanted = SequenceSet.parse(as_text(args[0], "uid set"))
            top = box.records[-1].uid if box.records else 0
            uids = [
                r.uid
                for r in box.records
                if wanted.contains(r.uid, top) and "\\Deleted" in r.flags.split()
            ]
        await self.write(
            lambda s, acct: engine_messages.expunge(s, acct, s.get(Mailbox, box.mailbox_id), uids)
        )
        await self.report_changes(expunges=True)
        return "EXPUNGE completed"

    def resolve(self, text: str, uid: bool) -> list[tuple[int, Record]]:
        box = self.box()
        sequence = SequenceSet.parse(text)  # a bad set is BAD even in an empty mailbox
        if not box.records:
            return []
        if uid:
            top = box.records[-1].uid
            ranges = sequence.resolve(top)
            return [
                (i + 1, r)
                for i, r in enumerate(box.records)
                if any(a <= r.uid <= b for a, b in ranges)
            ]
        ranges = sequence.resolve(len(box.records))
        if any(b > len(box.records) for _, b in ranges):
            raise ProtocolError("message sequence number out of range")
        return [
            (i + 1, r) for i, r in enumerate(box.records) if any(a <= i + 1 <= b for a, b in ranges)
        ]

    async def cmd_search(self, cmd: Command, args: list[Any]) -> str:
        box = self.box()
        if len(args) >= 2 and str(args[0]).upper() == "CHARSET":
            if str(args[1]).upper() not in ("UTF-8", "US-ASCII"):
                await self.tagged(
                    cmd.tag, "NO", "[BADCHARSET (UTF-8 US-ASCII)] unsupported charset"
                )
                return None  # type: ignore[return-value]
            args = args[2:]
        matcher = compile_search(args, len(box.records), box.records[-1].uid if box.records else 0)
        spool = self.node.store.spool
        records = list(box.records)

        def run() -> list[int]:
            out = []
            for seq, record in enumerate(records, 1):
                if matcher(seq, record, spool.read):
                    out.append(record.uid if cmd.uid else seq)
            return out

        found = await self.node.store.run_blocking(run)
        await self.untagged("SEARCH" + "".join(f" {n}" for n in found))
        await self.report_changes(expunges=cmd.uid)
        return "SEARCH completed"

    async def cmd_fetch(self, cmd: Command, args: list[Any]) -> str:
        box = self.box()
        items = args[1] if isinstance(args[1], list) else [args[1]]
        items = [str(i) if not isinstance(i, list) else i for i in items]
        changedsince: int | None = None
        if len(args) > 2 and isinstance(args[2], list):
            mods = [str(x).upper() for x in args[2]]
            if "CHANGEDSINCE" in mods:
                changedsince = int(mods[mods.index("CHANGEDSINCE") + 1])
                self.condstore = True
        names = _fetch_items(items, cmd.uid)
        targets = self.resolve(as_text(args[0], "sequence set"), cmd.uid)
        if changedsince is not None:
            targets = [(seq, r) for seq, r in targets if r.modseq > changedsince]
        if self.condstore and "MODSEQ" not in names:
            names.append("MODSEQ")
        mark_seen = not box.readonly and any(
            n.startswith(("BODY[", "RFC822")) and n != "RFC822.SIZE" and n != "RFC822.HEADER"
            for n in names
        )
        if mark_seen:
            unseen = [r.uid for _, r in targets if "\\Seen" not in r.flags.split()]
            if unseen:
                result = await self.write(
                    lambda s, acct: engine_messages.set_flags(
                        s, acct, s.get(Mailbox, box.mailbox_id), unseen, ["\\Seen"], mode="add"
                    )
                )
                self.absorb(result.changed)
                seqs = box.seq_of()
                targets = [
                    (seqs[r.uid], box.records[seqs[r.uid] - 1]) for _, r in targets if r.uid in seqs
                ]
                if "FLAGS" not in names:
                    names.append("FLAGS")
        spool = self.node.store.spool
        # Rendered off the event loop in groups: one thread hop per group,
        # not per message, and one large write per group.
        for start in range(0, len(targets), 256):
            group = targets[start : start + 256]
            data = await self.node.store.run_blocking(
                partial(render_group, group, names, spool.read)
            )
            await self.send(data)
        await self.report_changes(expunges=cmd.uid)
        return "FETCH completed"

    async def cmd_store(self, cmd: Command, args: list[Any]) -> str:
        box = self.box()
        if box.readonly:
            raise InvalidArgument("mailbox is read-only")
        rest = args[1:]
        unchangedsince: int | None = None
        if rest and isinstance(rest[0], list):
            mods = [str(x).upper() for x in rest.pop(0)]
            if "UNCHANGEDSINCE" in mods:
                unchangedsince = int(mods[mods.index("UNCHANGEDSINCE") + 1])
                self.condstore = True
        action = str(rest[0]).upper()
        flags = rest[1] if isinstance(rest[1], list) else rest[1:]
        flags = [str(f) for f in flags]
        silent = action.endswith(".SILENT")
        mode = {"+FLAGS": "add", "-FLAGS": "remove", "FLAGS": "replace"}.get(
            action.removesuffix(".SILENT")
        )
        if mode is None:
            raise ProtocolError(f"bad STORE action {action}")
        targets = self.resolve(as_text(args[0], "sequence set"), cmd.uid)
        uids = [r.uid for _, r in targets]
        result = await self.write(
            lambda s, acct: engine_messages.set_flags(
                s,
                acct,
                s.get(Mailbox, box.mailbox_id),
                uids,
                flags,
                mode=mode,
                unchangedsince=unchangedsince,
            )
        )
        changed = {m.uid for m in result.changed}
        self.absorb(result.changed)
        seqs = box.seq_of()
        for _, record in targets:
            if record.uid not in seqs:
                continue
            current = box.records[seqs[record.uid] - 1]
            if silent and record.uid in changed and not self.condstore:
                continue
            parts = [f"FLAGS ({current.flags})"]
            if cmd.uid:
                parts.insert(0, f"UID {current.uid}")
            if self.condstore:
                parts.append(f"MODSEQ ({current.modseq})")
            await self.untagged(f"{seqs[record.uid]} FETCH ({' '.join(parts)})")
        if result.modified:
            modified = ",".join(str(u) for u in result.modified)
            return f"[MODIFIED {modified}] conditional STORE failed"
        return "STORE completed"

    async def _copy(self, cmd: Command, args: list[Any], move: bool) -> str:
        box = self.box()
        name = self.mailbox_name(args[1])
        uids = [r.uid for _, r in self.resolve(as_text(args[0], "sequence set"), cmd.uid)]

        def copy(s: DbSession, acct: Any) -> Any:
            src = s.get(Mailbox, box.mailbox_id)
            if src is None:
                raise NoSuchMailbox("the selected mailbox was deleted")
            dst = engine_mailbox.find_mailbox(s, acct, name)
            if dst is None:
                raise NoSuchMailbox(f"no such mailbox: {name}")
            if move:
                return engine_messages.move_messages(s, acct, src, dst, uids)
            return engine_messages.copy_messages(s, acct, src, dst, uids)

        try:
            result = await self.write(copy)
        except NoSuchMailbox:
            await self.tagged(cmd.tag, "NO", "[TRYCREATE] no such mailbox")
            return None  # type: ignore[return-value]
        code = ""
        if result.source_uids:
            src = ",".join(str(u) for u in result.source_uids)
            dst = ",".join(str(u) for u in result.dest_uids)
            code = f"[COPYUID {result.uidvalidity} {src} {dst}] "
        if move:
            await self.send(f"* OK {code}Moved\r\n".encode())
            await self.report_changes(expunges=True)
            return f"{cmd.name} completed"
        return f"{code}{cmd.name} completed"

    async def cmd_copy(self, cmd: Command, args: list[Any]) -> str:
        return await self._copy(cmd, args, move=False)

    async def cmd_move(self, cmd: Command, args: list[Any]) -> str:
        if self.box().readonly:
            raise InvalidArgument("mailbox is read-only")
        return await self._copy(cmd, args, move=True)

    async def cmd_idle(self, cmd: Command, args: list[Any]) -> str | None:
        await self.send(b"+ idling\r\n")
        await self.poll()
        deadline = time.monotonic() + self.node.config.imap.idle_timeout.total_seconds()
        while True:
            await self.report_changes(expunges=True)
            line = self.core.read_line()
            if line is not None:
                if line.strip().upper() == b"DONE":
                    return "IDLE terminated"
                await self.tagged(cmd.tag, "BAD", "expected DONE")
                return None
            if self.closing:
                return None
            self.idle_wake.clear()
            read = asyncio.ensure_future(self.reader.read(65536))
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
                await self.untagged("BYE [UNAVAILABLE] IDLE timed out")
                raise Closed

    # -- untagged updates ---------------------------------------------------

    def absorb(self, changed: Iterable[Message]) -> None:
        """Take our own flag changes into the snapshot (they are reported by
        this command's own FETCH responses, not again later)."""
        box = self.box()
        by_uid = {m.uid: m for m in changed}
        for record in box.records:
            updated = by_uid.get(record.uid)
            if updated is not None:
                record.flags = updated.flags
                record.modseq = updated.modseq

    async def refresh(self, report: bool, expunges: bool = True) -> None:
        box = self.selected
        if box is None:
            return
        fresh = await self.node.store.read(
            lambda s: load(s, s.get(Mailbox, box.mailbox_id), box.readonly)
        )
        old = {r.uid: r for r in box.records}
        new = {r.uid: r for r in fresh.records}
        gone = [uid for uid in old if uid not in new]
        if gone and not expunges:
            # RFC 3501 7.4.1: keep expunged messages' numbers until we may say so.
            fresh.records = sorted([*fresh.records, *(old[u] for u in gone)], key=lambda r: r.uid)
            new = {r.uid: r for r in fresh.records}
            gone = []
        if report:
            seqs = box.seq_of()
            # Each EXPUNGE renumbers the ones after it (RFC 3501 7.4.1).
            for removed, uid in enumerate(sorted(gone, key=lambda u: seqs[u])):
                await self.untagged(f"{seqs[uid] - removed} EXPUNGE")
            kept = [r for r in box.records if r.uid in new]
            for i, record in enumerate(kept, 1):
                now = new[record.uid]
                if now.flags != record.flags or (self.condstore and now.modseq != record.modseq):
                    extra = f" MODSEQ ({now.modseq})" if self.condstore else ""
                    await self.untagged(f"{i} FETCH (UID {now.uid} FLAGS ({now.flags}){extra})")
            if len(fresh.records) != len(kept) or gone:
                await self.untagged(f"{len(fresh.records)} EXISTS")
        box.records = fresh.records
        box.highestmodseq = fresh.highestmodseq
        box.uidnext = fresh.uidnext
        box.dirty = bool(gone) if not expunges else False

    async def report_changes(self, expunges: bool) -> None:
        if self.selected is not None and self.selected.dirty:
            self.selected.dirty = False
            await self.refresh(report=True, expunges=expunges)

    def changed(self, uniqueids: set[str]) -> None:
        if self.selected is not None and self.selected.uniqueid in uniqueids:
            self.selected.dirty = True
            self.idle_wake.set()


def load(session: DbSession, mailbox: Mailbox | None, readonly: bool) -> Selected:
    if mailbox is None:
        raise NoSuchMailbox("the selected mailbox was deleted")
    rows = session.execute(
        select(
            Message.uid,
            Message.guid,
            Message.flags,
            Message.modseq,
            Message.size,
            Message.internaldate,
        )
        .where(Message.mailbox_id == mailbox.id, Message.expunged.is_(False))
        .order_by(Message.uid)
    )
    selected = Selected(mailbox.id, mailbox.uniqueid, mailbox.name, readonly, mailbox.uidvalidity)
    selected.records = [Record(*row) for row in rows]
    selected.highestmodseq = mailbox.highestmodseq
    selected.uidnext = mailbox.last_uid + 1
    return selected


def _fetch_items(items: list[Any], uid: bool) -> list[str]:
    out: list[str] = []
    macros = {
        "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
        "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
        "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
    }
    for item in items:
        if isinstance(item, list):
            raise ProtocolError("bad FETCH item list")
        name = item.upper()
        if name in macros:
            out.extend(macros[name])
        elif name.split("[", 1)[0] in (
            "FLAGS",
            "UID",
            "INTERNALDATE",
            "RFC822.SIZE",
            "RFC822",
            "RFC822.HEADER",
            "RFC822.TEXT",
            "ENVELOPE",
            "BODYSTRUCTURE",
            "BODY",
            "BODY.PEEK",
            "MODSEQ",
        ):
            out.append(item if "[" in item else name)
        else:
            raise ProtocolError(f"unknown FETCH item {item[:30]}")
    if uid and "UID" not in out:
        out.insert(0, "UID")
    return out


def _structure(guid: str, reader: Any) -> tuple[bytes, bytes, bytes]:
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


def render_group(group: list[tuple[int, Record]], names: list[str], reader: Any) -> bytes:
    return b"".join(render_fetch(seq, record, names, reader) for seq, record in group)


def render_fetch(seq: int, record: Record, names: Iterable[str], reader: Any) -> bytes:
    parts: list[bytes] = []
    raw: bytes | None = None
    for name in names:
        upper = name.upper()
        if upper == "UID":
            parts.append(f"UID {record.uid}".encode())
        elif upper == "FLAGS":
            parts.append(f"FLAGS ({record.flags})".encode())
        elif upper == "INTERNALDATE":
            parts.append(f'INTERNALDATE "{imap_date(record.internaldate)}"'.encode())
        elif upper == "RFC822.SIZE":
            parts.append(f"RFC822.SIZE {record.size}".encode())
        elif upper == "MODSEQ":
            parts.append(f"MODSEQ ({record.modseq})".encode())
        elif upper in ("ENVELOPE", "BODYSTRUCTURE", "BODY"):
            env, full, simple = _structure(record.guid, reader)
            parts.append(
                upper.encode()
                + b" "
                + {"ENVELOPE": env, "BODYSTRUCTURE": full, "BODY": simple}[upper]
            )
        else:
            if raw is None:
                raw = reader(record.guid)
            parts.append(_body_item(name, raw))
    return f"* {seq} FETCH (".encode() + b" ".join(parts) + b")\r\n"


def _body_item(name: str, raw: bytes) -> bytes:
    upper = name.upper()
    if upper == "RFC822":
        return b"RFC822 " + literal(raw)
    if upper == "RFC822.HEADER":
        return b"RFC822.HEADER " + literal(structure.section(raw, "HEADER") or b"")
    if upper == "RFC822.TEXT":
        return b"RFC822.TEXT " + literal(structure.section(raw, "TEXT") or b"")
    head, _, rest = name.partition("[")
    spec, _, tail = rest.partition("]")
    data = structure.section(raw, spec)
    origin = ""
    if tail.startswith("<") and tail.endswith(">"):
        start_text, _, length_text = tail[1:-1].partition(".")
        start = int(start_text)
        if data is not None:
            data = data[start : start + int(length_text)] if length_text else data[start:]
        origin = f"<{start}>"
    label = f"BODY[{spec}]{origin}".encode()
    del head
    return label + b" " + (literal(data) if data is not None else b"NIL")


class ImapServer:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.sessions: set[Session] = set()
        self.tls = server_tls_context(node)
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
            if session.account in wanted:
                session.closing = "account moved to another node"
                session.idle_wake.set()
                try:
                    await session.untagged("BYE [UNAVAILABLE] account moved to another node")
                except ConnectionError:
                    pass
                session.writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(self, reader, writer)
        try:
            await session.run()
        except Exception:
            log.exception("IMAP session failed")
            writer.close()

    def count(self, account: str) -> int:
        return sum(1 for s in self.sessions if s.account == account)


def server_tls_context(node: Node) -> ssl.SSLContext | None:
    """The [tls] certificate, for STARTTLS (RFC 3501 6.2.1, RFC 2595)."""
    tls = node.config.tls
    if tls.cert is None or tls.key is None or not node.config.imap.starttls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    return context


async def start_imap(node: Node, host: str, port: int) -> tuple[ImapServer, asyncio.Server]:
    server = ImapServer(node)
    listener = await asyncio.start_server(server.handle, host, port, limit=1 << 20)
    return server, listener
