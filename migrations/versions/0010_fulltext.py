"""the full-text index of SEARCH BODY and TEXT (issue 11 item 3)

Revision ID: 0010_fulltext
Revises: 0009_rename
Create Date: 2026-12-04 15:00:00

One row per GUID (the searchable text is a property of a message's bytes),
holding :func:`engine.fulltext.extract`'s folded ``header`` and ``body``.
The two databases get different tables, created with plain SQL because the
models cannot express them (``migrations/env.py`` leaves ``fulltext*`` out
of ``alembic check``):

- SQLite: ``fulltext_docs`` (id, guid, version) and the FTS5 virtual table
  ``fulltext`` (its rowid is ``fulltext_docs.id``) with the ``trigram``
  tokenizer, ``case_sensitive 1`` since the text is folded already. A phrase
  query of a trigram index is an exact substring test (RFC 3501 6.4.4 SEARCH
  is a substring match).
- PostgreSQL: ``fulltext`` (guid, version, header, body) with ``pg_trgm`` GIN
  indexes: ``LIKE`` on the folded text, the index narrowing and the executor
  rechecking, is an exact substring test too. ``tsvector`` matches words and
  stems, not substrings, so it could not give SEARCH's answers.

The DDL is written out here, not imported, so this revision stays what it
was whatever ``engine.fulltext`` becomes. The index starts empty: the
daemon's indexer fills it from the messages already stored.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010_fulltext"
down_revision: str | None = "0009_rename"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

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

POSTGRESQL = (
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE TABLE fulltext (\n"
    "    guid VARCHAR(40) PRIMARY KEY,\n"
    "    version SMALLINT NOT NULL,\n"
    "    header TEXT NOT NULL,\n"
    "    body TEXT NOT NULL\n"
    ")",
    "CREATE INDEX ix_fulltext_header_trgm ON fulltext USING gin (header gin_trgm_ops)",
    "CREATE INDEX ix_fulltext_body_trgm ON fulltext USING gin (body gin_trgm_ops)",
)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"no full-text index for {dialect}")
    for statement in SQLITE if dialect == "sqlite" else POSTGRESQL:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS fulltext")
    op.execute("DROP TABLE IF EXISTS fulltext_docs")
