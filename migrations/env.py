"""Alembic environment: one metadata (engine.db) holding every package's models."""

from __future__ import annotations

import os

from alembic import context

import engine.models  # noqa: F401  (registers the store's tables)
import ownership.models  # noqa: F401  (registers the ownership table)
from engine.db import make_engine, metadata

config = context.config
_url = config.attributes.get("url") or os.environ.get("PEERD_DATABASE_URL")
if not _url:
    raise SystemExit("set PEERD_DATABASE_URL (or call migrations.upgrade(url))")
url: str = str(_url)


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Leave the full-text index out of ``alembic check``: its tables differ
    per database (an FTS5 virtual table and its shadow tables on SQLite) and
    are created with plain SQL by 0010_fulltext; no model describes them."""
    return not (type_ == "table" and name is not None and name.startswith("fulltext"))


def run_migrations_online() -> None:
    connectable = make_engine(url)
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            include_object=include_object,
        )
        with context.begin_transaction():
            context.run_migrations()
    connectable.dispose()


if context.is_offline_mode():
    context.configure(url=url, target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
