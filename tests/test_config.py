"""The node's TOML config: values read strictly, mistakes reported with where they are."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import typing
from pathlib import Path
from typing import Any

import pytest

from peerd.node.config import (
    Address,
    Config,
    ConfigError,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)
from tests.harness.clients import run_command

ROOT = Path(__file__).resolve().parents[1]
MINIMAL: dict[str, Any] = {"node": {"name": "alpha"}}


def config_with(**sections: dict[str, Any]) -> Config:
    return parse_config({"node": {"name": "alpha"}, **sections})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("1s", 1),
        ("1.5s", 1.5),
        (" 5m ", 300),
        ("2h", 7200),
        ("3d", 3 * 86400),
        ("7", 7),
        (10, 10),
        (0.5, 0.5),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["soon", "", "5 minutes", "-1s", "1w", "s", True, None, [1]])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (1234, 1234),
        ("1234", 1234),
        ("10B", 10),
        ("4K", 4 << 10),
        ("4KiB", 4 << 10),
        ("50M", 50 << 20),
        ("50mb", 50 << 20),
        ("2G", 2 << 30),
        ("1T", 1 << 40),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["big", "1.5M", "-1K", "5X", "", False, 1.5])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(bad)


def test_values_are_typed_and_defaults_apply() -> None:
    config = config_with(
        lmtp={"max_message_size": "200K", "duplicate_window": "1h"},
        listen={"lmtp": "127.0.0.1:2424", "imap": "[::1]:143"},
        sync={"sync_repeat_interval": "250ms", "sync_port": 2005, "sync_compress": True},
    )
    assert config.lmtp.max_message_size == 200 << 10
    assert config.lmtp.duplicate_window == dt.timedelta(hours=1)
    assert config.lmtp.max_recipients == 1000  # a default
    assert config.listen.lmtp == Address("127.0.0.1", 2424) and config.listen.pop3 is None
    assert config.listen.imap == Address("::1", 143) and str(config.listen.imap) == "[::1]:143"
    assert config.sync.sync_repeat_interval == dt.timedelta(milliseconds=250)
    assert config.sync_partner is None  # no sync_host: no replication
    assert config_with(sync={"sync_host": "10.0.0.2", "sync_tls": True}).sync_partner == Address(
        "10.0.0.2", 2005
    )
    assert config.database_url == "sqlite:///var/peerd.db"
    assert config_with(node={"name": "b", "data_dir": "/srv/b"}).database_url == (
        "sqlite:////srv/b/peerd.db"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # Required keys.
        ({}, r"\[node\] name is required"),
        ({"node": {}}, r"\[node\] name is required"),
        ({"node": {"name": "a"}, "listen": {"http": "127.0.0.1:1"}}, r"\[api\] token is required"),
        # Unknown tables and keys: a typo never silently turns a feature off.
        ({"node": {"name": "a"}, "nodes": {}}, r"unknown table\(s\) \[nodes\]"),
        ({"node": {"name": "a"}, "lmpt": {}, "zz": {}}, r"unknown table\(s\) \[lmpt\], \[zz\]"),
        ({"node": {"name": "a", "colour": "red"}}, r"\[node\]: unknown key\(s\) colour"),
        (
            {"node": {"name": "a"}, "sync": {"synchost": "x"}},
            r"\[sync\]: unknown key\(s\) synchost",
        ),
        (
            {"node": {"name": "a"}, "tls": {"crt": "x", "kee": "y"}},
            r"\[tls\]: unknown key\(s\) crt, kee",
        ),
        # Wrong types and values name the table and the key.
        (
            {"node": {"name": "a"}, "sync": {"sync_port": "many"}},
            r"\[sync\] sync_port: expected an integer",
        ),
        (
            {"node": {"name": "a"}, "sync": {"sync_compress": "yes"}},
            r"\[sync\] sync_compress: expected true or false",
        ),
        (
            {"node": {"name": "a"}, "lmtp": {"max_message_size": "huge"}},
            r"\[lmtp\] max_message_size: not a size",
        ),
        (
            {"node": {"name": "a"}, "lmtp": {"shutdown_grace": "later"}},
            r"\[lmtp\] shutdown_grace: not a duration",
        ),
        (
            {"node": {"name": "a"}, "listen": {"lmtp": "localhost"}},
            r"\[listen\] lmtp: not a host:port",
        ),
        (
            {"node": {"name": "a"}, "listen": {"lmtp": "127.0.0.1:99999"}},
            r"\[listen\] lmtp: not a host:port",
        ),
        (
            {"node": {"name": "a", "local_domains": "example.org"}},
            r"\[node\] local_domains: expected a list",
        ),
        ({"node": {"name": "a"}, "lmtp": "big"}, r"\[lmtp\] must be a table"),
        ({"node": {"name": "Alpha One"}}, r"\[node\] name must be lower-case"),
        ({"node": {"name": "a"}, "sync": {"sync_mode": "eventual"}}, r"sync_mode must be"),
        ({"node": {"name": "a"}, "log": {"format": "xml"}}, r"\[log\] format must be"),
        ({"node": {"name": "a"}, "log": {"level": "verbose"}}, r"\[log\] level must be one of"),
        (
            {"node": {"name": "a"}, "reconcile": {"schedule": "daily"}},
            r"\[reconcile\] schedule: not crontab syntax",
        ),
        (
            {"node": {"name": "a"}, "partner": {"name": "b", "api": "127.0.0.1:8080"}},
            r"\[partner\] api: '127.0.0.1:8080' is not a control API URL",
        ),
        (
            {"node": {"name": "a"}, "partner": {"name": "b", "api": "http://host:99999"}},
            r"\[partner\] api: .* is not a control API URL",
        ),
        (
            {"node": {"name": "a"}, "routing": {"api_url": "not a url"}},
            r"\[routing\] api_url: 'not a url' is not a control API URL",
        ),
        (
            {"node": {"name": "a"}, "scrub": {"schedule": "weekly"}},
            r"\[scrub\] schedule: not crontab syntax",
        ),
        (
            {"node": {"name": "a"}, "scrub": {"schedule": "0 4 * * 8"}},
            r"\[scrub\] schedule: not crontab syntax",
        ),
        (
            {"node": {"name": "a"}, "database": {"url": "mysql://u:p@db/peerd"}},
            r"\[database\] url: 'mysql' is not supported",
        ),
        # scrypt's N is 2**cost: 3 is below what a stored hash may be, 17
        # past the memory bound a verification may take (engine.passwords).
        (
            {"node": {"name": "a"}, "auth": {"scrypt_cost": 3}},
            r"\[auth\] scrypt_cost must be 4 to 16",
        ),
        (
            {"node": {"name": "a"}, "auth": {"scrypt_cost": 17}},
            r"\[auth\] scrypt_cost must be 4 to 16",
        ),
        ({"node": {"name": "a"}, "auth": {"scrypt_cost": "15"}}, r"\[auth\] scrypt_cost"),
    ],
)
def test_mistakes_are_reported_clearly(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_files_missing_or_not_toml_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*missing\.toml"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nname=")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_config(bad)
    good = tmp_path / "good.toml"
    good.write_text('[node]\nname = "alpha"\n[lmtp]\nmax_message_size = "1M"\n')
    config = load_config(good)
    assert config.path == good and config.lmtp.max_message_size == 1 << 20
    # The daemon refuses to start on a bad file, says which, and exits 2.
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[node]\nname = "alpha"\ncolour = "red"\n')
    for path in (bad, unknown, tmp_path / "missing.toml"):
        result = run_command("peerd", ["run", "-c", str(path)], tmp_path, timeout=60)
        assert result.returncode == 2, result
        assert result.stderr.startswith("peerd: ") and path.name in result.stderr
    checked = run_command("peerd", ["check-config", "-c", str(good)], tmp_path, timeout=60)
    assert checked.returncode == 0 and "ok (node alpha)" in checked.stdout


@pytest.mark.parametrize("name", ["alpha.toml", "beta.toml", "peerd.example.toml"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(ROOT / "configs" / name)
    assert config.node.name


def _sections() -> list[Any]:
    hints = typing.get_type_hints(Config)
    out = []
    for f in dataclasses.fields(Config):
        if f.name == "path":
            continue
        out.append(pytest.param(f.name, hints[f.name], id=f.name))
    return out


@pytest.mark.parametrize(("section", "cls"), _sections())
def test_every_key_is_documented_in_the_example(section: str, cls: Any) -> None:
    text = (ROOT / "configs" / "peerd.example.toml").read_text()
    assert re.search(rf"^#?\s*\[{section}\]", text, re.M), section
    for f in dataclasses.fields(cls):
        # A key may be shown commented out, or as an array of tables ([[routing.hooks]]).
        shown = (
            re.search(rf"^#?\s*{f.name}\s*=", text, re.M)
            or f"[[{section}.{f.name}]]" in text
            or re.search(rf"^#?\s*\[{section}\.{f.name}\.", text, re.M)  # [sync.channels.NAME]
        )
        assert shown, f"[{section}] {f.name} is not in configs/peerd.example.toml"
