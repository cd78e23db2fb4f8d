"""account renames the partner has not taken yet

Revision ID: 0009_rename
Revises: 0008_acl_metadata
Create Date: 2026-12-04 15:00:00

``peerctl account rename OLD NEW`` renames the account on its owner at once;
the partner renames its replica when the owner's sync says so. Until it has,
``account_renames`` remembers the rename (old name, new name, epoch), so the
rename survives a partner that is down and the old name is not brought back
by the partner's ownership rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_rename"
down_revision: str | None = "0008_acl_metadata"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "account_renames",
        sa.Column("old", sa.String(length=255), nullable=False),
        sa.Column("new", sa.String(length=255), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("renamed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("old", name=op.f("pk_account_renames")),
    )
    with op.batch_alter_table("account_renames", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_account_renames_new"), ["new"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("account_renames", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_account_renames_new"))
    op.drop_table("account_renames")
