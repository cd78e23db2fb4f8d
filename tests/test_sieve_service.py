"""Sieve end to end: ManageSieve uploads (raw RFC 5804 client and sieve-connect),
filtering at LMTP delivery with a real SMTP relay (aiosmtpd) on loopback, and
the scripts and vacation records replicated across a failover."""

from __future__ import annotations

import base64
import contextlib
import imaplib
import poplib
import re
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from peerd.services.lmtp.sieve import redirected_from
from tests.harness.daemons import ModuleNodes
from tests.nodes import Node, make_pair, make_single, running
from tests.procs import free_port, require, wait_until

SCRIPT = b"""require ["fileinto", "imap4flags", "reject", "vacation", "copy"];
if header :contains "subject" "project" {
    fileinto :flags "\\\\Flagged" "Projects";
    stop;
}
if header :contains "subject" "spam" { discard; stop; }
if header :contains "subject" "go away" { reject "not wanted here"; stop; }
if header :contains "subject" "forward" { redirect :copy "boss@elsewhere.test"; }
if header :contains "subject" "holiday" {
    vacation :days 3 :subject "Away" "I am away until Monday.";
}
"""


# --- a real SMTP relay on loopback ------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class Relay:
    port: int
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
            )
        return "250 OK"

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if address in r.rcpt_tos]


@pytest.fixture(scope="module")
def module_relay() -> Iterator[Relay]:
    """The module's relay: the shared node's config names its port."""
    port = free_port()
    handler = Relay(port)
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()


@pytest.fixture
def relay(module_relay: Relay) -> Relay:
    """The module's relay, with what earlier tests sent it forgotten."""
    with module_relay.lock:
        module_relay.received.clear()
    return module_relay


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "sieve.crt", directory / "sieve.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def sieve_overrides(tmp_path: Path, relay: Relay) -> dict[str, dict[str, Any]]:
    cert, key = tmp_path / "sieve.crt", tmp_path / "sieve.key"
    if not cert.exists():
        self_signed(tmp_path)
    return {
        "tls": {"cert": str(cert), "key": str(key)},
        # [tls] turns TLS on for the sync listener too: trust the same certificate.
        "sync": {"sync_tls": True, "sync_tls_ca": str(cert)},
        "managesieve": {"listen": f"127.0.0.1:{free_port()}", "login_failure_delay": "10ms"},
        "sieve": {"relay": f"127.0.0.1:{relay.port}"},
    }


def sieve_port(node: Node) -> int:
    match = re.search(r'\[managesieve\]\nlisten = "127\.0\.0\.1:(\d+)"', node.config.read_text())
    assert match, node.config.read_text()
    return int(match.group(1))


# --- a raw ManageSieve client (RFC 5804) -----------------------------------------


class Client:
    def __init__(self, port: int) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            ("127.0.0.1", port), timeout=20
        )
        self.buffer = b""
        self.greeting = self.response()

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def response(self) -> tuple[str, list[bytes]]:
        """(the final OK/NO/BYE line, the lines before it, literals inlined)."""
        lines: list[bytes] = []
        while True:
            line = self.line()
            literal = re.search(rb"\{(\d+)\}$", line)
            if literal:
                size = int(literal.group(1))
                while len(self.buffer) < size:
                    self.buffer += self.sock.recv(65536)
                lines.append(line + b"\n" + self.buffer[:size])
                self.buffer = self.buffer[size:]
                continue
            if re.match(rb"(OK|NO|BYE)\b", line):
                return line.decode(), lines
            lines.append(line)

    def command(self, text: str, literal: bytes | None = None) -> tuple[str, list[bytes]]:
        data = text.encode()
        if literal is not None:
            data += b" {%d+}\r\n" % len(literal) + literal
        self.sock.sendall(data + b"\r\n")
        return self.response()

    def starttls(self) -> tuple[str, list[bytes]]:
        status, _ = self.command("STARTTLS")
        assert status.startswith("OK"), status
        self.sock = unverified().wrap_socket(self.sock)
        return self.response()  # the capabilities again (section 2.2)

    def login(self, user: str, password: str) -> str:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return self.command(f'AUTHENTICATE "PLAIN" "{token}"')[0]

    def close(self) -> None:
        self.sock.close()


def upload(node: Node, script: bytes, name: str = "main") -> None:
    client = Client(sieve_port(node))
    try:
        client.starttls()
        assert client.login("alice", "secret").startswith("OK")
        assert client.command(f'PUTSCRIPT "{name}"', script)[0].startswith("OK")
        assert client.command(f'SETACTIVE "{name}"')[0].startswith("OK")
        client.command("LOGOUT")
    finally:
        client.close()


def lmtp(node: Node, subject: str, sender: str = "carol@remote.test", **kw: Any) -> dict[str, Any]:
    """Deliver; the refused recipients with their (code, text), read per recipient (RFC 2033 4.2)."""
    rcpts = kw.get("rcpts", ["alice@example.test"])
    body = (
        f"Return-Path: <{sender}>\r\nFrom: {sender}\r\nTo: alice@example.test\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{abs(hash((subject, sender, kw.get('n'))))}@t>\r\n"
        "\r\nhello\r\n"
    ).encode()
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"]) as client:
        client.ehlo()
        assert client.mail(sender)[0] == 250
        for rcpt in rcpts:
            assert client.rcpt(rcpt)[0] == 250
        client.putcmd("data")
        assert client.getreply()[0] == 354
        client.send(body + b".\r\n")
        replies = [client.getreply() for _ in rcpts]
    return {r: reply for r, reply in zip(rcpts, replies, strict=True) if reply[0] != 250}


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def create_folder(node: Node, name: str) -> None:
    with imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=20) as client:
        client.starttls(ssl_context=unverified())
        client.login("alice", "secret")
        assert client.create(name)[0] == "OK"


# --- the ManageSieve listener, on the wire -------------------------------------------


@pytest.fixture
def single(module_nodes: ModuleNodes, relay: Relay) -> Node:
    """The module's single node with ManageSieve, TLS, a socketmap listener
    and the relay, shared by the tests that deliver, upload and read (node-wide
    counters read as differences); the accounts earlier tests made are deleted
    (scripts and vacation records go with them), alice and bob made afresh."""

    def make(workdir: Path) -> Node:
        workdir.mkdir(parents=True)
        overrides = sieve_overrides(workdir, relay)
        del overrides["sync"]  # a single node has no partner
        overrides["listen"] = {"socketmap": f"127.0.0.1:{free_port()}"}
        return make_single(workdir, overrides=overrides)

    (node,) = module_nodes.get("single", make)
    node.delete_accounts()
    node.add_account("alice")
    node.add_account("bob")
    return node


def counters(node: Node) -> dict[str, int]:
    return dict(node.call("GET", "/v1/status")["counters"])


def test_managesieve_wire(single: Node) -> None:
    client = Client(sieve_port(single))
    try:
        status, caps = client.greeting
        assert status.startswith("OK")
        assert b'"STARTTLS"' in caps and b'"SASL" ""' in caps  # no PLAIN in the clear
        # RFC 5804 2.1: PLAIN needs TLS here.
        assert "ENCRYPT-NEEDED" in client.login("alice", "secret")
        _, caps = client.starttls()
        assert b'"SASL" "PLAIN"' in caps and b'"STARTTLS"' not in caps
        assert client.login("alice", "wrong").startswith("NO")
        assert client.login("alice", "secret").startswith("OK")
        bad = client.command('PUTSCRIPT "bad"', b'fileinto "x";\r\n')[0]
        assert bad.startswith("NO") and "line 1" in bad
        assert client.command('PUTSCRIPT "main"', SCRIPT)[0].startswith("OK")
        assert client.command('PUTSCRIPT "other"', b"keep;\r\n")[0].startswith("OK")
        assert client.command('SETACTIVE "nope"')[0].startswith("NO (NONEXISTENT)")
        assert client.command('SETACTIVE "main"')[0].startswith("OK")
        status, listing = client.command("LISTSCRIPTS")
        assert status.startswith("OK") and listing == [b'"main" ACTIVE', b'"other"']
        assert client.command('DELETESCRIPT "main"')[0].startswith("NO (ACTIVE)")
        assert client.command('RENAMESCRIPT "other" "main"')[0].startswith("NO (ALREADYEXISTS)")
        assert client.command('RENAMESCRIPT "main" "filters"')[0].startswith("OK")
        status, body = client.command('GETSCRIPT "filters"')
        assert status.startswith("OK") and body[0].endswith(SCRIPT)
        assert client.command("LISTSCRIPTS")[1] == [b'"filters" ACTIVE', b'"other"']
        assert client.command('DELETESCRIPT "other"')[0].startswith("OK")
        assert client.command('GETSCRIPT "other"')[0].startswith("NO (NONEXISTENT)")
        assert client.command("LOGOUT")[0].startswith("OK")
    finally:
        client.close()
    # bob sees none of alice's scripts.
    other = Client(sieve_port(single))
    try:
        other.starttls()
        assert other.login("bob", "secret").startswith("OK")
        status, listing = other.command("LISTSCRIPTS")
        assert status.startswith("OK") and listing == []
    finally:
        other.close()


def test_sieve_connect_uploads(single: Node, tmp_path: Path) -> None:
    require("sieve-connect")
    script = tmp_path / "up.sieve"
    script.write_bytes(SCRIPT)
    base = [
        *("sieve-connect", "--server", "127.0.0.1", "--port", str(sieve_port(single))),
        *("--user", "alice", "--passwordfd", "0", "--noclearauth", "--nosslverify"),
    ]
    for args in (
        ["--upload", "--localsieve", str(script), "--remotesieve", "up"],
        ["--activate", "--remotesieve", "up"],
    ):
        done = subprocess.run(
            [*base, *args], input="secret\n", capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
    listed = subprocess.run(
        [*base, "--list"], input="secret\n", capture_output=True, text=True, timeout=60
    )
    assert listed.stdout.splitlines() == ['"up" ACTIVE'], listed.stdout
    back = tmp_path / "back.sieve"
    got = subprocess.run(
        [*base, "--download", "--remotesieve", "up", "--localsieve", str(back)],
        input="secret\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert got.returncode == 0, got.stderr
    assert back.read_bytes() == SCRIPT


# --- filtering at delivery -------------------------------------------------------------------


def test_delivery_runs_the_active_script(single: Node, relay: Relay) -> None:
    node = single
    before = counters(node)
    create_folder(node, "Projects")
    assert lmtp(node, "before any script") == {}
    upload(node, SCRIPT)
    # fileinto with imap4flags.
    assert lmtp(node, "project plan") == {}
    projects = node.mailbox("alice", "Projects")["messages"]
    assert len(projects) == 1 and "\\Flagged" in projects[0]["flags"]
    # The MTA sends it again (a lost 250): the same Message-ID is not filed twice.
    assert lmtp(node, "project plan") == {}
    assert len(node.mailbox("alice", "Projects")["messages"]) == 1
    # discard: accepted, stored nowhere.
    inbox_before = len(node.mailbox("alice")["messages"])
    assert lmtp(node, "cheap spam") == {}
    # reject: 550 for alice only; bob (no script) gets the message.
    refused = lmtp(node, "go away", rcpts=["alice@example.test", "bob@example.test"])
    assert list(refused) == ["alice@example.test"]
    assert refused["alice@example.test"][0] == 550
    assert b"not wanted here" in refused["alice@example.test"][1]
    assert len(node.mailbox("bob")["messages"]) == 1
    # redirect :copy through the relay, with the original envelope sender; kept too.
    assert lmtp(node, "please forward") == {}
    wait_until(lambda: relay.to("boss@elsewhere.test"), 10, "the redirect at the relay")
    (sent,) = relay.to("boss@elsewhere.test")
    assert sent.mail_from == "carol@remote.test" and b"Subject: please forward" in sent.data
    # vacation: one reply per sender, from the null path.
    assert lmtp(node, "holiday question", n=1) == {}
    assert lmtp(node, "holiday again", n=2) == {}
    wait_until(lambda: relay.to("carol@remote.test"), 10, "the vacation reply")
    replies = relay.to("carol@remote.test")
    assert len(replies) == 1 and replies[0].mail_from == "<>"  # MAIL FROM:<>
    assert b"Subject: Away" in replies[0].data and b"Auto-Submitted: auto-replied" in (
        replies[0].data
    )
    after = counters(node)
    names = ("sieve_rejected", "sieve_redirected", "sieve_vacation_replies")
    assert [after.get(n, 0) - before.get(n, 0) for n in names] == [1, 1, 1]
    inbox = node.mailbox("alice")["messages"]
    # before any script, forward (kept by :copy), two holiday mails (implicit keep)
    assert len(inbox) == inbox_before + 3


def test_a_redirect_that_comes_back_is_kept_not_sent_round_again(
    single: Node, relay: Relay
) -> None:
    """RFC 5228 4.2 asks for loop control: alice redirects to an address
    whose mail comes back to her. The first pass goes to the relay with
    ``X-Sieve-Redirected-From: alice@example.test`` on top; when that copy is
    delivered to her again it is kept, not sent round again (it looped until
    the MTA's hop limit, and with :copy stored a copy every time round)."""
    node = single
    before = counters(node).get("sieve_redirect_loops", 0)
    upload(node, b'require "copy";\r\nredirect :copy "alias@elsewhere.test";\r\n')
    inbox = len(node.mailbox("alice")["messages"])
    assert lmtp(node, "round and round") == {}
    wait_until(lambda: relay.to("alias@elsewhere.test"), 10, "the redirect at the relay")
    (first,) = relay.to("alias@elsewhere.test")
    assert first.data.startswith(b"X-Sieve-Redirected-From: alice@example.test\r\n")
    # The alias is alice: the relay hands the copy back to her, field and all.
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"]) as client:
        client.sendmail(first.mail_from, ["ALICE@example.test"], first.data)
    assert len(relay.to("alias@elsewhere.test")) == 1
    # Kept once: the copy back has the first's Message-ID (the duplicate check).
    assert len(node.mailbox("alice")["messages"]) == inbox + 1
    assert counters(node)["sieve_redirect_loops"] == before + 1
    # Another recipient's field is not hers: a message bob redirected to
    # her is redirected by her script.
    assert not redirected_from(
        b"X-Sieve-Redirected-From: <bob@example.test>\r\n\r\n", "alice@example.test"
    )
    assert redirected_from(
        b"x-sieve-redirected-from: <Alice@Example.Test>\r\n\r\n", "alice@example.test"
    )


def imap_folders(node: Node) -> list[str]:
    with imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=20) as client:
        client.starttls(ssl_context=unverified())
        client.login("alice", "secret")
        _, lines = client.list()
    return sorted(
        line.decode().rpartition(" ")[2].strip('"') for line in lines if isinstance(line, bytes)
    )


def test_fileinto_create_makes_the_folder_and_mailboxexists_sees_it(
    single: Node, relay: Relay
) -> None:
    # RFC 5490: fileinto :create makes a missing mailbox (and its superior);
    # mailboxexists is true once it is there; without :create, INBOX.
    script = b"""require ["fileinto", "mailbox", "imap4flags"];
if header :contains "subject" "peerd-list" {
    if mailboxexists "Lists/peerd" {
        fileinto :flags "\\\\Seen" "Lists/peerd";
    } else {
        fileinto :create "Lists/peerd";
    }
}
if header :contains "subject" "no-create" { fileinto "Nowhere"; }
"""
    upload(single, script)
    assert imap_folders(single) == ["INBOX"]
    assert lmtp(single, "peerd-list first", n=1) == {}
    assert imap_folders(single) == ["INBOX", "Lists", "Lists/peerd"]
    first = single.mailbox("alice", "Lists/peerd")["messages"]
    assert len(first) == 1 and "\\Seen" not in first[0]["flags"]
    assert lmtp(single, "peerd-list second", n=2) == {}
    both = single.mailbox("alice", "Lists/peerd")["messages"]
    assert len(both) == 2 and "\\Seen" in both[1]["flags"]
    assert lmtp(single, "no-create here", n=3) == {}
    assert "Nowhere" not in imap_folders(single)
    assert len(single.mailbox("alice")["messages"]) == 1


def test_script_error_keeps_the_message(single: Node, relay: Relay) -> None:
    # Redirects past the limit are a run-time error (docs/sieve.md): implicit keep.
    script = b"".join(b'redirect "r%d@elsewhere.test";\r\n' % i for i in range(8))
    upload(single, script)
    assert lmtp(single, "many redirects") == {}
    assert len(single.mailbox("alice")["messages"]) == 1
    assert relay.received == []


# --- replication and failover ---------------------------------------------------------------


def beta_scripts(node: Node) -> list[tuple[str, int]]:
    with sqlite3.connect(f"file:{node.db_path}?mode=ro", uri=True) as db:
        return list(db.execute("SELECT name, active FROM sieve_scripts ORDER BY name"))


def test_failover_filters_with_the_same_script(tmp_path: Path, relay: Relay) -> None:
    alpha, beta = make_pair(
        tmp_path,
        {"alpha": sieve_overrides(tmp_path, relay), "beta": sieve_overrides(tmp_path, relay)},
    )
    with running(alpha, beta):
        alpha.add_account("alice")
        create_folder(alpha, "Projects")
        upload(alpha, SCRIPT)
        # The rolling replicator brings the script and its active mark over.
        wait_until(lambda: beta_scripts(beta) == [("main", 1)], 20, "the script on beta")
        assert lmtp(alpha, "holiday plans", n=1) == {}
        wait_until(lambda: relay.to("carol@remote.test"), 10, "the vacation reply")
        alpha.replicate("alice")
        alpha.kill9()
        beta.call("POST", "/v1/failover", {})
        # beta filters with alpha's script ...
        assert lmtp(beta, "project status") == {}
        assert len(beta.mailbox("alice", "Projects")["messages"]) == 1
        # ... and does not answer carol a second time (the record came along).
        assert lmtp(beta, "holiday again", n=2) == {}
        assert lmtp(beta, "forward this") == {}
        wait_until(lambda: relay.to("boss@elsewhere.test"), 10, "the redirect from beta")
        assert len(relay.to("carol@remote.test")) == 1
        # ManageSieve on beta now serves alice, with the script that came over.
        client = Client(sieve_port(beta))
        try:
            client.starttls()
            assert client.login("alice", "secret").startswith("OK")
            assert client.command("LISTSCRIPTS")[1] == [b'"main" ACTIVE']
        finally:
            client.close()


def test_switchover_ends_the_session_and_beta_serves_the_scripts(
    tmp_path: Path, relay: Relay
) -> None:
    alpha, beta = make_pair(
        tmp_path,
        {"alpha": sieve_overrides(tmp_path, relay), "beta": sieve_overrides(tmp_path, relay)},
    )
    with running(alpha, beta):
        alpha.add_account("alice")
        upload(alpha, SCRIPT)
        client = Client(sieve_port(alpha))
        try:
            client.starttls()
            assert client.login("alice", "secret").startswith("OK")
            status, _ = client.command('HAVESPACE "more" 100')
            assert status.startswith("OK")
            alpha.call("POST", "/v1/switchover", {"accounts": ["alice"]})
            # The account moved: the idle session is told and closed.
            status, _ = client.response()
            assert status.startswith("BYE (TRYLATER)")
        finally:
            client.close()
        # alpha refuses the login now, naming the owner; beta serves the script.
        again = Client(sieve_port(alpha))
        try:
            again.starttls()
            refused = again.login("alice", "secret")
            assert refused.startswith("NO (TRYLATER)") and "beta" in refused
        finally:
            again.close()
        other = Client(sieve_port(beta))
        try:
            other.starttls()
            assert other.login("alice", "secret").startswith("OK")
            assert other.command("LISTSCRIPTS")[1] == [b'"main" ACTIVE']
            status, body = other.command('GETSCRIPT "main"')
            assert status.startswith("OK") and body[0].endswith(SCRIPT)
        finally:
            other.close()


def test_postfix_delivers_through_lmtp_and_the_script_files_and_rejects(single: Node) -> None:
    from tests.harness.postfix import Postfix

    node = single
    create_folder(node, "Projects")
    upload(node, SCRIPT)
    postfix = Postfix(node.ports["socketmap"], "example.test").start()
    try:
        postfix.send("alice@example.test", subject="project kickoff")
        wait_until(
            lambda: len(node.mailbox("alice", "Projects")["messages"]) == 1,
            30,
            "Postfix's delivery filed into Projects",
        )
        postfix.send("alice@example.test", subject="go away now")
        # The 550 from LMTP makes Postfix bounce it, with the script's reason.
        postfix.wait_log("status=bounced", timeout=30)
        assert "not wanted here" in postfix.log()
        assert node.mailbox("alice")["messages"] == []
    finally:
        postfix.stop()


def test_without_a_certificate_plain_goes_in_the_clear(tmp_path: Path) -> None:
    node = make_single(tmp_path, overrides={"managesieve": {"listen": f"127.0.0.1:{free_port()}"}})
    with running(node):
        node.add_account("alice")
        client = Client(sieve_port(node))
        try:
            _, caps = client.greeting
            assert b'"SASL" "PLAIN"' in caps and b"STARTTLS" not in b"".join(caps)
            assert client.login("alice", "secret").startswith("OK")
            assert client.command('PUTSCRIPT "a"', b"keep;\r\n")[0].startswith("OK")
        finally:
            client.close()


def test_connections_past_the_cap_are_refused_with_bye(tmp_path: Path) -> None:
    """ManageSieve had no connection cap, unlike IMAP, POP3 and LMTP: one
    client could hold any number of sessions open (a NOOP every few minutes
    keeps one), and with them the node's file descriptors."""
    where = f"127.0.0.1:{free_port()}"
    node = make_single(tmp_path, overrides={"managesieve": {"listen": where, "max_connections": 2}})
    with running(node):
        held = [Client(sieve_port(node)) for _ in range(2)]
        try:
            assert all(c.greeting[0].startswith("OK") for c in held)
            refused = socket.create_connection(("127.0.0.1", sieve_port(node)), timeout=20)
            with refused:
                answer = b""
                while chunk := refused.recv(4096):
                    answer += chunk
            assert answer.startswith(b'BYE (TRYLATER) "too many connections'), answer
            held.pop().close()

            def admitted() -> bool:
                client = Client(sieve_port(node))
                client.close()
                return client.greeting[0].startswith("OK")

            wait_until(admitted, 10, "a connection admitted again")
        finally:
            for client in held:
                client.close()
        log = (node.workdir / f"{node.name}.log").read_text()
    assert "Traceback" not in log, log[-3000:]


# --- charsets that name no text encoding -----------------------------------------------------

# Python knows these names, but as bytes-to-bytes codecs, codecs that only
# work strictly, or one that always fails: decoding a header or a body with
# them raised (LookupError, UnicodeError) where a charset was merely unknown.
HOSTILE_CHARSETS = ("base64", "zlib", "rot13", "hex", "uu", "idna", "undefined", "punycode")


def test_charsets_that_name_no_text_encoding_are_read_as_utf8_everywhere(
    single: Node, relay: Relay
) -> None:
    """A message whose encoded words and text part name such a charset goes
    through a Sieve script that tests its subject and body, is filed, and
    SEARCH, SORT, THREAD and FETCH answer for it as for any message."""
    node = single
    create_folder(node, "Caught")
    upload(
        node,
        b'require ["fileinto", "body"];\r\n'
        b'if anyof (header :contains "subject" "caught", body :text :contains "needle")'
        b' { fileinto "Caught"; }\r\n',
    )
    for number, charset in enumerate(HOSTILE_CHARSETS):
        message = (
            f"From: carol@remote.test\r\nTo: alice@example.test\r\n"
            f"Subject: =?{charset}?Q?caught=FF?= =?{charset}?B?/w==?= n{number}\r\n"
            f"Message-ID: <hostile-{number}@t>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset={charset}\r\n\r\nneedle \xff\xfe {number}\r\n"
        ).encode("latin-1")
        with smtplib.LMTP("127.0.0.1", node.ports["lmtp"]) as client:
            assert client.sendmail("carol@remote.test", ["alice@example.test"], message) == {}
    caught = node.mailbox("alice", "Caught")["messages"]
    assert len(caught) == len(HOSTILE_CHARSETS)  # the script matched each one
    with imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=30) as imap:
        imap.starttls(unverified())
        assert imap.login("alice", "secret")[0] == "OK"
        assert imap.select("Caught")[0] == "OK"
        everyone = [str(n).encode() for n in range(1, len(HOSTILE_CHARSETS) + 1)]
        status, found = imap.search(None, "SUBJECT", "caught")
        assert (status, found[0].split()) == ("OK", everyone)
        status, found = imap.search(None, "BODY", "needle")
        assert (status, found[0].split()) == ("OK", everyone)
        status, found = imap.sort("(SUBJECT)", "UTF-8", "ALL")
        assert status == "OK" and sorted(found[0].split()) == everyone
        status, threads = imap.thread("REFERENCES", "UTF-8", "ALL")
        assert status == "OK" and threads[0]
        status, fetched = imap.fetch("1:*", "(ENVELOPE BODYSTRUCTURE BODY.PEEK[TEXT])")
        assert status == "OK" and len([f for f in fetched if isinstance(f, tuple)]) == len(
            HOSTILE_CHARSETS
        )


def test_redirect_and_vacation_to_non_ascii_addresses_never_fail_the_delivery(
    single: Node, relay: Relay
) -> None:
    """An address with UTF-8 in it (RFC 6531): smtplib cannot write it as
    ASCII and raised UnicodeEncodeError, which escaped the relay's error
    handling: a 451 for every retry of a redirect, and after a vacation the
    message already stored answered 451 (the MTA sends it again). Such a
    send now goes with SMTPUTF8 (the relay here offers it)."""
    node = single
    upload(
        node,
        'require ["vacation"];\r\n'
        'if header :contains "subject" "forward" { redirect "jos\u00e9@elsewhere.test"; }\r\n'
        'if header :contains "subject" "holiday" { vacation :days 1 "away"; }\r\n'.encode(),
    )
    assert lmtp(node, "please forward", n=1) == {}
    wait_until(lambda: relay.to("jos\u00e9@elsewhere.test"), 10, "the redirect at the relay")
    body = (
        "From: jos\u00e9@remote.test\r\nTo: alice@example.test\r\nSubject: holiday?\r\n"
        "Message-ID: <utf8-sender@t>\r\n\r\nhello\r\n"
    ).encode()
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"]) as client:
        client.ehlo()
        assert client.mail("jos\u00e9@remote.test", ["SMTPUTF8"])[0] == 250
        assert client.rcpt("alice@example.test")[0] == 250
        assert client.data(body)[0] == 250
    wait_until(lambda: relay.to("jos\u00e9@remote.test"), 10, "the vacation reply")
    assert len(node.mailbox("alice")["messages"]) == 1  # the holiday mail, once
    log = (node.workdir / f"{node.name}.log").read_text()
    assert "UnicodeEncodeError" not in log, log[-3000:]


def _big_script() -> bytes:
    """A valid script near the 256 KiB cap, which takes the compiler about
    half a second."""
    words = ", ".join(f'"w{i}"' for i in range(1000))
    test = f'if header :contains "subject" [{words}] {{ keep; }}\r\n'.encode()
    return b'require "fileinto";\r\n' + test * (250_000 // len(test))


def _waits_while(busy: threading.Thread, node: Node) -> list[float]:
    """How long each ``GET /v1/health`` took while ``busy`` ran (started here)."""
    started = time.monotonic()
    busy.start()
    waits: list[float] = []
    while busy.is_alive() and time.monotonic() - started < 60:
        asked = time.monotonic()
        node.call("GET", "/v1/health")
        waits.append(time.monotonic() - asked)
    busy.join(60)
    return waits


# A health check slower than this was held up by the event loop; each
# compile on the loop held one up for about half a second. One is let pass:
# the machine may be busy with other work too.
STALL = 0.3


def test_compiling_a_big_script_does_not_stall_the_node(single: Node) -> None:
    """CHECKSCRIPT and PUTSCRIPT compiled the script on the event loop: a
    user pipelining big scripts stalled every other session, delivery and
    replication of the node for half a second a script. The compile runs in
    a thread now; the loop keeps answering."""
    script = _big_script()
    client = Client(sieve_port(single))
    try:
        client.starttls()
        assert client.login("alice", "secret").startswith("OK")
        count = 4
        data = b"".join(
            b"CHECKSCRIPT {%d+}\r\n%s\r\n" % (len(script), script) for _ in range(count)
        )
        replies: list[tuple[str, list[bytes]]] = []

        def pipeline() -> None:
            # One thread sends, then reads: a TLS socket is not for two at once.
            client.sock.sendall(data)
            replies.extend(client.response() for _ in range(count))

        waits = _waits_while(threading.Thread(target=pipeline), single)
    finally:
        client.close()
    assert [status for status, _ in replies] == ['OK "Script is valid"'] * count
    assert len([w for w in waits if w > STALL]) <= 1, sorted(waits)[-count:]


def test_compiling_a_big_active_script_at_delivery_does_not_stall_the_node(
    single: Node, relay: Relay
) -> None:
    """Delivery compiled the recipient's active script on the event loop
    whenever it was not cached (any script change on the node empties the
    cache): half a second of the whole node for a script near the cap."""
    node = single
    upload(node, _big_script())
    rounds = 3

    def deliveries() -> None:
        for n in range(rounds):
            client = Client(sieve_port(node))
            try:
                client.starttls()
                assert client.login("alice", "secret").startswith("OK")
                # A script change: the compiled programs are dropped.
                assert client.command('SETACTIVE "main"')[0].startswith("OK")
            finally:
                client.close()
            assert lmtp(node, "big script", n=n) == {}

    waits = _waits_while(threading.Thread(target=deliveries), node)
    assert len(node.mailbox("alice")["messages"]) == rounds
    assert len([w for w in waits if w > STALL]) <= 1, sorted(waits)[-rounds:]


def test_a_megabyte_of_encoded_words_does_not_stall_the_node(single: Node, relay: Relay) -> None:
    """The header a script reads was parsed on the event loop before the
    script ran in a thread: a sender's megabyte of RFC 2047 words stalled the
    whole node for a second, for each recipient with a script."""
    node = single
    upload(node, b'if header :contains "subject" "nothing" { discard; }\r\n')
    line = b"Subject: " + b"=?utf-8?q?a=C3=A9?= " * 5 + b"\r\n"
    data = line * (1_000_000 // len(line)) + b"\r\nbody\r\n"
    rounds = 3

    def deliveries() -> None:
        for n in range(rounds):
            with smtplib.LMTP("127.0.0.1", node.ports["lmtp"]) as client:
                sent = data.replace(b"body", b"body %d" % n)
                assert client.sendmail("carol@remote.test", ["alice@example.test"], sent) == {}

    waits = _waits_while(threading.Thread(target=deliveries), node)
    assert len(node.mailbox("alice")["messages"]) == rounds
    assert len([w for w in waits if w > STALL]) <= 1, sorted(waits)[-rounds:]


def test_a_vacation_from_address_cannot_add_header_fields_to_the_reply(
    single: Node, relay: Relay
) -> None:
    """The reply's Message-ID took its domain from ``:from`` as written: a
    script's line break there put a field of its own into the reply."""
    node = single
    upload(
        node,
        b'require "vacation";\r\n'
        b'vacation :from "alice@example.test\r\nX-Injected: yes" "away";\r\n',
    )
    assert lmtp(node, "anyone there?") == {}
    wait_until(lambda: relay.to("carol@remote.test"), 10, "the vacation reply")
    (reply,) = relay.to("carol@remote.test")
    head = reply.data.split(b"\r\n\r\n")[0]
    assert b"\r\nX-Injected" not in head, head
    assert re.search(rb"\r\nMessage-ID: <[^\r\n>]+@[A-Za-z0-9.-]+>\r\n", head), head


def test_plaintext_behind_starttls_is_never_read_as_if_it_came_over_tls(single: Node) -> None:
    """RFC 5804 section 2.2 (the STARTTLS command-injection class): what a
    client pipelined behind STARTTLS came in the clear. The core dropped what
    it had been fed, but the stream still held the rest of it, which was read
    after the handshake as if it had come over TLS: here a man in the middle
    logs the client in to his own account. The connection is closed instead."""
    client = Client(sieve_port(single))
    answers: list[str] = []
    try:
        token = base64.b64encode(b"\0bob\0secret").decode()
        injected = f'AUTHENTICATE "PLAIN" "{token}"\r\n'.encode() * 3000  # past one read
        client.sock.sendall(b"STARTTLS\r\n" + injected)
        assert client.response()[0].startswith("OK")
        client.sock = unverified().wrap_socket(client.sock)
        client.response()  # the capabilities again
        client.sock.sendall(b'NOOP "marker"\r\n')
        while not answers or "marker" not in answers[-1]:
            answers.append(client.response()[0])
    except (ConnectionError, ssl.SSLError, OSError):
        pass  # refused: the connection is closed
    finally:
        client.close()
    assert not [a for a in answers if "Logged in" in a], answers[:3]


class SilentRelay:
    """An SMTP relay that takes connections and never says a word (a relay
    that hangs): smtplib waits 30 s for its greeting."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # closed
            self.held.append(conn)

    def close(self) -> None:
        if self.server.fileno() < 0:
            return  # closed already
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept (Linux)
        self.server.close()
        self.thread.join(10)
        for conn in self.held:
            conn.close()


def test_a_hanging_relay_does_not_hold_up_logins(tmp_path: Path) -> None:
    """Redirects and vacation replies were sent, and scripts run, in the
    event loop's default thread pool (6 threads here), which password checks
    share: a relay that hangs held every thread for its 30 s timeout, and
    every login of every user on the node waited. Sieve has threads of its own."""
    relay = SilentRelay()
    where = f"127.0.0.1:{free_port()}"
    node = make_single(
        tmp_path,
        overrides={
            "managesieve": {"listen": where, "login_failure_delay": "10ms"},
            "sieve": {"relay": f"127.0.0.1:{relay.port}"},
        },
    )
    try:
        with running(node):
            node.add_account("alice")
            node.add_account("bob")
            client = Client(sieve_port(node))
            try:
                assert client.login("alice", "secret").startswith("OK")
                script = b'redirect "boss@elsewhere.test";\r\n'
                assert client.command('PUTSCRIPT "main"', script)[0].startswith("OK")
                assert client.command('SETACTIVE "main"')[0].startswith("OK")
            finally:
                client.close()
            count = 8
            senders = [
                threading.Thread(
                    target=lmtp, args=(node, "hold", "carol@remote.test"), kwargs={"n": n}
                )
                for n in range(count)
            ]
            for sender in senders:
                sender.start()
            wait_until(lambda: len(relay.held) >= 4, 20, "the relay holding four sends")
            # As many as the node's threads let it hold (six in the default
            # pool here): a moment more for the rest to come, if they can.
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: len(relay.held) >= 6, 2, "the relay holding six")
            started = time.monotonic()
            pop = poplib.POP3("127.0.0.1", node.ports["pop3"], timeout=20)
            try:
                pop.user("bob")
                pop.pass_("secret")
                took = time.monotonic() - started
            finally:
                pop.quit()
            assert took < 5, took
            relay.close()  # the sends fail: the messages are kept
            for sender in senders:
                sender.join(60)
            wait_until(
                lambda: len(node.mailbox("alice")["messages"]) == count, 30, "every message kept"
            )
    finally:
        relay.close()
