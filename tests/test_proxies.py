"""Routing through real proxies: nginx's mail proxy (auth_http) and Postfix (socketmap).

peerd's own IMAP service arrives with issue 5; until then the IMAP backends
behind nginx are two tiny servers, one per node, that accept the LOGIN nginx
forwards and say which node they are. What is under test is the routing:
which backend nginx picks, from peerd's answers.
"""

from __future__ import annotations

import imaplib
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.nodes import Node, make_pair
from tests.procs import free_port, wait_until
from tests.proxies import Nginx, Postfix

SECRET = "proxy-secret"


class Backend:
    """An IMAP endpoint that takes nginx's LOGIN (synchronizing literals) and names its node."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.logins: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.session, args=(conn,), daemon=True).start()

    def session(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            conn.sendall(f"* OK backend {self.name} ready\r\n".encode())
            while line := reader.readline():
                parts = line.split()
                if len(parts) >= 2 and parts[1].upper() == b"LOGIN":
                    # nginx: "a LOGIN {5}" <user> " {8}" <password> "" (RFC 3501 literals)
                    user = self.literal(conn, reader, line)
                    self.literal(conn, reader, reader.readline())
                    reader.readline()
                    self.logins.append(user)
                    conn.sendall(parts[0] + f" OK LOGIN done by {self.name}\r\n".encode())
                elif len(parts) >= 2 and parts[1].upper() == b"LOGOUT":
                    conn.sendall(b"* BYE\r\n" + parts[0] + b" OK bye\r\n")
                    return
                elif parts:
                    conn.sendall(parts[0] + b" OK\r\n")

    @staticmethod
    def literal(conn: socket.socket, reader: Any, line: bytes) -> str:
        line = line.rstrip()
        if line.endswith(b"}"):
            size = int(line[line.rindex(b"{") + 1 : -1].rstrip(b"+"))
            if not line.endswith(b"+}"):
                conn.sendall(b"+ go ahead\r\n")
            value = reader.read(size)
            return value.decode()
        return line.split()[-1].decode().strip('"')

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[tuple[Node, Node, Backend, Backend]]:
    alpha, beta = make_pair(tmp_path)
    backends = {"alpha": Backend("alpha"), "beta": Backend("beta")}
    for me, other in ((alpha, beta), (beta, alpha)):
        me.ports["socketmap"] = free_port()
        text = me.config.read_text().replace(
            "[listen]\n", f'[listen]\nsocketmap = "127.0.0.1:{me.ports["socketmap"]}"\n'
        )
        text += (
            "\n[routing]\n"
            f'auth_http_secret = "{SECRET}"\n'
            f'imap_address = "127.0.0.1:{backends[me.name].port}"\n'
            f'partner_imap = "127.0.0.1:{backends[other.name].port}"\n'
            f'partner_lmtp = "127.0.0.1:{other.ports["lmtp"]}"\n'
        )
        me.config.write_text(text)
    try:
        alpha.start(wait=False)
        beta.start(wait=False)
        alpha.wait_ready()
        beta.wait_ready()
        yield alpha, beta, backends["alpha"], backends["beta"]
    finally:
        alpha.stop()
        beta.stop()
        for backend in backends.values():
            backend.close()


def login(port: int, user: str, password: str) -> str:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=20)
    try:
        _, data = client.login(user, password)
        return data[0].decode()
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def test_nginx_routes_logins_to_the_owner(routed: Any, tmp_path: Path) -> None:
    alpha, beta, at_alpha, at_beta = routed
    alpha.add_account("alice", password="s3cret+x")
    alpha.add_account("bob")
    wait_until(lambda: _exists(beta, "alice") and _exists(beta, "bob"), 10, "accounts replicated")
    nginx = Nginx(tmp_path / "nginx", [alpha.ports["http"], beta.ports["http"]], SECRET).start()
    try:
        assert "by alpha" in login(nginx.imap_port, "alice", "s3cret+x")
        assert at_alpha.logins == ["alice"]
        with pytest.raises(imaplib.IMAP4.error, match="Invalid login"):
            login(nginx.imap_port, "alice", "wrong")
        # Planned switchover: the next login goes to beta.
        alpha.call("POST", "/v1/switchover", {"accounts": ["alice"]})
        assert "by beta" in login(nginx.imap_port, "alice", "s3cret+x")
        # The owner of bob (alpha) dies: failover on beta, logins go on.
        alpha.kill9()
        beta.call("POST", "/v1/failover", {})
        assert "by beta" in login(nginx.imap_port, "bob", "secret")
        assert at_beta.logins == ["alice", "bob"]
    finally:
        nginx.stop()


def _exists(node: Node, account: str) -> bool:
    try:
        node.call("GET", f"/v1/accounts/{account}")
    except Exception:
        return False
    return True


def test_auth_http_secret_and_both_nodes_agree(routed: Any) -> None:
    import urllib.request

    alpha, beta, at_alpha, _ = routed
    alpha.add_account("carol")
    wait_until(lambda: _exists(beta, "carol"), 10, "replicated")

    def ask(node: Node, secret: str) -> dict[str, str]:
        request = urllib.request.Request(f"{node.api}/v1/route/nginx")
        for key, value in {
            "Auth-Method": "plain",
            "Auth-User": "carol",
            "Auth-Pass": "secret",
            "Auth-Protocol": "imap",
            "Auth-Login-Attempt": "1",
            "Client-IP": "127.0.0.1",
            "X-Auth-Key": secret,
        }.items():
            request.add_header(key, value)
        with urllib.request.urlopen(request, timeout=10) as response:
            return {k: v for k, v in response.headers.items() if k.startswith("Auth-")}

    assert ask(alpha, SECRET) == ask(beta, SECRET)
    assert ask(alpha, SECRET)["Auth-Port"] == str(at_alpha.port)
    assert ask(alpha, "wrong")["Auth-Status"] != "OK"


def socketmap_query(port: int, name: str, key: str) -> str:
    payload = f"{name} {key}".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(str(len(payload)).encode() + b":" + payload + b",")
        data = sock.recv(4096)
    head, _, rest = data.partition(b":")
    return rest[: int(head)].decode()


def test_socketmap_answers(routed: Any) -> None:
    alpha, _, _, _ = routed
    alpha.add_account("dora")
    port = alpha.ports["socketmap"]
    assert (
        socketmap_query(port, "transport", "dora@example.test")
        == f"OK lmtp:inet:127.0.0.1:{alpha.ports['lmtp']}"
    )
    assert socketmap_query(port, "transport", "dora+lists@example.test").startswith("OK lmtp:inet:")
    assert socketmap_query(port, "mailbox", "dora@example.test") == "OK dora"
    assert socketmap_query(port, "mailbox", "nobody@example.test") == "NOTFOUND "
    assert socketmap_query(port, "transport", "*") == "NOTFOUND "
    assert socketmap_query(port, "transport", "example.test") == "NOTFOUND "


def test_postfix_delivers_to_the_owner_and_follows_a_switchover(
    routed: Any, tmp_path: Path
) -> None:
    alpha, beta, _, _ = routed
    alpha.add_account("erin")
    wait_until(lambda: _exists(beta, "erin"), 10, "replicated")
    postfix = Postfix(alpha.ports["socketmap"], "example.test").start()
    try:

        def send(subject: str) -> None:
            with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=30) as smtp:
                smtp.sendmail(
                    "s@sender.test",
                    ["erin@example.test"],
                    f"Subject: {subject}\r\nMessage-ID: <{subject}@t>\r\n\r\nhi\r\n",
                )

        def count(node: Node) -> int:
            return len(node.mailbox("erin")["messages"])

        send("first")
        wait_until(lambda: count(alpha) == 1, 30, "delivery through Postfix to alpha")
        alpha.call("POST", "/v1/switchover", {"accounts": ["erin"]})
        send("second")
        # Postfix may still route to alpha from its cache: alpha answers 4xx,
        # the mail is deferred and retried. A reload clears the cache.
        deadline = time.monotonic() + 60
        while count(beta) < 2 and time.monotonic() < deadline:
            postfix.run("reload")
            postfix.flush()
            time.sleep(2)
        assert count(beta) == 2, postfix.log()[-2000:]
        wait_until(postfix.queue_empty, 20, "Postfix queue to drain")
    finally:
        postfix.stop()
