"""The test harness: real processes (PostgreSQL, nginx, Postfix, peerd) on
loopback, each started in a temp dir and stopped by pid, even when a test fails."""

from tests.harness.clients import Burst, burst_message, idling, peerctl, pop3_refusal
from tests.harness.daemons import (
    TOKEN,
    Daemon,
    Node,
    make_pair,
    make_single,
    pair_sections,
    running,
    to_toml,
    write_config,
    write_pair_configs,
)
from tests.harness.nginx import Nginx, require_nginx
from tests.harness.postfix import Postfix, require_postfix
from tests.harness.postgres import PgServer, find_pg_bin, require_pg
from tests.harness.procs import (
    Proc,
    Registry,
    free_port,
    kill9,
    pid_alive,
    port_open,
    stop_pid,
    wait_port,
    wait_until,
)

__all__ = [
    "TOKEN",
    "Burst",
    "Daemon",
    "Nginx",
    "Node",
    "PgServer",
    "Postfix",
    "Proc",
    "Registry",
    "burst_message",
    "find_pg_bin",
    "free_port",
    "idling",
    "kill9",
    "make_pair",
    "make_single",
    "pair_sections",
    "peerctl",
    "pid_alive",
    "pop3_refusal",
    "port_open",
    "require_nginx",
    "require_pg",
    "require_postfix",
    "running",
    "stop_pid",
    "to_toml",
    "wait_port",
    "wait_until",
    "write_config",
    "write_pair_configs",
]
