"""import_cursors: how far ``peerctl import-imap`` copied each mailbox

Revision ID: 0012_importimap
Revises: 0011_recent
Create Date: 2026-12-04 18:00:00

One row per local mailbox (by uniqueid) that an import from another IMAP
server wrote into: the remote mailbox's UIDVALIDITY and the highest remote
UID copied, updated in the same transaction as the messages it covers, so a
rerun (after a kill, or to catch up) copies only what is missing.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_importimap"
down_revision: str | None = "0011_recent"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "import_cursors",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("mailbox", sa.String(length=32), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("last_uid", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_import_cursors_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "mailbox", name=op.f("pk_import_cursors")),
    )


def downgrade() -> None:
    op.drop_table("import_cursors")
