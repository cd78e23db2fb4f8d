"""the mailbox checksum covers each record's modseq

Revision ID: 0003
Revises: 0002_sieve
Create Date: 2026-12-04 09:00:00

A mailbox's ``checksum`` is the XOR of one hash per live record. From this
revision the hash covers the record's modseq as well (``engine.flags.record_hash``),
so two nodes whose records agree but whose modseqs do not are told apart by
the summary compare and repaired. No column changes: every mailbox's checksum
is recomputed from its records. The hash is written out here rather than
imported, so this revision means the same thing whatever the engine becomes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002_sieve"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_messages = sa.table(
    "messages",
    sa.column("mailbox_id", sa.Integer()),
    sa.column("uid", sa.BigInteger()),
    sa.column("guid", sa.String()),
    sa.column("flags", sa.Text()),
    sa.column("internaldate", sa.DateTime(timezone=True)),
    sa.column("modseq", sa.BigInteger()),
    sa.column("expunged", sa.Boolean()),
)
_mailboxes = sa.table(
    "mailboxes", sa.column("id", sa.Integer()), sa.column("checksum", sa.BigInteger())
)


def _hash(uid: int, guid: str, flags: str, when: dt.datetime, modseq: int | None) -> int:
    if when.tzinfo is None:  # SQLite hands back the stored UTC value, naive
        when = when.replace(tzinfo=dt.UTC)
    text = f"{uid}\0{guid}\0{flags}\0{int(when.timestamp())}"
    if modseq is not None:
        text += f"\0{modseq}"
    digest = hashlib.sha1(text.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _recompute(with_modseq: bool) -> None:
    bind = op.get_bind()
    sums: dict[int, int] = {box_id: 0 for (box_id,) in bind.execute(sa.select(_mailboxes.c.id))}
    rows = bind.execute(
        sa.select(
            _messages.c.mailbox_id,
            _messages.c.uid,
            _messages.c.guid,
            _messages.c.flags,
            _messages.c.internaldate,
            _messages.c.modseq,
        ).where(_messages.c.expunged.is_(False))
    )
    for box_id, uid, guid, flags, when, modseq in rows:
        sums[box_id] = sums.get(box_id, 0) ^ _hash(
            uid, guid, flags or "", when, modseq if with_modseq else None
        )
    for box_id, checksum in sums.items():
        bind.execute(
            sa.update(_mailboxes).where(_mailboxes.c.id == box_id).values(checksum=checksum)
        )


def upgrade() -> None:
    _recompute(with_modseq=True)


def downgrade() -> None:
    _recompute(with_modseq=False)
