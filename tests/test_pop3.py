"""POP3 with poplib and fetchmail against real daemons; UIDL survives a failover."""

from __future__ import annotations

import base64
import poplib
import smtplib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodes import Node, make_single, pop3_refusal
from tests.procs import require, wait_until


def deliver(node: Node, n: int, body: bytes = b"body\r\n") -> None:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"]) as lmtp:
        lmtp.sendmail(
            "s@example.test",
            ["alice@example.test"],
            f"Subject: pop {n}\r\nMessage-ID: <p{n}@t>\r\n\r\n".encode() + body,
        )


@pytest.fixture
def alice(pair: tuple[Node, Node]) -> tuple[Node, Node]:
    """The pair, with alice owned by alpha."""
    pair[0].add_account("alice")
    return pair


def test_pop3_commands_and_uidl_across_failover(alice: tuple[Node, Node]) -> None:
    alpha, beta = alice
    deliver(alpha, 1, b".starts with a dot\r\nline\r\n")
    deliver(alpha, 2)
    client = poplib.POP3("127.0.0.1", alpha.ports["pop3"], timeout=20)
    try:
        assert "UIDL" in client.capa()
        with pytest.raises(poplib.error_proto, match="AUTH"):
            client.user("alice")
            client.pass_("wrong")
        client.user("alice")
        client.pass_("secret")
        count, total = client.stat()
        assert total > 0
        assert count == 2
        _, lines, _ = client.retr(1)
        assert b".starts with a dot" in lines
        _, top, _ = client.top(1, 0)
        assert top[0].startswith(b"Subject") and b"line" not in top
        uidls_alpha = client.uidl()[1]
        client.dele(2)
        client.quit()
    finally:
        client.close()
    wait_until(lambda: len(beta.mailbox("alice")["messages"]) == 1, 10, "expunge replicated")
    alpha.kill9()
    beta.call("POST", "/v1/failover", {})
    other = poplib.POP3("127.0.0.1", beta.ports["pop3"], timeout=20)
    try:
        other.user("alice")
        other.pass_("secret")
        assert other.uidl()[1] == uidls_alpha[:1]  # the same UIDL on the other node
        other.quit()
    finally:
        other.close()


def test_fetchmail_fetches_with_uidl(alice: tuple[Node, Node], tmp_path: Path) -> None:
    require("fetchmail")
    alpha, _ = alice
    for n in range(3):
        deliver(alpha, n)
    rc = tmp_path / "fetchmailrc"
    ids = tmp_path / "fetchids"
    mda_out = tmp_path / "delivered"
    rc.write_text(
        f"poll 127.0.0.1 service {alpha.ports['pop3']} protocol POP3 uidl auth password\n"
        f'  user "alice" password "secret" keep sslproto "" mda "cat >> {mda_out}"\n'
    )
    rc.chmod(0o600)

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["fetchmail", "-f", str(rc), "-i", str(ids), "--nosyslog", "-v"],
            capture_output=True,
            text=True,
            timeout=60,
            env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        )

    first = run()
    assert first.returncode == 0, first.stdout + first.stderr
    assert mda_out.read_bytes().count(b"Subject: pop") == 3
    second = run()  # UIDL: nothing new
    assert second.returncode == 1, second.stdout + second.stderr  # 1 = no new mail
    assert mda_out.read_bytes().count(b"Subject: pop") == 3


@pytest.fixture
def lone(tmp_path: Path) -> Iterator[Node]:
    node = make_single(
        tmp_path, overrides={"pop3": {"login_failure_delay": "50ms", "max_line": 64}}
    )
    node.start()
    node.add_account("alice")
    try:
        yield node
    finally:
        node.stop()


def converse(node: Node, script: bytes) -> list[bytes]:
    """Send ``script`` in one packet (RFC 2449 PIPELINING) and read until the server closes."""
    with socket.create_connection(("127.0.0.1", node.ports["pop3"]), timeout=20) as sock:
        stream = sock.makefile("rb")
        greeting = stream.readline()
        sock.sendall(script)
        return [greeting, *stream.readlines()]


def test_pipelined_session_states_sasl_and_limits(lone: Node) -> None:
    deliver(lone, 1, b"line 1\r\n.line 2\r\nline 3\r\n")
    deliver(lone, 2)
    replies = converse(
        lone,
        b"STAT\r\n"  # not before login (RFC 1939 section 4)
        b"PASS secret\r\n"  # PASS without USER
        b"USER " + b"x" * 80 + b"\r\n"  # past [pop3] max_line: refused, the session goes on
        b"CAPA\r\n"
        b"AUTH PLAIN\r\n" + base64.b64encode(b"\0alice\0secret") + b"\r\n"
        b"CAPA\r\n"
        b"USER alice\r\n"  # not after login
        b"LIST\r\nUIDL 2\r\nTOP 1 1\r\nDELE 1\r\nRETR 1\r\nSTAT\r\nRSET\r\nSTAT\r\n"
        b"LIST 9\r\nDELE 2\r\nQUIT\r\n",
    )
    text = b"".join(replies)
    assert replies[0].startswith(b"+OK peerd POP3 server ready")
    assert replies[1] == b"-ERR command not valid in this state\r\n"
    assert replies[2] == b"-ERR USER first\r\n"
    assert replies[3] == b"-ERR line too long\r\n"
    before, after = text.split(b"+ \r\n", 1)  # AUTH PLAIN's continuation
    assert b"USER\r\n" in before and b"SASL PLAIN\r\n" in before
    assert after.startswith(b"+OK 2 messages\r\n")
    capa_after = after.split(b"+OK capability list follows\r\n", 1)[1].split(b"\r\n.\r\n")[0]
    assert b"UIDL" in capa_after and b"USER" not in capa_after and b"SASL" not in capa_after
    assert b"-ERR command not valid in this state\r\n+OK\r\n1 " in after  # USER, then LIST
    top = after.split(b"+OK top of message follows\r\n", 1)[1].split(b"\r\n.\r\n", 1)[0]
    assert top == b"Subject: pop 1\r\nMessage-ID: <p1@t>\r\n\r\nline 1"  # headers, one line
    assert b"+OK message 1 deleted\r\n-ERR no such message\r\n" in after  # RETR of a marked one
    assert b"+OK 1 " in after and b"+OK 2 messages\r\n+OK 2 " in after  # STAT, RSET, STAT
    assert after.endswith(b"-ERR no such message\r\n+OK message 2 deleted\r\n+OK bye\r\n")
    # QUIT removed message 2 only: RSET had cleared the mark on 1.
    left = lone.mailbox("alice")["messages"]
    assert len(left) == 1


def test_auth_cancel_bad_plain_and_failed_logins_cut_off(lone: Node) -> None:
    replies = converse(
        lone,
        b"AUTH PLAIN\r\n*\r\n"  # cancelled (RFC 5034 section 4)
        b"AUTH PLAIN bm90IHBsYWlu\r\n"  # "not plain"
        b"AUTH CRAM-MD5\r\n"
        b"USER alice\r\nPASS wrong\r\nPASS wrong\r\nPASS wrong\r\nSTAT\r\n",
    )
    assert replies[1:5] == [
        b"+ \r\n",
        b"-ERR authentication cancelled\r\n",
        b"-ERR bad SASL PLAIN response\r\n",
        b"-ERR unsupported mechanism CRAM-MD5; use PLAIN\r\n",
    ]
    # [pop3] max_login_failures = 3: the third failure ends the session, STAT is never read.
    assert replies[5:] == [b"+OK send PASS\r\n", *[b"-ERR [AUTH] authentication failed\r\n"] * 3]


def test_a_move_of_the_account_ends_the_session_and_keeps_the_messages(
    alice: tuple[Node, Node],
) -> None:
    """A switchover cuts an open session off with -ERR [SYS/TEMP] (RFC 3206),
    without UPDATE: the DELE marks are dropped (RFC 1939 section 6), and a
    QUIT that would have expunged never comes (it would be fenced anyway)."""
    alpha, beta = alice
    deliver(alpha, 1)
    deliver(alpha, 2)
    client = poplib.POP3("127.0.0.1", alpha.ports["pop3"], timeout=20)
    try:
        client.user("alice")
        client.pass_("secret")
        assert client.dele(1).startswith(b"+OK")
        alpha.call("POST", "/v1/switchover", {"accounts": ["alice"]})
        # Sent when the move began: it is the first line the client reads next.
        assert client.file.readline() == (
            b"-ERR [SYS/TEMP] alice moved to another node; log in again\r\n"
        )
        assert client.file.readline() == b"", "the session was not closed"
    finally:
        client.close()
    assert [m["uid"] for m in beta.mailbox("alice")["messages"]] == [1, 2]
    assert [m["uid"] for m in alpha.mailbox("alice")["messages"]] == [1, 2]
    # A new login is sent to the owner.
    assert "served by beta" in pop3_refusal(alpha.ports["pop3"], "alice", "secret")
