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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, bindparam, delete, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from engine import fastsql, synclog
from engine.accounts import find_account
from engine.db import execute_rows, upsert, utcnow
from engine.errors import InvalidArgument, NoSuchAccount, OverQuota
from engine.mailbox import create_mailbox, normalize_mailbox_name
from engine.messages import (
    NewRecords,
    add_appended,
    check_message_limit,
    live_messages,
    put_meta,
)
from engine.models import Account, Duplicate, Mailbox
from engine.msgid import message_id_of
from engine.recipients import Recipient, parse_recipient

__all__ = [
    "Delivery",
    "DeliveryOptions",
    "DeliveryResult",
    "DeliveryRunner",
    "Recipient",
    "deliver",
    "message_id_of",
    "parse_recipient",
    "prune_duplicates",
    "resolve_account",
]


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    local_domains: frozenset[str] = frozenset()
    duplicate_window: dt.timedelta | None = dt.timedelta(days=3)


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    account: str
    mailbox: str
    uid: int | None
    duplicate: bool


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


def _chunks(items: list[str], size: int = 400) -> Iterable[list[str]]:
    # SQLite limits the parameters of one statement.
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _folder_name(detail: str) -> str:
    try:
        return normalize_mailbox_name(detail)
    except InvalidArgument:
        return ""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message for one recipient; its bytes are already spooled under ``guid``."""

    recipient: Recipient
    guid: str
    size: int
    internaldate: dt.datetime
    message_id: str | None
    meta: bytes | None = None


Outcome = DeliveryResult | Exception


@dataclass(slots=True)
class _AccountRow:
    """The columns of ``accounts`` a delivery reads and changes (a plain row, not ORM)."""

    id: int
    name: str
    quota_limit: int | None
    quota_used: int
    message_limit: int | None
    messages: int = 0
    """Live messages, counted only when there is a ``message_limit``."""


@dataclass(slots=True)
class _MailboxRow:
    """The columns of ``mailboxes`` a delivery reads and changes."""

    id: int
    account_id: int
    uniqueid: str
    name: str
    last_uid: int
    highestmodseq: int
    checksum: int
    exists: int


_MAILBOX_COLUMNS = (
    Mailbox.id,
    Mailbox.account_id,
    Mailbox.uniqueid,
    Mailbox.name,
    Mailbox.last_uid,
    Mailbox.highestmodseq,
    Mailbox.checksum,
    Mailbox.exists,
)


def _accounts_named(names: list[Any]) -> Any:
    return select(
        Account.id, Account.name, Account.quota_limit, Account.quota_used, Account.message_limit
    ).where(Account.name.in_(names))


def _folders_named(ids: list[Any], names: list[Any]) -> Any:
    return select(*_MAILBOX_COLUMNS).where(Mailbox.account_id.in_(ids), Mailbox.name.in_(names))


def _delivered(uniqueids: list[Any], message_ids: list[Any]) -> Any:
    # Every pair of the two lists: a superset of the batch's pairs, filtered after.
    return select(Duplicate.mailbox_uniqueid, Duplicate.message_id, Duplicate.delivered_at).where(
        Duplicate.mailbox_uniqueid.in_(uniqueids), Duplicate.message_id.in_(message_ids)
    )


_ACCOUNTS = Account.__table__
_MAILBOXES = Mailbox.__table__
assert isinstance(_ACCOUNTS, Table) and isinstance(_MAILBOXES, Table)
_UPDATE_MAILBOX = (
    update(_MAILBOXES)
    .where(_MAILBOXES.c.id == bindparam("b_id"))
    .values(
        last_uid=bindparam("b_last_uid"),
        highestmodseq=bindparam("b_highestmodseq"),
        checksum=bindparam("b_checksum"),
        exists=bindparam("b_exists"),
    )
)
_UPDATE_QUOTA = (
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == bindparam("b_id"))
    .values(quota_used=bindparam("b_quota_used"))
)


# fence(session, accounts) -> {account: the error that refuses it}.
Fence = Callable[[Session, Iterable[str]], Mapping[str, Exception]]


@dataclass(frozen=True, slots=True)
class DeliveryRunner:
    """Runs a group commit's deliveries together (:meth:`Store.write_grouped`).

    Per delivery, in order, the rules are those of one delivery alone: the
    account (and the fence: ``fence(session, accounts)`` names the accounts
    this node may not write now, with the error to refuse them with: the
    daemon's ownership fence, checked in this transaction), the target
    folder, duplicate suppression (against the database and the deliveries
    before it in the batch), the quota (with the bytes of those before it).
    A delivery that fails writes nothing; the others go on.

    The batch reads its accounts, folders and duplicates with one query each
    and writes with one statement per table (Core rows, not ORM objects: the
    ORM's bookkeeping cost more than the SQL). ORM objects of the same rows
    that the session already holds are given the new values, so the other
    writes of the batch see them.
    """

    options: DeliveryOptions
    fence: Fence | None = None

    def __call__(self, session: Session, ops: list[Delivery]) -> list[Outcome]:
        session.flush()  # what earlier writes of the batch changed, before we read
        accounts, boxes = self._load(session, ops)
        now = dt.datetime.now(dt.UTC)
        window = self.options.duplicate_window
        refused: Mapping[str, Exception] = (
            self.fence(session, [a.name for a in accounts.values()])
            if self.fence is not None and accounts
            else {}
        )
        targets: list[tuple[_AccountRow, _MailboxRow] | Exception] = []
        for op in ops:
            account = next((accounts[n] for n in op.recipient.candidates if n in accounts), None)
            if account is None:
                targets.append(NoSuchAccount(f"no such user: {op.recipient.address}"))
                continue
            refusal = refused.get(account.name)
            if refusal is not None:
                targets.append(refusal)
                continue
            targets.append((account, self._folder(session, account, op.recipient.detail, boxes)))
        seen = self._seen(session, ops, targets) if window is not None else {}
        records = NewRecords(session)
        duplicates: dict[tuple[str, str], dict[str, object]] = {}
        changes: dict[tuple[str, str, str], None] = {}
        touched: dict[int, _MailboxRow] = {}
        meta: list[tuple[str, bytes | None]] = []
        out: list[Outcome] = []
        for op, target in zip(ops, targets, strict=True):
            if isinstance(target, Exception):
                out.append(target)
                continue
            account, mailbox = target
            key = (mailbox.uniqueid, op.message_id or "")
            if op.message_id and window is not None:
                when = seen.get(key)
                if key in duplicates or (when is not None and now - when <= window):
                    out.append(DeliveryResult(account.name, mailbox.name, None, duplicate=True))
                    continue
            try:
                check_message_limit(account.message_limit, account.messages, 1)
                uid = add_appended(
                    records,
                    account,
                    mailbox,
                    guid=op.guid,
                    size=op.size,
                    internaldate=op.internaldate,
                )
            except OverQuota as exc:
                out.append(exc)
                continue
            account.messages += 1
            if op.message_id and window is not None:
                duplicates[key] = {
                    "mailbox_uniqueid": mailbox.uniqueid,
                    "message_id": op.message_id,
                    "delivered_at": now,
                }
            touched[mailbox.id] = mailbox
            changes[(account.name, mailbox.uniqueid, "append")] = None
            meta.append((op.guid, op.meta))
            out.append(DeliveryResult(account.name, mailbox.name, uid, duplicate=False))
        if touched:
            self._store(session, [accounts[n] for n in {a for a, _, _ in changes}], touched)
        records.write()
        put_meta(session, meta)
        upsert(
            session,
            Duplicate.__table__,
            list(duplicates.values()),
            ["mailbox_uniqueid", "message_id"],
            replace=("delivered_at",),
        )
        synclog.record_many(session, changes)
        return out

    def _load(
        self, session: Session, ops: list[Delivery]
    ) -> tuple[dict[str, _AccountRow], dict[tuple[int, str], _MailboxRow]]:
        """The batch's accounts, candidate folders and fence rows, a query each."""
        names = sorted({n for op in ops for n in op.recipient.candidates})
        accounts: dict[str, _AccountRow] = {}
        for chunk in _chunks(names):
            # On the DB-API cursor, as the folders below: building and
            # compiling the ORM select was a tenth of a lone delivery's CPU.
            for row in fastsql.select_in(session, _accounts_named, chunk):
                accounts[row[1]] = _AccountRow(*row)
        for account in accounts.values():
            if account.message_limit is not None:
                account.messages = live_messages(session, account.id)
        wanted = {"INBOX"}
        for op in ops:
            if op.recipient.detail and (folder := _folder_name(op.recipient.detail)):
                wanted.add(folder)
        boxes: dict[tuple[int, str], _MailboxRow] = {}
        ids = sorted({a.id for a in accounts.values()})
        if ids:
            for chunk in _chunks(sorted(wanted)):
                for box in fastsql.select_in(session, _folders_named, ids, chunk):
                    boxes[(box[1], box[3])] = _MailboxRow(*box)
        return accounts, boxes

    @staticmethod
    def _folder(
        session: Session,
        account: _AccountRow,
        detail: str | None,
        boxes: dict[tuple[int, str], _MailboxRow],
    ) -> _MailboxRow:
        """``+detail``'s folder if it exists, else INBOX (made again if deleted by hand)."""
        if detail and (folder := boxes.get((account.id, _folder_name(detail)))):
            return folder
        inbox = boxes.get((account.id, "INBOX"))
        if inbox is None:
            orm_account = session.get(Account, account.id)
            assert orm_account is not None
            created = create_mailbox(session, orm_account, "INBOX")
            inbox = boxes[(account.id, "INBOX")] = _MailboxRow(
                *session.execute(select(*_MAILBOX_COLUMNS).where(Mailbox.id == created.id)).one()
            )
        return inbox

    @staticmethod
    def _store(
        session: Session, accounts: list[_AccountRow], boxes: dict[int, _MailboxRow]
    ) -> None:
        """Write the new mailbox state and quota usage; keep the session's ORM copies true."""
        execute_rows(
            session,
            _UPDATE_MAILBOX,
            [
                {
                    "b_id": b.id,
                    "b_last_uid": b.last_uid,
                    "b_highestmodseq": b.highestmodseq,
                    "b_checksum": b.checksum,
                    "b_exists": b.exists,
                }
                for b in boxes.values()
            ],
        )
        execute_rows(
            session,
            _UPDATE_QUOTA,
            [
                {"b_id": a.id, "b_quota_used": a.quota_used, "updated_at": utcnow()}
                for a in accounts
            ],
        )
        for box in boxes.values():
            held_box = session.identity_map.get(identity_key(Mailbox, box.id))
            if held_box is not None:
                for name in ("last_uid", "highestmodseq", "checksum", "exists"):
                    set_committed_value(held_box, name, getattr(box, name))
        for account in accounts:
            held_account = session.identity_map.get(identity_key(Account, account.id))
            if held_account is not None:
                set_committed_value(held_account, "quota_used", account.quota_used)

    @staticmethod
    def _seen(
        session: Session,
        ops: list[Delivery],
        targets: list[tuple[_AccountRow, _MailboxRow] | Exception],
    ) -> dict[tuple[str, str], dt.datetime]:
        """When each (mailbox, Message-ID) of the batch was last delivered, if ever."""
        keys = sorted(
            {
                (target[1].uniqueid, op.message_id)
                for op, target in zip(ops, targets, strict=True)
                if op.message_id and not isinstance(target, Exception)
            }
        )
        seen: dict[tuple[str, str], dt.datetime] = {}
        wanted = set(keys)
        for i in range(0, len(keys), 256):
            chunk = keys[i : i + 256]
            uniqueids = sorted({u for u, _ in chunk})
            message_ids = sorted({m for _, m in chunk})
            for uniqueid, message_id, when in fastsql.select_in(
                session, _delivered, uniqueids, message_ids
            ):
                if (uniqueid, message_id) in wanted:
                    seen[(uniqueid, message_id)] = when
        return seen


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
    fence: Fence | None = None,
) -> DeliveryResult:
    """Deliver to one recipient now, raising what refused it (a batch of one)."""
    op = Delivery(recipient, guid, size, internaldate, message_id, meta)
    (outcome,) = DeliveryRunner(options, fence)(session, [op])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def prune_duplicates(session: Session, window: dt.timedelta) -> int:
    cutoff = dt.datetime.now(dt.UTC) - window
    result = session.execute(delete(Duplicate).where(Duplicate.delivered_at < cutoff))
    return int(result.rowcount)  # type: ignore[attr-defined]
