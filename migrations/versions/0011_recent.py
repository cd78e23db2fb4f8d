"""mailboxes remember the highest UID claimed as \\Recent

Revision ID: 0011_recent
Revises: 0010_fulltext
Create Date: 2026-12-04 15:00:00

RFC 3501 2.3.2: a message is \\Recent in the first session that is told of
it. ``mailboxes.recentuid`` is the highest UID some session has already
claimed; a SELECT (and a selected session told of new mail) raises it to the
mailbox's last UID in one fenced write, and the UIDs it passed over are that
session's recent ones. Existing mailboxes start with every message claimed:
mail that was there before the upgrade is not new.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_recent"
down_revision: str | None = "0010_fulltext"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "mailboxes",
        sa.Column("recentuid", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.execute("UPDATE mailboxes SET recentuid = last_uid")


def downgrade() -> None:
    # A plain ALTER TABLE DROP COLUMN (SQLite 3.35+), as in 0004.
    op.drop_column("mailboxes", "recentuid")
