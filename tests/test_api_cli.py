"""The control API (bearer token, problem+json errors) and ``peerctl`` as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from engine import accounts
from engine.passwords import verify_password
from engine.store import Store
from tests.conftest import LoneNode
from tests.harness.daemons import TOKEN
from tests.nodes import peerctl

# The `node` fixture (tests/conftest.py): a lone node, its partner beta named.
pytestmark = pytest.mark.node(partner="beta")


def request(
    node: LoneNode,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = TOKEN,
    raw: bytes | None = None,
) -> tuple[int, str, Any]:
    """(status, content type, decoded JSON body) for any status."""
    data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(node.api + path, data=data, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.headers["Content-Type"], json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], json.loads(exc.read())


def assert_problem(answer: tuple[int, str, Any], status: int, code: str | None = None) -> None:
    got, ctype, body = answer
    assert got == status, answer
    assert ctype.startswith("application/problem+json"), ctype
    assert body["status"] == status and body["title"] and body["type"] == "about:blank"
    if code is not None:
        assert body["code"] == code, body


def test_bearer_token_is_required(node: LoneNode) -> None:
    assert request(node, "GET", "/v1/health", token=None)[0] == 200
    for token in (None, "", "wrong", TOKEN + "x"):
        answer = request(node, "GET", "/v1/accounts", token=token)
        assert_problem(answer, 401)
    # A write without the token changes nothing.
    assert_problem(
        request(node, "POST", "/v1/accounts", {"name": "x", "password": "p"}, token=None), 401
    )
    assert request(node, "GET", "/v1/accounts")[2] == {"accounts": []}
    req = urllib.request.Request(node.api + "/v1/status")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    with info.value:
        assert info.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_errors_are_problem_json(node: LoneNode) -> None:
    status, _, body = request(
        node, "POST", "/v1/accounts", {"name": "zoe", "password": "pw", "quota_limit": 5000}
    )
    assert status == 201 and body["name"] == "zoe" and body["owner"] == "alpha"
    assert body["quota_limit"] == 5000 and body["quota_used"] == 0

    assert_problem(
        request(node, "POST", "/v1/accounts", {"name": "zoe", "password": "x"}),
        409,
        "already_exists",
    )
    assert_problem(request(node, "GET", "/v1/accounts/nobody"), 404, "no_such_account")
    assert_problem(request(node, "DELETE", "/v1/accounts/nobody"), 404, "no_such_account")
    assert_problem(request(node, "PUT", "/v1/accounts/nobody/password", {"password": "x"}), 404)
    assert_problem(request(node, "GET", "/v1/accounts/nobody/mailboxes"), 404)
    assert_problem(request(node, "GET", "/v1/accounts/zoe/mailboxes/Nope"), 404, "no_such_mailbox")
    for bad in (
        {"name": "bad name", "password": "pw"},
        {"name": "amy"},  # no password
        {"name": "amy", "password": ""},
        {"name": "amy", "password": "pw", "password_hash": "h"},  # both
        {"name": "amy", "password": "pw", "quota_limit": -1},
        {"name": "amy", "password": "pw", "quota_limit": True},
        {"name": "amy", "password": "pw", "quota_limit": "10 parsecs"},
        {"name": "amy", "password": "pw", "owner": "mars"},
        {"name": 7, "password": "pw"},
    ):
        assert_problem(request(node, "POST", "/v1/accounts", bad), 422)
    assert_problem(request(node, "POST", "/v1/accounts", raw=b"{not json"), 422)
    assert_problem(request(node, "POST", "/v1/accounts", raw=b"[1, 2]"), 422)
    assert_problem(request(node, "PUT", "/v1/accounts/zoe/quota", {"quota_limit": -5}), 422)
    # None of the refused requests left anything behind.
    assert [a["name"] for a in request(node, "GET", "/v1/accounts")[2]["accounts"]] == ["zoe"]
    assert request(node, "GET", "/v1/accounts/zoe")[2]["quota_limit"] == 5000


def password_ok(node: LoneNode, user: str, password: str) -> bool:
    store = Store(node.db_url, node.workdir_data, owner=False)
    try:
        stored = store.read_sync(lambda s: accounts.get_account(s, user).password_hash)
    finally:
        store.close()
    return verify_password(password, stored)


def test_peerctl_accounts_mailboxes_status(node: LoneNode, tmp_path: Path) -> None:
    added = peerctl(
        node, "account", "add", "amy", "--password-stdin", "--quota", "1000000", stdin="s3cret\n"
    )
    assert added.returncode == 0, added.stderr
    assert "amy" in added.stdout and "alpha" in added.stdout
    assert password_ok(node, "amy", "s3cret")
    secret = tmp_path / "pw.txt"
    secret.write_text("from-a-file\n")
    added = peerctl(
        node, "account", "add", "ben@example.org", "--password-file", str(secret), "--owner", "beta"
    )
    assert added.returncode == 0, added.stderr
    assert password_ok(node, "ben@example.org", "from-a-file")

    listing = peerctl(node, "account", "list")
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:2] == ["ACCOUNT", "OWNER"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["amy", "alpha"],
        ["ben@example.org", "beta"],
    ]
    as_json = json.loads(peerctl(node, "--json", "account", "list").stdout)
    assert [(a["name"], a["owner"], a["quota_limit"]) for a in as_json["accounts"]] == [
        ("amy", "alpha", 1_000_000),
        ("ben@example.org", "beta", None),
    ]

    changed = peerctl(node, "account", "passwd", "amy", "--password-stdin", stdin="n3w\n")
    assert changed.returncode == 0, changed.stderr
    assert password_ok(node, "amy", "n3w") and not password_ok(node, "amy", "s3cret")

    data = b"Subject: shown\r\nMessage-ID: <shown@t>\r\n\r\nbody\r\n"
    with node.lmtp() as client:
        client.sendmail("s@example.test", ["amy@example.test"], data)
    (record,) = node.records("amy")
    boxes = peerctl(node, "mailbox", "list", "amy")
    assert boxes.returncode == 0 and boxes.stdout.splitlines()[1].split()[0] == "INBOX"
    shown = peerctl(node, "mailbox", "show", "amy", "INBOX")
    assert shown.returncode == 0
    row = shown.stdout.splitlines()[-1].split()
    assert row[:4] == ["1", record["guid"], str(record["modseq"]), str(len(data))]
    shown_json = json.loads(peerctl(node, "--json", "mailbox", "show", "amy", "INBOX").stdout)
    assert shown_json["messages"] == [record]

    status = peerctl(node, "status")
    assert status.returncode == 0 and status.stdout.startswith("node alpha (partner beta)")
    assert "accounts 2" in status.stdout
    status_json = json.loads(peerctl(node, "--json", "status").stdout)
    assert status_json["node"] == "alpha" and status_json["accounts"] == 2
    # One account: a lone node has no replication to report, only the account.
    one = peerctl(node, "status", "-u", "ben@example.org")
    assert one.returncode == 0, one.stderr
    assert one.stdout.splitlines() == [
        "account ben@example.org on alpha: owner beta (home beta), epoch 1, normal",
        one.stdout.splitlines()[1],
        "replication: off (no [sync] sync_host)",
    ]
    assert one.stdout.splitlines()[1].startswith("sync log depth ")
    one_json = json.loads(peerctl(node, "--json", "status", "-u", "amy").stdout)
    assert (one_json["account"], one_json["owner"], one_json["epoch"]) == ("amy", "alpha", 1)
    assert one_json["sync_log_depth"] >= 1 and one_json["lag_seconds"] >= 0
    # The installed console script is the same program.
    script = Path(sys.executable).with_name("peerctl")
    scripted = subprocess.run(
        [str(script), "-c", str(node.config), "status"], capture_output=True, text=True, timeout=60
    )
    assert scripted.returncode == 0 and scripted.stdout.startswith("node alpha")

    deleted = peerctl(node, "account", "del", "amy")
    assert deleted.returncode == 0
    assert [
        a["name"] for a in json.loads(peerctl(node, "--json", "account", "list").stdout)["accounts"]
    ] == ["ben@example.org"]


def test_peerctl_exit_status(node: LoneNode, tmp_path: Path) -> None:
    for args, stdin in (
        (("account", "del", "nobody"), None),
        (("account", "passwd", "nobody", "--password-stdin"), "x\n"),
        (("mailbox", "show", "nobody", "INBOX"), None),
    ):
        result = peerctl(node, *args, stdin=stdin)
        assert result.returncode == 1, (args, result)
        assert result.stderr.startswith("peerctl: ") and "nobody" in result.stderr
        assert result.stdout == ""
    assert peerctl(node, "account", "add", "amy", "--password-stdin", stdin="pw\n").returncode == 0
    again = peerctl(node, "account", "add", "amy", "--password-stdin", stdin="pw\n")
    assert again.returncode == 1 and "exists" in again.stderr
    empty = peerctl(node, "account", "add", "cat", "--password-stdin", stdin="\n")
    assert empty.returncode == 2 and "password" in empty.stderr
    assert peerctl(node, "account", "frobnicate").returncode == 2
    wrong_token = tmp_path / "wrong.toml"
    wrong_token.write_text(node.config.read_text().replace(f'token = "{TOKEN}"', 'token = "nope"'))
    refused = peerctl(node, "account", "list", config=wrong_token)
    assert refused.returncode == 1 and "Unauthorized" in refused.stderr

    assert node.stop() == 0
    down = peerctl(node, "status")
    assert down.returncode == 3 and "cannot reach" in down.stderr


def test_a_credential_that_is_not_utf8_is_refused_not_a_server_error(node: LoneNode) -> None:
    """aiohttp keeps a header's non-UTF-8 bytes as surrogates; the token
    checks encoded them again strictly, and a stranger's ``Authorization:
    Bearer \\xfc`` was a 500 with a traceback in the log (control API and
    sync listener alike) instead of 401."""
    assert_problem(request(node, "GET", "/v1/accounts", token="\xfc"), 401)
    sync = urllib.request.Request(
        f"http://127.0.0.1:{node.ports['sync']}/sync/v1/hello", data=b"{}", method="POST"
    )
    sync.add_header("Authorization", "Basic \xfc")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(sync, timeout=10)
    with info.value:
        assert info.value.code == 401
    assert "Traceback" not in node.log.read_text()


def test_peerctl_mistakes_are_one_line_before_any_request(tmp_path: Path) -> None:
    """Each is refused with exit status 2 and one line before peerctl asks
    the node anything (so no node runs here): a password or CA file that is
    not there was a traceback; ``--batch 0`` said "range() arg 3 must not be
    zero"; ``--batch -1`` sent nothing and said "imported 0 of 1" with exit
    status 0; ``--messages abc`` said "invalid literal for int()". (A CA
    file: test_import_imap_with_a_ca_file_that_is_not_there_is_one_line.)"""
    from peerd.cli.peerctl import IMPORT_BATCH
    from peerd.control.accountimport import MAX_BATCH
    from tests.harness.clients import run_command
    from tests.harness.procs import free_port

    assert IMPORT_BATCH == MAX_BATCH
    (tmp_path / "a.csv").write_text("amy,pw\n")
    api = ["--api", f"http://127.0.0.1:{free_port()}", "--token", "t"]
    cases: list[tuple[list[str], str]] = [
        (["account", "add", "amy", "--password-file", "gone"], "--password-file gone: cannot read"),
        (["account", "passwd", "amy", "--password-file", "."], "--password-file .: cannot read"),
        (["account", "quota", "amy", "1M", "--messages", "abc"], "--messages 'abc': give a number"),
        (["account", "quota", "amy", "1M", "--messages", "-1"], "--messages '-1': give a number"),
        (["account", "import", "a.csv", "--batch", "0"], "--batch must be 1 to 1000"),
        (["account", "import", "a.csv", "--batch", "-1"], "--batch must be 1 to 1000"),
        (["account", "import", "a.csv", "--batch", "1001"], "--batch must be 1 to 1000"),
    ]
    # A config whose node serves no control API: said so, not "give -c FILE".
    (tmp_path / "no-api.toml").write_text('[node]\nname = "alpha"\n')
    done = run_command("peerd.cli", ["-c", "no-api.toml", "status"], tmp_path, timeout=60)
    assert done.returncode == 2, done
    assert (
        done.stderr == "peerctl: no-api.toml has no [listen] http: the node serves no"
        " control API; set it (and restart the node), or give --api URL\n"
    )
    for argv, needle in cases:
        done = run_command("peerd.cli", [*api, *argv], tmp_path, timeout=60)
        assert done.returncode == 2, (argv, done)
        assert done.stdout == "" and "Traceback" not in done.stderr, (argv, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"peerctl: {needle}"), (argv, lines)


def test_import_imap_with_a_ca_file_that_is_not_there_is_one_line(
    node: LoneNode, tmp_path: Path
) -> None:
    """It was a FileNotFoundError traceback, after the node was asked."""
    from tests.harness.procs import free_port

    node.add_account("amy")
    (tmp_path / "pw").write_text("pw\n")
    for cafile, why in ((tmp_path / "gone.pem", "No such file"), (tmp_path / "pw", "X509")):
        done = peerctl(
            node,
            *("import-imap", "--host", "127.0.0.1", "--port", str(free_port()), "--tls"),
            *("--cafile", str(cafile), "--password-file", str(tmp_path / "pw")),
            *("--user", "amy", "--account", "amy"),
        )
        assert done.returncode == 2 and "Traceback" not in done.stderr, done
        line = done.stderr.strip()
        assert line.startswith(f"peerctl: --cafile {cafile}: cannot load CA") and why in line
