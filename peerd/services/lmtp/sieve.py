"""Sieve at LMTP delivery: run the recipient's active script and carry out what it decided.

How this works: :class:`SieveFilter` is asked by the store backend
(:mod:`peerd.services.lmtp.backend`) which of a message's recipients have an
active script (:meth:`SieveFilter.programs`: one read for the message,
compiled programs cached until a ``sieve`` change commits, here or applied
from the partner). Those recipients do not take the grouped delivery path;
:meth:`SieveFilter.deliver` evaluates the script off the event loop
(:func:`peerd.protocols.sieve.evaluate`, bounded work) and then, in order:

1. ``reject``/``ereject`` (RFC 5429): a ``550`` for this recipient only;
   nothing is stored or sent.
2. ``redirect`` (RFC 5228 section 4.2): the message to the address
   through ``[sieve] relay`` with the original envelope sender, with one
   field added on top, ``X-Sieve-Redirected-From: <recipient>`` (loop
   control, which section 4.2 asks for): a message that already holds one
   naming this recipient has been through this redirect before, and is not
   redirected again but kept (a script redirecting to an address that comes
   back here looped until the MTA's hop limit, and with ``:copy`` stored a
   copy every time round). A redirect that cannot be sent (no relay, the
   relay refused) keeps the message in INBOX instead, so nothing is lost.
3. ``keep`` and ``fileinto`` with their ``imap4flags`` flags: one fenced
   write (``Node.write_owned``) appends to every target; a ``fileinto`` to a
   mailbox the account does not have files into INBOX (RFC 5228 section 4.1
   leaves the choice to the server; peerd does not create mailboxes on its
   own) unless it says ``:create`` (RFC 5490 section 3.2): then the mailbox,
   and any superior that is missing, is created in that same write, and
   replicates like an IMAP CREATE. A creation that fails (a name the store
   refuses, the mailbox limit) files into INBOX. ``discard`` stores nothing.
   ``mailboxexists`` (RFC 5490 section 3.1) reads the account's mailbox
   names once per message, only for scripts that require "mailbox".
4. ``vacation`` (RFC 5230): the reply-once record is checked and written
   in one fenced write (:func:`engine.sieve.vacation_due`), replicated like
   the scripts; only then the reply goes out through the relay with an
   empty return path.

A runtime error in the script (RFC 5228 section 2.10.6) leaves only the
implicit keep and is logged in one line.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
import re
import smtplib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import mailview
from engine import sieve as sieve_store
from engine.delivery import Recipient, resolve_account
from engine.errors import EngineError, InvalidArgument
from engine.flags import normalize_flags
from engine.mailbox import create_mailbox, find_mailbox, mailbox_names, normalize_mailbox_name
from engine.messages import append
from engine.models import Account, Duplicate
from engine.spool import Staged
from engine.synclog import Change
from ownership.errors import OwnershipError
from peerd.node.config import Address
from peerd.node.errormap import S250_OK, lmtp_reply, lmtp_sieve_reject
from peerd.node.node import Node
from peerd.protocols.sieve import (
    Context,
    FileInto,
    Keep,
    Message,
    Program,
    Redirect,
    Result,
    ScriptError,
    Vacation,
    compile_script,
    compose_reply,
    evaluate,
)

__all__ = ["SieveFilter", "Stored", "redirected_from"]

log = logging.getLogger("peerd.services.lmtp.sieve")

INBOX = "INBOX"
_DOMAIN: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?")
# Compiled programs kept; the cache is emptied whenever it grows past this.
MAX_CACHED = 10_000
# Threads running scripts and compiling them (CPU under the interpreter lock:
# more would not go faster), and sending through the relay (waiting on it).
RUN_THREADS = 2
SEND_THREADS = 4


class Stored:
    """What one recipient's filtered delivery did: the reply and whether it stored mail."""

    __slots__ = ("account", "reply", "stored")

    def __init__(self, account: str, reply: str, stored: bool) -> None:
        self.account = account
        self.reply = reply
        self.stored = stored


class SieveFilter:
    """The Sieve step of LMTP delivery for one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.relay: Address | None = node.config.sieve.relay
        lmtp = node.config.lmtp
        self.window = lmtp.duplicate_window if lmtp.duplicate_suppression else None
        self.local_domains = tuple(d.lower() for d in node.config.node.local_domains)
        # recipient address -> (account, program) or None (no active script).
        self._programs: dict[str, tuple[str, Program] | None] = {}
        # Threads of Sieve's own: in the loop's default pool, which password
        # checks use too, sends waiting on a relay that hangs (30 s each) or a
        # flood of runs made every login of every user on the node wait.
        self._runs = ThreadPoolExecutor(RUN_THREADS, thread_name_prefix="sieve-run")
        self._sends = ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="sieve-send")
        node.store.add_listener(self._changed)

    def _changed(self, changes: list[Change]) -> None:
        if any(c.kind in ("sieve", "account") for c in changes):
            self._programs.clear()

    async def programs(
        self, recipients: list[tuple[str, Recipient]]
    ) -> dict[str, tuple[str, Program]]:
        """The recipients (by address) whose account has an active script."""
        unknown = [(a, r) for a, r in recipients if a not in self._programs]
        if unknown:

            def load(session: Session) -> dict[str, tuple[str, str] | None]:
                out: dict[str, tuple[str, str] | None] = {}
                for address, recipient in unknown:
                    try:
                        account = resolve_account(session, recipient).name
                    except EngineError:
                        continue  # the grouped path answers it
                    script = sieve_store.active_script(session, account)
                    out[address] = None if script is None else (account, script[1])
                return out

            loaded = await self.node.store.read(load)
            # Compiled in a thread: half a second of CPU for a script near
            # the size cap, which on the event loop stalled the whole node.
            compiled = await asyncio.get_running_loop().run_in_executor(
                self._runs, lambda: {a: self._compile(a, text) for a, text in loaded.items()}
            )
            if len(self._programs) > MAX_CACHED:
                self._programs.clear()
            self._programs.update(compiled)
        out: dict[str, tuple[str, Program]] = {}
        for address, _ in recipients:
            program = self._programs.get(address)
            if program is not None:
                out[address] = program
        return out

    @staticmethod
    def _compile(address: str, found: tuple[str, str] | None) -> tuple[str, Program] | None:
        if found is None:
            return None
        account, text = found
        try:
            return account, compile_script(text.encode("utf-8"))
        except ScriptError as exc:
            # Stored scripts were compiled on upload; a newer, stricter
            # compiler may refuse one: deliver as if there were no script.
            log.warning("sieve: the active script of %s does not compile: %s", account, exc)
            return None

    def addresses(self, account: str, address: str) -> tuple[str, ...]:
        """The user's own addresses (RFC 5230 section 4.5): the recipient and the account's."""
        own = [address.strip("<>")]
        if "@" in account:
            own.append(account)
        else:
            own.extend(f"{account}@{domain}" for domain in self.local_domains)
        return tuple(dict.fromkeys(own))

    async def deliver(
        self,
        account: str,
        program: Program,
        *,
        address: str,
        data: bytes,
        mail_from: str,
        staged: Staged,
        size: int,
        internaldate: dt.datetime,
        message_id: str | None = None,
    ) -> Stored:
        mailboxes: frozenset[str] = frozenset()
        if "mailbox" in program.required:
            mailboxes = await self.node.store.read(lambda s: _mailbox_names(s, account))
        context = Context(user_addresses=self.addresses(account, address), mailboxes=mailboxes)

        def run() -> Result:
            # The header parse too is the sender's to make slow (a megabyte
            # of encoded words is a second of CPU): off the event loop.
            message = Message.from_bytes(data, mail_from, address.strip("<>"))
            return evaluate(program, message, context)

        result = await asyncio.get_running_loop().run_in_executor(self._runs, run)
        if result.error is not None:
            log.warning("sieve: script of %s failed, message kept: %s", account, result.error)
        rejected = result.rejected
        if rejected is not None:
            self.node.counters.inc("sieve_rejected")
            return Stored(account, lmtp_sieve_reject(rejected.reason), False)
        targets: list[_Target] = []
        vacation: Vacation | None = None
        for action in result.actions:
            if isinstance(action, Keep):
                targets.append(_Target(INBOX, action.flags))
            elif isinstance(action, FileInto):
                targets.append(_Target(action.mailbox, action.flags, action.create))
            elif isinstance(action, Redirect):
                me = address.strip("<>")
                if redirected_from(data, me):
                    log.warning(
                        "sieve: %s redirects a message it redirected before (a loop): kept",
                        me,
                    )
                    self.node.counters.inc("sieve_redirect_loops")
                    sent = False
                else:
                    sent = await self._send(
                        mail_from, action.address, _LOOP_FIELD % me.encode() + data
                    )
                if not sent:
                    if not action.copy:
                        targets.append(_Target(INBOX, ()))
                else:
                    self.node.counters.inc("sieve_redirected")
            elif isinstance(action, Vacation):
                vacation = action
        stored = False
        if targets:
            try:
                stored = await self.node.write_owned(
                    account,
                    lambda s, a: _store(
                        s, a, targets, _Copy(staged, size, internaldate, message_id, self.window)
                    ),
                    staged=[staged],
                )
            except (EngineError, OwnershipError) as exc:
                return Stored(account, lmtp_reply(exc), False)
        if vacation is not None:
            try:
                await self._vacation(account, vacation)
            except Exception:
                # The message is stored: a failed reply must not turn its 250
                # into a 451 (the MTA would deliver it again).
                log.exception("sieve: vacation reply for %s failed", account)
        elif result.vacation_skipped:
            log.info("sieve: no vacation reply for %s: %s", account, result.vacation_skipped)
        return Stored(account, S250_OK, stored)

    async def _vacation(self, account: str, action: Vacation) -> None:
        if self.relay is None:
            log.warning("sieve: vacation reply for %s not sent: no [sieve] relay", account)
            return
        try:
            due = await self.node.write_owned(
                account, lambda s, a: sieve_store.vacation_due(s, a, action.key, action.days)
            )
        except (EngineError, OwnershipError) as exc:
            log.warning("sieve: vacation record for %s not written: %s", account, exc)
            return
        if not due:
            return
        # The reply's Message-ID names the :from domain when it is a plain
        # one; a script's :from may hold anything (a line break made a
        # header field of its own in the reply).
        domain = action.from_.rpartition("@")[2].strip("<> ")
        if not _DOMAIN.fullmatch(domain):
            domain = self.node.config.node.hostname
        reply = compose_reply(
            action,
            date=email.utils.formatdate(usegmt=True),
            message_id=email.utils.make_msgid(domain=domain),
        )
        if await self._send("", action.recipient, reply):
            self.node.counters.inc("sieve_vacation_replies")

    async def _send(self, mail_from: str, to: str, data: bytes) -> bool:
        """Send through ``[sieve] relay``; False (logged) when it could not."""
        relay = self.relay
        if relay is None:
            log.warning("sieve: redirect to %s not sent: no [sieve] relay; kept", to)
            return False

        # RFC 6531: an address with UTF-8 in it goes with SMTPUTF8 (smtplib
        # writes commands as ASCII otherwise, and raised UnicodeEncodeError);
        # a relay that does not offer it refuses the send like any other.
        options = [] if mail_from.isascii() and to.isascii() else ["SMTPUTF8"]

        def send() -> None:
            with smtplib.SMTP(relay.host, relay.port, timeout=30) as smtp:
                smtp.sendmail(mail_from, [to], data, mail_options=options)

        try:
            await asyncio.get_running_loop().run_in_executor(self._sends, send)
        except (OSError, smtplib.SMTPException, ValueError) as exc:
            # ValueError: what smtplib raises on an address it cannot write.
            log.warning("sieve: sending to %s through %s failed: %s", to, relay, exc)
            return False
        return True


# The field a redirect adds (Pigeonhole, Dovecot's Sieve, adds the same),
# and the most of a header read for it (a sender's header may be huge).
MAX_LOOP_HEADER: Final = 1 << 20
_LOOP_FIELD: Final = b"X-Sieve-Redirected-From: %s\r\n"
_LOOP_RE: Final = re.compile(rb"(?im)^x-sieve-redirected-from:[ \t]*<?([^\r\n>]*)>?[ \t]*\r?$")


def redirected_from(data: bytes, address: str) -> bool:
    """Whether the message's header holds an ``X-Sieve-Redirected-From``
    naming ``address`` (letter case aside): this recipient redirected it
    before."""
    header_end = data.find(b"\r\n\r\n", 0, MAX_LOOP_HEADER)
    header = data[: header_end if header_end >= 0 else MAX_LOOP_HEADER]
    wanted = address.lower()
    return any(
        m.group(1).strip().decode("utf-8", "replace").lower() == wanted
        for m in _LOOP_RE.finditer(header)
    )


def _flags(flags: Iterable[str]) -> list[str]:
    """The flags the store accepts; a flag it refuses is dropped."""
    out = []
    for flag in flags:
        try:
            normalize_flags([flag])
        except (InvalidArgument, ValueError):
            log.info("sieve: flag %r dropped: not a valid IMAP flag", flag)
            continue
        out.append(flag)
    return out


def _mailbox_names(session: Session, account: str) -> frozenset[str]:
    row = session.scalar(select(Account).where(Account.name == account))
    return frozenset(mailbox_names(session, row)) if row else frozenset()


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a keep or fileinto puts the message, with its flags."""

    mailbox: str
    flags: tuple[str, ...]
    create: bool = False  # RFC 5490 section 3.2


@dataclass(frozen=True, slots=True)
class _Copy:
    """The message to append, and the duplicate window it is checked against."""

    staged: Staged
    size: int
    internaldate: dt.datetime
    message_id: str | None
    window: dt.timedelta | None


def _store(
    session: Session,
    account: Account,
    targets: list[_Target],
    copy: _Copy,
) -> bool:
    """Append to every target (RFC 5228 2.10.3: one copy per mailbox, flags united).

    A Message-ID delivered to the same mailbox within the duplicate window is
    not stored again (as on the unfiltered path: an MTA's retry after a lost
    reply files nothing twice). True if anything was stored.
    """
    merged: dict[str, list[str]] = {}
    for target in targets:
        name = target.mailbox
        try:
            folder = normalize_mailbox_name(name)
        except InvalidArgument:
            folder = INBOX
        missing = folder != INBOX and find_mailbox(session, account, folder) is None
        if missing and not (target.create and _create(session, account, folder)):
            log.info("sieve: fileinto %r for %s: no such mailbox, into INBOX", name, account.name)
            folder = INBOX
        merged.setdefault(folder, []).extend(_flags(target.flags))
    now = dt.datetime.now(dt.UTC)
    stored = False
    for folder, wanted in merged.items():
        mailbox = find_mailbox(session, account, folder)
        if mailbox is None:
            mailbox = create_mailbox(session, account, INBOX)
        if copy.message_id and copy.window is not None:
            seen = session.get(Duplicate, (mailbox.uniqueid, copy.message_id))
            if seen is not None and now - sieve_store.utc(seen.delivered_at) <= copy.window:
                continue
            if seen is None:
                session.add(
                    Duplicate(
                        mailbox_uniqueid=mailbox.uniqueid,
                        message_id=copy.message_id,
                        delivered_at=now,
                    )
                )
            else:
                seen.delivered_at = now
        append(
            session,
            account,
            mailbox,
            guid=copy.staged.guid,
            size=copy.size,
            flags=wanted,
            internaldate=copy.internaldate,
        )
        stored = True
    return stored


def _create(session: Session, account: Account, name: str) -> bool:
    """``fileinto :create``: make ``name`` and its missing superiors, as IMAP
    CREATE does; False (logged, nothing left half made) if the store refuses."""
    try:
        with session.begin_nested():
            mailview.create_mailbox(session, account, name)
    except EngineError as exc:
        log.info("sieve: fileinto :create %r for %s refused: %s", name, account.name, exc)
        return False
    log.info("sieve: fileinto :create made %r for %s", name, account.name)
    return True
