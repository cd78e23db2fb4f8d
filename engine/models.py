"""The mail store's tables.

How this works, in Cyrus's terms:

- ``accounts``: one row per mail user, with the password hash and the quota
  (limit and usage in bytes; usage is kept up to date by every append and
  expunge in the same transaction).
- ``mailboxes``: uniqueid (stable across renames; replication matches
  mailboxes by it), name, uidvalidity, last_uid, highestmodseq, ACL, and a
  content ``checksum``: the XOR of one 64-bit hash per live record, updated
  incrementally. Two mailboxes with equal (name, uidvalidity, last_uid, ACL,
  checksum) hold the same records, so replication skips them without looking
  at a single message.
- ``messages``: one row per record: uid, GUID (SHA-1 of the bytes, the spool
  key), flags (system flags and keywords, ``\\Seen`` included: the account's
  own seen state, as Cyrus keeps it in the index), internaldate, size, modseq.
  An expunged record stays as a tombstone (``expunged``) so CONDSTORE/QRESYNC
  and replication can tell "deleted here" from "never here".
- ``guid_history``: every GUID an account has ever held. Replication's no-loss
  rule needs it: a message on the replica whose GUID the owner never had is new
  mail to keep, not stale mail to delete.
- ``mailbox_tombstones``: deleted mailboxes by uniqueid, for the same reason.
- ``sieve_scripts`` (per account, one active) and ``vacation_sent`` (Sieve
  vacation reply-once records), both replicated.
- ``annotations``: METADATA entries (RFC 5464) by account, mailbox uniqueid
  (``""`` for the server's entries) and entry name, replicated like Cyrus's
  ANNOTATION records.
- ``subscriptions``, ``duplicates`` (Message-ID delivery suppression),
  ``message_meta`` (unused: kept for stores made before 0012),
  ``message_parsed`` (per GUID, what IMAP reads of a message's bytes, parsed
  once after it is stored: SORT/THREAD keys, ENVELOPE, BODYSTRUCTURE, BODY),
  and the ``sync_log``.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from engine.db import Base, utcnow

__all__ = [
    "Account",
    "Annotation",
    "Duplicate",
    "GuidHistory",
    "ImportCursor",
    "Mailbox",
    "MailboxTombstone",
    "Message",
    "MessageMeta",
    "MessageParsed",
    "Subscription",
    "SyncLogRow",
]


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    quota_limit: Mapped[int | None] = mapped_column(BigInteger, default=None)
    quota_used: Mapped[int] = mapped_column(BigInteger, default=0)
    # RFC 9208 5.2 (MESSAGE): at most this many live messages; None: no limit.
    message_limit: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # The highest UIDVALIDITY any mailbox of this account ever had, deleted
    # ones included: the next one is above it (RFC 3501 2.3.1.1).
    uidvalidity_used: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Mailbox(Base):
    __tablename__ = "mailboxes"
    __table_args__ = (UniqueConstraint("account_id", "name", name="uq_mailboxes_account_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    uniqueid: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(1024))
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    highestmodseq: Mapped[int] = mapped_column(BigInteger, default=1)
    acl: Mapped[str] = mapped_column(Text, default="{}")
    checksum: Mapped[int] = mapped_column(BigInteger, default=0)
    exists: Mapped[int] = mapped_column(Integer, default=0)
    # On a replica: the owner's highestmodseq as of the last sync that left
    # this mailbox equal to the owner's. Changes on either side since then
    # have higher modseqs, so the next sync exchanges only those. 0: unknown.
    sync_base: Mapped[int] = mapped_column(BigInteger, default=0)
    # The highest UID a session has claimed as \Recent (RFC 3501 2.3.2):
    # the first SELECT after a message arrives gets it. Local to this node,
    # not replicated; applying the owner's mailbox on a replica claims
    # everything it holds (see docs/imap.md).
    recentuid: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("mailbox_id", "uid", name="uq_messages_mailbox_uid"),
        Index("ix_messages_mailbox_modseq", "mailbox_id", "modseq"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"))
    uid: Mapped[int] = mapped_column(BigInteger)
    guid: Mapped[str] = mapped_column(String(40), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    internaldate: Mapped[dt.datetime] = mapped_column()
    flags: Mapped[str] = mapped_column(Text, default="")
    modseq: Mapped[int] = mapped_column(BigInteger)
    expunged: Mapped[bool] = mapped_column(Boolean, default=False)


class Annotation(Base):
    """One METADATA entry (RFC 5464): ``mailbox`` is the mailbox's uniqueid,
    ``""`` for the server's entries; ``entry`` is lower case (``/private/comment``)."""

    __tablename__ = "annotations"

    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    mailbox: Mapped[str] = mapped_column(String(32), primary_key=True)
    entry: Mapped[str] = mapped_column(String(1024), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)


class GuidHistory(Base):
    __tablename__ = "guid_history"

    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    guid: Mapped[str] = mapped_column(String(40), primary_key=True)


class ImportCursor(Base):
    """How far ``peerctl import-imap`` copied one mailbox from another server:
    the remote mailbox's UIDVALIDITY and the highest remote UID copied
    (:mod:`engine.mailimport`). Replicated with the account
    (:mod:`engine.importcursors`), so an import resumes on either node."""

    __tablename__ = "import_cursors"

    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    mailbox: Mapped[str] = mapped_column(String(32), primary_key=True)  # its uniqueid
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class MailboxTombstone(Base):
    __tablename__ = "mailbox_tombstones"

    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    uniqueid: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(1024))
    deleted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Subscription(Base):
    __tablename__ = "subscriptions"

    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(1024), primary_key=True)


class SieveScript(Base):
    """A user's Sieve script (ManageSieve PUTSCRIPT); at most one per account is active."""

    __tablename__ = "sieve_scripts"

    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(512), primary_key=True)
    content: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    # Bumped on every change of the script (content, name or active mark).
    modseq: Mapped[int] = mapped_column(BigInteger, default=1)
    changed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class VacationSent(Base):
    """Sieve vacation reply-once records (RFC 5230 section 4.2): one per reply key."""

    __tablename__ = "vacation_sent"

    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    # engine.sieve.reply_key: a hash of the handle and the sender.
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    # No second reply before this time.
    until: Mapped[dt.datetime] = mapped_column(index=True)


class Duplicate(Base):
    """Message-IDs delivered per mailbox, for duplicate suppression (Cyrus duplicate.db)."""

    __tablename__ = "duplicates"

    mailbox_uniqueid: Mapped[str] = mapped_column(String(32), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    delivered_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


class MessageMeta(Base):
    """A per-GUID cache of what the services parse out of a message once."""

    __tablename__ = "message_meta"

    guid: Mapped[str] = mapped_column(String(40), primary_key=True)
    meta: Mapped[bytes] = mapped_column(LargeBinary)


class MessageParsed(Base):
    """What IMAP reads of a message's bytes, computed once per GUID after it
    is stored (:mod:`engine.parsed`, migration ``0012_sortcache``): the
    SORT/THREAD keys and the rendered ENVELOPE, BODYSTRUCTURE and BODY.
    ``version`` says which parser wrote the row; a row of another version
    counts as missing."""

    __tablename__ = "message_parsed"

    guid: Mapped[str] = mapped_column(String(40), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    sortkeys: Mapped[bytes] = mapped_column(LargeBinary)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    bodystructure: Mapped[bytes] = mapped_column(LargeBinary)
    body: Mapped[bytes] = mapped_column(LargeBinary)


class SyncLogRow(Base):
    """One account/mailbox with changes not yet replicated, and what kind.

    Written in the same transaction as the change. ``mailbox`` is a uniqueid,
    or empty for account-level changes (password, quota, subscriptions,
    creation and deletion). ``kind`` orders the work: new mail first. There is
    at most one row per (account, mailbox, kind): a new change bumps
    ``generation`` instead of adding a row, so the log stays bounded by the
    number of changed mailboxes however long the partner is away.

    ``channel`` is whom the row is for: empty for the partner, else the name
    of a backup channel (``[sync.channels.NAME]``); each keeps its own rows,
    acknowledged by its own syncs.
    """

    __tablename__ = "sync_log"
    __table_args__ = (
        UniqueConstraint(
            "channel", "account", "mailbox", "kind", name="uq_sync_log_channel_account_mailbox_kind"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(64), default="", server_default="")
    account: Mapped[str] = mapped_column(String(255), index=True)
    mailbox: Mapped[str] = mapped_column(String(32), default="")
    kind: Mapped[str] = mapped_column(String(16))
    generation: Mapped[int] = mapped_column(BigInteger, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
