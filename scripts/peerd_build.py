"""peerd's PEP 517 build backend: a wheel that puts only ``peerd`` into site-packages.

How this works: the source tree keeps four top-level packages (``peerd``,
``engine``, ``ownership``, ``migrations``; the design fixes them and the code
imports them absolutely, ``from engine.store import Store``). Installed as
they are, three generic names would land in site-packages and collide with
any other distribution that uses them. So, as pip vendors its dependencies
under ``pip._vendor``, :func:`build_wheel` stages a copy of the tree with
``engine/``, ``ownership/`` and ``migrations/`` moved under ``peerd/``
(``peerd.engine``, ...), rewrites the import statements that name them, and
lets setuptools build the wheel from that copy.

The rewrite touches import statements only, found with :mod:`ast` (each
file parsed once for the rewrite and the check below) and edited at the
positions the parse gives, so strings, comments and every other line stay
byte for byte (and line numbers in tracebacks stay right):

==========================  ===============================================
source                      in the wheel
==========================  ===============================================
``from engine.x import y``  ``from peerd.engine.x import y``
``import migrations``       ``from peerd import migrations``
``import engine.models``    ``import peerd.engine.models; from peerd import engine``
``import engine.x as e``    ``import peerd.engine.x as e``
==========================  ===============================================

Nothing in the moved packages names them in a string (Alembic's
``script_location`` is the package's own directory, found from
``__file__``); :func:`check_no_string_references` refuses to build if that
ever changes, rather than ship a wheel that fails at run time.

``build_editable`` (``pip install -e .``, what ``scripts/test.sh`` and
``scripts/pair.sh`` use) and ``build_sdist`` are setuptools' own: a
developer's checkout imports the top-level packages from the tree as before.
``docs/install.md`` says why this and not the alternatives.
"""

from __future__ import annotations

import ast
import io
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools  # type: ignore[import-untyped]

__all__ = [
    "VENDORED",
    "build_editable",
    "build_sdist",
    "build_wheel",
    "check_no_string_references",
    "get_requires_for_build_editable",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_editable",
    "prepare_metadata_for_build_wheel",
    "rewrite_imports",
    "stage",
]

PARENT = "peerd"
VENDORED = ("engine", "ownership", "migrations")
# What the staged tree needs besides the packages (pyproject reads README.md).
_TOP_FILES = ("pyproject.toml", "README.md", "MANIFEST.in")
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


# -- the rewrite ---------------------------------------------------------------


def _top(name: str | None) -> str:
    return (name or "").split(".", 1)[0]


def _offsets(source: str) -> list[int]:
    """The offset of each line's first character (lines numbered from 1)."""
    starts = [0, 0]
    for line in io.StringIO(source):
        starts.append(starts[-1] + len(line))
    return starts


def _import_replacement(node: ast.Import) -> str:
    parts: list[str] = []
    for alias in node.names:
        if _top(alias.name) not in VENDORED:
            parts.append(f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else ""))
        elif alias.asname:
            parts.append(f"import {PARENT}.{alias.name} as {alias.asname}")
        elif "." in alias.name:
            # ``import engine.models`` binds ``engine`` and loads the submodule.
            parts.append(f"import {PARENT}.{alias.name}")
            parts.append(f"from {PARENT} import {_top(alias.name)}")
        else:
            parts.append(f"from {PARENT} import {alias.name}")
    return "; ".join(parts)


# ``from``, then blanks or backslash-continued lines, then the module's name.
_FROM = re.compile(r"from(?:[ \t\f]|\\\r?\n)+")


def rewrite_imports(source: str, tree: ast.Module | None = None) -> str:
    """``source`` with every import of a vendored package pointed under
    ``peerd`` (``tree``: ``source`` parsed, when the caller has it)."""
    if tree is None:
        tree = ast.parse(source)
    lines = _offsets(source)
    # (start, end, text): spans of the source to replace, applied back to front.
    edits: list[tuple[int, int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level or _top(node.module) not in VENDORED:
                continue
            # The statement starts with ``from``; the module's name follows it.
            start = lines[node.lineno] + node.col_offset
            found = _FROM.match(source, start)
            at = found.end() if found else start
            if found is None or not source.startswith(_top(node.module), at):
                raise ValueError(f"line {node.lineno}: cannot find module {node.module!r}")
            edits.append((at, at, f"{PARENT}."))
        elif isinstance(node, ast.Import) and any(_top(a.name) in VENDORED for a in node.names):
            start = lines[node.lineno] + node.col_offset
            end = lines[node.end_lineno or node.lineno] + (node.end_col_offset or 0)
            # Keep the statement's line count: a continued ``import a, \`` stays as tall.
            tail = "\n" * source.count("\n", start, end)
            edits.append((start, end, _import_replacement(node) + tail))
    if not edits:
        return source
    for start, end, text in sorted(edits, reverse=True):
        source = source[:start] + text + source[end:]
    ast.parse(source)  # the result must still be Python
    return source


_DOTTED = re.compile("(?:" + "|".join(VENDORED) + r")(?:[.:][A-Za-z_][A-Za-z0-9_]*)+")
_IMPORTERS = frozenset({"import_module", "__import__", "find_spec", "resources_files", "files"})


def check_no_string_references(path: Path, source: str, tree: ast.Module | None = None) -> None:
    """Refuse a module that names a vendored package in a string the rewrite
    would not follow: a dotted path (``"engine.models"``, ``"engine.x:f"``)
    anywhere, or any vendored name given to ``importlib``/``__import__``.
    (A bare ``"ownership"`` elsewhere is a table or request name, not a module.)"""
    for node in ast.walk(ast.parse(source) if tree is None else tree):
        named: str | None = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _DOTTED.fullmatch(node.value):
                named = node.value
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0] if node.args else None
            if (
                called in _IMPORTERS
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and _top(first.value) in VENDORED
            ):
                named = first.value
        if named is not None:
            raise RuntimeError(
                f"{path}:{getattr(node, 'lineno', '?')}: the string {named!r} names a vendored "
                "package, which the build's import rewrite would not follow; import it instead"
            )


# -- staging -------------------------------------------------------------------


def stage(source_root: Path, into: Path, rewrite: bool = True) -> Path:
    """Copy ``source_root`` into ``into`` as the wheel's tree; return ``into``.
    ``rewrite=False``: the layout only, imports as they are (enough for the
    wheel's metadata, which names no module)."""
    for name in _TOP_FILES:
        if (source_root / name).exists():
            shutil.copy2(source_root / name, into / name)
    shutil.copytree(source_root / PARENT, into / PARENT, ignore=_SKIP)
    for name in VENDORED:
        target = into / PARENT / name
        if target.exists():
            raise RuntimeError(f"{PARENT}/{name} exists in the source: it would shadow {name}/")
        shutil.copytree(source_root / name, target, ignore=_SKIP)
    if not rewrite:
        return into
    for path in sorted((into / PARENT).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        check_no_string_references(path, text, tree)
        rewritten = rewrite_imports(text, tree)
        if rewritten != text:
            path.write_text(rewritten, encoding="utf-8")
    return into


def _in_stage(build: Any, *args: Any, rewrite: bool = True) -> str:
    source_root = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="peerd-wheel-") as tmp:
        staged = stage(source_root, Path(tmp), rewrite)
        os.chdir(staged)
        try:
            return str(build(*args))
        finally:
            os.chdir(source_root)


# -- PEP 517 hooks ---------------------------------------------------------------


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return list(_setuptools.get_requires_for_build_wheel(config_settings))


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    target = os.path.abspath(metadata_directory)
    # The metadata names no module: the staged layout is enough, the imports
    # are rewritten once, for the wheel itself.
    return _in_stage(
        _setuptools.prepare_metadata_for_build_wheel, target, config_settings, rewrite=False
    )


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    target = os.path.abspath(wheel_directory)
    return _in_stage(_setuptools.build_wheel, target, config_settings)


# The developer's checkout and the source distribution stay setuptools' own.
get_requires_for_build_editable = _setuptools.get_requires_for_build_editable
prepare_metadata_for_build_editable = _setuptools.prepare_metadata_for_build_editable
build_editable = _setuptools.build_editable
get_requires_for_build_sdist = _setuptools.get_requires_for_build_sdist
build_sdist = _setuptools.build_sdist
