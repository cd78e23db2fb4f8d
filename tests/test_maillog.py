"""The mail log (peerd/node/maillog.py), read from a real daemon's log. Deliveries:
one line per recipient with the MTA's queue id, account, mailbox, size, GUID
and result. Admin actions: what, on what, through peerctl or the API, from
which address, and the answer. Logins: a failed IMAP, POP3 and
nginx auth_http login each write one ``login failed`` line with the client's
address, a good one ``login ok``; contrib's fail2ban filter, run by the real
``fail2ban-regex``, finds exactly the failed ones' addresses, in the text log
and in ``--log-format json`` lines, and a user name cannot forge the address.
"""

from __future__ import annotations

import imaplib
import io
import logging
import poplib
import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from peerd.node import maillog
from peerd.node.logs import JsonFormatter
from tests.nodes import Node, peerctl
from tests.procs import wait_until

FILTER = Path(__file__).resolve().parent.parent / "contrib/fail2ban/filter.d/peerd.conf"


def _imap(node: Node, user: str, password: str) -> None:
    client = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=20)
    try:
        client.login(user, password)
    except imaplib.IMAP4.error:
        pass
    finally:
        client.logout()


def _pop3_fails(node: Node, user: str) -> None:
    client = poplib.POP3("127.0.0.1", node.ports["pop3"], timeout=20)
    client.user(user)
    with pytest.raises(poplib.error_proto):
        client.pass_("wrong")
    client.quit()


def _auth_http(node: Node, user: str, password: str, client_ip: str) -> str:
    request = urllib.request.Request(
        f"{node.api}/v1/route/nginx",
        headers={
            "Auth-User": user,
            "Auth-Pass": password,
            "Auth-Protocol": "imap",
            "Auth-Method": "plain",
            "Client-IP": client_ip,
        },
    )
    with urllib.request.urlopen(request, timeout=20) as answer:
        return str(answer.headers["Auth-Status"])


def _fail2ban(log: Path) -> set[str]:
    """The addresses fail2ban-regex finds in ``log`` with contrib's filter."""
    binary = shutil.which("fail2ban-regex")
    if binary is None:
        pytest.skip("fail2ban-regex not installed (Debian: apt install fail2ban)")
    result = subprocess.run(
        [binary, "--out", "ip", "--raw", str(log), str(FILTER)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return set(result.stdout.split())


# Four failed logins: each waits login_failure_delay (2 s by default) before
# its NO; what is checked here is the log line, not the delay.
@pytest.mark.node(
    overrides={
        "imap": {"login_failure_delay": "50ms"},
        "pop3": {"login_failure_delay": "50ms"},
    }
)
def test_logins_are_logged_and_fail2ban_finds_the_failed_ones(node: Node, tmp_path: Path) -> None:
    node.add_account("alice")
    _imap(node, "alice", "wrong")
    _imap(node, "nobody", "x")
    _pop3_fails(node, "alice")
    _imap(node, "alice", "secret")
    assert _auth_http(node, "alice", "wrong", "203.0.113.9") == "Invalid login or password"
    assert _auth_http(node, "alice", "secret", "198.51.100.7") == "OK"
    # A user name made to look like another address (a quoted string, RFC 3501 4.3).
    with socket.create_connection(("127.0.0.1", node.ports["imap"]), timeout=20) as raw:
        stream = raw.makefile("rb")
        stream.readline()
        raw.sendall(b'a LOGIN "x\\" rip=192.0.2.99 proto=imap user=\\"y" x\r\n')
        assert stream.readline().startswith(b"a NO ")

    log = (node.workdir / f"{node.name}.log").read_text()
    lines = [
        line.split("peerd.mail: ", 1)[1]
        for line in log.splitlines()
        if "peerd.mail: login " in line
    ]
    assert lines == [
        'login failed: rip=127.0.0.1 proto=imap user="alice" account=-',
        'login failed: rip=127.0.0.1 proto=imap user="nobody" account=-',
        'login failed: rip=127.0.0.1 proto=pop3 user="alice" account=-',
        'login ok: rip=127.0.0.1 proto=imap user="alice" account=alice',
        'login failed: rip=203.0.113.9 proto=imap user="alice" account=-',
        'login ok: rip=198.51.100.7 proto=imap user="alice" account=alice',
        'login failed: rip=127.0.0.1 proto=imap user="x\\" rip=192.0.2.99 proto=imap'
        ' user=\\"y" account=-',
    ]
    copy = tmp_path / "mail.log"
    copy.write_text(log)
    assert _fail2ban(copy) == {"127.0.0.1", "203.0.113.9"}


def test_fail2ban_reads_the_json_log(tmp_path: Path) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("peerd.mail")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        maillog.login(False, "203.0.113.5", "pop3", "carol")
        maillog.login(True, "203.0.113.6", "imap", "dave", "dave")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    log = tmp_path / "json.log"
    log.write_text(out.getvalue())
    assert '"event": "login_failed"' in out.getvalue()
    assert _fail2ban(log) == {"203.0.113.5"}


# -- deliveries and admin actions ------------------------------------------------

_DELIVERY = re.compile(
    r"peerd\.mail: delivery (?P<result>\w+): qid=(?P<qid>\S+) account=(?P<account>\S+)"
    r" mailbox=(?P<mailbox>\S+) size=(?P<size>\d+) guid=(?P<guid>\S+)"
    r' reply=(?P<reply>"[^"]*") rcpt=(?P<rcpt>".*")$'
)
_ADMIN = re.compile(
    r"peerd\.mail: admin (?P<action>[a-z ]+) (?P<ok>ok|failed): via=(?P<via>\w+)"
    r" rip=(?P<rip>\S+) status=(?P<status>\d+) target=(?P<target>.*)$"
)


def _lines(node: Node, pattern: re.Pattern[str]) -> list[dict[str, str]]:
    text = (node.workdir / f"{node.name}.log").read_text()
    return [m.groupdict() for m in map(pattern.search, text.splitlines()) if m]


def test_each_delivery_is_one_line_with_queue_id_account_mailbox_size_guid_result(
    node: Node,
) -> None:
    node.add_account("alice")
    node.add_account("bob")
    message = (
        b"Received: from client.example.test (client [192.0.2.1])\r\n"
        b"\tby mx.example.test (Postfix) with ESMTP id 4Q1x2Y3Z4z\r\n"
        b"\tfor <alice@example.test>; Fri, 4 Dec 2026 10:00:00 +0000\r\n"
        b"Received: from elsewhere by relay.example.test with SMTP id NOTTHISONE\r\n"
        b"Message-ID: <m1@example.test>\r\nSubject: hi\r\n\r\nhello\r\n"
    )
    with node.lmtp() as lmtp:
        refused = lmtp.sendmail(
            "me@example.test", ["alice@example.test", "nobody@example.test"], message
        )
        assert set(refused) == {"nobody@example.test"}
        lmtp.sendmail("me@example.test", ["bob+Work@example.test"], message)
        lmtp.sendmail("me@example.test", ["alice@example.test"], message)  # a duplicate
        lmtp.sendmail("me@example.test", ["bob@example.test"], b"Subject: no id\r\n\r\nx\r\n")
    stored = node.records("alice")
    assert len(stored) == 1
    lines = wait_for_lines(node, _DELIVERY, 4)
    nobody, first, second, dup = lines[:4]
    # Refused at RCPT, before the message came: no size, no GUID yet.
    assert (nobody["result"], nobody["account"], nobody["size"], nobody["guid"]) == (
        "refused",
        "-",
        "0",
        "-",
    )
    assert nobody["rcpt"] == '"nobody@example.test"' and nobody["reply"].startswith('"550')
    assert (first["result"], first["qid"], first["account"], first["mailbox"]) == (
        "stored",
        "4Q1x2Y3Z4z",
        "alice",
        '"INBOX"',
    )
    assert first["guid"] == stored[0]["guid"] and int(first["size"]) == len(message)
    assert first["rcpt"] == '"alice@example.test"' and first["reply"].startswith('"250')
    assert (second["account"], second["rcpt"]) == ("bob", '"bob+Work@example.test"')
    assert second["guid"] == first["guid"] and second["qid"] == "4Q1x2Y3Z4z"
    assert (dup["result"], dup["account"]) == ("duplicate", "alice")
    no_id = lines[4]
    assert (no_id["result"], no_id["qid"], no_id["account"]) == ("stored", "-", "bob")


def wait_for_lines(node: Node, pattern: re.Pattern[str], count: int) -> list[dict[str, str]]:
    wait_until(lambda: len(_lines(node, pattern)) > count, 20, "mail log lines")
    return _lines(node, pattern)


def test_admin_actions_say_what_who_and_through_which_interface(node: Node) -> None:
    assert (
        peerctl(node, "account", "add", "carol", "--password-stdin", stdin="pw\n").returncode == 0
    )
    assert (
        peerctl(node, "account", "passwd", "carol", "--password-stdin", stdin="x\n").returncode == 0
    )
    node.call("PUT", "/v1/accounts/carol/quota", {"quota_limit": "1M"})
    assert peerctl(node, "account", "del", "nobody").returncode == 1
    assert peerctl(node, "account", "del", "carol").returncode == 0
    node.add_account("dave")
    node.call("GET", "/v1/accounts")  # reading is no admin action
    seen = [
        (a["action"], a["ok"], a["via"], a["rip"], a["status"], a["target"])
        for a in wait_for_lines(node, _ADMIN, 5)
    ]
    assert seen == [
        ("account add", "ok", "cli", "127.0.0.1", "201", '"carol"'),
        ("account passwd", "ok", "cli", "127.0.0.1", "200", '"carol"'),
        ("account quota", "ok", "api", "127.0.0.1", "200", '"carol"'),
        ("account del", "failed", "cli", "127.0.0.1", "404", '"nobody"'),
        ("account del", "ok", "cli", "127.0.0.1", "200", '"carol"'),
        ("account add", "ok", "api", "127.0.0.1", "201", '"dave"'),
    ]
    # Passwords never reach the log.
    assert "pw" not in " ".join(str(s) for s in seen)
    assert '"x"' not in (node.workdir / f"{node.name}.log").read_text()


def test_pair_operations_are_admin_lines_too(pair: tuple[Node, Node]) -> None:
    alpha, beta = pair
    alpha.add_account("alice")
    wait_until(lambda: _known(beta, "alice"), 30, "alice on beta")
    assert peerctl(alpha, "switchover", "alice").returncode == 0
    done = peerctl(alpha, "failback")
    assert done.returncode == 0, done.stderr
    assert beta.stop() == 0
    assert peerctl(alpha, "failover").returncode == 0
    seen = [
        (a["action"], a["ok"], a["via"], a["target"])
        for a in wait_for_lines(alpha, _ADMIN, 2)
        if a["action"] in ("switchover", "failback", "failover")
    ]
    assert seen == [
        ("switchover", "ok", "cli", '"alice"'),
        ("failback", "ok", "cli", "-"),
        ("failover", "ok", "cli", "-"),
    ]


def _known(node: Node, account: str) -> bool:
    return account in [a["name"] for a in node.call("GET", "/v1/accounts")["accounts"]]
