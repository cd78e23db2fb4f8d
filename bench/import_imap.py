"""Mail migration: ``peerctl import-imap`` from a real Dovecot (issue 12).

    .venv/bin/python -m bench.import_imap [--messages 5000] [--size 20000] [--mailboxes 5]

A private Dovecot (tests/harness/dovecot.py) holds one user's ``--messages``
messages of about ``--size`` bytes spread over ``--mailboxes`` mailboxes,
each with a flag and its own internal date; a single node (no partner)
receives them through the real ``peerctl import-imap``. The figures are the
command's wall time for the first copy and for a rerun that finds nothing
new (the cost of resuming: a LIST, an EXAMINE and a UID FETCH per mailbox).
"""

from __future__ import annotations

import argparse
import datetime as dt
import imaplib
import tempfile
import time
from pathlib import Path

from tests.harness.dovecot import Dovecot
from tests.nodes import make_single, peerctl

__all__ = ["main"]


def fill(server: Dovecot, messages: int, size: int, mailboxes: int) -> int:
    imap = imaplib.IMAP4("127.0.0.1", server.port)
    imap.login("alice", "pw")
    names = ["INBOX"] + [f"Folder{i}" for i in range(1, mailboxes)]
    for name in names[1:]:
        imap.create(name)
    total = 0
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    for n in range(messages):
        data = (
            f"From: a@example.test\r\nSubject: {n}\r\nMessage-ID: <{n}@bench>\r\n\r\n".encode()
            + b"y" * size
        )
        when = imaplib.Time2Internaldate(start + dt.timedelta(minutes=n))
        imap.append(names[n % len(names)], "(\\Seen)" if n % 3 else "()", when, data)
        total += len(data)
    imap.logout()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--mailboxes", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = Dovecot(workdir, {"alice": "pw"}).start()
        try:
            octets = fill(server, args.messages, args.size, args.mailboxes)
            node = make_single(workdir / "node").start()
            try:
                node.add_account("alice")
                secret = workdir / "pw"
                secret.write_text("pw\n")
                common = ["--host", "127.0.0.1", "--port", str(server.port)]
                common += ["--password-file", str(secret), "--user", "alice", "--account", "alice"]
                for what in ("first copy", "rerun, nothing new"):
                    started = time.monotonic()
                    done = peerctl(node, "import-imap", *common, timeout=3600)
                    took = time.monotonic() - started
                    if done.returncode != 0:
                        raise RuntimeError(f"import failed: {done.stdout}{done.stderr}")
                    rate = (
                        f"; {args.messages} messages, {octets / (1 << 20):.1f} MiB: "
                        f"{args.messages / took:.0f} messages/s, "
                        f"{octets / (1 << 20) / took:.1f} MiB/s"
                        if what == "first copy"
                        else ""
                    )
                    print(f"{what}: {took:.1f} s{rate}", flush=True)
                    print(f"  {done.stdout.strip()}")
            finally:
                node.stop()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
