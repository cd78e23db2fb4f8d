"""docs/proxies.md, started as written: two nodes with its peerd tables, a real
nginx with its two blocks, a real Postfix with its main.cf lines (the blocks
are read from the doc by tests/proxydocs.py; only addresses, ports and paths
are the test's). Logins through every nginx port reach the account's owner,
also after a switchover and while one node is down; Postfix refuses an
unknown user at RCPT and delivers to the owner, following a switchover.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import ssl
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import proxydocs
from tests.harness.nginx import Nginx
from tests.harness.postfix import Postfix
from tests.nodes import Node, make_pair, running, write_config
from tests.procs import free_port, wait_until

SERVICES = ("lmtp", "imap", "pop3", "http")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    """A pair whose configs carry the doc's [node], [listen] and [routing]."""
    alpha, beta = make_pair(tmp_path)
    for node in (alpha, beta):
        node.ports["socketmap"] = free_port()
    ports = {node.name: node.ports for node in (alpha, beta)}
    for node in (alpha, beta):
        sections = tomllib.loads(node.config.read_text())
        for table, values in proxydocs.peerd_sections(node.name, ports).items():
            sections.setdefault(table, {}).update(values)
        write_config(node.config, sections)
    with running(alpha, beta):
        alpha.add_account("alice")
        beta.add_account("bob")
        yield alpha, beta


def _certificate(directory: Path) -> tuple[Path, Path]:
    crt, key = directory / "mail.crt", directory / "mail.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(crt), "-days", "2", "-subj", "/CN=mail.example.org"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return crt, key


def _insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test's self-signed certificate
    return context


def _imap_login(port: int, user: str, *, tls: str = "", password: str = "secret") -> str:
    if tls == "ssl":
        client: imaplib.IMAP4 = imaplib.IMAP4_SSL(
            "127.0.0.1", port, ssl_context=_insecure(), timeout=20
        )
    else:
        client = imaplib.IMAP4("127.0.0.1", port, timeout=20)
        if tls == "starttls":
            client.starttls(_insecure())
    try:
        text = client.login(user, password)[1][0].decode()
        # nginx passes the owner's untagged-in-tagged [CAPABILITY ...] through.
        return text.split("] ", 1)[1] if text.startswith("[") else text
    except imaplib.IMAP4.error as exc:
        return f"refused: {exc}"
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def _pop3_count(port: int, user: str, *, tls: str = "") -> int:
    if tls == "ssl":
        client: poplib.POP3 = poplib.POP3_SSL("127.0.0.1", port, context=_insecure(), timeout=20)
    else:
        client = poplib.POP3("127.0.0.1", port, timeout=20)
        if tls == "starttls":
            client.stls(_insecure())
    try:
        client.user(user)
        client.pass_("secret")
        return int(client.stat()[0])
    finally:
        client.quit()


def _deliver(node: Node, account: str, subject: str) -> None:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=20) as lmtp:
        lmtp.sendmail("s@example.org", [f"{account}@example.org"], f"Subject: {subject}\r\n\r\n")


def test_nginx_as_the_doc_configures_it(pair: tuple[Node, Node], tmp_path: Path) -> None:
    alpha, beta = pair
    cert, key = _certificate(tmp_path)
    listen = {doc: free_port() for doc in (143, 993, 110, 995)}
    lookup = free_port()
    conf = proxydocs.nginx_conf(
        tmp_path / "nginx",
        {"alpha": alpha.ports["http"], "beta": beta.ports["http"]},
        lookup,
        listen,
        cert,
        key,
    )
    nginx = Nginx(
        tmp_path / "nginx",
        config=conf,
        imap_port=listen[143],
        pop3_port=listen[110],
        wait_ports=(listen[993], listen[995], lookup),
    )
    nginx.start()
    try:
        _deliver(beta, "bob", "for bob")
        assert _imap_login(listen[143], "alice") == "LOGIN completed on alpha"
        assert _imap_login(listen[143], "bob", tls="starttls") == "LOGIN completed on beta"
        assert _imap_login(listen[993], "alice", tls="ssl") == "LOGIN completed on alpha"
        assert _pop3_count(listen[110], "bob", tls="starttls") == 1
        assert _pop3_count(listen[995], "bob", tls="ssl") == 1
        assert "Invalid login or password" in _imap_login(listen[143], "alice", password="no")

        alpha.call("POST", "/v1/switchover", {"accounts": ["alice"]})
        assert _imap_login(listen[993], "alice", tls="ssl") == "LOGIN completed on beta"

        # alpha down: nginx's lookup proxy asks beta, which owns everything.
        alpha.stop()
        assert _imap_login(listen[143], "bob") == "LOGIN completed on beta"
        assert _imap_login(listen[143], "alice") == "LOGIN completed on beta"
    finally:
        nginx.stop()


def test_postfix_as_the_doc_configures_it(pair: tuple[Node, Node]) -> None:
    alpha, beta = pair
    postfix = Postfix(
        alpha.ports["socketmap"], routing=proxydocs.postfix_main(alpha.ports["socketmap"])
    ).start()
    try:
        with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=30) as smtp:
            smtp.ehlo("client.test")
            smtp.mail("sender@sender.test")
            code, text = smtp.rcpt("nobody@example.org")
            assert code == 550 and b"User unknown in virtual mailbox table" in text, text
        postfix.send(["alice@example.org", "bob+list@example.org"], subject="first")
        postfix.wait_queue_empty(timeout=60)
        assert len(alpha.mailbox("alice")["messages"]) == 1, postfix.log()[-3000:]
        assert len(beta.mailbox("bob")["messages"]) == 1, postfix.log()[-3000:]

        alpha.call("POST", "/v1/switchover", {"accounts": ["alice"]})
        postfix.send("alice@example.org", subject="second")
        postfix.wait_queue_empty(timeout=60)
        wait_until(lambda: len(beta.mailbox("alice")["messages"]) == 2, 30, "alice's mail on beta")
        assert "relay=127.0.0.1[127.0.0.1]:" + str(beta.ports["lmtp"]) in postfix.log()
    finally:
        postfix.stop()
