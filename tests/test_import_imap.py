"""``peerctl import-imap`` against a real Dovecot (tests/harness/dovecot.py):
mailboxes, flags, internal dates and bytes arrive identical, a rerun or a
rerun after a kill copies each message once, a rebuilt remote mailbox
(new UIDVALIDITY) is matched by Message-ID/date/size, over quota stops and
resumes, a wrong password is a clear exit 2, and the partner gets the mail.
The name mapping and the response parser are checked on their own first."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import imaplib
import signal
import smtplib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peerd.cli import peerctl as peerctl_module
from peerd.cli.imapimport import Progress, plan
from peerd.cli.imapsource import Folder, parse_internaldate, values
from peerd.protocols.imap.responses import encode_mailbox
from tests.harness.dovecot import Dovecot, require_dovecot
from tests.harness.procs import wait_until
from tests.nodes import Node, make_single, peerctl, running

# -- the pure parts ----------------------------------------------------------------------


def _folder(name: str, sep: str | None = ".", *attrs: str) -> Folder:
    return Folder(name, name, sep, frozenset(a.lower() for a in attrs))


def test_plan_maps_separators_namespaces_and_special_use() -> None:
    folders = [
        _folder("INBOX"),
        _folder("INBOX.Sent Items", ".", "\\Sent"),
        _folder("INBOX.Sent Items.2025", "."),
        _folder("INBOX.a/b", "."),
        _folder("INBOX.Trash", ".", "\\Trash"),
        _folder("INBOX.All Mail", ".", "\\All"),
        _folder("INBOX.parent", ".", "\\Noselect"),
        _folder("INBOX.parent.child", "."),
        _folder("Other Users.bob.INBOX", "."),
    ]
    # Cyrus: the personal namespace is "INBOX." and other users' is "Other Users."
    mapped = {f.name: local for f, local in plan(folders, "INBOX.", ["Other Users."])}
    assert mapped == {
        "INBOX": "INBOX",
        "INBOX.Sent Items": "Sent",
        "INBOX.Sent Items.2025": "Sent/2025",
        "INBOX.a/b": "a_b",
        "INBOX.Trash": "Trash",
        "INBOX.parent.child": "parent/child",
    }
    # Two old names that map to one name here each keep a mailbox.
    twins = plan([_folder("a/b", "."), _folder("a_b", ".")])
    assert [local for _, local in twins] == ["a_b", "a_b_2"]
    # A name that already has the use here keeps its own mailbox.
    clash = plan([_folder("Sent"), _folder("Sent Messages", "/", "\\Sent")])
    assert [local for _, local in clash] == ["Sent", "Sent Messages"]


def test_values_reads_literals_sections_and_quoting() -> None:
    data: list[Any] = [
        (
            b"1 (UID 7 FLAGS (\\Seen $Label1) BODY[HEADER.FIELDS (MESSAGE-ID)] {9}",
            b"a\r\nb)\r\n\r\n",
        ),
        b' INTERNALDATE " 7-Jul-1996 02:44:25 -0700")',
        b'(\\HasNoChildren) "." "a \\"q\\""',
        b"(\\Noselect) NIL x",
    ]
    lines = values(data)
    assert lines[0] == [
        1,
        [
            b"UID",
            7,
            b"FLAGS",
            [b"\\Seen", b"$Label1"],
            b"BODY[HEADER.FIELDS (MESSAGE-ID)]",
            b"a\r\nb)\r\n\r\n",
            b"INTERNALDATE",
            b" 7-Jul-1996 02:44:25 -0700",
        ],
    ]
    assert lines[1] == [[b"\\HasNoChildren"], b".", b'a "q"']
    assert lines[2] == [[b"\\Noselect"], None, b"x"]
    when = parse_internaldate(" 7-Jul-1996 02:44:25 -0700")
    assert when == dt.datetime(1996, 7, 7, 9, 44, 25, tzinfo=dt.UTC)


def test_the_progress_line_says_where_the_import_is(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress("alice", "Work", 3, 10, 3, 1 << 20)
    assert progress.line() == "alice Work 3/10, 3 copied (1.0 MiB)"

    def slow() -> str:
        time.sleep(peerctl_module.PROGRESS_AFTER + 0.3)
        return "done"

    assert peerctl_module._with_progress("import-imap", slow, progress.line) == "done"
    err = capsys.readouterr().err
    assert err.startswith("peerctl: import-imap: still running after 2"), err
    assert err.rstrip().endswith("(alice Work 3/10, 3 copied (1.0 MiB))"), err


# -- against Dovecot ------------------------------------------------------------------------

PW = "old-secret"
# (mailbox on Dovecot, special use, subscribed)
BOXES = [
    ("INBOX", True),
    ("Sent Messages", True),
    ("Deleted Messages", False),
    ("Work", True),
    ("Work.2026", False),
    ("Ünïcode", False),
]
FLAGS = ["\\Seen", "\\Answered \\Flagged", "\\Draft $Label1", "\\Deleted Junk", ""]


@pytest.fixture
def node(shared_node: Node) -> Node:
    """The module's node (``shared_node``: the accounts earlier tests made are
    deleted, their import cursors with them); the test that kills a node
    takes ``own_node``."""
    return shared_node


@pytest.fixture
def own_node(tmp_path: Path) -> Iterator[Node]:
    """A node of the test's own."""
    single = make_single(tmp_path / "own")
    with running(single):
        yield single


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[Dovecot]:
    require_dovecot()
    server = Dovecot(tmp_path, {"alice": PW, "bob": PW}, {"admin": "master-secret"}).start()
    try:
        yield server
    finally:
        server.stop()


def _old(server: Dovecot, user: str = "alice") -> imaplib.IMAP4:
    imap = imaplib.IMAP4("127.0.0.1", server.port)
    imap.login(user, PW)
    return imap


def _message(box: str, n: int, size: int = 0) -> bytes:
    body = f"message {n} of {box}\r\n".encode() + b"x" * size
    return (
        f"From: a@example.test\r\nTo: alice@example.test\r\nSubject: {box} {n}\r\n"
        f"Message-ID: <{box.encode('utf-8').hex()}.{n}@example.test>\r\n\r\n"
    ).encode() + body


def _date(n: int) -> str:
    when = dt.datetime(2024, 1, 1, 12, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    return imaplib.Time2Internaldate(when + dt.timedelta(days=n, minutes=7 * n))


def _fill(server: Dovecot, per_box: int = 5, user: str = "alice") -> None:
    imap = _old(server, user)
    for box, subscribed in BOXES:
        raw = encode_mailbox(box)
        if box != "INBOX":
            imap.create(f'"{raw}"')
        if subscribed:
            imap.subscribe(f'"{raw}"')
        for n in range(per_box):
            flags = FLAGS[n % len(FLAGS)]
            status, _ = imap.append(f'"{raw}"', f"({flags})", _date(n), _message(box, n))
            assert status == "OK"
    imap.logout()


def _contents(imap: imaplib.IMAP4, box: str) -> Counter[tuple[bytes, frozenset[str], str]]:
    """(bytes, flags, INTERNALDATE in UTC) of every message in ``box``."""
    status, _ = imap.select(f'"{box}"', readonly=True)
    assert status == "OK", box
    status, data = imap.uid("FETCH", "1:*", "(FLAGS INTERNALDATE BODY.PEEK[])")
    out: Counter[tuple[bytes, frozenset[str], str]] = Counter()
    for line in values(data):
        if len(line) < 2 or not isinstance(line[-1], list):
            continue
        items = dict(zip(line[-1][::2], line[-1][1::2], strict=True))
        flags = frozenset(f.decode() for f in items[b"FLAGS"]) - {"\\Recent"}
        when = parse_internaldate(items[b"INTERNALDATE"].decode()).astimezone(dt.UTC)
        out[(items[b"BODY[]"], flags, when.isoformat())] += 1
    return out


def _names(imap: imaplib.IMAP4, command: str = "LIST") -> set[str]:
    _, data = imap.list('""', "*") if command == "LIST" else imap.lsub('""', "*")
    return {bytes(line[-1]).decode() for line in values(data) if isinstance(line[-1], bytes)}


def _import(
    node: Node, server: Dovecot, tmp_path: Path, *extra: str, port: int | None = None
) -> Any:
    secret = tmp_path / "old-password"
    secret.write_text(PW + "\n")
    return peerctl(
        node,
        "import-imap",
        "--host",
        "127.0.0.1",
        "--port",
        str(port or server.port),
        "--password-file",
        str(secret),
        *(extra or ("--user", "alice", "--account", "alice")),
    )


def _peerd(node: Node, user: str = "alice") -> imaplib.IMAP4:
    imap = imaplib.IMAP4("127.0.0.1", node.ports["imap"])
    imap.login(user, "secret")
    return imap


# Dovecot name -> peerd name (separator "." -> "/", \Sent and \Trash by our names).
MAPPED = {
    "INBOX": "INBOX",
    "Sent Messages": "Sent",
    "Deleted Messages": "Trash",
    "Work": "Work",
    "Work.2026": "Work/2026",
    "Ünïcode": "Ünïcode",
}


def _same_mail(old: imaplib.IMAP4, new: imaplib.IMAP4) -> None:
    for box, _ in BOXES:
        theirs = _contents(old, encode_mailbox(box))
        assert theirs, box
        assert _contents(new, encode_mailbox(MAPPED[box])) == theirs, box


def test_import_copies_everything_and_the_partner_gets_it(
    pair: tuple[Node, Node], dovecot: Dovecot, tmp_path: Path
) -> None:
    alpha, beta = pair
    _fill(dovecot)
    alpha.add_account("alice")
    done = _import(alpha, dovecot, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "30 message(s) copied" in done.stdout, done.stdout

    old, new = _old(dovecot), _peerd(alpha)
    assert _names(new) == {encode_mailbox(n) for n in MAPPED.values()}
    # Subscriptions follow the mailboxes (INBOX is subscribed when created here).
    assert _names(new, "LSUB") == {"INBOX", "Sent", "Work"}
    _same_mail(old, new)

    # Rerun: nothing is copied twice.
    again = _import(alpha, dovecot, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 message(s) copied" in again.stdout, again.stdout
    _same_mail(old, new)
    new.logout()

    old.logout()

    # The partner has the same mail, by replication.
    def same(box: str) -> bool:
        return bool(beta.records("alice", box) == alpha.records("alice", box))

    for box in MAPPED.values():
        wait_until(functools.partial(same, box), 30, f"{box} replicated")


def _kill_midway(proc: subprocess.Popen[bytes], node: Node, total: int, victim: str) -> None:
    def partly() -> bool:
        records = node.records("alice")
        return 0 < len(records) < total or proc.poll() is not None

    wait_until(partly, 60, "the import started")
    if victim == "peerctl":
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    else:  # the node dies with a batch in flight; peerctl fails (exit 3)
        node.kill9()
        assert proc.wait(60) == 3
        node.restart()


@pytest.mark.parametrize("victim", ["peerctl", "node"])
def test_kill_midway_then_rerun_copies_each_message_once(
    request: pytest.FixtureRequest, dovecot: Dovecot, tmp_path: Path, victim: str
) -> None:
    node: Node = request.getfixturevalue("own_node" if victim == "node" else "node")
    total = 300
    imap = _old(dovecot)
    for n in range(total):
        imap.append("INBOX", "(\\Seen)" if n % 2 else "()", _date(n), _message("INBOX", n, 2000))
    imap.logout()
    node.add_account("alice")
    secret = tmp_path / "old-password"
    secret.write_text(PW + "\n")
    argv = [
        sys.executable,
        "-m",
        "peerd.cli",
        "-c",
        str(node.config),
        "import-imap",
        "--host",
        "127.0.0.1",
        "--port",
        str(dovecot.port),
        "--password-file",
        str(secret),
        "--user",
        "alice",
        "--account",
        "alice",
        "--batch",
        "5",
    ]
    proc = subprocess.Popen(argv, cwd=node.workdir, stdout=subprocess.DEVNULL)
    try:
        _kill_midway(proc, node, total, victim)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert 0 < len(node.records("alice")) < total

    done = _import(node, dovecot, tmp_path)
    assert done.returncode == 0, done.stderr
    with _old(dovecot) as old, _peerd(node) as new:
        theirs = _contents(old, "INBOX")
        assert len(theirs) == total and set(theirs.values()) == {1}
        assert _contents(new, "INBOX") == theirs


def test_rebuilt_remote_mailbox_is_matched_not_copied_again(
    node: Node, dovecot: Dovecot, tmp_path: Path
) -> None:
    imap = _old(dovecot)
    imap.create("Work")
    for n in range(4):
        imap.append("Work", "()", _date(n), _message("Work", n))
    node.add_account("alice")
    assert _import(node, dovecot, tmp_path).returncode == 0
    # The old server's mailbox is rebuilt: the same mail under a new
    # UIDVALIDITY, and one new message.
    imap.delete("Work")
    imap.create("Work")
    for n in range(5):
        imap.append("Work", "(\\Seen)", _date(n), _message("Work", n))
    imap.logout()
    again = _import(node, dovecot, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "1 message(s) copied" in again.stdout and "4 already here" in again.stdout
    assert len(node.records("alice", "Work")) == 5


def test_over_quota_stops_clearly_and_resumes(node: Node, dovecot: Dovecot, tmp_path: Path) -> None:
    imap = _old(dovecot)
    sizes = []
    for n in range(10):
        data = _message("INBOX", n, 1000)
        sizes.append(len(data))
        imap.append("INBOX", "()", _date(n), data)
    imap.logout()
    node.add_account("alice", quota_limit=sum(sizes[:4]) + 10)
    stopped = _import(
        node, dovecot, tmp_path, "--user", "alice", "--account", "alice", "--batch", "3"
    )
    assert stopped.returncode == 1
    assert "over quota" in stopped.stderr and "resumes" in stopped.stderr, stopped.stderr
    assert len(node.records("alice")) == 4  # what fits is kept
    node.call("PUT", "/v1/accounts/alice/quota", {"quota_limit": None})
    done = _import(node, dovecot, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "6 message(s) copied" in done.stdout
    with _old(dovecot) as old, _peerd(node) as new:
        assert _contents(new, "INBOX") == _contents(old, "INBOX")


def test_a_message_with_nul_is_left_out_with_a_report_and_the_rest_goes_on(
    node: Node, dovecot: Dovecot, tmp_path: Path
) -> None:
    # Dovecot stores a message with NUL octets (the literal carries them) and
    # gives it as BODY[] with each NUL replaced by 0x80, as BINARY[] as it is.
    nul = b"Subject: nul\r\nMessage-ID: <nul@example.test>\r\n\r\nbefore\0after\r\n"
    eight_bit = "Subject: caf\u00e9\r\n\r\n\u00c0 bient\u00f4t\r\n".encode()  # 0x80 in UTF-8
    imap = _old(dovecot)
    for n, data in enumerate([_message("INBOX", 0), nul, eight_bit, _message("INBOX", 3)]):
        assert imap.append("INBOX", "(\\Seen)", _date(n), data)[0] == "OK"
    assert imap.create("Work")[0] == "OK"
    assert imap.append("Work", "()", _date(9), _message("Work", 9))[0] == "OK"
    imap.logout()
    node.add_account("alice")
    done = _import(node, dovecot, tmp_path, "--user", "alice", "--account", "alice", "--batch", "2")
    assert done.returncode == 0, done.stderr
    assert "4 message(s) copied" in done.stdout, done.stdout
    assert "1 message(s) not copied:\n  INBOX old UID 2: holds NUL octets" in done.stdout
    assert "(message_has_nul)" in done.stdout
    # The others are here byte for byte (the 8-bit one too), the NUL one in
    # no altered form; Work, after it, was copied as well.
    with _old(dovecot) as old, _peerd(node) as new:
        theirs = _contents(old, "INBOX")
        ours = _contents(new, "INBOX")
        assert len(ours) == 3 and ours == Counter(
            {k: n for k, n in theirs.items() if b"before" not in k[0]}
        )
        assert _contents(new, "Work") == _contents(old, "Work")
    # A rerun resumes past it: nothing copied, nothing reported again.
    again = peerctl(node, "--json", *_import_args(dovecot, tmp_path))
    assert again.returncode == 0, again.stderr
    assert '"copied": 0' in again.stdout and '"not_copied": 0' in again.stdout


def _import_args(server: Dovecot, tmp_path: Path) -> list[str]:
    secret = tmp_path / "old-password"
    secret.write_text(PW + "\n")
    return [
        "import-imap",
        "--host",
        "127.0.0.1",
        "--port",
        str(server.port),
        "--password-file",
        str(secret),
        "--user",
        "alice",
        "--account",
        "alice",
    ]


def test_the_api_stores_a_batch_around_a_message_it_refuses(node: Node) -> None:
    """A server that sends NUL octets in BODY[] as they are: the node leaves
    that message out (as LMTP refuses it with 554 5.6.0) and stores the rest."""
    node.add_account("alice")

    def item(uid: int, data: bytes) -> dict[str, Any]:
        return {
            "uid": uid,
            "data": base64.b64encode(data).decode(),
            "internaldate": "2024-01-02T03:04:05+00:00",
        }

    answer = node.call(
        "POST",
        "/v1/accounts/alice/import",
        {
            "mailbox": "INBOX",
            "uidvalidity": 7,
            "done_uid": 3,
            "messages": [
                item(1, _message("INBOX", 1)),
                item(2, b"Subject: x\r\n\r\na\0b\r\n"),
                item(3, _message("INBOX", 3)),
            ],
        },
    )
    assert answer["appended"] == 2 and answer["last_uid"] == 3
    assert [(r["uid"], r["code"]) for r in answer["refused"]] == [(2, "message_has_nul")]
    assert len(node.records("alice")) == 2
    # LMTP and APPEND refuse it the same way.
    with _peerd(node) as imap:
        try:
            status = imap.append("INBOX", "()", None, b"Subject: x\r\n\r\na\0b\r\n")[0]
        except imaplib.IMAP4.error:
            status = "BAD"
        assert status != "OK"
    with node.lmtp() as lmtp, pytest.raises(smtplib.SMTPDataError) as refused:
        lmtp.sendmail("s@example.test", ["alice@example.test"], b"Subject: x\r\n\r\na\0b\r\n")
    assert refused.value.smtp_code == 554


def test_wrong_password_is_a_clear_exit_2(node: Node, dovecot: Dovecot, tmp_path: Path) -> None:
    node.add_account("alice")
    wrong = tmp_path / "wrong"
    wrong.write_text("not-it\n")
    done = peerctl(
        node,
        "import-imap",
        "--host",
        "127.0.0.1",
        "--port",
        str(dovecot.port),
        "--user",
        "alice",
        "--password-file",
        str(wrong),
        "--account",
        "alice",
    )
    assert done.returncode == 2
    assert "refused the login of alice" in done.stderr
    assert "Traceback" not in done.stderr


def test_bulk_with_a_master_user(node: Node, dovecot: Dovecot, tmp_path: Path) -> None:
    for user in ("alice", "bob"):
        imap = _old(dovecot, user)
        for n in range(3):
            imap.append("INBOX", "(\\Flagged)", _date(n), _message(user, n))
        imap.logout()
        node.add_account(user)
    accounts = tmp_path / "accounts.txt"
    accounts.write_text("# local remote\nalice alice\nbob bob\n")
    master = tmp_path / "master"
    master.write_text("master-secret\n")
    done = peerctl(
        node,
        "import-imap",
        "--host",
        "127.0.0.1",
        "--port",
        str(dovecot.port),
        "--admin",
        "admin",
        "--password-file",
        str(master),
        "--bulk",
        str(accounts),
    )
    assert done.returncode == 0, done.stderr
    for user in ("alice", "bob"):
        with _old(dovecot, user) as old, _peerd(node, user) as new:
            assert _contents(new, "INBOX") == _contents(old, "INBOX")


def test_tls_and_starttls_verify_the_old_server(node: Node, tmp_path: Path) -> None:
    require_dovecot()
    server = Dovecot(tmp_path, {"alice": PW}, tls=True).start()
    try:
        with _old(server) as imap:
            for n in range(2):
                imap.append("INBOX", "(\\Seen)", _date(n), _message("INBOX", n))
        node.add_account("alice")
        login = ("--user", "alice", "--account", "alice")
        # An unknown certificate is refused, clearly.
        unverified = _import(node, server, tmp_path, "--starttls", *login)
        assert unverified.returncode == 2
        assert "self-signed certificate: its certificate is not trusted" in unverified.stderr, (
            unverified.stderr
        )
        assert node.records("alice") == []
        started = _import(
            node, server, tmp_path, "--starttls", "--cafile", str(server.cert), *login
        )
        assert started.returncode == 0, started.stderr
        assert "2 message(s) copied" in started.stdout
        assert server.tls_port is not None
        implicit = _import(
            node,
            server,
            tmp_path,
            "--tls",
            "--cafile",
            str(server.cert),
            *login,
            port=server.tls_port,
        )
        assert implicit.returncode == 0, implicit.stderr
        assert "0 message(s) copied" in implicit.stdout
    finally:
        server.stop()
