"""The mail log's login lines (peerd/node/maillog.py): a failed IMAP, POP3 and
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
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from peerd.node import maillog
from peerd.node.logs import JsonFormatter
from tests.nodes import Node

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
        line.split("peerd.mail: ", 1)[1] for line in log.splitlines() if "peerd.mail: " in line
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
