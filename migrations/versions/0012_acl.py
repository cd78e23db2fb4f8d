"""accounts may have a limit on their number of messages (QUOTA MESSAGE)

Revision ID: 0012_acl
Revises: 0012_syncopts
Create Date: 2026-12-04 18:10:00

RFC 9208 5.2: the MESSAGE resource counts an account's messages.
``accounts.message_limit`` is that limit (None: none), next to the storage
limit ``quota_limit``; it replicates with the account as that one does. The
usage is counted from the live records when a limit is set, not stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_acl"
down_revision: str | None = "0012_syncopts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("accounts", sa.Column("message_limit", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    # A plain ALTER TABLE DROP COLUMN (SQLite 3.35+), as in 0004.
    op.drop_column("accounts", "message_limit")
