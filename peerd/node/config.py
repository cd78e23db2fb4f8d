"""The node's configuration: one TOML file, checked strictly at start.

How this works: each TOML table is a frozen dataclass below; a key's Python
type says how its TOML value is read (durations like ``"1s"``/``"250ms"``/
``"3d"``, sizes like ``"50M"``, listen addresses ``"host:port"``). Unknown
tables or keys are errors, so a typo never silently turns a feature off.
Option names follow Cyrus where one exists (``sync_host``, ``sync_log``, ...).
Every key is documented in ``configs/peerd.example.toml``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import ipaddress
import os
import re
import socket
import ssl
import tomllib
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from engine.limits import MAX_SCRIPTS
from engine.passwords import DEFAULT_LN, MAX_LN, MIN_LN
from peerd.node.syncoptions import refusal

__all__ = [
    "SIZE_PATTERN",
    "AccountsConfig",
    "Address",
    "ApiConfig",
    "ChannelConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "ImapConfig",
    "LimitsConfig",
    "ListenConfig",
    "LmtpConfig",
    "LogConfig",
    "ManageSieveConfig",
    "NodeConfig",
    "PartnerConfig",
    "Pop3Config",
    "ProxyHook",
    "ReconcileConfig",
    "RoutingConfig",
    "ScrubConfig",
    "SieveConfig",
    "SocketmapConfig",
    "SyncConfig",
    "TlsConfig",
    "check_for_service",
    "listeners",
    "load_config",
    "load_for_service",
    "parse_config",
    "parse_duration",
    "parse_size",
]


# A byte count that the file may write as "50M"; plain ints stay plain.
Size = Annotated[int, "size"]


@dataclass(frozen=True, slots=True)
class Bounds:
    """A key's allowed range, as ``Annotated`` metadata on its field: ints and
    sizes compare as they are, durations in seconds (``above``: strictly
    more than ``least``). ``say`` is what the error tells the admin."""

    least: float
    most: float | None = None
    above: bool = False
    say: str = ""

    def check(self, value: object) -> None:
        number = value.total_seconds() if isinstance(value, dt.timedelta) else value
        assert isinstance(number, (int, float))
        low = number <= self.least if self.above else number < self.least
        if low or (self.most is not None and number > self.most):
            raise ValueError(self.say)


# A TCP port, and a duration that must not be zero (a timeout of nothing, a
# loop that would spin).
Port = Annotated[int, Bounds(1, 65535, say="must be a TCP port, 1 to 65535")]
PositiveDuration = Annotated[dt.timedelta, Bounds(0, above=True, say="must be more than 0")]
# A connection cap: 0 turns it off, a negative one would refuse everyone.
Cap = Annotated[int, Bounds(0, say="must not be negative (0: no cap)")]
# No number in the config is larger than a 64-bit signed integer (SQLite's
# INTEGER, a C long): beyond it the store or the socket layer overflows.
_MOST_INT = (1 << 63) - 1
# The longest duration (100 years): a datetime this far back or ahead of now
# still exists, and event-loop timers still take it.
_MOST_SECONDS = 100 * 365 * 86400


class ConfigError(Exception):
    """The configuration file is missing, unreadable or wrong; the message says where."""


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# What one sync request holds besides a message's octets: its frame header
# and the headers delivery adds (a few KiB), and zlib's worst-case growth
# (5 octets per 16 KiB block, under 1/1024 of the message).
_SYNC_FRAMING = 4 << 10
_DURATION_RE = re.compile(r"\A\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*\Z")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
# A size as a string: digits and an optional binary unit (the control API's
# schema publishes the same pattern).
SIZE_PATTERN = r"^\s*\d+\s*([KMGTkmgt][iI]?[bB]?|[bB])?\s*$"
_SIZE_RE = re.compile(r"\A\s*(\d+)\s*([KMGT]i?B?|B)?\s*\Z", re.IGNORECASE)


def parse_duration(value: object) -> dt.timedelta:
    """A duration: a number of seconds or ``"250ms"``/``"1s"``/``"5m"``/``"2h"``/
    ``"3d"``; never negative, NaN, infinite or past 100 years."""
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value if isinstance(value, float) else float(min(value, 1 << 64))
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds is None or seconds != seconds or seconds < 0:
        raise ValueError("not a duration (use e.g. 500ms, 1s, 5m, 2h, 3d)")
    if seconds > _MOST_SECONDS:
        raise ValueError("longer than 100 years (use e.g. 500ms, 1s, 5m, 2h, 3d)")
    return dt.timedelta(seconds=seconds)


def parse_size(value: object) -> int:
    """A byte count: an integer or ``"64K"``/``"50M"``/``"1G"``; never
    negative nor past 2**63 - 1."""
    size: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            unit = (match.group(2) or "B")[0].upper()
            size = (
                int(match.group(1))
                * {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
            )
    if size is None or size < 0:
        raise ValueError("not a size (use bytes or e.g. 50M)")
    if size > _MOST_INT:
        raise ValueError("larger than 2**63 - 1 bytes (use bytes or e.g. 50M)")
    return size


def parse_address(value: object) -> Address:
    if not isinstance(value, str) or ":" not in value:
        raise ValueError("not a host:port address")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError("not a host:port address")
    return Address(host, int(port))


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    # "pair": a node of a pair (owns accounts); "backup": a replica-only
    # backup node, the target of the pair's [sync.channels.NAME]: it takes
    # every account's changes and refuses ownership (docs/failover.md).
    role: str = "pair"
    data_dir: Path = Path("var")
    local_domains: tuple[str, ...] = ()
    hostname: str = "localhost"
    spool_flush: str = "filesystem"
    spool_sweep_interval: dt.timedelta = dt.timedelta(hours=1)
    spool_sweep_grace: dt.timedelta = dt.timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = ""
    # The integrity check at every start: "quick" (SQLite quick_check;
    # PostgreSQL amcheck), "full" (also SQLite integrity_check, amcheck
    # heapallindexed) or "off".
    check_at_start: str = "quick"


@dataclass(frozen=True, slots=True)
class ListenConfig:
    lmtp: Address | None = None
    imap: Address | None = None
    pop3: Address | None = None
    sync: Address | None = None
    http: Address | None = None
    socketmap: Address | None = None


@dataclass(frozen=True, slots=True)
class ApiConfig:
    token: str = ""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """``[sync.channels.NAME]``: a replica-only backup node that receives
    every change of every account this node owns (and, with
    ``sync_log_chain``, of those it holds for the partner) and never owns
    any. Credentials and TLS as for the partner; empty: ``[sync]``'s."""

    sync_host: str = ""
    sync_port: Port = 2005
    sync_authname: str = ""
    sync_password: str = ""
    sync_tls: bool | None = None  # None: as [sync] sync_tls
    sync_tls_ca: Path | None = None


@dataclass(frozen=True, slots=True)
class SyncConfig:
    sync_host: str = ""
    sync_port: Port = 2005
    sync_authname: str = ""
    sync_password: str = ""
    sync_compress: bool = False
    sync_log: bool = True
    sync_repeat_interval: PositiveDuration = dt.timedelta(seconds=1)
    sync_reconnect_maxwait: PositiveDuration = dt.timedelta(seconds=20)
    # The sync connection's idle timeout: connecting, and each read of an
    # answer (a request that keeps moving is never cut).
    sync_timeout: dt.timedelta = dt.timedelta(seconds=30)
    # The most sync-log records the rolling worker has in flight at once
    # (Cyrus's batch of the log); an account's records always go together.
    sync_batchsize: int = 8192
    # While this file exists the rolling worker starts nothing new (the
    # syncs in hand finish, the sync log is kept); removing it and SIGHUP
    # (or a restart) resumes.
    sync_shutdown_file: Path | None = None
    # Changes applied from the partner are also logged for this node's
    # backup channels (a chain alpha -> beta -> backup).
    sync_log_chain: bool = False
    # Replica-only backup channels by name (Cyrus's sync_log_channels).
    channels: dict[str, ChannelConfig] = field(default_factory=dict)
    sync_mode: str = "rolling"
    sync_synchronous_timeout: dt.timedelta = dt.timedelta(seconds=2)
    sync_concurrency: int = 4
    sync_tls: bool = False
    sync_tls_ca: Path | None = None
    sync_max_request: Size = 256 << 20


@dataclass(frozen=True, slots=True)
class PartnerConfig:
    name: str = ""
    api: str = ""
    token: str = ""  # the partner's [api] token; default: ours


@dataclass(frozen=True, slots=True)
class LmtpConfig:
    max_message_size: Annotated[Size, Bounds(1, say="must be at least 1 byte")] = 50 << 20
    max_recipients: Annotated[int, Bounds(1, say="must be at least 1")] = 1000
    duplicate_window: dt.timedelta = dt.timedelta(days=3)
    duplicate_suppression: bool = True
    max_line: int = 4096
    shutdown_grace: dt.timedelta = dt.timedelta(seconds=10)
    workers: int = 1
    starttls: bool = True  # offered only when [tls] has a certificate
    # RFC 5321 4.5.3.2.7: a server waits at least five minutes for a command.
    idle_timeout: dt.timedelta = dt.timedelta(minutes=5)
    # Per LMTP process (each of [lmtp] workers counts its own); 0: no cap.
    # Clients on this host (the MTA beside the node) count only in all.
    max_connections: Cap = 500
    max_connections_per_ip: Cap = 100


@dataclass(frozen=True, slots=True)
class ImapConfig:
    # Below a few hundred octets every ordinary command is refused (BYE).
    max_line: Annotated[int, Bounds(512, say="must be at least 512 (octets)")] = 64 << 10
    max_literal: Size = 64 << 20
    idle_timeout: PositiveDuration = dt.timedelta(minutes=30)
    login_failure_delay: dt.timedelta = dt.timedelta(seconds=2)
    max_login_failures: int = 3
    commands_per_second: int = 500
    max_sessions_per_account: Annotated[int, Bounds(1, say="must be at least 1")] = 50
    starttls: bool = True
    # LOGIN/AUTHENTICATE outside TLS; unset: allowed only when [tls] has no
    # certificate. A connection from the host's own address counts as secure.
    allow_plaintext_auth: bool | None = None
    # Before login: the time to log in, and the most one command line or
    # literal may hold (a password needs little).
    login_timeout: PositiveDuration = dt.timedelta(seconds=60)
    # A LOGIN with a long name and password must fit.
    login_input_limit: Annotated[Size, Bounds(512, say="must be at least 512 (bytes)")] = 8 << 10
    # Open connections of the listener: in all, and per client address
    # (clients on this host, a local proxy, are not capped per address). 0: no cap.
    max_connections: Cap = 5000
    max_connections_per_ip: Cap = 100


@dataclass(frozen=True, slots=True)
class Pop3Config:
    max_line: int = 1024
    idle_timeout: PositiveDuration = dt.timedelta(minutes=10)
    login_failure_delay: dt.timedelta = dt.timedelta(seconds=2)
    max_login_failures: int = 3
    # USER/PASS and AUTH outside TLS; unset: as [imap] allow_plaintext_auth.
    allow_plaintext_auth: bool | None = None
    login_timeout: PositiveDuration = dt.timedelta(seconds=60)
    max_connections: Cap = 2000
    max_connections_per_ip: Cap = 100


@dataclass(frozen=True, slots=True)
class ManageSieveConfig:
    # Off unless set (RFC 5804's port is 4190).
    listen: Address | None = None
    starttls: bool = True  # offered only when [tls] has a certificate
    idle_timeout: PositiveDuration = dt.timedelta(minutes=10)
    # Before login, the time to log in however active the client is (as IMAP's).
    login_timeout: PositiveDuration = dt.timedelta(seconds=60)
    login_failure_delay: dt.timedelta = dt.timedelta(seconds=2)
    max_login_failures: int = 3
    max_scripts: int = 20
    # Open connections in all and per client address (0: no cap), as for POP3.
    max_connections: Cap = 500
    max_connections_per_ip: Cap = 20


@dataclass(frozen=True, slots=True)
class SocketmapConfig:
    """The Postfix socketmap listener (``[listen] socketmap``)."""

    # The next request must have arrived whole within this (Postfix's own
    # clients drop an idle connection after ipc_idle, 5 s by default); a
    # byte at a time does not hold the connection open.
    idle_timeout: PositiveDuration = dt.timedelta(minutes=10)
    # Open connections in all and per client address (0: no cap); clients on
    # this host (Postfix beside the node) count only in all.
    max_connections: Cap = 500
    max_connections_per_ip: Cap = 100


@dataclass(frozen=True, slots=True)
class SieveConfig:
    # Run the account's active script at LMTP delivery.
    enabled: bool = True
    # The SMTP relay redirects and vacation replies go through; none: they
    # are not sent (logged), the rest of the script still runs.
    relay: Address | None = None


@dataclass(frozen=True, slots=True)
class ProxyHook:
    name: str
    url: str = ""
    command: tuple[str, ...] = ()
    timeout: PositiveDuration = dt.timedelta(seconds=5)


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    auth_http_secret: str = ""
    auth_http_wait: Annotated[int, Bounds(0, say="must not be negative (seconds)")] = 3
    imap_address: Address | None = None
    pop3_address: Address | None = None
    lmtp_address: Address | None = None
    partner_imap: Address | None = None
    partner_pop3: Address | None = None
    partner_lmtp: Address | None = None
    hooks: tuple[ProxyHook, ...] = ()
    # The routing directory of many pairs (docs/directory.md): a PostgreSQL
    # URL shared by every node of every pair; empty: one pair, no directory.
    directory_url: str = ""
    pair: str = ""  # this node's pair, as the directory names it
    # How long a lookup answered from the directory is reused (the staleness
    # bound, with the write-through lag), and how often this node says it is up.
    directory_cache_ttl: dt.timedelta = dt.timedelta(seconds=2)
    directory_heartbeat: dt.timedelta = dt.timedelta(seconds=5)
    # This node's control API as other pairs reach it (nginx auth_http of an
    # account of this pair asked on another pair); default: http:// [listen] http.
    api_url: str = ""
    # How long the source pair keeps an account's copy after it moved to
    # another pair (peerctl account move --to-pair), before deleting it.
    transfer_grace: dt.timedelta = dt.timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class AccountsConfig:
    # Account names' local part is case-insensitive: lower-cased when an
    # account is made, and in every recipient, login and routing lookup
    # (Cyrus's default). false: names are matched exactly as stored.
    lowercase_names: bool = True


@dataclass(frozen=True, slots=True)
class HttpConfig:
    max_connections: int = 256
    max_connections_per_ip: int = 32
    header_timeout: dt.timedelta = dt.timedelta(seconds=10)
    # A request's body must have arrived this long after its header ended.
    body_timeout: dt.timedelta = dt.timedelta(seconds=120)
    # An idle keep-alive connection (no request under way) is closed after
    # this; a later request's header must also end within it.
    keepalive_timeout: dt.timedelta = dt.timedelta(seconds=75)
    # A client that takes none of an answer for this long (the socket's
    # buffers full) is cut off.
    send_timeout: dt.timedelta = dt.timedelta(seconds=120)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """How much client input a process holds in memory at once, whatever
    the number of connections (peerd.node.inputbudget): the daemon's IMAP
    literals, ManageSieve literals, control API and sync request bodies;
    each LMTP process's messages in DATA."""

    input_memory: Annotated[Size, Bounds(1 << 20, say="must be at least 1M")] = 1 << 30
    # Of which one account's connections (IMAP, ManageSieve) hold at most; 0: no share.
    input_memory_per_account: Size = 256 << 20
    # How long a command waits for room before it is refused (a temporary
    # error: NO [UNAVAILABLE], 452 4.3.1, 503); 0: refused at once when full.
    input_wait: dt.timedelta = dt.timedelta(seconds=20)
    # Each LMTP process (every [lmtp] worker, or the daemon with workers = 0).
    lmtp_input_memory: Annotated[Size, Bounds(1 << 20, say="must be at least 1M")] = 512 << 20


@dataclass(frozen=True, slots=True)
class AuthConfig:
    max_failures_per_account: int = 10
    max_failures_per_ip: int = 30
    failure_window: dt.timedelta = dt.timedelta(minutes=5)
    max_concurrent_hashes: int = 4
    # log2 of scrypt's N for new password hashes (engine.passwords); a login
    # that proves a password stored weaker replaces the hash at this cost.
    scrypt_cost: int = DEFAULT_LN


@dataclass(frozen=True, slots=True)
class ReconcileConfig:
    schedule: str = "0 3 * * *"
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class ScrubConfig:
    """The spool scrub: when it runs, how fast it may read, and whether a
    switchover or failback first has the target check the moving accounts."""

    schedule: str = "0 4 * * 0"
    enabled: bool = True
    rate: Size = 20 << 20  # bytes read per second; 0: as fast as the disk goes
    verify_on_move: bool = True


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str = "text"
    level: str = "INFO"


@dataclass(frozen=True, slots=True)
class Config:
    node: NodeConfig
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    partner: PartnerConfig = field(default_factory=PartnerConfig)
    lmtp: LmtpConfig = field(default_factory=LmtpConfig)
    imap: ImapConfig = field(default_factory=ImapConfig)
    pop3: Pop3Config = field(default_factory=Pop3Config)
    managesieve: ManageSieveConfig = field(default_factory=ManageSieveConfig)
    socketmap: SocketmapConfig = field(default_factory=SocketmapConfig)
    sieve: SieveConfig = field(default_factory=SieveConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    accounts: AccountsConfig = field(default_factory=AccountsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    reconcile: ReconcileConfig = field(default_factory=ReconcileConfig)
    scrub: ScrubConfig = field(default_factory=ScrubConfig)
    log: LogConfig = field(default_factory=LogConfig)
    path: Path | None = None

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.node.data_dir / 'peerd.db'}"

    def plaintext_auth(self, setting: bool | None) -> bool:
        """Whether a login may be sent in the clear: ``setting`` if the config
        says, else only when no certificate is configured (nothing better to offer)."""
        return setting if setting is not None else self.tls.cert is None

    @property
    def sync_partner(self) -> Address | None:
        if not self.sync.sync_host:
            return None
        return Address(self.sync.sync_host, self.sync.sync_port)


def _kind(value: object) -> str:
    """What a TOML value is, for an error message: never the value itself
    (a mistyped key may hold a secret, and errors end up in logs)."""
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _convert(value: object, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        meta = hint.__metadata__
        value = parse_size(value) if "size" in meta else _convert(value, args[0], where)
        for bounds in meta:
            if isinstance(bounds, Bounds):
                bounds.check(value)
        return value
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        if value is None:
            return None
        return _convert(value, inner[0], where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_kind(value)}")
        if abs(value) > _MOST_INT:
            raise ValueError("too large (the most is 2**63 - 1)")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_kind(value)}")
        return value
    if hint is Path:
        if not isinstance(value, str):
            raise ValueError(f"expected a path, got {_kind(value)}")
        if not value or "\0" in value:
            raise ValueError(
                "not a path (empty, or with a NUL character); leave the key out for none"
            )
        return Path(value)
    if hint is dt.timedelta:
        return parse_duration(value)
    if hint is Address:
        return parse_address(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"expected a table, got {_kind(value)}")
        return {str(key): _convert(item, args[1], f"{where}.{key}") for key, item in value.items()}
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {_kind(value)}")
        return tuple(_convert(v, args[0], where) for v in value)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"expected a table, got {_kind(value)}")
        return _build(hint, value, where)
    raise TypeError(f"no reader for {hint!r}")  # pragma: no cover - a programming error


def _build(cls: Any, table: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - names)
    for key in unknown:
        why = refusal(where, key)
        if why is not None:
            raise ConfigError(why)
    if unknown:
        raise ConfigError(f"[{where}]: unknown key(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in table.items():
        try:
            kwargs[name] = _convert(value, hints[name], f"{where}.{name}")
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"[{where}] {name}: {exc}") from exc
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"[{where}]: {exc}") from exc


def parse_config(
    data: dict[str, Any], path: Path | None = None, *, schedules: bool = True
) -> Config:
    """The config ``data`` says, checked. ``schedules=False`` skips checking the
    crontab expressions, for a process that runs no scheduled job (the LMTP
    worker: APScheduler's cron parser is a third of its start-up imports)."""
    if not isinstance(data.get("node", {}), dict):
        raise ConfigError("[node] must be a table")
    if "name" not in data.get("node", {}):
        raise ConfigError("[node] name is required")
    sections = {f.name for f in dataclasses.fields(Config)} - {"path"}
    unknown = sorted(set(data) - sections)
    if unknown:
        raise ConfigError(f"unknown table(s) {', '.join('[' + u + ']' for u in unknown)}")
    hints = typing.get_type_hints(Config)
    kwargs: dict[str, Any] = {"path": path}
    for name in sections & set(data):
        if not isinstance(data[name], dict):
            raise ConfigError(f"[{name}] must be a table")
        kwargs[name] = _build(hints[name], data[name], name)
    config = Config(**kwargs)
    if config.sync.sync_mode not in ("rolling", "synchronous"):
        raise ConfigError('[sync] sync_mode must be "rolling" or "synchronous"')
    if config.sync.sync_batchsize < 1:
        raise ConfigError("[sync] sync_batchsize must be >= 1")
    if config.sync.sync_timeout <= dt.timedelta(0):
        raise ConfigError("[sync] sync_timeout must be positive")
    if config.node.spool_flush not in ("filesystem", "file"):
        raise ConfigError('[node] spool_flush must be "filesystem" or "file"')
    if config.node.spool_sweep_interval < dt.timedelta(0):
        raise ConfigError("[node] spool_sweep_interval must not be negative (0: only on demand)")
    if config.node.spool_sweep_grace < dt.timedelta(0):
        raise ConfigError("[node] spool_sweep_grace must not be negative")
    if min(config.auth.max_failures_per_account, config.auth.max_failures_per_ip) < 1:
        raise ConfigError("[auth] max_failures_per_account and max_failures_per_ip must be >= 1")
    http = config.http
    if min(config.http.max_connections, config.http.max_connections_per_ip) < 1:
        raise ConfigError("[http] max_connections and max_connections_per_ip must be >= 1")
    timeouts = (http.header_timeout, http.body_timeout, http.keepalive_timeout, http.send_timeout)
    if min(timeouts) <= dt.timedelta(0):
        raise ConfigError(
            "[http] header_timeout, body_timeout, keepalive_timeout and send_timeout"
            " must be positive"
        )
    if not 1 <= config.managesieve.max_scripts <= MAX_SCRIPTS:
        raise ConfigError(f"[managesieve] max_scripts must be 1 to {MAX_SCRIPTS} (the sync limit)")
    # A message must fit in one sync request (with room for its framing),
    # or the partner could never take it.
    largest = max(config.imap.max_literal, config.lmtp.max_message_size)
    if largest + largest // 1024 + _SYNC_FRAMING > config.sync.sync_max_request:
        raise ConfigError(
            "[imap] max_literal and [lmtp] max_message_size must leave 4 KiB and 0.1%"
            " of room below [sync] sync_max_request (a message travels in one sync request)"
        )
    _check_limits(config)
    if not 1 <= config.auth.max_concurrent_hashes <= 64:
        raise ConfigError("[auth] max_concurrent_hashes must be 1 to 64")
    if not MIN_LN <= config.auth.scrypt_cost <= MAX_LN:
        raise ConfigError(f"[auth] scrypt_cost must be {MIN_LN} to {MAX_LN} (log2 of scrypt's N)")
    if config.lmtp.idle_timeout <= dt.timedelta(0):
        raise ConfigError("[lmtp] idle_timeout must be positive")
    if not 0 <= config.lmtp.workers <= 64:
        raise ConfigError("[lmtp] workers must be 0 (LMTP in the daemon itself) to 64")
    if config.database.check_at_start not in ("quick", "full", "off"):
        raise ConfigError('[database] check_at_start must be "quick", "full" or "off"')
    if config.scrub.rate < 0:
        raise ConfigError("[scrub] rate must not be negative (0: as fast as the disk goes)")
    if config.log.format not in ("text", "json"):
        raise ConfigError('[log] format must be "text" or "json"')
    if config.log.level.upper() not in LOG_LEVELS:
        raise ConfigError(f"[log] level must be one of {', '.join(LOG_LEVELS)}")
    if schedules:
        _check_schedule("reconcile", config.reconcile.schedule)
        _check_schedule("scrub", config.scrub.schedule)
    scheme = config.database_url.partition(":")[0]
    if scheme not in DATABASE_SCHEMES:
        raise ConfigError(
            f"[database] url: {scheme!r} is not supported; use sqlite:/// or postgresql://"
        )
    # What SQLAlchemy's make_url takes (not imported here: the LMTP worker
    # reads this module and must not load SQLAlchemy): SCHEME://..., a port
    # of digits.
    try:
        port = urllib.parse.urlsplit(config.database_url).port
        usable = "://" in config.database_url and (port is None or port >= 0)
    except ValueError:  # a port that is not a number, a broken IPv6 literal
        usable = False
    if not usable:
        raise ConfigError(
            "[database] url: not a database URL (e.g. sqlite:////var/lib/peerd/peerd.db"
            " or postgresql+psycopg://peerd:PASSWORD@HOST/peerd)"
        )
    if not re.fullmatch(r"[a-z0-9][a-z0-9\-]{0,62}", config.node.name):
        raise ConfigError("[node] name must be lower-case letters, digits and dashes")
    hostname = config.node.hostname
    if not hostname or not hostname.isascii() or not hostname.isprintable() or " " in hostname:
        # LMTP says it in its greeting and LHLO reply (RFC 5321 4.1.3: a domain).
        raise ConfigError(
            "[node] hostname must be this host's name as mail sees it (printable ASCII,"
            " no spaces; an IDN in its xn-- form)"
        )
    if config.partner.name and not re.fullmatch(r"[a-z0-9][a-z0-9\-]{0,62}", config.partner.name):
        raise ConfigError(
            "[partner] name must be the partner's [node] name (lower-case letters, digits"
            " and dashes)"
        )
    if config.partner.name and config.partner.name == config.node.name:
        raise ConfigError(
            f"[partner] name: {config.partner.name!r} is this node's own name;"
            " give the other node's [node] name"
        )
    for where, token in (
        ("[api] token", config.api.token),
        ("[partner] token", config.partner.token),
    ):
        if token and not (token.isascii() and token.isprintable()):
            # peerctl sends it as HTTP does (latin-1), the node compares UTF-8:
            # a token with any other character is never accepted.
            raise ConfigError(
                f"{where} must be printable ASCII (e.g. python3 -c 'import secrets;"
                " print(secrets.token_urlsafe(32))')"
            )
    _check_api_url("[partner] api", config.partner.api)
    _check_api_url("[routing] api_url", config.routing.api_url)
    if config.listen.http is not None and not config.api.token:
        raise ConfigError("[api] token is required when [listen] http is set")
    if (
        config.listen.http is not None
        and not is_loopback(config.listen.http.host)
        and not config.routing.auth_http_secret
    ):
        # /v1/route/nginx verifies passwords: off loopback it must only
        # answer the proxy that knows the secret (docs/security.md).
        raise ConfigError(
            "[routing] auth_http_secret is required when [listen] http is not on loopback"
        )
    _check_sync_host("[sync] sync_host", config.sync.sync_host)
    for name, channel in config.sync.channels.items():
        _check_sync_host(f"[sync.channels.{name}] sync_host", channel.sync_host)
    _check_directory(config.routing)
    _check_hooks(config.routing.hooks)
    _check_channels(config)
    _check_listen_ports(config)
    sync_table = data.get("sync", {})
    if (
        config.sync.sync_host
        and not is_loopback(config.sync.sync_host)
        and not config.sync.sync_tls
        and "sync_tls" not in sync_table
    ):
        # The sync channel carries Basic credentials and every message: in
        # clear text over a network only when the operator says so.
        raise ConfigError(
            "[sync] sync_tls is required when sync_host is not on loopback"
            " (or say sync_tls = false explicitly)"
        )
    return config


def _check_limits(config: Config) -> None:
    """Whatever one command or request may hold must fit in the budget it
    takes room from, or it could never be read (a sync push never applied)."""
    limits = config.limits
    literal = config.imap.max_literal
    if limits.input_memory < max(literal, config.sync.sync_max_request):
        raise ConfigError(
            "[limits] input_memory must be at least [imap] max_literal and [sync]"
            " sync_max_request (one literal, one sync request must fit in it)"
        )
    share = limits.input_memory_per_account
    if share and not literal <= share <= limits.input_memory:
        raise ConfigError(
            "[limits] input_memory_per_account must be 0 (no share) or from [imap]"
            " max_literal to [limits] input_memory"
        )
    # A message in DATA takes room up to its size and two reads more
    # (peerd.services.lmtp.front): one message of the largest size must fit.
    if limits.lmtp_input_memory < config.lmtp.max_message_size + (512 << 10):
        raise ConfigError(
            "[limits] lmtp_input_memory must be at least [lmtp] max_message_size and 512K"
        )


# Values the shipped example holds for secrets: a node must not run with them.
PLACEHOLDER_SECRETS = ("change-me", "change-me-too", "changeme")


def check_for_service(config: Config) -> None:
    """What ``check-config`` and ``run`` refuse beyond :func:`parse_config`: a
    config that loads but must not serve (a secret still the example's, a sync
    listener anyone could write to). Kept apart so the shipped example loads."""
    secrets = (
        ("[api] token", config.api.token),
        ("[partner] token", config.partner.token),
        ("[sync] sync_password", config.sync.sync_password),
        ("[routing] auth_http_secret", config.routing.auth_http_secret),
    )
    for where, value in secrets:
        if value.strip().lower() in PLACEHOLDER_SECRETS:
            raise ConfigError(
                f"{where} is still the example's {value!r}; put a secret of your own there"
                " (e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
    if config.listen.sync is not None and not (
        config.sync.sync_authname and config.sync.sync_password
    ):
        raise ConfigError(
            "[listen] sync is set but [sync] sync_authname/sync_password are not: the"
            " sync listener would refuse the partner; set both (the same on both nodes)"
        )
    _check_certificates(config)
    _check_data_dir(config.node.data_dir)
    _check_listen_addresses(config)


def _check_data_dir(data_dir: Path) -> None:
    """``data_dir`` must be a directory this user may write, or not exist yet
    (the daemon makes it, and says so): the node keeps its lock, spool and
    SQLite database there."""
    place = data_dir
    while not place.exists() and place != place.parent:
        place = place.parent  # the nearest existing ancestor is where mkdir writes
    if place.exists() and not place.is_dir():
        raise ConfigError(
            f"[node] data_dir {data_dir}: {place} is not a directory; give a directory"
        )
    if not os.access(place, os.W_OK | os.X_OK):
        raise ConfigError(
            f"[node] data_dir {data_dir}: {place} is not writable by this user"
            " (run check-config as the service user; chown the directory to it)"
        )


def _check_listen_addresses(config: Config) -> None:
    """Each listener's host resolves and is an address of this host, as the
    listener will bind it. A port in use is not refused here: check-config
    runs beside the node it checks."""
    for key, address in listeners(config):
        try:
            infos = socket.getaddrinfo(
                address.host or None,
                address.port,
                type=socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE,
            )
        except (socket.gaierror, UnicodeError) as exc:
            raise ConfigError(
                f"{key}: cannot resolve the host {address.host!r} ({exc}); give an address"
                " of this host"
            ) from exc
        for family, kind, proto, _, sockaddr in infos:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(sockaddr)
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        continue
                    raise ConfigError(
                        f"{key}: cannot listen on {sockaddr[0]} port {address.port}:"
                        f" {exc.strerror} (an address of this host, and a port below 1024"
                        " needs CAP_NET_BIND_SERVICE)"
                    ) from exc


def _check_certificates(config: Config) -> None:
    """The ``[tls]`` pair and every sync CA file must load, as the listeners
    and the sync client will load them: a missing file or a key that is not
    the certificate's is refused here, before the node opens anything."""
    tls = config.tls
    if (tls.cert is None) != (tls.key is None):
        raise ConfigError("[tls] cert and key go together: set both, or neither")
    files = [
        ("[tls] cert", tls.cert),
        ("[tls] key", tls.key),
        ("[sync] sync_tls_ca", config.sync.sync_tls_ca),
    ]
    files += [
        (f"[sync.channels.{name}] sync_tls_ca", channel.sync_tls_ca)
        for name, channel in config.sync.channels.items()
    ]
    for where, path in files:
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from exc
    for where, path in files[2:]:
        if path is not None:
            try:
                ssl.create_default_context(cafile=path)
            except (ssl.SSLError, ValueError) as exc:
                raise ConfigError(f"{where}: {path} holds no CA certificate in PEM: {exc}") from exc
    if tls.cert is not None and tls.key is not None:
        key = tls.key

        def passphrase() -> str:
            # Without this OpenSSL asks on the terminal (check-config waited
            # there, then died with OSError; under systemd there is none).
            raise ConfigError(
                f"[tls] key {key} is encrypted with a passphrase, which the node cannot"
                f" ask for: store it without one (openssl pkey -in {key} -out NEW),"
                " readable only by the service user"
            )

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                tls.cert, tls.key, password=passphrase
            )
        except ssl.SSLError as exc:
            raise ConfigError(
                f"[tls] cert {tls.cert} and key {tls.key} do not load as a pair (a PEM"
                f" certificate chain and its private key): {exc.reason or exc}"
            ) from exc


def _check_channels(config: Config) -> None:
    sync = config.sync
    if config.node.role not in ("pair", "backup"):
        raise ConfigError('[node] role must be "pair" or "backup"')
    if config.node.role == "backup" and (sync.sync_host or sync.channels or config.partner.name):
        raise ConfigError(
            '[node] role = "backup": a backup node has no partner and no channels of its own'
            " (remove [sync] sync_host, [sync.channels] and [partner]); the pair's nodes"
            " name it in their [sync.channels.NAME]"
        )
    if sync.sync_log_chain and not sync.channels:
        raise ConfigError(
            "[sync] sync_log_chain passes the partner's changes on to this node's backup"
            " channels: it needs a [sync.channels.NAME]"
        )
    for name, channel in sync.channels.items():
        where = f"[sync.channels.{name}]"
        if not re.fullmatch(r"[a-z0-9][a-z0-9\-]{0,62}", name):
            raise ConfigError(f"{where}: a channel name is lower-case letters, digits and dashes")
        if not channel.sync_host:
            raise ConfigError(f"{where} sync_host is required (the backup node's sync listener)")
        if name in (config.node.name, config.partner.name):
            raise ConfigError(
                f"{where}: {name!r} is a node of the pair; a channel is a third, backup node"
            )
        tls = sync.sync_tls if channel.sync_tls is None else channel.sync_tls
        if not is_loopback(channel.sync_host) and not tls and channel.sync_tls is None:
            raise ConfigError(
                f"{where} sync_tls is required when sync_host is not on loopback"
                " (or say sync_tls = false explicitly)"
            )


# Hosts that listen on every address of their family: a port taken there is
# taken on every address.
_WILDCARDS = frozenset({"", "0.0.0.0", "::", "*"})


def listeners(config: Config) -> list[tuple[str, Address]]:
    """Every address the node listens on, with the key that sets it."""
    listen = config.listen
    named: list[tuple[str, Address | None]] = [
        ("[listen] lmtp", listen.lmtp),
        ("[listen] imap", listen.imap),
        ("[listen] pop3", listen.pop3),
        ("[listen] sync", listen.sync),
        ("[listen] http", listen.http),
        ("[listen] socketmap", listen.socketmap),
        ("[managesieve] listen", config.managesieve.listen),
    ]
    return [(key, address) for key, address in named if address is not None]


def _check_listen_ports(config: Config) -> None:
    """Two listeners on one port: the second would find it taken at start."""

    def families(host: str) -> set[int]:
        try:
            return {ipaddress.ip_address(host).version}
        except ValueError:  # a name (localhost): it may resolve to either
            return {4, 6}

    def overlap(one: str, two: str) -> bool:
        one, two = one.lower(), two.lower()
        if one == two:
            return True
        # An IPv4 and an IPv6 socket never collide (the listeners bind IPv6
        # only, as asyncio does).
        if not families(one) & families(two):
            return False
        if {one, two} & _WILDCARDS:
            return True
        # localhost is the loopback addresses (127.0.0.1 and ::1)
        return "localhost" in (one, two) and is_loopback(one) and is_loopback(two)

    seen: list[tuple[str, Address]] = []
    for key, address in listeners(config):
        for other_key, other in seen:
            if other.port == address.port and overlap(address.host, other.host):
                raise ConfigError(
                    f"{key} and {other_key} are both on port {address.port}: give each its own port"
                )
        seen.append((key, address))


def _check_sync_host(where: str, host: str) -> None:
    """A host name or an IP address, alone: ``"10.0.0.2:2005"`` or a name
    with spaces would never connect (the client retries for ever)."""
    if not host:
        return
    try:
        ipaddress.ip_address(host.strip("[]"))
        return
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_\-.]*[A-Za-z0-9_])?\.?", host):
        raise ConfigError(
            f"{where}: not a host name or IP address; give the host alone (the port goes"
            " in sync_port)"
        )


def _check_hooks(hooks: tuple[ProxyHook, ...]) -> None:
    """Each ``[[routing.hooks]]`` is one URL or one command, under a name of
    its own (its retry state is kept by name): a mistake here otherwise
    shows only at the next failover, as a hook that is never acknowledged."""
    names: set[str] = set()
    for hook in hooks:
        where = f"[[routing.hooks]] {hook.name!r}"
        if not hook.name.strip():
            raise ConfigError("[[routing.hooks]] name: give each hook a name")
        if hook.name in names:
            raise ConfigError(f"{where}: two hooks have this name; give each its own")
        names.add(hook.name)
        if bool(hook.url) == bool(hook.command):
            raise ConfigError(f"{where}: give it either url or command (not both, not neither)")
        if hook.url:
            _check_api_url(f"{where} url", hook.url, "an http:// or https:// URL")
        if hook.command and not hook.command[0]:
            raise ConfigError(f"{where} command: the first item is the program to run")


def _check_api_url(where: str, url: str, what: str = "a control API URL") -> None:
    """A control API's address: ``http://`` or ``https://``, a host, maybe a port."""
    if not url:
        return
    try:
        parts = urllib.parse.urlsplit(url)
        usable = (
            parts.scheme in ("http", "https")
            and bool(parts.hostname)
            and (parts.port is None or parts.port > 0)
        )
    except ValueError:  # a bad port or IPv6 literal
        usable = False
    if not usable:
        raise ConfigError(f"{where}: {url!r} is not {what} (e.g. http://10.0.0.2:8080)")


def _check_directory(routing: RoutingConfig) -> None:
    if not routing.directory_url:
        return
    if routing.directory_url.partition(":")[0] not in ("postgresql", "postgresql+psycopg"):
        raise ConfigError("[routing] directory_url must be a postgresql:// URL")
    if not re.fullmatch(r"[a-z0-9][a-z0-9\-]{0,62}", routing.pair):
        raise ConfigError(
            "[routing] pair (lower-case letters, digits and dashes) is required with directory_url"
        )
    if routing.directory_cache_ttl < dt.timedelta(0):
        raise ConfigError("[routing] directory_cache_ttl must not be negative (0: no cache)")
    if routing.directory_heartbeat <= dt.timedelta(0):
        raise ConfigError("[routing] directory_heartbeat must be positive")
    if routing.transfer_grace < dt.timedelta(0):
        raise ConfigError("[routing] transfer_grace must not be negative")


def _check_schedule(section: str, schedule: str) -> None:
    """Refuse what :func:`peerd.node.cron.start_cron` could not start."""
    from apscheduler.triggers.cron import CronTrigger

    try:
        trigger = CronTrigger.from_crontab(schedule, timezone=dt.UTC)
    except ValueError as exc:
        raise ConfigError(
            f'[{section}] schedule: not crontab syntax (e.g. "0 3 * * *"): {exc}'
        ) from exc
    if trigger.get_next_fire_time(None, dt.datetime.now(dt.UTC)) is None:
        # e.g. "0 0 31 2 *": APScheduler takes it and never runs the job.
        raise ConfigError(
            f'[{section}] schedule: {schedule!r} names no time that ever comes (e.g. "0 3 * * *")'
        )


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DATABASE_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "postgresql+asyncpg")


def load_for_service(path: Path | str) -> Config:
    """The config at ``path`` as ``check-config``, ``run`` and a reload
    (SIGHUP) take it: :func:`load_config` and :func:`check_for_service`,
    every error naming the file."""
    config = load_config(path)
    try:
        check_for_service(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return config


def load_config(path: Path | str, *, schedules: bool = True) -> Config:
    """The config in the file at ``path`` (see :func:`parse_config`)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))  # TOML is UTF-8 (TOML 1.0)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: line {line} is not UTF-8 text (a TOML file is UTF-8); save it as UTF-8"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        return parse_config(data, path, schedules=schedules)
    except ConfigError as exc:
        # Name the file for every mistake, not only for syntax errors.
        raise ConfigError(f"{path}: {exc}") from exc
