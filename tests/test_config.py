"""The node's TOML config: values read strictly, mistakes reported with where they are."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import socket
import subprocess
import typing
from pathlib import Path
from typing import Any

import pytest

from peerd.node.config import (
    Address,
    Config,
    ConfigError,
    check_for_service,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)
from tests.harness.certs import self_signed
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


# -- hostile and mistaken values (the audit of every key) -------------------------

_INF, _NAN = float("inf"), float("nan")


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        # Durations: TOML's inf and nan, numbers past what a timedelta holds,
        # negative numbers (as "-1s" is), zero where it would spin or cut at once.
        ({"imap": {"idle_timeout": _INF}}, r"\[imap\] idle_timeout: longer than 100 years"),
        ({"http": {"header_timeout": -_INF}}, r"\[http\] header_timeout: not a duration"),
        ({"lmtp": {"duplicate_window": _NAN}}, r"\[lmtp\] duplicate_window: not a duration"),
        ({"auth": {"failure_window": 10**30}}, r"\[auth\] failure_window: longer than 100"),
        ({"node": {"spool_sweep_grace": 2**63}}, r"\[node\] spool_sweep_grace: longer than"),
        ({"routing": {"transfer_grace": "99999999d"}}, r"\[routing\] transfer_grace: longer"),
        ({"lmtp": {"shutdown_grace": -1}}, r"\[lmtp\] shutdown_grace: not a duration"),
        ({"sync": {"sync_repeat_interval": 0}}, r"\[sync\] sync_repeat_interval: must be more"),
        ({"sync": {"sync_reconnect_maxwait": "0s"}}, r"sync_reconnect_maxwait: must be more"),
        ({"imap": {"login_timeout": "0ms"}}, r"\[imap\] login_timeout: must be more than 0"),
        ({"pop3": {"idle_timeout": 0}}, r"\[pop3\] idle_timeout: must be more than 0"),
        ({"managesieve": {"idle_timeout": 0}}, r"\[managesieve\] idle_timeout: must be more"),
        (
            {"routing": {"hooks": [{"name": "h", "url": "http://127.0.0.1:1/", "timeout": 0}]}},
            r"\[routing.hooks\] timeout: must be more than 0",
        ),
        # Sizes: negative and past a 64-bit integer.
        ({"imap": {"max_literal": -1}}, r"\[imap\] max_literal: not a size"),
        ({"sync": {"sync_max_request": 10**30}}, r"\[sync\] sync_max_request: larger than"),
        ({"lmtp": {"max_message_size": 0}}, r"\[lmtp\] max_message_size: must be at least 1"),
        ({"imap": {"login_input_limit": 0}}, r"\[imap\] login_input_limit: must be at least"),
        # The input budget: whatever one command or request holds must fit.
        ({"limits": {"input_memory": "64K"}}, r"\[limits\] input_memory: must be at least 1M"),
        ({"limits": {"input_memory": "100M"}}, r"input_memory must be at least \[imap\] max"),
        (
            {"limits": {"input_memory_per_account": "1M"}},
            r"input_memory_per_account must be 0 \(no share\) or from \[imap\] max_literal",
        ),
        (
            {"limits": {"input_memory_per_account": "2G"}},
            r"input_memory_per_account must be 0",
        ),
        ({"limits": {"lmtp_input_memory": "50M"}}, r"lmtp_input_memory must be at least \[lmtp\]"),
        ({"limits": {"input_wait": -1}}, r"\[limits\] input_wait: not a duration"),
        # Integers: ports, caps, counts.
        ({"sync": {"sync_port": 0}}, r"\[sync\] sync_port: must be a TCP port"),
        ({"sync": {"sync_port": 99999}}, r"\[sync\] sync_port: must be a TCP port"),
        ({"sync": {"sync_port": -5}}, r"\[sync\] sync_port: must be a TCP port"),
        (
            {"sync": {"channels": {"dr": {"sync_host": "127.0.0.1", "sync_port": 10**30}}}},
            r"\[sync.channels.dr\] sync_port: too large",
        ),
        ({"sync": {"sync_batchsize": 10**30}}, r"\[sync\] sync_batchsize: too large"),
        ({"lmtp": {"max_recipients": 0}}, r"\[lmtp\] max_recipients: must be at least 1"),
        ({"imap": {"max_line": 0}}, r"\[imap\] max_line: must be at least 512"),
        ({"imap": {"max_connections": -1}}, r"\[imap\] max_connections: must not be negative"),
        ({"pop3": {"max_connections_per_ip": -1}}, r"max_connections_per_ip: must not be neg"),
        ({"lmtp": {"max_connections": -1}}, r"\[lmtp\] max_connections: must not be negative"),
        (
            {"managesieve": {"max_connections_per_ip": -1}},
            r"\[managesieve\] max_connections_per_ip: must",
        ),
        ({"imap": {"max_sessions_per_account": 0}}, r"max_sessions_per_account: must be at"),
        ({"routing": {"auth_http_wait": -3}}, r"\[routing\] auth_http_wait: must not be neg"),
        # Paths: empty (Path("") is the working directory) or with a NUL.
        ({"sync": {"sync_tls_ca": "a\x00b"}}, r"\[sync\] sync_tls_ca: not a path"),
        ({"sync": {"sync_shutdown_file": ""}}, r"\[sync\] sync_shutdown_file: not a path"),
        ({"node": {"data_dir": "var\x00x"}}, r"\[node\] data_dir: not a path"),
        # Strings the node would choke on later.
        ({"node": {"hostname": "mail host"}}, r"\[node\] hostname must be this host's name"),
        ({"node": {"hostname": "máil.example"}}, r"\[node\] hostname must be"),
        ({"node": {"hostname": ""}}, r"\[node\] hostname must be"),
        ({"partner": {"name": "Beta"}}, r"\[partner\] name must be the partner's \[node\] name"),
        ({"partner": {"name": "bêta"}}, r"\[partner\] name must be"),
        ({"database": {"url": "sqlite"}}, r"\[database\] url: not a database URL"),
        ({"database": {"url": "postgresql"}}, r"\[database\] url: not a database URL"),
        ({"database": {"url": "postgresql://h:port/db"}}, r"\[database\] url: not a database"),
        # A sync host with its port, or not a host at all: never connects.
        (
            {"sync": {"sync_host": "127.0.0.1:2005", "sync_tls": False}},
            r"\[sync\] sync_host: not a host name or IP address; give the host alone",
        ),
        ({"sync": {"sync_host": "beta host", "sync_tls": False}}, r"\[sync\] sync_host: not a"),
        (
            {"sync": {"channels": {"dr": {"sync_host": "bäck.example", "sync_tls": True}}}},
            r"\[sync.channels.dr\] sync_host: not a host name",
        ),
        # A token peerctl could never present (it was Unauthorized for ever).
        ({"api": {"token": "tök"}}, r"\[api\] token must be printable ASCII"),
        ({"partner": {"name": "beta", "token": "a\nb"}}, r"\[partner\] token must be printable"),
        # Proxy hooks: found out otherwise at the next failover.
        ({"routing": {"hooks": [{"name": "h"}]}}, r"'h': give it either url or command"),
        (
            {"routing": {"hooks": [{"name": "h", "url": "http://a/", "command": ["x"]}]}},
            r"'h': give it either url or command",
        ),
        (
            {"routing": {"hooks": [{"name": "h", "url": "ftp://a/"}]}},
            r"'h' url: 'ftp://a/' is not an http:// or https:// URL",
        ),
        (
            {
                "routing": {
                    "hooks": [{"name": "h", "command": ["x"]}, {"name": "h", "url": "http://a/"}]
                }
            },
            r"'h': two hooks have this name",
        ),
        ({"routing": {"hooks": [{"name": " ", "command": ["x"]}]}}, r"name: give each hook a name"),
        ({"routing": {"hooks": [{"name": "h", "command": [""]}]}}, r"'h' command: the first item"),
        # A crontab APScheduler takes but that never comes: the job never runs.
        ({"scrub": {"schedule": "0 0 31 2 *"}}, r"\[scrub\] schedule: '0 0 31 2 \*' names no"),
        # Two listeners on one port: the second would find it taken at start.
        (
            {"listen": {"imap": "127.0.0.1:1143", "pop3": "127.0.0.1:1143"}},
            r"\[listen\] pop3 and \[listen\] imap are both on port 1143",
        ),
        (
            {"listen": {"lmtp": "0.0.0.0:2424"}, "managesieve": {"listen": "127.0.0.1:2424"}},
            r"\[managesieve\] listen and \[listen\] lmtp are both on port 2424",
        ),
        (
            {"listen": {"imap": "localhost:1143", "pop3": "127.0.0.1:1143"}},
            r"both on port 1143",
        ),
    ],
)
def test_hostile_values_are_one_error_naming_the_key(tables: dict[str, Any], message: str) -> None:
    """Each used to pass (and fail at start or misbehave while running) or
    raise something other than ConfigError, which check-config printed as a
    traceback."""
    data: dict[str, Any] = {"node": {"name": "alpha"}}
    for name, table in tables.items():
        data.setdefault(name, {}).update(table)
    with pytest.raises(ConfigError, match=message) as raised:
        parse_config(data)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("node", [5, "name", [1]])
def test_a_node_that_is_not_a_table_is_said(node: object) -> None:
    with pytest.raises(ConfigError, match=r"\[node\] must be a table"):
        parse_config({"node": node})


@pytest.mark.parametrize(
    ("tables", "value"),
    [
        # Odd but meaningful forms are taken as they read.
        ({"imap": {"idle_timeout": "1.5s"}}, dt.timedelta(seconds=1.5)),
        ({"imap": {"idle_timeout": "10\u00a0s"}}, dt.timedelta(seconds=10)),
        ({"imap": {"idle_timeout": 1.5}}, dt.timedelta(seconds=1.5)),
        ({"imap": {"max_literal": "10MiB"}}, 10 << 20),
        ({"imap": {"max_literal": "10mb"}}, 10 << 20),
        ({"listen": {"imap": "[::1]:143", "pop3": "127.0.0.1:143"}}, 143),
        ({"listen": {"imap": "127.0.0.1:143", "pop3": "127.0.0.2:143"}}, 143),
        ({"listen": {"imap": "0.0.0.0:143", "pop3": "[::]:143"}}, 143),
        ({"listen": {"imap": "0.0.0.0:143", "pop3": "[::1]:143"}}, 143),
        ({"node": {"spool_sweep_interval": 0}}, dt.timedelta(0)),
        ({"lmtp": {"max_connections": 0}}, 0),
    ],
)
def test_odd_but_meaningful_values_are_taken(tables: dict[str, Any], value: object) -> None:
    data: dict[str, Any] = {"node": {"name": "alpha"}}
    for name, table in tables.items():
        data.setdefault(name, {}).update(table)
    config = parse_config(data)
    table, key = next((n, k) for n, t in tables.items() for k in t)
    got = getattr(getattr(config, table), key)
    assert (got.port if isinstance(got, Address) else got) == value


def test_check_for_service_refuses_what_the_start_would_trip_on(tmp_path: Path) -> None:
    """A data_dir that is a file, a listener on an address this host does not
    have or a name that does not resolve: ``run`` used to die with a
    traceback (FileExistsError, EADDRNOTAVAIL, gaierror) after check-config
    said ok."""
    a_file = tmp_path / "file"
    a_file.write_text("")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"node": {"data_dir": str(a_file)}}, r"\[node\] data_dir .* is not a directory"),
        ({"node": {"data_dir": str(a_file / "sub")}}, r"\[node\] data_dir .* not a directory"),
        # 192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of this host.
        ({"listen": {"imap": "192.0.2.1:1143"}}, r"\[listen\] imap: cannot listen on 192.0.2.1"),
        (
            {"managesieve": {"listen": "no-such-host.invalid:4190"}},
            r"\[managesieve\] listen: cannot resolve the host 'no-such-host.invalid'",
        ),
    ]
    for tables, message in cases:
        data: dict[str, Any] = {"node": {"name": "alpha", "data_dir": str(tmp_path / "d")}}
        for name, table in tables.items():
            data.setdefault(name, {}).update(table)
        config = parse_config(data)
        with pytest.raises(ConfigError, match=message):
            check_for_service(config)
    # A port in use is not refused: check-config runs beside the node it checks.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        check_for_service(
            parse_config(
                {
                    "node": {"name": "alpha", "data_dir": str(tmp_path / "d")},
                    "listen": {"imap": f"127.0.0.1:{port}"},
                }
            )
        )


def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    """It was a UnicodeDecodeError traceback from check-config and run (and
    'reload failed' with one on SIGHUP)."""
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'[node]\nname = "alpha"\nhostname = "m\xe4il"\n')
    with pytest.raises(ConfigError, match=r"latin1\.toml: line 3 is not UTF-8 text"):
        load_config(latin1)
    done = run_command("peerd", ["check-config", "-c", str(latin1)], tmp_path, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done
    assert done.stderr.startswith("peerd: ") and "line 3 is not UTF-8" in done.stderr


def test_a_key_with_a_passphrase_is_refused_without_asking(tmp_path: Path) -> None:
    """OpenSSL asked for the passphrase on the terminal (check-config waited
    there) and then died with an OSError traceback."""
    cert, key = self_signed(tmp_path)
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        [
            "openssl",
            "pkey",
            "-in",
            str(key),
            "-out",
            str(encrypted),
            "-aes256",
            "-passout",
            "pass:x",
        ],
        check=True,
        capture_output=True,
    )
    config = parse_config(
        {
            "node": {"name": "alpha", "data_dir": str(tmp_path / "d")},
            "tls": {"cert": str(cert), "key": str(encrypted)},
        }
    )
    with pytest.raises(ConfigError, match=r"\[tls\] key .*encrypted\.key is encrypted with a pass"):
        check_for_service(config)
