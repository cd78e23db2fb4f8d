"""migrations.upgrade: a database at head costs one query and no Alembic import;
anything else goes through Alembic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.script import ScriptDirectory

import migrations


def test_script_heads_agree_with_alembic() -> None:
    alembic_heads = ScriptDirectory.from_config(migrations.alembic_config("")).get_heads()
    assert migrations.script_heads() == frozenset(alembic_heads)


def test_a_new_database_is_migrated_and_then_left_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'peerd.db'}"
    assert migrations.current_revisions(url) == frozenset()
    migrations.upgrade(url)
    assert migrations.current_revisions(url) == migrations.script_heads()
    # At head: a fresh interpreter upgrades without loading Alembic at all.
    code = (
        "import sys, migrations; migrations.upgrade(sys.argv[1]); print('alembic' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, url], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_a_database_behind_head_is_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'peerd.db'}"
    migrations.upgrade(url)
    # Downgrade to nothing (every table gone), then the shortcut must not skip.
    from alembic import command

    command.downgrade(migrations.alembic_config(url), "base")
    assert migrations.current_revisions(url) == frozenset()
    migrations.upgrade(url)
    assert migrations.current_revisions(url) == migrations.script_heads()
