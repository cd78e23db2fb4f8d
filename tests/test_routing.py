"""Routing lookups when the database is away: the Postfix socketmap answers ``TEMP``
(Postfix defers the mail and retries), never ``NOTFOUND`` (which would bounce it),
and answers again once the database is back. A real node on a real PostgreSQL."""

from __future__ import annotations

import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from tests.conftest import LoneNode
from tests.harness.postgres import PgServer


def socketmap_query(port: int, name: str, key: str) -> str:
    payload = f"{name} {key}".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(str(len(payload)).encode() + b":" + payload + b",")
        data = b""
        while not data.endswith(b","):
            chunk = sock.recv(4096)
            assert chunk, f"socketmap closed after {data!r}"
            data += chunk
    head, _, rest = data.partition(b":")
    return rest[: int(head)].decode()


def set_connections(pg_server: PgServer, database: str, allowed: bool) -> None:
    """Open or close ``database`` to every client, superusers too; closing also
    ends the sessions already open (the node's pool)."""
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                sql.Identifier(database), sql.SQL("true" if allowed else "false")
            )
        )
        if not allowed:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )


def test_socketmap_answers_temp_while_the_database_is_unavailable(
    lone_node: Callable[..., LoneNode], pg_server: PgServer, pg_url: str
) -> None:
    database = urlsplit(pg_url).path.lstrip("/")
    node = lone_node({"database": {"url": pg_url}})
    node.add_account("tina")
    port = node.port("socketmap")
    route = socketmap_query(port, "transport", "tina@example.test")
    assert route == f"OK lmtp:inet:127.0.0.1:{node.port('lmtp')}"
    assert socketmap_query(port, "mailbox", "tina@example.test") == "OK tina"

    set_connections(pg_server, database, allowed=False)
    try:
        for name in ("transport", "mailbox"):
            for key in ("tina@example.test", "nobody@example.test"):
                answer = socketmap_query(port, name, key)
                assert answer.startswith("TEMP "), (name, key, answer)
                assert "database" in answer
        # A key that needs no lookup is still answered at once.
        assert socketmap_query(port, "transport", "example.test") == "NOTFOUND "
    finally:
        set_connections(pg_server, database, allowed=True)
    assert socketmap_query(port, "transport", "tina@example.test") == route
    assert socketmap_query(port, "mailbox", "nobody@example.test") == "NOTFOUND "
    assert node.stop() == 0


def test_socketmap_keys_with_control_characters_are_not_found_on_postgresql(
    lone_node: Callable[..., LoneNode], pg_server: PgServer, pg_url: str
) -> None:
    """No address holds a control character. A key with NUL reached the
    database, which refuses NUL in text: an unhandled exception in the
    listener, a traceback, and the connection closed with every lookup
    Postfix had queued on it unanswered."""
    node = lone_node({"database": {"url": pg_url}})
    node.add_account("tina")
    keys = ["ti\x00na@example.test", "\x00@example.test", "tina@exa\x00mple.test", "ti\x01na@x"]
    requests = [(name, key) for key in keys for name in ("transport", "mailbox")]
    requests.append(("mailbox", "tina@example.test"))
    with socket.create_connection(("127.0.0.1", node.port("socketmap")), timeout=30) as sock:
        for name, key in requests:
            payload = f"{name} {key}".encode()
            sock.sendall(b"%d:%s," % (len(payload), payload))
        data = b""
        while data.count(b",") < len(requests):
            chunk = sock.recv(4096)
            assert chunk, f"socketmap closed after {data!r}"
            data += chunk
    assert data == b"9:NOTFOUND ," * (len(requests) - 1) + b"7:OK tina,"
    log = (node.workdir / f"{node.name}.log").read_text()
    assert "Traceback" not in log, log[-3000:]
