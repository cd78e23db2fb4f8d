"""Routing through real proxies: nginx's mail proxy (auth_http) in front of both
nodes' IMAP services, and Postfix (socketmap) in front of their LMTP services."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.daemons import ModuleNodes
from tests.harness.nginx import Nginx
from tests.harness.postfix import Postfix
from tests.nodes import Node, make_pair, pop3_refusal, running
from tests.procs import free_port, wait_until

SECRET = "proxy-secret"


def _routed(workdir: Path) -> tuple[Node, Node]:
    """A pair with socketmap listeners and an nginx auth_http secret (not started)."""
    ports = {"alpha": free_port(), "beta": free_port()}
    alpha, beta = make_pair(
        workdir,
        {
            name: {
                "listen": {"socketmap": f"127.0.0.1:{ports[name]}"},
                # A short Auth-Wait: nginx holds a failed login this long.
                "routing": {"auth_http_secret": SECRET, "auth_http_wait": 1},
            }
            for name in ports
        },
    )
    alpha.ports["socketmap"], beta.ports["socketmap"] = ports["alpha"], ports["beta"]
    return alpha, beta


@pytest.fixture
def routed(module_nodes: ModuleNodes) -> tuple[Node, Node]:
    """The module's routed pair, shared by the tests that never stop, kill or
    fail over a node (each names accounts of its own); those that do take
    ``own_routed``."""
    alpha, beta = module_nodes.get("routed", _routed)
    return alpha, beta


@pytest.fixture
def own_routed(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    """A routed pair of the test's own."""
    alpha, beta = _routed(tmp_path)
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


def test_nginx_routes_logins_to_the_owner(own_routed: Any, tmp_path: Path) -> None:
    alpha, beta = own_routed  # it kills alpha
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


def _deliver(node: Node, account: str, subject: str) -> int:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30) as lmtp:
        lmtp.ehlo("t")
        lmtp.mail("s@example.test")
        code, _ = lmtp.rcpt(f"{account}@example.test")
        if code != 250:
            return code
        message = f"Subject: {subject}\r\nMessage-ID: <{subject}@t>\r\n\r\nbody\r\n"
        return lmtp.data(message.encode())[0]


def _subjects_via(port: int, user: str) -> list[str]:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=20)
    try:
        client.login(user, "secret")
        client.select("INBOX", readonly=True)
        _, data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        return sorted(
            part[1].decode().split(":", 1)[1].strip() for part in data if isinstance(part, tuple)
        )
    finally:
        client.logout()


def test_nginx_through_failover_return_and_failback(own_routed: Any, tmp_path: Path) -> None:
    """Issue 4's whole cycle behind a real nginx: the owner is SIGKILLed,
    failover on the survivor, every account's logins and deliveries work there;
    the dead node returns, refuses what it lost, hands over what it never
    replicated; failback sends the logins home again."""
    alpha, beta = own_routed
    alpha.add_account("amy")  # home alpha
    alpha.add_account("abe")  # home alpha
    beta.add_account("bea")  # home beta
    wait_until(
        lambda: all(_exists(n, a) for n in (alpha, beta) for a in ("amy", "abe", "bea")),
        10,
        "accounts on both nodes",
    )
    nginx = Nginx(
        tmp_path / "nginx",
        lookups=[f"127.0.0.1:{alpha.ports['http']}", f"127.0.0.1:{beta.ports['http']}"],
        secret=SECRET,
    ).start()
    try:
        assert _deliver(alpha, "amy", "amy-1") == 250
        wait_until(lambda: _subjects_via(beta.ports["imap"], "bea") == [], 10, "beta serving")
        # amy-1 was acknowledged while beta was up: it reaches beta's
        # replica (the rolling push) before beta goes down.
        wait_until(lambda: len(beta.records("amy")) == 1, 10, "amy-1 replicated")
        # alpha takes mail beta never sees (beta is down), then dies.
        beta.stop()
        assert _deliver(alpha, "abe", "abe-unreplicated") == 250
        alpha.kill9()
        beta.start()
        taken = {r["account"] for r in beta.call("POST", "/v1/failover", {})["taken"]}
        assert taken == {"amy", "abe"}
        # Every account, through the proxy, on the survivor: logins and mail.
        for account in ("amy", "abe", "bea"):
            assert "on beta" in login(nginx.imap_port, account, "secret")
            assert _deliver(beta, account, f"{account}-on-beta") == 250
        assert _subjects_via(nginx.imap_port, "amy") == ["amy-1", "amy-on-beta"]
        # alpha returns: it learns the epochs before serving and refuses what it lost.
        alpha.start()
        assert _deliver(alpha, "abe", "abe-refused") == 451
        # What it accepted and never replicated reaches the new owner.
        wait_until(
            lambda: "abe-unreplicated" in _subjects_via(nginx.imap_port, "abe"),
            30,
            "alpha's unreplicated mail handed to beta",
        )
        assert _subjects_via(nginx.imap_port, "abe") == ["abe-on-beta", "abe-unreplicated"]
        # Failback: home again, through the same proxy, nothing lost.
        wait_until(
            lambda: _failback(alpha),
            30,
            "failback (alpha caught up)",
        )
        for account in ("amy", "abe"):
            assert "on alpha" in login(nginx.imap_port, account, "secret")
        assert "on beta" in login(nginx.imap_port, "bea", "secret")
        assert _subjects_via(nginx.imap_port, "abe") == ["abe-on-beta", "abe-unreplicated"]
        assert _deliver(alpha, "abe", "abe-home") == 250
    finally:
        nginx.stop()


def _failback(node: Node) -> bool:
    import urllib.error

    try:
        node.call("POST", "/v1/failback", {})
    except urllib.error.HTTPError as exc:
        if exc.code == 409:  # not caught up yet: pending sync-log rows
            return False
        raise
    return True


def test_nginx_proxies_pop3_to_the_owner(routed: Any, tmp_path: Path) -> None:
    alpha, beta = routed
    alpha.add_account("alice", password="s3cret+x")
    for n in range(2):
        with smtplib.LMTP("127.0.0.1", alpha.ports["lmtp"], timeout=30) as lmtp:
            lmtp.sendmail(
                "s@example.test",
                ["alice@example.test"],
                f"Subject: pop {n}\r\nMessage-ID: <pop{n}@t>\r\n\r\nbody {n}\r\n".encode(),
            )
    nginx = Nginx(
        tmp_path / "nginx",
        lookups=[f"127.0.0.1:{alpha.ports['http']}", f"127.0.0.1:{beta.ports['http']}"],
        secret=SECRET,
    ).start()
    assert nginx.pop3_port is not None
    try:
        client = poplib.POP3("127.0.0.1", nginx.pop3_port, timeout=20)
        try:
            client.user("alice")
            client.pass_("s3cret+x")
            assert client.stat()[0] == 2
            _, lines, _ = client.retr(1)
            assert b"Subject: pop 0" in lines and b"body 0" in lines
            uidls = client.uidl()[1]
            client.dele(1)
            assert client.quit().startswith(b"+OK")
        finally:
            client.close()
        # The session ran on alpha, the owner: the deletion is in its store.
        assert [m["uid"] for m in alpha.mailbox("alice")["messages"]] == [2]

        # A wrong password is refused by nginx with the daemon's text.
        assert "Invalid login or password" in pop3_refusal(nginx.pop3_port, "alice", "wrong")

        # After a switchover the next POP3 login goes to beta (alpha would
        # now refuse it, naming beta), with the same UIDL.
        alpha.call("POST", "/v1/switchover", {"accounts": ["alice"]})
        direct = poplib.POP3("127.0.0.1", alpha.ports["pop3"], timeout=20)
        try:
            direct.user("alice")
            with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\] alice is served by beta"):
                direct.pass_("s3cret+x")
        finally:
            direct.close()
        client = poplib.POP3("127.0.0.1", nginx.pop3_port, timeout=20)
        try:
            client.user("alice")
            client.pass_("s3cret+x")
            assert client.uidl()[1] == [b"1 " + uidls[1].split()[1]]
            client.quit()
        finally:
            client.close()
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

    def ask(
        node: Node, secret: str, password: str = "secret", protocol: str = "imap"
    ) -> dict[str, str]:
        request = urllib.request.Request(f"{node.api}/v1/route/nginx")
        for key, value in {
            "Auth-Method": "plain",
            "Auth-User": "carol",
            "Auth-Pass": password,
            "Auth-Protocol": protocol,
            "Auth-Login-Attempt": "1",
            "Client-IP": "127.0.0.1",
            "X-Auth-Key": secret,
        }.items():
            request.add_header(key, value)
        with urllib.request.urlopen(request, timeout=10) as response:
            return {k: v for k, v in response.headers.items() if k.startswith("Auth-")}

    assert ask(alpha, SECRET) == ask(beta, SECRET)
    assert ask(alpha, SECRET) == {
        "Auth-Status": "OK",
        "Auth-Server": "127.0.0.1",
        "Auth-Port": str(alpha.ports["imap"]),
    }
    assert ask(beta, SECRET, protocol="pop3")["Auth-Port"] == str(alpha.ports["pop3"])
    assert ask(alpha, "wrong")["Auth-Status"] != "OK"
    # A wrong password: a failure with Auth-Wait ([routing] auth_http_wait),
    # so nginx lets the client try again after that long; both nodes agree.
    for node in (alpha, beta):
        for protocol in ("imap", "pop3"):
            assert ask(node, SECRET, password="wrong", protocol=protocol) == {
                "Auth-Status": "Invalid login or password",
                "Auth-Wait": "1",
            }


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
    alpha.add_account("frank")
    wait_until(lambda: _exists(beta, "erin"), 10, "replicated")
    postfix = Postfix(alpha.ports["socketmap"], "example.test").start()
    try:

        def send(subject: str, to: str = "erin") -> None:
            with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=30) as smtp:
                smtp.sendmail(
                    "s@sender.test",
                    [f"{to}@example.test"],
                    f"Subject: {subject}\r\nMessage-ID: <{subject}@t>\r\n\r\nhi\r\n",
                )

        def count(node: Node, account: str = "erin") -> int:
            return len(node.mailbox(account)["messages"])

        def refusals(node: Node) -> int:
            # A refusal at RCPT or, per recipient, after DATA (RFC 2033 4.2).
            # The RCPT was accepted moments ago for "first", so the LMTP front
            # does not ask again and the fence refuses after DATA, which
            # peerd/lmtpbackend.py counts as lmtp_refused although the reply
            # is a 451: count all three.
            counters = node.call("GET", "/v1/status")["counters"]
            names = ("lmtp_rcpt_refused", "lmtp_temp_failures", "lmtp_refused")
            return sum(int(counters.get(name, 0)) for name in names)

        send("first")
        wait_until(lambda: count(alpha) == 1, 30, "delivery through Postfix to alpha")
        refused_before = refusals(alpha)
        alpha.call("POST", "/v1/switchover", {"accounts": ["erin"]})
        # Right away, with no reload: Postfix still has alpha as erin's route
        # in its cache, so the mail goes to alpha, which no longer owns erin
        # and answers 4xx; Postfix defers it, and the retry (routed afresh
        # once the cache entry is gone) reaches beta.
        send("second")
        postfix.wait_log("status=deferred", timeout=30)
        deferred = [line for line in postfix.log().splitlines() if "status=deferred" in line]
        assert f":{alpha.ports['lmtp']}" in deferred[0], deferred
        assert "451 4.3.0 Account is served by beta now" in deferred[0], deferred
        assert refusals(alpha) == refused_before + 1
        # That cache is qmgr's last resolved address (Postfix's resolve_clnt.c:
        # one entry, 30 s, not configurable). On a real server the next mail
        # for anyone else replaces it within moments; do the same here instead
        # of idling 30 s (still no reload): mail for frank, who stays on alpha.
        send("third", to="frank")
        wait_until(lambda: count(alpha, "frank") == 1, 30, "frank's mail on alpha")
        postfix.wait_queue_empty(timeout=90)
        # Exactly once: each subject one time on beta (read over IMAP).
        client = imaplib.IMAP4("127.0.0.1", beta.ports["imap"], timeout=20)
        try:
            client.login("erin", "secret")
            client.select("INBOX", readonly=True)
            data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1]
        finally:
            client.logout()
        subjects = sorted(part[1].strip() for part in data if isinstance(part, tuple))
        assert subjects == [b"Subject: first", b"Subject: second"], postfix.log()[-3000:]
        wait_until(lambda: count(alpha) == 2, 20, "beta's copy replicated to alpha")
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
