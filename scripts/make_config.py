"""Write a node's first config from configs/peerd.example.toml, with fresh secrets.

    python3 scripts/make_config.py --name alpha --data-dir /var/lib/peerd OUT.toml

How this works: the example file documents every key, so the installed config
is that file with a few values replaced where they stand (comments kept):
the node's name and host name, its data directory and SQLite URL, a new
``[api] token``, ``[sync] sync_password`` and ``[routing] auth_http_secret``
(``secrets.token_urlsafe``). Each replaced key must occur exactly once in
its table, so a change to the example that this script does not follow
fails here, not on a host. ``scripts/install.sh`` runs it; an existing
config is never overwritten (that is the admin's file).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

__all__ = ["set_values"]

EXAMPLE = Path(__file__).resolve().parent.parent / "configs" / "peerd.example.toml"
_TABLE = re.compile(r"^\s*\[\[?([A-Za-z0-9_.]+)\]\]?")
_KEY = re.compile(r"^(\s*)([A-Za-z0-9_]+)(\s*=\s*)(.*)$")


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is a JSON string for these values
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _split_comment(rest: str) -> tuple[str, str]:
    """(value, trailing comment with its spacing) of what follows ``key =``."""
    in_string: str | None = None
    escaped = False
    for i, ch in enumerate(rest):
        if escaped:
            escaped = False
        elif in_string:
            if ch == "\\" and in_string == '"':
                escaped = True
            elif ch == in_string:
                in_string = None
        elif ch in "\"'":
            in_string = ch
        elif ch == "#":
            j = i
            while j > 0 and rest[j - 1] in " \t":
                j -= 1
            return rest[:j], rest[j:]
    return rest.rstrip(), ""


def set_values(text: str, values: Mapping[str, Mapping[str, object]]) -> str:
    """``text`` with ``values[table][key]`` written over each (uncommented) key."""
    lines = text.splitlines(keepends=True)
    table = ""
    seen: dict[tuple[str, str], int] = {}
    for i, line in enumerate(lines):
        header = _TABLE.match(line)
        if header:
            table = header.group(1)
            continue
        match = _KEY.match(line)
        if not match or table not in values or match.group(2) not in values[table]:
            continue
        indent, key, equals, rest = match.groups()
        _, comment = _split_comment(rest.rstrip("\n"))
        newline = "\n" if line.endswith("\n") else ""
        lines[i] = f"{indent}{key}{equals}{_toml(values[table][key])}{comment}{newline}"
        seen[(table, key)] = seen.get((table, key), 0) + 1
    for name, keys in values.items():
        for key in keys:
            if seen.get((name, key)) != 1:
                raise ValueError(
                    f"[{name}] {key}: found {seen.get((name, key), 0)} times in the template, not once"
                )
    result = "".join(lines)
    tomllib.loads(result)  # still TOML
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the config to write (refused if it exists)")
    parser.add_argument("--name", required=True, help="the node's name ([node] name)")
    parser.add_argument("--hostname", help="[node] hostname (default: the name)")
    parser.add_argument("--data-dir", required=True, type=Path, help="[node] data_dir")
    parser.add_argument(
        "--sync-password", help="the pair's shared sync password (default: a fresh one)"
    )
    parser.add_argument("--template", type=Path, default=EXAMPLE)
    args = parser.parse_args(argv)
    if args.out.exists():
        print(f"{args.out} exists: left as it is", file=sys.stderr)
        return 0
    data_dir = args.data_dir.resolve()
    values: dict[str, dict[str, object]] = {
        "node": {
            "name": args.name,
            "hostname": args.hostname or args.name,
            "data_dir": str(data_dir),
        },
        "database": {"url": f"sqlite:///{data_dir / 'peerd.db'}"},
        "api": {"token": secrets.token_urlsafe(32)},
        "sync": {"sync_password": args.sync_password or secrets.token_urlsafe(32)},
        "routing": {"auth_http_secret": secrets.token_urlsafe(24)},
    }
    text = set_values(args.template.read_text(), values)
    # Secrets inside: readable by its owner and group only, from the first byte.
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
