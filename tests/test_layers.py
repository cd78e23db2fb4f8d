"""The layering of the code, checked: imports only go down, and there are no cycles.

Layers, top to bottom (a module may import its own layer and any layer below;
packages on one line are siblings and may not import each other)::

    peerd                           ``python -m peerd``
    peerd.app                       the daemon: wires every part, starts and stops them
    peerd.cli | peerd.control       peerctl (a client of the API) | the control API
    peerd.pair | peerd.directory    failover, switchover, failback, hooks, sweep | the routing directory
    peerd.replication               sync client and listener, rolling, reconcile
    peerd.services                  asyncio servers: IMAP, POP3, LMTP, ManageSieve
    peerd.node                      config, the Node (store, fence, logins), errors on the wire
    peerd.protocols | migrations    sans-I/O protocol cores | the Alembic migrations
    ownership                       the ownership table and the fence
    engine                          the mail store and the replication engine

Protocol cores also import no asyncio and nothing of the store (SQLAlchemy);
of the engine, only its pure text module (PURE_ENGINE).
The walk reads every ``import`` in the source, function-level ones included, so
a cycle cannot hide behind an import inside a function.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("peerd", "ownership", "engine", "migrations")

TIERS: tuple[tuple[str, ...], ...] = (
    ("peerd",),  # peerd/__init__.py and ``python -m peerd``
    ("peerd.app",),
    ("peerd.cli", "peerd.control"),
    ("peerd.pair", "peerd.directory"),
    ("peerd.replication",),
    ("peerd.services",),
    ("peerd.node",),
    ("peerd.protocols", "migrations"),
    ("ownership",),
    ("engine",),
)

FORBIDDEN_IN_PROTOCOLS = ("asyncio", "sqlalchemy", "aiohttp", "engine", "ownership", "migrations")
# What a protocol core may use of the engine all the same: pure functions over
# bytes and text, with no store, shared with the engine's full-text index.
PURE_ENGINE = ("engine.mimetext",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def source_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "versions" in path.parts and package == "migrations":
                continue  # revision files only touch the schema
            found[module_name(path)] = path
    return found


@functools.cache
def imports_of(name: str, path: Path) -> tuple[str, ...]:
    """Every module ``name`` (at ``path``) imports, parsed once per process
    (the four tests read the same walk)."""
    return tuple(_imports_of(name, path))


def _imports_of(name: str, path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                drop = node.level - (1 if is_package else 0)
                base = base[: len(base) - drop] if drop else base
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # ``from pkg import sub`` depends on the module ``pkg.sub``;
            # ``from pkg import name`` on ``pkg`` (graph() resolves which).
            for alias in node.names:
                yield f"{target}.{alias.name}"


def tier_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching prefix, tier)
    for index, tier in enumerate(TIERS):
        for prefix in tier:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[0]
            ):
                best = (len(prefix), index)
    return None if best is None else best[1]


def sibling_of(module: str) -> str | None:
    """The tier entry ``module`` belongs to (its package within its tier)."""
    best = None
    for tier in TIERS:
        for prefix in tier:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > len(best)
            ):
                best = prefix
    return best


@functools.cache
def graph() -> dict[str, frozenset[str]]:
    modules = source_modules()
    edges: dict[str, frozenset[str]] = {}
    for name, path in modules.items():
        targets = set()
        for target in imports_of(name, path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        edges[name] = frozenset(targets)
    return edges


def test_imports_only_go_down() -> None:
    wrong = []
    for module, targets in graph().items():
        mine = tier_of(module)
        assert mine is not None, f"{module} is in no layer: add it to TIERS"
        for target in targets:
            theirs = tier_of(target)
            assert theirs is not None, target
            if theirs < mine or (theirs == mine and sibling_of(module) != sibling_of(target)):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that go up or sideways:\n" + "\n".join(sorted(wrong))


def test_protocol_cores_do_no_io_and_know_no_store() -> None:
    wrong = []
    for name, path in source_modules().items():
        if not name.startswith("peerd.protocols"):
            continue
        for target in imports_of(name, path):
            pure = any(target == m or target.startswith(m + ".") for m in PURE_ENGINE)
            if target.split(".")[0] in FORBIDDEN_IN_PROTOCOLS and not pure:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_the_engine_knows_nothing_of_peerd() -> None:
    wrong = [
        f"{name} -> {target}"
        for name, targets in graph().items()
        if name.startswith("engine")
        for target in targets
        if not target.startswith("engine")
    ]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles() -> None:
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    # A package's __init__ re-exporting its modules is not a cycle worth the
    # name when the modules do not import the package back; Tarjan counts it
    # only if they do, which is the case to fix.
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)
