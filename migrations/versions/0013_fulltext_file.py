"""the full-text index leaves the node's SQLite file (issue 16, rolling lag)

Revision ID: 0013_fulltext_file
Revises: 0012_sortcache
Create Date: 2026-12-05 06:30:00

On SQLite the full-text index (``fulltext_docs`` and the FTS5 table
``fulltext`` of ``0010_fulltext``) moves to a database file of its own
beside the node's (``engine.textindex.index_file``), with a writer of its
own: SQLite locks per file, so its inserts no longer hold the one committer
while a delivery or a replicated DELTA waits. The tables are dropped here,
not copied: the index is derived from the spool's bytes (a cache keyed by
GUID), the store creates the new file empty, the daemon's indexer fills it
from the first ``messages`` row, and a SEARCH decodes at request time what
it has not reached yet, with the same answer. PostgreSQL keeps its table.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0013_fulltext_file"
down_revision: str | None = "0012_sortcache"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 0010_fulltext's SQLite tables, written out again for the downgrade.
SQLITE = (
    "CREATE TABLE fulltext_docs (\n"
    "    id INTEGER PRIMARY KEY,\n"
    "    guid VARCHAR(40) NOT NULL UNIQUE,\n"
    "    version INTEGER NOT NULL\n"
    ")",
    "CREATE VIRTUAL TABLE fulltext USING fts5(\n"
    "    header, body, tokenize = 'trigram case_sensitive 1'\n"
    ")",
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP TABLE IF EXISTS main.fulltext")
    op.execute("DROP TABLE IF EXISTS main.fulltext_docs")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # Empty: the indexer of the older code fills them again.
    for statement in SQLITE:
        op.execute(statement)
