"""POP3 with poplib and fetchmail against real daemons; UIDL survives a failover."""

from __future__ import annotations

import poplib
import smtplib
import subprocess
from pathlib import Path

import pytest

from peerd.pop3 import dot_stuff
from tests.nodes import Node
from tests.procs import require, wait_until


def deliver(node: Node, n: int, body: bytes = b"body\r\n") -> None:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"]) as lmtp:
        lmtp.sendmail(
            "s@example.test",
            ["alice@example.test"],
            f"Subject: pop {n}\r\nMessage-ID: <p{n}@t>\r\n\r\n".encode() + body,
        )


def test_dot_stuffing() -> None:
    assert dot_stuff(b".a\r\nb\r\n.c") == b"..a\r\nb\r\n..c\r\n.\r\n"


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
