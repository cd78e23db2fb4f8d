"""Alembic migrations: the only way peerd's schema is created or changed.

:func:`upgrade` brings a database to the newest revision; the daemon calls it
at start. ``alembic -c migrations/alembic.ini check`` (with
``PEERD_DATABASE_URL`` set) proves the models and the migrations agree.

How this works: a database already at head is the common case at start (every
restart), so :func:`upgrade` first compares the revision stored in
``alembic_version`` with the head of the scripts in ``versions/`` and returns
at once when they agree, without importing Alembic or loading its environment
(a third of a daemon's start-up). :func:`script_heads` reads the head from the
``revision`` / ``down_revision`` lines of the scripts; when they cannot be read
plainly (branches, a merge, a computed value) it asks Alembic instead, so the
shortcut can only skip work, never a migration.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from engine.db import normalize_url

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["alembic_config", "current_revisions", "head", "script_heads", "upgrade"]

HERE = Path(__file__).resolve().parent


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config(str(HERE / "alembic.ini"))
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["url"] = url
    return cfg


def _assigned(tree: ast.Module, name: str) -> object:
    """The literal assigned to ``name`` at the top of a script (``...`` if absent or computed)."""
    for node in tree.body:
        target = None
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            target, value = node.target.id, node.value
        elif (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            target, value = node.targets[0].id, node.value
        if target == name and value is not None:
            try:
                return ast.literal_eval(value)
            except ValueError:
                return ...
    return ...


def _plain_heads() -> frozenset[str] | None:
    """The heads from the scripts' literals, or None when a script is not plain."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((HERE / "versions").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        revision = _assigned(tree, "revision")
        down = _assigned(tree, "down_revision")
        if not isinstance(revision, str):
            return None
        if isinstance(down, str):
            parents.add(down)
        elif isinstance(down, tuple) and all(isinstance(d, str) for d in down):
            parents.update(down)
        elif down is not None:
            return None
        revisions.add(revision)
    heads = frozenset(revisions - parents)
    return heads if len(heads) == 1 else None


def script_heads() -> frozenset[str]:
    """The head revision(s) of ``versions/``."""
    heads = _plain_heads()
    if heads is not None:
        return heads
    from alembic.script import ScriptDirectory

    return frozenset(ScriptDirectory.from_config(alembic_config("")).get_heads())


def current_revisions(url: str) -> frozenset[str]:
    """The revisions stored in the database's ``alembic_version`` (empty if none)."""
    engine = create_engine(normalize_url(url))
    try:
        # A database that cannot be reached fails here, as Alembic would.
        with engine.connect() as conn:
            try:
                rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars()
                return frozenset(str(r) for r in rows)
            except DBAPIError:  # no alembic_version table yet: a new database
                return frozenset()
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (nothing to do: returns at once)."""
    if revision == "head" and current_revisions(url) == script_heads():
        return
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def head() -> str:
    """The newest revision: the schema this release runs on."""
    return ",".join(sorted(script_heads())) or "none"
