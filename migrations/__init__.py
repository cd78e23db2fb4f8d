"""Alembic migrations: the only way peerd's schema is created or changed.

:func:`upgrade` brings a database to the newest revision; the daemon calls it
at start. ``alembic -c migrations/alembic.ini check`` (with
``PEERD_DATABASE_URL`` set) proves the models and the migrations agree.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

__all__ = ["alembic_config", "head", "upgrade"]

HERE = Path(__file__).resolve().parent


def alembic_config(url: str) -> Config:
    cfg = Config(str(HERE / "alembic.ini"))
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def head() -> str:
    """The newest revision: the schema this release runs on."""
    revision = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    return revision or "none"
