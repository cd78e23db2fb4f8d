"""accounts remember the highest UIDVALIDITY they gave out

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 13:45:00

RFC 3501 2.3.1.1: a mailbox name must never get a UIDVALIDITY it had before.
The next UIDVALIDITY was the clock or one past the account's highest live
mailbox, so DELETE then CREATE of the same name within one second could give
the deleted mailbox's value again. ``accounts.uidvalidity_used`` keeps the
highest value ever given out, deleted mailboxes included; it starts at the
highest of the account's mailboxes now.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("uidvalidity_used", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.execute(
        "UPDATE accounts SET uidvalidity_used = COALESCE("
        "(SELECT MAX(uidvalidity) FROM mailboxes WHERE mailboxes.account_id = accounts.id), 0)"
    )


def downgrade() -> None:
    # A plain ALTER TABLE DROP COLUMN (SQLite 3.35+ has it): batch mode would
    # copy and drop ``accounts``, and with foreign keys on the drop cascades
    # to every mailbox.
    op.drop_column("accounts", "uidvalidity_used")
