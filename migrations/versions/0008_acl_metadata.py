"""METADATA entries (RFC 5464) per account and mailbox

Revision ID: 0008_acl_metadata
Revises: 0004
Create Date: 2026-12-04 15:00:00

``annotations`` holds the IMAP METADATA entries of an account: its
mailboxes' (by uniqueid, so a rename keeps them) and its server entries
(mailbox ``""``). They replicate with the account, like Cyrus's ANNOTATION
records. Mailbox ACLs already have their column (``mailboxes.acl``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_acl_metadata"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "annotations",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("mailbox", sa.String(length=32), nullable=False),
        sa.Column("entry", sa.String(length=1024), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_annotations_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "mailbox", "entry", name=op.f("pk_annotations")),
    )


def downgrade() -> None:
    op.drop_table("annotations")
