"""Local delivery: recipient to account and folder, duplicates, quota.

How this works: the LMTP service spools the message bytes once, then asks
for one :func:`deliver` operation per recipient; the store commits them
together (group commit). A recipient address maps to an account as DESIGN.md
says: ``local+detail@domain`` is the account ``local@domain``, or ``local``
when the domain is one of the node's local domains. The detail names a
folder; if the account has no such folder the message goes to INBOX
(Cyrus's ``lmtp_fuzzy_mailbox_match`` is stricter; this is the common
expectation). A Message-ID already delivered to the same mailbox within the
duplicate window is accepted and not stored again (Cyrus's duplicate
delivery suppression), which also makes an MTA's retry after a lost 250
harmless.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from engine.accounts import find_account
from engine.db import upsert
from engine.errors import InvalidArgument, NoSuchAccount
from engine.mailbox import find_mailbox, normalize_mailbox_name
from engine.messages import append, put_meta
from engine.models import Account, Duplicate, Mailbox

__all__ = [
    "DeliveryOptions",
    "DeliveryResult",
    "Recipient",
    "deliver",
    "message_id_of",
    "parse_recipient",
    "prune_duplicates",
    "resolve_account",
]

_MESSAGE_ID_RE = re.compile(rb"(?im)^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)")


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    local_domains: frozenset[str] = frozenset()
    duplicate_window: dt.timedelta | None = dt.timedelta(days=3)


@dataclass(frozen=True, slots=True)
class Recipient:
    """A parsed recipient: the candidate account names and the +detail."""

    address: str
    candidates: tuple[str, ...]
    detail: str | None


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    account: str
    mailbox: str
    uid: int | None
    duplicate: bool


def parse_recipient(address: str, local_domains: frozenset[str]) -> Recipient:
    raw = address.strip()
    if raw.startswith("<") and raw.endswith(">"):
        raw = raw[1:-1]
    if not raw or len(raw) > 320:
        raise InvalidArgument("empty or overlong recipient")
    local, at, domain = raw.rpartition("@") if "@" in raw else (raw, "", "")
    domain = domain.lower()
    base, plus, detail = local.partition("+")
    if not base:
        raise InvalidArgument(f"invalid recipient {address!r}")
    candidates: list[str] = []
    if at:
        if domain in local_domains:
            candidates.append(base)
        candidates.append(f"{base}@{domain}")
    else:
        candidates.append(base)
    return Recipient(address=raw, candidates=tuple(candidates), detail=detail if plus else None)


def resolve_account(session: Session, recipient: Recipient) -> Account:
    # Within one group commit many deliveries go to the same accounts: keep
    # the loaded rows for the batch (the session dies with it).
    cache: dict[str, Account] = session.info.setdefault("account_cache", {})
    for name in recipient.candidates:
        account = cache.get(name)
        if account is not None and account in session:
            return account
        account = find_account(session, name)
        if account is not None:
            cache[name] = account
            return account
    raise NoSuchAccount(f"no such user: {recipient.address}")


def message_id_of(data: bytes) -> str | None:
    """The Message-ID header's value, from the header block only."""
    end = data.find(b"\r\n\r\n")
    header = data if end < 0 else data[: end + 2]
    match = _MESSAGE_ID_RE.search(header)
    if match is None:
        return None
    value = re.sub(rb"\s+", b"", match.group(1)).decode("ascii", "replace")
    return value[:255] or None


def _target(session: Session, account: Account, detail: str | None) -> Mailbox:
    cache: dict[tuple[int, str | None], Mailbox] = session.info.setdefault("mailbox_cache", {})
    cached = cache.get((account.id, detail))
    if cached is not None and cached in session:
        return cached
    mailbox = _find_target(session, account, detail)
    cache[(account.id, detail)] = mailbox
    return mailbox


def _find_target(session: Session, account: Account, detail: str | None) -> Mailbox:
    if detail:
        try:
            name = normalize_mailbox_name(detail)
        except InvalidArgument:
            name = ""
        if name:
            mailbox = find_mailbox(session, account, name)
            if mailbox is not None:
                return mailbox
    inbox = find_mailbox(session, account, "INBOX")
    if inbox is None:
        # Accounts always get an INBOX; one deleted by hand comes back.
        from engine.mailbox import create_mailbox

        inbox = create_mailbox(session, account, "INBOX")
    return inbox


def deliver(
    session: Session,
    recipient: Recipient,
    *,
    guid: str,
    size: int,
    internaldate: dt.datetime,
    message_id: str | None,
    meta: bytes | None,
    options: DeliveryOptions,
    guard: Callable[[Session, str], object] | None = None,
) -> DeliveryResult:
    """Deliver to one recipient. ``guard(session, account)`` may refuse by
    raising; it runs in this transaction (the daemon's ownership fence)."""
    account = resolve_account(session, recipient)
    if guard is not None:
        guard(session, account.name)
    mailbox = _target(session, account, recipient.detail)
    if message_id and options.duplicate_window is not None:
        now = dt.datetime.now(dt.UTC)
        seen = session.scalar(
            select(Duplicate.delivered_at).where(
                Duplicate.mailbox_uniqueid == mailbox.uniqueid, Duplicate.message_id == message_id
            )
        )
        if seen is not None and now - seen <= options.duplicate_window:
            return DeliveryResult(account.name, mailbox.name, None, duplicate=True)
        upsert(
            session,
            Duplicate.__table__,
            {"mailbox_uniqueid": mailbox.uniqueid, "message_id": message_id, "delivered_at": now},
            ["mailbox_uniqueid", "message_id"],
            replace=("delivered_at",),
        )
    put_meta(session, guid, meta)
    record = append(
        session, account, mailbox, guid=guid, size=size, internaldate=internaldate, flags=()
    )
    return DeliveryResult(account.name, mailbox.name, record.uid, duplicate=False)


def prune_duplicates(session: Session, window: dt.timedelta) -> int:
    cutoff = dt.datetime.now(dt.UTC) - window
    result = session.execute(delete(Duplicate).where(Duplicate.delivered_at < cutoff))
    return int(result.rowcount)  # type: ignore[attr-defined]
