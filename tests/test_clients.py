"""Real IMAP clients from Debian's packages against real daemons: mbsync (isync), offlineimap.

mbsync keeps a local Maildir in sync both ways, with flags and folder moves,
and after a failover the same state file syncs against the other node with no
UIDVALIDITY change and nothing downloaded again: mbsync's -Dn trace shows every
message body the server sent it, and after the failover there is none.
offlineimap syncs both ways too, flags and moves in either direction.
"""

from __future__ import annotations

import imaplib
import re
import smtplib
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest

from tests.nodes import Node
from tests.procs import require, wait_until


def deliver(node: Node, n: int) -> None:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"]) as lmtp:
        lmtp.sendmail(
            "s@example.test",
            ["alice@example.test"],
            f"Subject: mbsync {n}\r\nMessage-ID: <mb{n}@t>\r\n\r\nbody {n}\r\n".encode(),
        )


def mbsync(config: Path) -> subprocess.CompletedProcess[str]:
    # -Dn: mbsync prints the IMAP conversation, so a test can count what it fetched.
    return subprocess.run(
        ["mbsync", "-c", str(config), "-V", "-Dn", "-a"],
        capture_output=True,
        text=True,
        timeout=120,
    )


_BODY: Final = re.compile(r"^\* \d+ FETCH \(.*\bBODY\[\] \{(\d+)\}", re.M)


def downloaded(result: subprocess.CompletedProcess[str]) -> tuple[int, int]:
    """(messages, octets) whose bodies the server sent mbsync in this run."""
    sizes = [int(size) for size in _BODY.findall(result.stdout + result.stderr)]
    return len(sizes), sum(sizes)


def uidvalidities(maildir: Path) -> dict[str, str]:
    """What mbsync's state files (SyncState *) recorded for each folder."""
    out = {}
    for state in sorted(maildir.glob("*/.mbsyncstate")):
        for line in state.read_text().splitlines():
            if line.startswith("FarUidValidity "):
                out[state.parent.name] = line.split()[1]
    return out


def write_config(path: Path, port: int, maildir: Path) -> None:
    path.write_text(
        f"""IMAPAccount peerd
Host 127.0.0.1
Port {port}
User alice
Pass secret
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account peerd

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel mail
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
"""
    )


def files(maildir: Path, folder: str) -> list[Path]:
    base = maildir / folder
    return (
        sorted(p for sub in ("cur", "new") for p in (base / sub).glob("*")) if base.exists() else []
    )


def server(node: Node, mailbox: str = "INBOX") -> list[dict[str, Any]]:
    return list(node.mailbox("alice", mailbox)["messages"])


def _listing(node: Node, mailbox: str) -> object:
    """One mailbox as the control API shows it, or the error (for a failure message)."""
    try:
        return node.mailbox("alice", mailbox, expunged=True)
    except OSError as exc:
        return repr(exc)


@pytest.fixture
def alice(pair: tuple[Node, Node]) -> tuple[Node, Node]:
    """The pair, with alice owned by alpha."""
    pair[0].add_account("alice")
    return pair


def test_mbsync_both_ways_flags_moves_and_failover(
    alice: tuple[Node, Node], tmp_path: Path
) -> None:
    require("mbsync")
    alpha, beta = alice
    for n in range(3):
        deliver(alpha, n)
    maildir = tmp_path / "Maildir"
    maildir.mkdir()
    config = tmp_path / "mbsyncrc"
    write_config(config, alpha.ports["imap"], maildir)
    result = mbsync(config)
    assert result.returncode == 0, result.stderr
    assert len(files(maildir, "INBOX")) == 3
    assert downloaded(result)[0] == 3

    # Flags and a move made locally go to the server.
    first, second = files(maildir, "INBOX")[:2]
    first.rename(first.parent.parent / "cur" / (first.name.split(":")[0] + ":2,FS"))
    (maildir / "Archive" / "cur").mkdir(parents=True)
    (maildir / "Archive" / "new").mkdir()
    (maildir / "Archive" / "tmp").mkdir()
    second.rename(maildir / "Archive" / "cur" / second.name.split(",U=")[0])
    result = mbsync(config)
    assert result.returncode == 0, result.stderr
    inbox = server(alpha)
    assert len(inbox) == 2 and any(set(m["flags"]) == {"\\Flagged", "\\Seen"} for m in inbox)
    assert len(server(alpha, "Archive")) == 1
    # And the server's changes come back: only the new message is fetched.
    deliver(alpha, 3)
    result = mbsync(config)
    assert result.returncode == 0, result.stderr
    assert len(files(maildir, "INBOX")) == 3
    assert downloaded(result)[0] == 1

    # Failover: alpha dies, beta takes over; the same state file syncs
    # against beta with no UIDVALIDITY change and nothing fetched again.
    # Both folders must be on beta first: what alpha never replicated is
    # alpha's to hand over when it returns, not beta's to serve now.
    try:
        wait_until(
            lambda: [len(server(beta)), len(server(beta, "Archive"))] == [3, 1],
            15,
            "INBOX and Archive replicated to beta",
        )
    except TimeoutError as exc:
        sides = {
            node.name: {box: _listing(node, box) for box in ("INBOX", "Archive")}
            for node in (alpha, beta)
        }
        raise AssertionError(f"{exc}: {sides}") from None
    alpha.kill9()
    beta.call("POST", "/v1/failover", {})
    write_config(config, beta.ports["imap"], maildir)
    validities = uidvalidities(maildir)
    assert set(validities) == {"INBOX", "Archive"}
    before = {
        p.name.split(",")[0] for folder in ("INBOX", "Archive") for p in files(maildir, folder)
    }
    result = mbsync(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not re.search(r"UIDVALIDITY (genuinely )?changed", result.stdout + result.stderr)
    assert uidvalidities(maildir) == validities
    assert downloaded(result) == (0, 0), result.stdout[-3000:]  # no body fetched again
    after = {
        p.name.split(",")[0] for folder in ("INBOX", "Archive") for p in files(maildir, folder)
    }
    assert after == before
    deliver(beta, 4)
    result = mbsync(config)
    assert result.returncode == 0
    assert len(files(maildir, "INBOX")) == 4
    assert downloaded(result)[0] == 1  # the new one only


def test_offlineimap_both_ways(alice: tuple[Node, Node], tmp_path: Path) -> None:
    require("offlineimap")
    alpha, _ = alice
    for n in range(3):
        deliver(alpha, n)
    local = tmp_path / "oimail"
    config = tmp_path / "offlineimaprc"
    config.write_text(
        f"""[general]
accounts = peerd
metadata = {tmp_path}/oimeta
[Account peerd]
localrepository = local
remoterepository = remote
[Repository local]
type = Maildir
localfolders = {local}
[Repository remote]
type = IMAP
remotehost = 127.0.0.1
remoteport = {alpha.ports["imap"]}
remoteuser = alice
remotepass = secret
ssl = no
starttls = no
"""
    )

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["offlineimap", "-c", str(config), "-o", "-u", "basic"],
            capture_output=True,
            text=True,
            timeout=120,
            env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        )

    result = run()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(files(local, "INBOX")) == 3
    target = files(local, "INBOX")[0]
    target.rename(target.parent.parent / "cur" / (target.name.split(":2,")[0] + ":2,S"))
    (local / "INBOX" / "new").mkdir(exist_ok=True)
    deliver(alpha, 3)
    result = run()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(files(local, "INBOX")) == 4
    assert sum(1 for m in server(alpha) if "\\Seen" in m["flags"]) == 1

    # A move made locally (INBOX -> a new folder Archive) goes to the server.
    moved = next(
        p for p in files(local, "INBOX") if b"Subject: mbsync 1" in p.read_bytes().splitlines()
    )
    archive = local / "Archive"
    for sub in ("cur", "new", "tmp"):
        (archive / sub).mkdir(parents=True)
    moved.rename(archive / "cur" / (moved.name.split(",U=")[0] + ":2,S"))
    result = run()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(server(alpha)) == 3 and len(server(alpha, "Archive")) == 1
    assert subjects(alpha, "Archive") == [b"Subject: mbsync 1"]

    # And a move made on the server (IMAP MOVE) comes down as one.
    client = imaplib.IMAP4("127.0.0.1", alpha.ports["imap"], timeout=20)
    try:
        client.login("alice", "secret")
        client.select("INBOX")
        (uid,) = client.uid("SEARCH", "SUBJECT", '"mbsync 2"')[1][0].split()
        assert client.uid("MOVE", uid.decode(), "Archive")[0] == "OK"
    finally:
        client.logout()
    result = run()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    local_subjects = {
        folder: sorted(
            line
            for p in files(local, folder)
            for line in p.read_bytes().splitlines()
            if line.startswith(b"Subject:")
        )
        for folder in ("INBOX", "Archive")
    }
    assert local_subjects == {
        "INBOX": [b"Subject: mbsync 0", b"Subject: mbsync 3"],
        "Archive": [b"Subject: mbsync 1", b"Subject: mbsync 2"],
    }
    assert len(server(alpha)) == 2 and subjects(alpha, "Archive") == [
        b"Subject: mbsync 1",
        b"Subject: mbsync 2",
    ]


def subjects(node: Node, mailbox: str) -> list[bytes]:
    client = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=20)
    try:
        client.login("alice", "secret")
        client.select(mailbox, readonly=True)
        data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1]
    finally:
        client.logout()
    return sorted(part[1].strip() for part in data if isinstance(part, tuple))
