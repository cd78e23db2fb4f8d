"""Bulk provisioning (issue 12): ``peerctl account import FILE``.

The file parser on its own (CSV and Dovecot passwd-files; schemes refused by
name with their line), SHA-crypt checked against the hashes the real
Dovecot (``doveadm pw``) and libc write, and the command against real
daemons: imported accounts log in over IMAP with the password their hash
was made from, a file with a line it cannot take creates nothing, accounts
that exist are reported by line while the others are created, and imported
accounts reach the partner and log in there after a failover.
"""

from __future__ import annotations

import imaplib
import shutil
import subprocess
import urllib.error
import warnings
from pathlib import Path

import pytest

from engine import shacrypt
from engine.passwords import hash_problem, verify_password
from peerd.cli.importfile import parse
from tests.nodes import Node, make_pair, peerctl, running
from tests.procs import wait_until


def doveadm_pw(scheme: str, password: str) -> str:
    """A hash as Dovecot writes it, e.g. ``{SHA512-CRYPT}$6$...``."""
    if shutil.which("doveadm") is None:
        pytest.skip("doveadm (Dovecot) is not installed")
    done = subprocess.run(
        ["doveadm", "pw", "-s", scheme, "-p", password],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout.strip()


def login(node: Node, user: str, password: str) -> bool:
    with imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=20) as client:
        try:
            client.login(user, password)
        except imaplib.IMAP4.error:
            return False
        return True


# --- SHA-crypt ---------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["SHA512-CRYPT", "SHA256-CRYPT"])
def test_sha_crypt_verifies_what_dovecot_writes(scheme: str) -> None:
    for password in ("secret", "pässwörd", "", "x" * 80):
        stored = doveadm_pw(scheme, password).split("}", 1)[1]
        assert hash_problem(stored) is None
        assert verify_password(password, stored)
        assert not verify_password(password + "!", stored)


def test_sha_crypt_agrees_with_libc() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            pytest.skip("no crypt module in this Python")
    for setting in ("$5$saltstring", "$6$rounds=1000$x", "$6$rounds=12345$abcdefghijklmnop"):
        for password in ("Hello world!", "a" * 70):
            stored = crypt.crypt(password, setting)
            assert shacrypt.verify(password, stored), stored
            assert not shacrypt.verify(password[:-1], stored)


def test_sha_crypt_bounds() -> None:
    digest = "a" * 86
    assert shacrypt.parse(f"$6$rounds=500000$salt${digest}") is not None
    # More rounds would make each login as slow as the hash's author likes.
    assert shacrypt.parse(f"$6$rounds=500001$salt${digest}") is None
    assert hash_problem(f"$6$rounds=999999999$salt${digest}") is not None
    assert shacrypt.parse(f"$6$salt${digest[:-1]}") is None
    assert hash_problem("{SHA512-CRYPT}$6$salt$x") is not None


# --- the file ------------------------------------------------------------------------


def test_csv_lines() -> None:
    hashed = "$6$salt$" + "a" * 86
    entries, errors = parse(
        "name,password,quota\n"
        "alice,secret,50M\n"
        f"bob,{hashed},\n"
        "carol@Example.TEST,{PLAIN}pw,1024\n"
        "dave,{SHA256-CRYPT}$5$s$" + "b" * 43 + "\n"
        "\n"
    )
    assert errors == []
    assert [(e.line, e.name, e.password, e.password_hash, e.quota_limit) for e in entries] == [
        (2, "alice", "secret", None, 50 << 20),
        (3, "bob", None, hashed, None),
        (4, "carol@Example.TEST", "pw", None, 1024),
        (5, "dave", None, "$5$s$" + "b" * 43, None),
    ]


def test_passwd_file_lines() -> None:
    entries, errors = parse(
        "# users\n"
        "alice:{SHA512-CRYPT}$6$s$" + "a" * 86 + ":1000:1000::/home/alice::"
        "userdb_quota_rule=*:storage=1G\n"
        "bob:{PLAIN}hunter2::::::\n"
    )
    assert errors == []
    assert [(e.line, e.name, e.password, e.quota_limit) for e in entries] == [
        (2, "alice", None, 1 << 30),
        (3, "bob", "hunter2", None),
    ]


def test_schemes_peerd_cannot_verify_are_refused_by_line() -> None:
    _, errors = parse(
        "alice:{SHA512-CRYPT}$6$s$" + "a" * 86 + "\n"
        "bob:{BLF-CRYPT}$2y$05$abcdefghijklmnopqrstuu\n"
        "carol:{SSHA512}abc=\n"
        "dave:{MD5-CRYPT}$1$x$y\n"
        "alice:{PLAIN}again\n"
    )
    text = [str(e) for e in errors]
    assert text[0].startswith("line 2: password scheme {BLF-CRYPT} needs bcrypt")
    assert text[1].startswith("line 3: password scheme {SSHA512} is not supported")
    assert text[2].startswith("line 4: password scheme {MD5-CRYPT} is not supported")
    assert text[3] == "line 5: alice is also on line 1"
    _, errors = parse("name,password,quota\nerin,secret,lots\nfrank\n", "csv")
    assert [str(e) for e in errors] == [
        "line 2: quota 'lots' is not a size (bytes or e.g. 50M)",
        "line 3: expected name,password_or_hash[,quota]: 1 fields",
    ]


# --- the command, against real daemons -------------------------------------------------


def test_import_creates_accounts_that_log_in(node: Node, tmp_path: Path) -> None:
    node.add_account("taken")
    source = tmp_path / "users"
    source.write_text(
        f"alice:{doveadm_pw('SHA512-CRYPT', 'alice-pw')}:1000:1000::/home/alice::"
        "userdb_quota_rule=*:storage=10M\n"
        f"bob:{doveadm_pw('SHA256-CRYPT', 'bob-pw')}::::::\n"
        "carol:{PLAIN}carol-pw::::::\n"
        "taken:{PLAIN}x::::::\n"
    )
    done = peerctl(node, "account", "import", str(source))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "imported 3 of 4 account(s)" in done.stdout
    assert f"{source}:line 4: taken: account taken already exists" in done.stdout
    assert login(node, "alice", "alice-pw") and not login(node, "alice", "bob-pw")
    assert login(node, "bob", "bob-pw") and login(node, "carol", "carol-pw")
    assert node.call("GET", "/v1/accounts/alice")["quota_limit"] == 10 << 20
    assert node.mailbox("carol")["exists"] == 0  # an INBOX, as account add makes
    assert "admin account import ok: via=cli rip=127.0.0.1 status=200" in node.log.read_text()

    # A line it cannot take: nothing is created, the line is named, exit 2.
    bad = tmp_path / "bad.csv"
    bad.write_text("name,password,quota\ndave,secret,\nerin,{BLF-CRYPT}$2y$05$abc,\n")
    done = peerctl(node, "account", "import", str(bad))
    assert done.returncode == 2
    assert f"{bad}:line 3: password scheme {{BLF-CRYPT}} needs bcrypt" in done.stderr
    with pytest.raises(urllib.error.HTTPError) as missing:
        node.call("GET", "/v1/accounts/dave")
    assert missing.value.code == 404
    missing.value.close()


def test_imported_accounts_replicate_and_survive_a_failover(tmp_path: Path) -> None:
    alpha, beta = make_pair(tmp_path)
    with running(alpha, beta):
        source = tmp_path / "users.csv"
        source.write_text(
            "name,password_or_hash,quota\n"
            + "".join(
                f"user{i}@example.test,{doveadm_pw('SHA512-CRYPT', f'pw{i}')},1M\n"
                for i in range(5)
            )
        )
        done = peerctl(alpha, "account", "import", str(source))
        assert done.returncode == 0, done.stdout + done.stderr

        def on_beta() -> int:
            return len(beta.call("GET", "/v1/accounts")["accounts"])

        wait_until(lambda: on_beta() == 5, 30, "the imported accounts on beta")
        alpha.kill9()
        beta.call("POST", "/v1/failover", {})
        assert login(beta, "user3@example.test", "pw3")
        assert not login(beta, "user3@example.test", "pw4")
        assert beta.call("GET", "/v1/accounts/user3@example.test")["quota_limit"] == 1 << 20
