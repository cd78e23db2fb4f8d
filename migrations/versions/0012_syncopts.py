"""sync-log rows name their channel (the partner, or a backup channel)

Revision ID: 0012_syncopts
Revises: 0012_importimap
Create Date: 2026-12-04 18:00:00

A replica-only backup channel (``[sync.channels.NAME]``) keeps its own
sync-log rows beside the partner's: ``sync_log.channel`` is empty for the
partner (every existing row) or the channel's name, and the one-row-per-change
rule is per channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_syncopts"
down_revision: str | None = "0012_importimap"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sync_log") as batch:
        batch.add_column(
            sa.Column("channel", sa.String(length=64), nullable=False, server_default="")
        )
        batch.drop_constraint("uq_sync_log_account_mailbox_kind", type_="unique")
        batch.create_unique_constraint(
            "uq_sync_log_channel_account_mailbox_kind", ["channel", "account", "mailbox", "kind"]
        )


def downgrade() -> None:
    op.execute("DELETE FROM sync_log WHERE channel != ''")
    with op.batch_alter_table("sync_log") as batch:
        batch.drop_constraint("uq_sync_log_channel_account_mailbox_kind", type_="unique")
        batch.create_unique_constraint(
            "uq_sync_log_account_mailbox_kind", ["account", "mailbox", "kind"]
        )
        batch.drop_column("channel")
