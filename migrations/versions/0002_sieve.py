"""sieve scripts and vacation reply-once records

Revision ID: 0002_sieve
Revises: 0001
Create Date: 2026-12-04 12:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_sieve"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sieve_scripts",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("modseq", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_sieve_scripts_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "name", name=op.f("pk_sieve_scripts")),
    )
    op.create_table(
        "vacation_sent",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_vacation_sent_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "key", name=op.f("pk_vacation_sent")),
    )
    with op.batch_alter_table("vacation_sent", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vacation_sent_until"), ["until"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("vacation_sent", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vacation_sent_until"))
    op.drop_table("vacation_sent")
    op.drop_table("sieve_scripts")
