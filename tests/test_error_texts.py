"""What a client reads when a write fails inside the store: a short generic
text on every protocol (ManageSieve ``NO (TRYLATER)``, IMAP ``NO``, POP3
``-ERR``, LMTP ``451``, the control API's 5xx body), never the SQL, the
database driver's words, a Python exception or a file path; the whole error
goes to the node's log.

The failure is real: a trigger in the node's SQLite database refuses the
write (``RAISE(ABORT)``), as a constraint or a broken database would, and
the store's write fails with the driver's error and the statement."""

from __future__ import annotations

import base64
import imaplib
import poplib
import re
import smtplib
import socket
import sqlite3
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pytest
from sqlalchemy import text

from engine.errors import TemporaryFailure
from engine.store import Store
from tests.harness.daemons import ModuleNodes, Node, make_single
from tests.procs import free_port

# What the trigger's refusal says: in the node's log, never on the wire.
REFUSAL = "trigger-refused-this-write"
# What must never reach a client: SQL, the driver, Python, paths.
LEAKS = (
    "SQL",
    "sqlite",
    "INSERT",
    "UPDATE",
    "DELETE",
    REFUSAL,
    "Error",
    "[parameters",
    "Traceback",
    "/tmp/",
    ".py",
)


@pytest.fixture
def node(module_nodes: ModuleNodes) -> Node:
    def make(workdir: Path) -> Node:
        return make_single(
            workdir,
            overrides={
                "managesieve": {
                    "listen": f"127.0.0.1:{free_port()}",
                    "login_failure_delay": "10ms",
                }
            },
        )

    (shared,) = module_nodes.get("errors", make)
    return shared


@contextmanager
def refused(node: Node, table: str, *operations: str) -> Iterator[None]:
    """Writes of ``operations`` on ``table`` fail in the database itself."""
    names = [f"refuse_{table}_{op.lower()}" for op in operations]
    with sqlite3.connect(node.db_path, timeout=30, isolation_level=None) as db:
        for name, op in zip(names, operations, strict=True):
            db.execute(
                f"CREATE TRIGGER {name} BEFORE {op} ON {table}"
                f" BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
            )
    try:
        yield
    finally:
        with sqlite3.connect(node.db_path, timeout=30, isolation_level=None) as db:
            for name in names:
                db.execute(f"DROP TRIGGER {name}")


def clean(text: str) -> None:
    found = [leak for leak in LEAKS if leak in text]
    assert not found, f"{found} in {text!r}"


def logged(node: Node, start: int) -> str:
    with node.log.open("rb") as log:
        log.seek(start)
        return log.read().decode(errors="replace")


def sieve_port(node: Node) -> int:
    text = node.config.read_text()
    section = text[text.index("[managesieve]") :]
    return int(section.split('listen = "127.0.0.1:', 1)[1].split('"', 1)[0])


def sieve_answer(reader: BinaryIO) -> str:
    """The next OK/NO/BYE line, with its text when that came as a literal."""
    for line in iter(reader.readline, b""):
        if line.startswith((b"OK", b"NO", b"BYE")):
            literal = re.search(rb"\{(\d+)\}\r\n$", line)
            if literal:
                line += reader.read(int(literal.group(1)))
            return line.decode(errors="replace")
    raise AssertionError("no answer")


def test_managesieve_putscript(node: Node) -> None:
    node.add_account("sam")
    start = node.log.stat().st_size
    with socket.create_connection(("127.0.0.1", sieve_port(node)), timeout=20) as sock:
        reader = sock.makefile("rb")
        sieve_answer(reader)
        plain = base64.b64encode(b"\0sam\0secret").decode()
        sock.sendall(f'AUTHENTICATE "PLAIN" "{plain}"\r\n'.encode())
        assert sieve_answer(reader).startswith("OK")
        with refused(node, "sieve_scripts", "INSERT"):
            sock.sendall(b'PUTSCRIPT "main" {7+}\r\nkeep;\r\n\r\n')
            answer = sieve_answer(reader)
        assert answer.startswith("NO (TRYLATER)"), answer
        clean(answer)
        sock.sendall(b'PUTSCRIPT "main" {7+}\r\nkeep;\r\n\r\n')
        assert sieve_answer(reader).startswith("OK")
        reader.close()
    assert REFUSAL in logged(node, start)


def test_imap_create(node: Node) -> None:
    node.add_account("ivy")
    start = node.log.stat().st_size
    with imaplib.IMAP4("127.0.0.1", node.port("imap"), timeout=20) as imap:
        imap.login("ivy", "secret")
        with refused(node, "mailboxes", "INSERT"):
            status, data = imap.create("Projects")
        answer = b" ".join(d for d in data if isinstance(d, bytes)).decode()
        assert status == "NO", (status, answer)
        clean(answer)
        assert imap.create("Projects")[0] == "OK"
    assert REFUSAL in logged(node, start)


def test_pop3_quit(node: Node) -> None:
    node.add_account("pat")
    with node.lmtp() as lmtp:
        lmtp.sendmail("s@example.test", ["pat@example.test"], b"Subject: s\r\n\r\nbody\r\n")
    start = node.log.stat().st_size
    pop = poplib.POP3("127.0.0.1", node.port("pop3"), timeout=20)
    pop.user("pat")
    pop.pass_("secret")
    pop.dele(1)
    try:
        with (
            refused(node, "messages", "DELETE", "UPDATE"),
            pytest.raises(poplib.error_proto) as failed,
        ):
            pop.quit()
    finally:
        pop.close()
    answer = failed.value.args[0].decode()
    assert answer.startswith("-ERR [SYS/TEMP]"), answer
    clean(answer)
    assert REFUSAL in logged(node, start)


def test_lmtp_delivery(node: Node) -> None:
    node.add_account("lou")
    start = node.log.stat().st_size
    message = b"Subject: s\r\n\r\nb\r\n"
    with (
        refused(node, "messages", "INSERT"),
        node.lmtp() as lmtp,
        pytest.raises(smtplib.SMTPDataError) as failed,
    ):
        lmtp.sendmail("s@example.test", ["lou@example.test"], message)
    code, error = failed.value.smtp_code, failed.value.smtp_error
    text = error.decode() if isinstance(error, bytes) else error
    assert code == 451, (code, text)
    clean(text)
    assert REFUSAL in logged(node, start)


def test_control_api(node: Node) -> None:
    start = node.log.stat().st_size
    with refused(node, "accounts", "INSERT"), pytest.raises(urllib.error.HTTPError) as failed:
        node.add_account("amy")
    status, body = failed.value.code, failed.value.read().decode()
    assert status in (500, 503), (status, body)
    clean(body.replace("application/problem+json", ""))
    assert REFUSAL in logged(node, start)


def test_a_write_the_database_refuses_is_a_temporary_failure(sqlite_store: Store) -> None:
    """A write function whose statement the database refuses (a constraint,
    a trigger) gave its caller SQLAlchemy's exception itself: an IMAP, POP3
    or ManageSieve session that got it ended with a traceback, the client
    cut off. It is a TemporaryFailure now, as when a whole batch fails."""
    try:
        with pytest.raises(TemporaryFailure) as failed:
            sqlite_store.write_sync(
                lambda s: s.execute(text("INSERT INTO mailboxes (account_id) VALUES (NULL)"))
            )
        assert "NOT NULL" in failed.value.message  # for the log, not the client
        assert sqlite_store.write_sync(lambda s: s.execute(text("SELECT 1")).scalar()) == 1
    finally:
        sqlite_store.close()
