"""What LMTP asks of the node: recipient checks and deliveries into the store.

How this works: the protocol front (:mod:`peerd.services.lmtp.front`) speaks RFC 2033 and
spools each message's bytes; everything that needs the database happens
here, in the daemon's main process, behind two calls. :class:`StoreBackend`
is used directly when the front runs in the daemon itself and, through
:mod:`peerd.services.lmtp.worker`, when it runs in LMTP worker processes.

- :meth:`StoreBackend.check_rcpt`: the recipient's account exists here and
  this node owns it (``451`` when another node owns it). One it does not
  know is ``550 5.1.1`` only when the partner does not know it either
  (``partner_knows``): ``451`` when the partner has it (created there, not
  synced yet) or cannot be asked.
- :meth:`StoreBackend.deliver`: one grouped write per accepted recipient
  (:class:`~engine.delivery.DeliveryRunner`): they share the group commit
  with every other delivery in flight and each gets its own reply, in RCPT
  order (RFC 2033 4.2): some may succeed while others fail (over quota,
  ownership moved in between). The after-delivery hooks (synchronous
  replication waits there) run before the replies go back.

- :meth:`StoreBackend.watch_ownership`: how the front learns that a
  recipient it accepted recently may no longer be ours.

A delivery in progress is shielded from the caller going away and from
shutdown: it either commits or fails as a whole; nothing is half-stored.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy.orm import Session

from engine.delivery import (
    Delivery,
    DeliveryOptions,
    DeliveryResult,
    DeliveryRunner,
    Recipient,
    parse_recipient,
    resolve_account,
)
from engine.errors import EngineError, NoSuchAccount
from ownership.errors import OwnershipError
from peerd.node import maillog
from peerd.node.errormap import (
    S250_OK,
    S250_OK_DUPLICATE,
    S451_LOCAL_ERROR,
    S451_NOT_HERE_YET,
    S451_PARTNER_UNKNOWN,
    S501_BAD_ADDRESS,
    lmtp_reply,
)
from peerd.node.node import Node
from peerd.protocols.sieve import Program
from peerd.services.lmtp.message import Message
from peerd.services.lmtp.sieve import SieveFilter, Stored

__all__ = ["Message", "StoreBackend"]

log = logging.getLogger("peerd.services.lmtp.front")


class StoreBackend:
    """Recipient checks and deliveries against this node's store."""

    def __init__(
        self,
        node: Node,
        partner_knows: Callable[[Sequence[str]], Awaitable[bool | None]] | None = None,
    ) -> None:
        self.node = node
        self.partner_knows = partner_knows
        lmtp = node.config.lmtp
        self.local_domains = frozenset(d.lower() for d in node.config.node.local_domains)
        self.lowercase = node.config.accounts.lowercase_names
        self.options = DeliveryOptions(
            local_domains=self.local_domains,
            duplicate_window=lmtp.duplicate_window if lmtp.duplicate_suppression else None,
        )
        self.runner = DeliveryRunner(self.options, node.guard_many)
        self.sieve = SieveFilter(node) if node.config.sieve.enabled else None

    async def check_rcpt(self, address: str) -> str | None:
        """None if ``address`` may be delivered to now, else the reply that refuses it
        (and its mail log line: a recipient refused before the message came)."""
        refusal = await self._check_rcpt(address)
        if refusal is not None:
            maillog.delivery(
                "deferred" if refusal.startswith("4") else "refused",
                queue_id=None,
                recipient=address,
                account="",
                mailbox="",
                size=0,
                guid="",
                reply=refusal,
            )
        return refusal

    async def _check_rcpt(self, address: str) -> str | None:
        try:
            recipient = parse_recipient(address, self.local_domains, self.lowercase)
        except EngineError:
            return S501_BAD_ADDRESS

        def check(session: Session) -> None:
            self.node.guard(session, resolve_account(session, recipient).name)

        try:
            await self.node.store.read(check)
        except NoSuchAccount as exc:
            self.node.counters.inc("lmtp_rcpt_refused")
            if self.partner_knows is None:
                return lmtp_reply(exc)
            known = await self.partner_knows(recipient.candidates)
            if known is None:
                return S451_PARTNER_UNKNOWN
            return S451_NOT_HERE_YET if known else lmtp_reply(exc)
        except (EngineError, OwnershipError) as exc:
            self.node.counters.inc("lmtp_rcpt_refused")
            return lmtp_reply(exc)
        return None

    def watch_ownership(self, forget: Callable[[], None]) -> Callable[[], None]:
        """Call ``forget`` after every commit that changed an ownership row
        (:meth:`Node.watch_ownership`); returns what stops it."""
        return self.node.watch_ownership(lambda accounts: forget())

    async def deliver(self, message: Message) -> list[str]:
        """Deliver to every recipient; one reply each, in order."""
        self.node.begin()
        try:
            # Shielded: once the bytes are spooled, the delivery runs to its
            # end even if the client hangs up or the daemon is asked to stop.
            return await asyncio.shield(self._deliver(message))
        finally:
            self.node.end()

    async def _deliver(self, message: Message) -> list[str]:
        store = self.node.store
        internaldate = dt.datetime.now(dt.UTC)
        parsed: list[tuple[str, Recipient | EngineError]] = []
        for address in message.recipients:
            try:
                parsed.append(
                    (address, parse_recipient(address, self.local_domains, self.lowercase))
                )
            except EngineError as exc:
                parsed.append((address, exc))
        filtered = await self._filtered(parsed)
        data = await self._bytes(message) if filtered else b""
        writes = []
        for address, recipient in parsed:
            if isinstance(recipient, EngineError):
                writes.append(_failed(recipient))
                continue
            if address in filtered and self.sieve is not None:
                account, program = filtered[address]
                writes.append(
                    self.sieve.deliver(
                        account,
                        program,
                        address=address,
                        data=data,
                        mail_from=_sender(message, data),
                        staged=message.staged,
                        size=message.size,
                        internaldate=internaldate,
                        message_id=message.message_id,
                    )
                )
                continue
            op = Delivery(
                recipient, message.staged.guid, message.size, internaldate, message.message_id
            )
            writes.append(store.write_grouped(self.runner, op, staged=[message.staged]))
        results: list[Any]
        if len(writes) == 1:
            # One recipient (most deliveries): awaited here, without the task
            # and the future gather makes; the same outcome either way.
            try:
                results = [await writes[0]]
            except Exception as exc:
                results = [exc]
        else:
            results = await asyncio.gather(*writes, return_exceptions=True)
        if not any(
            isinstance(r, DeliveryResult) or (isinstance(r, Stored) and r.stored) for r in results
        ):
            store.spool.discard([message.staged])
        delivered = [
            r.account for r in results if isinstance(r, DeliveryResult) and not r.duplicate
        ] + [r.account for r in results if isinstance(r, Stored) and r.stored]
        for hook in self.node.after_delivery:
            await hook(delivered)
        replies = [self._reply(result) for result in results]
        for (address, _), result, reply in zip(parsed, results, replies, strict=True):
            _log_delivery(message, address, result, reply)
        return replies

    async def _filtered(
        self, parsed: list[tuple[str, Recipient | EngineError]]
    ) -> dict[str, tuple[str, Program]]:
        """The recipients whose account has an active Sieve script (none when off)."""
        if self.sieve is None:
            return {}
        wanted = [(a, r) for a, r in parsed if isinstance(r, Recipient)]
        try:
            return await self.sieve.programs(wanted)
        except (EngineError, OwnershipError) as exc:
            # The store could not be read: deliver unfiltered rather than not at all.
            log.warning("sieve: scripts not read, delivering unfiltered: %s", exc)
            return {}

    async def _bytes(self, message: Message) -> bytes:
        """The spooled message, for Sieve: its temp file, or the spool's copy."""
        staged = message.staged

        def read() -> bytes:
            if staged.tmp is not None:
                try:
                    return staged.tmp.read_bytes()
                except FileNotFoundError:
                    pass  # the same bytes were committed meanwhile
            return staged.final.read_bytes()

        return await self.node.store.run_blocking(read)

    def _reply(self, result: Any) -> str:
        counters = self.node.counters
        if isinstance(result, Stored):
            counters.inc("lmtp_delivered" if result.reply.startswith("2") else "lmtp_refused")
            return result.reply
        if isinstance(result, DeliveryResult):
            counters.inc("lmtp_delivered")
            return S250_OK_DUPLICATE if result.duplicate else S250_OK
        if isinstance(result, (EngineError, OwnershipError)):
            reply = lmtp_reply(result)
            # A 4xx (database trouble, the account moved away) is a temporary failure.
            counters.inc("lmtp_temp_failures" if reply.startswith("4") else "lmtp_refused")
            return reply
        log.error("delivery failed unexpectedly: %r", result)
        counters.inc("lmtp_temp_failures")
        return S451_LOCAL_ERROR


def _log_delivery(message: Message, address: str, result: Any, reply: str) -> None:
    """One mail log line for one recipient (:func:`peerd.node.maillog.delivery`)."""
    account = mailbox = ""
    if isinstance(result, DeliveryResult):
        account, mailbox = result.account, result.mailbox
        outcome = "duplicate" if result.duplicate else "stored"
    elif isinstance(result, Stored):
        account, mailbox = result.account, "(sieve)"
        outcome = "stored" if result.stored else "discarded" if reply.startswith("2") else ""
    else:
        outcome = ""
    if not outcome:
        outcome = "deferred" if reply.startswith("4") else "refused"
    maillog.delivery(
        outcome,
        queue_id=message.queue_id,
        recipient=address,
        account=account,
        mailbox=mailbox,
        size=message.size,
        guid=message.staged.guid,
        reply=reply,
    )


async def _failed(exc: Exception) -> Any:
    raise exc


def _sender(message: Message, data: bytes) -> str:
    """The envelope sender for Sieve: the front's MAIL FROM, else Return-Path."""
    if message.mail_from is not None:
        return message.mail_from.strip("<>")
    end = data.find(b"\r\n\r\n")
    for line in (data if end < 0 else data[:end]).split(b"\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"return-path":
            return value.strip().decode("utf-8", "replace").strip("<>")
    return ""
