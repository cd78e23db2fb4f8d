"""message_parsed: SORT/THREAD keys and FETCH structures parsed once per message

Revision ID: 0012_sortcache
Revises: 0012_acl
Create Date: 2026-12-04 18:00:00

One row per GUID (what IMAP reads of a message is a property of its bytes):
the RFC 5256 sort keys as :meth:`peerd.protocols.imap.sort.SortRecord.dumps`
writes them, and the rendered ENVELOPE, BODYSTRUCTURE and BODY (RFC 3501
7.4.2). ``version`` names the parser that wrote the row. The table starts
empty: the daemon's parse walker (:mod:`peerd.pair.parsewalk`) fills it from
the messages already stored, from the first one, when the node starts;
until it reaches a message, IMAP parses that message's bytes as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_sortcache"
down_revision: str | None = "0012_acl"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "message_parsed",
        sa.Column("guid", sa.String(length=40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sortkeys", sa.LargeBinary(), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("bodystructure", sa.LargeBinary(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("guid", name=op.f("pk_message_parsed")),
    )


def downgrade() -> None:
    op.drop_table("message_parsed")
