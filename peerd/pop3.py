"""POP3 (RFC 1939, RFC 2449 CAPA, RFC 5034 AUTH PLAIN) over the store's INBOX.

How this works: after login a session takes a snapshot of INBOX (live
records in UID order) and numbers it 1..n; DELE only marks, and the marked
messages are expunged at QUIT (the UPDATE state), in one store write. UIDL is
``<mailbox uniqueid>.<uid>``: both replicate unchanged, so a client that
leaves mail on the server downloads nothing again after a failover. Logins
for an account another node owns get ``-ERR [SYS/TEMP]`` naming the owner;
wrong passwords are delayed and counted (RFC 3206 ``[AUTH]``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from engine import accounts as engine_accounts
from engine import mailbox as engine_mailbox
from engine import messages as engine_messages
from engine.errors import EngineError
from engine.models import Message
from ownership.errors import OwnershipError
from peerd.node import Node

__all__ = ["start_pop3", "uidl"]

log = logging.getLogger("peerd.pop3")

OK = b"+OK"
ERR = b"-ERR"
CAPA = [
    b"USER",
    b"UIDL",
    b"TOP",
    b"PIPELINING",
    b"RESP-CODES",
    b"AUTH-RESP-CODE",
    b"SASL PLAIN",
    b"IMPLEMENTATION peerd",
]


def uidl(uniqueid: str, uid: int) -> str:
    """Stable across nodes and failovers (RFC 1939 7: 1-70 chars, 0x21-0x7E)."""
    return f"{uniqueid}.{uid}"


def dot_stuff(data: bytes) -> bytes:
    """RFC 1939 3: lines starting with '.' get one more; end with CRLF '.' CRLF."""
    body = data.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


@dataclass(slots=True)
class Entry:
    uid: int
    guid: str
    size: int
    deleted: bool = False


class Pop3Session:
    def __init__(
        self, node: Node, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.node = node
        self.reader = reader
        self.writer = writer
        self.user = ""
        self.account = ""
        self.uniqueid = ""
        self.mailbox_id = 0
        self.entries: list[Entry] = []
        self.failures = 0
        self.tls = False
        from peerd.imap.server import server_tls_context

        self.tls_context = server_tls_context(node)

    async def send(self, line: bytes) -> None:
        self.writer.write(line + b"\r\n")
        await self.writer.drain()

    async def run(self) -> None:
        config = self.node.config.pop3
        await self.send(OK + f" peerd POP3 server ready ({self.node.name})".encode())
        while True:
            try:
                line = await asyncio.wait_for(
                    self.reader.readline(), config.idle_timeout.total_seconds()
                )
            except TimeoutError:
                await self.send(ERR + b" autologout: idle for too long")
                return
            except ValueError:  # longer than the reader's limit
                await self.send(ERR + b" line too long")
                return
            if not line:
                return
            if len(line) > config.max_line:
                await self.send(ERR + b" line too long")
                continue
            words = line.strip().split(b" ")
            command = words[0].decode("ascii", "replace").upper()
            args = [w.decode("utf-8", "replace") for w in words[1:] if w]
            handler = getattr(self, f"cmd_{command.lower()}", None)
            if handler is None or (
                not self.account and command not in ("USER", "PASS", "AUTH", "CAPA", "QUIT", "STLS")
            ):
                await self.send(
                    ERR + f" unknown command or not allowed now: {command[:20]}".encode()
                )
                continue
            try:
                if await handler(args) is False:
                    return
            except (EngineError, OwnershipError) as exc:
                await self.send(ERR + b" [SYS/TEMP] " + exc.message.encode())
            except (ValueError, IndexError):
                await self.send(ERR + b" bad arguments")

    # -- authorization ------------------------------------------------------

    async def cmd_capa(self, args: list[str]) -> None:
        capa = [*CAPA, b"STLS"] if self.tls_context is not None and not self.tls else CAPA
        listing = b"".join(c + b"\r\n" for c in capa)
        self.writer.write(OK + b" capability list follows\r\n" + listing + b".\r\n")
        await self.writer.drain()

    async def cmd_stls(self, args: list[str]) -> None:
        """RFC 2595 4: STLS, in the AUTHORIZATION state only."""
        if self.tls_context is None or self.tls or self.account:
            await self.send(ERR + b" STLS not available")
            return
        await self.send(OK + b" begin TLS negotiation")
        await self.writer.start_tls(self.tls_context)
        self.tls = True

    async def cmd_user(self, args: list[str]) -> None:
        self.user = args[0]
        await self.send(OK + b" send PASS")

    async def cmd_pass(self, args: list[str]) -> bool | None:
        if not self.user:
            await self.send(ERR + b" USER first")
            return None
        return await self.login(self.user, " ".join(args))

    async def cmd_auth(self, args: list[str]) -> bool | None:
        if not args or args[0].upper() != "PLAIN":
            await self.send(ERR + b" only PLAIN")
            return None
        if len(args) > 1:
            response = args[1].encode()
        else:
            await self.send(b"+ ")
            response = (await self.reader.readline()).strip()
        try:
            _, user, password = base64.b64decode(response, validate=True).split(b"\0")
        except (ValueError, TypeError):
            await self.send(ERR + b" bad SASL response")
            return None
        return await self.login(
            user.decode("utf-8", "replace"), password.decode("utf-8", "replace")
        )

    async def login(self, user: str, password: str) -> bool | None:
        config = self.node.config.pop3
        result = await self.node.authenticate(user, password)
        if not result.ok:
            self.failures += 1
            await asyncio.sleep(config.login_failure_delay.total_seconds())
            await self.send(ERR + b" [AUTH] authentication failed")
            return False if self.failures >= config.max_login_failures else None
        if result.owner is not None:
            await self.send(
                ERR + f" [SYS/TEMP] {result.account} is served by {result.owner}".encode()
            )
            return None

        def load(session: DbSession) -> tuple[str, int, list[Entry]]:
            account = engine_accounts.get_account(session, result.account)
            box = engine_mailbox.get_mailbox(session, account, "INBOX")
            rows = session.execute(
                select(Message.uid, Message.guid, Message.size)
                .where(Message.mailbox_id == box.id, Message.expunged.is_(False))
                .order_by(Message.uid)
            )
            return box.uniqueid, box.id, [Entry(uid, guid, size) for uid, guid, size in rows]

        self.uniqueid, self.mailbox_id, self.entries = await self.node.store.read(load)
        self.account = result.account
        await self.send(OK + f" {len(self.entries)} messages".encode())
        return None

    # -- transaction --------------------------------------------------------

    def entry(self, number: str) -> Entry | None:
        index = int(number)
        if not 1 <= index <= len(self.entries) or self.entries[index - 1].deleted:
            return None
        return self.entries[index - 1]

    def live(self) -> list[tuple[int, Entry]]:
        return [(i, e) for i, e in enumerate(self.entries, 1) if not e.deleted]

    async def cmd_stat(self, args: list[str]) -> None:
        live = self.live()
        await self.send(OK + f" {len(live)} {sum(e.size for _, e in live)}".encode())

    async def _listing(self, args: list[str], value: str) -> None:
        if args:
            entry = self.entry(args[0])
            if entry is None:
                await self.send(ERR + b" no such message")
                return
            shown = entry.size if value == "size" else uidl(self.uniqueid, entry.uid)
            await self.send(OK + f" {args[0]} {shown}".encode())
            return
        lines = [
            f"{i} {e.size if value == 'size' else uidl(self.uniqueid, e.uid)}\r\n".encode()
            for i, e in self.live()
        ]
        self.writer.write(OK + b"\r\n" + b"".join(lines) + b".\r\n")
        await self.writer.drain()

    async def cmd_list(self, args: list[str]) -> None:
        await self._listing(args, "size")

    async def cmd_uidl(self, args: list[str]) -> None:
        await self._listing(args, "uidl")

    async def _read(self, entry: Entry) -> bytes:
        spool = self.node.store.spool
        return await self.node.store.run_blocking(lambda: spool.read(entry.guid))

    async def cmd_retr(self, args: list[str]) -> None:
        entry = self.entry(args[0])
        if entry is None:
            await self.send(ERR + b" no such message")
            return
        data = await self._read(entry)
        self.writer.write(OK + f" {len(data)} octets\r\n".encode() + dot_stuff(data))
        await self.writer.drain()

    async def cmd_top(self, args: list[str]) -> None:
        entry = self.entry(args[0])
        count = int(args[1])
        if entry is None or count < 0:
            await self.send(ERR + b" no such message")
            return
        data = await self._read(entry)
        end = data.find(b"\r\n\r\n")
        head, body = (data, b"") if end < 0 else (data[: end + 4], data[end + 4 :])
        lines = body.split(b"\r\n")[:count]
        text = head + b"\r\n".join(lines) + (b"\r\n" if lines and lines != [b""] else b"")
        self.writer.write(OK + b"\r\n" + dot_stuff(text))
        await self.writer.drain()

    async def cmd_dele(self, args: list[str]) -> None:
        entry = self.entry(args[0])
        if entry is None:
            await self.send(ERR + b" no such message")
            return
        entry.deleted = True
        await self.send(OK + b" marked")

    async def cmd_rset(self, args: list[str]) -> None:
        for entry in self.entries:
            entry.deleted = False
        await self.send(OK)

    async def cmd_noop(self, args: list[str]) -> None:
        await self.send(OK)

    async def cmd_quit(self, args: list[str]) -> bool:
        doomed = [e.uid for e in self.entries if e.deleted]
        if self.account and doomed:
            account, box_id = self.account, self.mailbox_id

            def update(session: DbSession) -> None:
                self.node.guard(session, account)
                acct = engine_accounts.get_account(session, account)
                from engine.models import Mailbox

                box = session.get(Mailbox, box_id)
                if box is not None:
                    engine_messages.expunge(session, acct, box, doomed)

            try:
                await self.node.store.write(update)
            except (EngineError, OwnershipError) as exc:
                await self.send(ERR + b" [SYS/TEMP] messages not removed: " + exc.message.encode())
                return False
        await self.send(OK + b" bye")
        return False


async def start_pop3(node: Node, host: str, port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await Pop3Session(node, reader, writer).run()
        except ConnectionError:
            pass
        except Exception:
            log.exception("POP3 session failed")
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=node.config.pop3.max_line * 4)
