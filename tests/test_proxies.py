"""Routing through real proxies: nginx's mail proxy (auth_http) in front of both
nodes' IMAP services, and Postfix (socketmap) in front of their LMTP services."""

from __future__ import annotations

import imaplib
import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.nginx import Nginx
from tests.harness.postfix import Postfix
from tests.nodes import Node, make_pair, running
from tests.procs import free_port, wait_until

SECRET = "proxy-secret"


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    ports = {"alpha": free_port(), "beta": free_port()}
    alpha, beta = make_pair(
        tmp_path,
        {
            name: {
                "listen": {"socketmap": f"127.0.0.1:{ports[name]}"},
                "routing": {"auth_http_secret": SECRET},
            }
            for name in ports
        },
    )
    alpha.ports["socketmap"], beta.ports["socketmap"] = ports["alpha"], ports["beta"]
    with running(alpha, beta):
        yield alpha, beta


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
    alpha, beta = routed
    alpha.add_account("alice", password="s3cret+x")
    alpha.add_account("bob")
    wait_until(lambda: _exists(beta, "alice") and _exists(beta, "bob"), 10, "accounts replicated")
    nginx = Nginx(
        tmp_path / "nginx",
        lookups=[f"127.0.0.1:{alpha.ports['http']}", f"127.0.0.1:{beta.ports['http']}"],
        secret=SECRET,
    ).start()
    try:
        assert "on alpha" in login(nginx.imap_port, "alice", "s3cret+x")
        with pytest.raises(imaplib.IMAP4.error, match="Invalid login"):
            login(nginx.imap_port, "alice", "wrong")
        # Planned switchover: the next login goes to beta.
        alpha.call("POST", "/v1/switchover", {"accounts": ["alice"]})
        assert "on beta" in login(nginx.imap_port, "alice", "s3cret+x")
        # The owner of bob (alpha) dies: failover on beta, logins go on.
        alpha.kill9()
        beta.call("POST", "/v1/failover", {})
        assert "on beta" in login(nginx.imap_port, "bob", "secret")
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

    alpha, beta = routed
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
    assert ask(alpha, SECRET)["Auth-Port"] == str(alpha.ports["imap"])
    assert ask(alpha, "wrong")["Auth-Status"] != "OK"


def socketmap_query(port: int, name: str, key: str) -> str:
    payload = f"{name} {key}".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(str(len(payload)).encode() + b":" + payload + b",")
        data = sock.recv(4096)
    head, _, rest = data.partition(b":")
    return rest[: int(head)].decode()


def test_socketmap_answers(routed: Any) -> None:
    alpha, _ = routed
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
    alpha, beta = routed
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
            postfix.reload()
            postfix.flush()
            time.sleep(2)
        assert count(beta) == 2, postfix.log()[-2000:]
        wait_until(postfix.queue_empty, 20, "Postfix queue to drain")
    finally:
        postfix.stop()


def test_auth_http_with_a_non_ascii_password(routed: Any) -> None:
    import urllib.request

    alpha, _ = routed
    alpha.add_account("jorg", password="pässwörd +%")

    def ask(password: str) -> str:
        request = urllib.request.Request(f"{alpha.api}/v1/route/nginx")
        # nginx percent-encodes only space, % and control characters; the rest
        # arrives as raw UTF-8 (http.client sends str headers as latin-1).
        raw = password.replace("%", "%25").replace(" ", "%20").encode().decode("latin-1")
        for key, value in {
            "Auth-Method": "plain",
            "Auth-User": "jorg",
            "Auth-Pass": raw,
            "Auth-Protocol": "imap",
            "X-Auth-Key": SECRET,
        }.items():
            request.add_header(key, value)
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(response.headers["Auth-Status"])

    assert ask("pässwörd +%") == "OK"
    assert ask("passwort") != "OK"
