"""IMAP read speed, peerd against Dovecot 2.3 in the same run (issue 5).

    .venv/bin/python -m bench.imap_fetch [--messages 10000] [--word WORD]

One INBOX with the benchmark mix, loaded into both servers (peerd through its
engine, Dovecot as Maildir files it indexes on first SELECT). Each operation
runs once to warm caches (Dovecot builds its index and cache then) and is
then timed ``--repeat`` times, interleaved, with imaplib; the median is
printed: SELECT, UID FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE), UID FETCH
1:* (BODYSTRUCTURE), UID FETCH 1:* BODY.PEEK[] (MB/s), UID SEARCH TEXT word,
UID SEARCH BODY word, UID SORT by ARRIVAL, DATE, SUBJECT and FROM and UID
THREAD REFERENCES (each with its first run, peerd's from the sort keys its
parse walker stored, and whether both servers gave the same answer; for
BODY.PEEK[], whether both gave the same octets). SELECT and the FETCH rows
are also timed on the bare socket (the command written, the answer read up
to its tagged line, not parsed): imaplib's parsing of 10,000 FETCH responses
costs as much as a server's answer, the same for both servers, and the raw
line shows the servers without it. For those rows each server's CPU time
per command is read from ``/proc`` too (peerd's whole daemon, Dovecot's
``imap`` process), over three times ``--repeat`` bare-socket runs (100
for SELECT, as ``/proc`` counts in clock ticks): the
figure a loaded machine's scheduler does not move. peerd answers SEARCH TEXT/BODY from its full-text
index: after the node starts, the benchmark waits until the indexer has
indexed every message (``GET /v1/index``) and prints how long that took.
Dovecot comes from Debian's packages (installed if missing) and runs from a
config written into this benchmark's own temp dir, stopped by its pid.
"""

from __future__ import annotations

import argparse
import imaplib
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.load import load
from bench.replicate_all import spy as spy_on
from bench.replicate_all import unspy
from bench.workload import messages
from tests.nodes import Node, make_single
from tests.procs import Proc, free_port, wait_until


def ensure_dovecot() -> str:
    binary = shutil.which("dovecot")
    if binary is None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(
            [
                "apt-get",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "dovecot-core",
                "dovecot-imapd",
            ],
            check=True,
            env=env,
        )
        binary = shutil.which("dovecot")
    assert binary is not None
    try:
        pwd.getpwnam("vmail")
    except KeyError:
        subprocess.run(
            ["useradd", "-r", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", "vmail"],
            check=True,
        )
    return binary


def start_dovecot(root: Path, payloads: list[bytes]) -> tuple[Proc, int]:
    binary = ensure_dovecot()
    port = free_port()
    maildir = root / "mail" / "bench" / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for i, data in enumerate(payloads):
        # Dovecot's own file names (as its LMTP writes them): S= and W= give
        # the sizes, so it never has to stat or read a file to learn them.
        name = f"{1700000000 + i}.M{i}P1.bench,S={len(data)},W={len(data)}:2,"
        (maildir / "cur" / name).write_bytes(data)
    subprocess.run(["chown", "-R", "vmail:vmail", str(root / "mail")], check=True)
    root.chmod(0o755)
    (root / "users").write_text("bench:{PLAIN}pw\n")
    (root / "dovecot.conf").write_text(
        f"""
base_dir = {root}/run
state_dir = {root}/state
instance_name = bench-{port}
protocols = imap
listen = 127.0.0.1
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{root}/mail/%u/Maildir
mail_uid = vmail
mail_gid = vmail
first_valid_uid = 1
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {root}/users
}}
userdb {{
  driver = static
  args = uid=vmail gid=vmail home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""
    )
    proc = Proc([binary, "-F", "-c", str(root / "dovecot.conf")], root / "dovecot.out").start()

    def up() -> bool:
        try:
            imaplib.IMAP4("127.0.0.1", port, timeout=1).logout()
        except OSError:
            return False
        return True

    wait_until(up, 30, "Dovecot to listen")
    return proc, port


def _uid(command: str, *args: str) -> Callable[[imaplib.IMAP4], Any]:
    return lambda client: client.uid(command, *args)


def parsed(node: Node) -> bool:
    """Whether the node's parse walker has stored the sort keys and structures
    of every message (``message_parsed``, migration 0012_sortcache)."""
    with sqlite3.connect(node.db_path) as db:
        (missing,) = db.execute(
            "SELECT count(*) FROM messages AS m LEFT JOIN message_parsed AS p"
            " ON p.guid = m.guid WHERE p.guid IS NULL"
        ).fetchone()
    return int(missing) == 0


def timed(client: imaplib.IMAP4, fn: Callable[[imaplib.IMAP4], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn(client)
    return time.perf_counter() - started, result


def raw_timed(client: imaplib.IMAP4, command: str) -> float:
    """``command`` sent on the client's socket and its answer read up to the
    tagged line, unparsed: the server's time without imaplib's parsing (which
    takes as long for both servers and, for 10,000 FETCH responses, about as
    long as the server)."""
    sock = client.socket()
    tag = b"raw%d" % time.perf_counter_ns()
    end = b"\r\n" + tag + b" "
    started = time.perf_counter()
    sock.sendall(tag + b" " + command.encode() + b"\r\n")
    tail = b"\r\n"
    while True:
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the server closed the connection")
        tail = (tail + data)[-4096:]
        cut = tail.rfind(end)
        if cut >= 0 and tail.endswith(b"\r\n") and b"\r\n" not in tail[cut + len(end) : -2]:
            return time.perf_counter() - started


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time of ``pids`` (all their threads), from ``/proc``."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (proc(5))
    return total / _TICK


def imap_processes(master: int) -> list[int]:
    """Dovecot's ``imap`` processes (one a logged-in session) under its master."""
    found: list[int] = []
    pending = [master]
    while pending:
        pid = pending.pop()
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                pending.append(int(child))
                if Path(f"/proc/{child}/comm").read_text().strip() == "imap":
                    found.append(int(child))
    return found


def literals(answer: Any) -> list[bytes]:
    return [item[1] for item in answer[1] if isinstance(item, tuple)]


def indexed(node: Node) -> bool:
    """Whether the node's full-text index holds every message's text."""
    found = node.call("GET", "/v1/index")
    return bool(found["messages"] > 0 and found["pending"] == 0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--word", default="needlework")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated words; time only the operations whose name holds one",
    )
    parser.add_argument(
        "--py-spy",
        dest="py_spy",
        type=Path,
        default=None,
        help="record the daemon with py-spy (raw format), one file per operation: "
        "PATH with the operation's number before its suffix (its first run: "
        "'first-' and the number)",
    )
    args = parser.parse_args()
    payloads = messages(args.messages, "bench@example.test")
    # One word in about 6% of the messages, as in the anchors' search figure.
    payloads = [
        p.replace(b"\r\n\r\n", f"\r\n\r\n{args.word} ".encode(), 1) if i % 16 == 0 else p
        for i, p in enumerate(payloads)
    ]
    total = sum(len(p) for p in payloads)
    fetched = {
        "SELECT": "SELECT INBOX",
        "UID FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)": "UID FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)",
        "UID FETCH 1:* (BODYSTRUCTURE)": "UID FETCH 1:* (BODYSTRUCTURE)",
        "UID FETCH 1:* BODY.PEEK[]": "UID FETCH 1:* BODY.PEEK[]",
    }
    operations: list[tuple[str, Callable[[imaplib.IMAP4], Any]]] = [
        ("SELECT", lambda c: c.select("INBOX")),
        (
            "UID FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)",
            lambda c: c.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE ENVELOPE)"),
        ),
        ("UID FETCH 1:* (BODYSTRUCTURE)", lambda c: c.uid("FETCH", "1:*", "(BODYSTRUCTURE)")),
        ("UID FETCH 1:* BODY.PEEK[]", lambda c: c.uid("FETCH", "1:*", "BODY.PEEK[]")),
        (f"UID SEARCH TEXT {args.word}", lambda c: c.uid("SEARCH", "TEXT", args.word)),
        (f"UID SEARCH BODY {args.word}", lambda c: c.uid("SEARCH", "BODY", args.word)),
    ]
    for key in ("ARRIVAL", "DATE", "SUBJECT", "FROM"):
        operations.append((f"UID SORT ({key}) UTF-8 ALL", _uid("SORT", f"({key})", "UTF-8", "ALL")))
    operations.append(
        ("UID THREAD REFERENCES UTF-8 ALL", _uid("THREAD", "REFERENCES", "UTF-8", "ALL"))
    )
    if args.only:
        words = [w.strip() for w in args.only.split(",") if w.strip()]
        operations = [op for op in operations if any(w in op[0] for w in words)]
    with tempfile.TemporaryDirectory(prefix="peerd-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # Dovecot's own users must reach their files in here
        (root / "peerd").mkdir()
        node = make_single(root / "peerd")
        load(node, "bench", payloads)
        dovecot: Proc | None = None
        try:
            # A loaded machine starts slowly: a longer wait than the tests'.
            node.start(timeout=300)
            started = time.perf_counter()
            # Always: an indexer at work would take CPU from the reads timed.
            wait_until(lambda: indexed(node), 3600, "the full-text index", interval=0.5)
            print(
                f"full-text index of {args.messages} messages built by the indexer in "
                f"{time.perf_counter() - started:.1f} s"
            )
            started = time.perf_counter()
            wait_until(lambda: parsed(node), 3600, "the parse walker", interval=0.5)
            print(
                f"sort keys and structures of {args.messages} messages stored by the parse "
                f"walker within {time.perf_counter() - started:.1f} s more"
            )
            dovecot, port = start_dovecot(root / "dovecot", payloads)
            peer = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=600)
            peer.login("bench", "pw")
            dove = imaplib.IMAP4("127.0.0.1", port, timeout=600)
            try:
                dove.login("bench", "pw")
            except imaplib.IMAP4.error:
                print((root / "dovecot" / "dovecot.log").read_text()[-3000:])
                raise
            # Warm-up: Dovecot builds its index and cache; peerd's in-memory
            # caches fill from the store (message_parsed). The first runs are printed.
            first: dict[str, tuple[float, float]] = {}
            peer.select("INBOX")
            dove.select("INBOX")
            for number, (name, fn) in enumerate(operations, 1):
                if name != "SELECT":
                    spy = None
                    if args.py_spy is not None:
                        path = args.py_spy
                        spy = spy_on(
                            path.with_name(f"{path.stem}-first-{number}{path.suffix}"), node.pid
                        )
                    ours = timed(peer, fn)[0]
                    unspy(spy)
                    first[name] = (ours, timed(dove, fn)[0])
            print(
                f"{args.messages} messages, {total / 1e6:.1f} MB; warm caches; imaplib on loopback; "
                f"median of {args.repeat}; load average {os.getloadavg()[0]:.1f}"
            )
            print(
                f"{'operation':48} {'peerd':>10} {'Dovecot':>10} {'peerd time / Dovecot time':>7}"
            )
            for number, (name, fn) in enumerate(operations, 1):
                spy = None
                if args.py_spy is not None:
                    path = args.py_spy
                    spy = spy_on(path.with_name(f"{path.stem}-{number}{path.suffix}"), node.pid)
                peerd_runs, dove_runs = [], []
                for _ in range(args.repeat):
                    peerd_runs.append(timed(peer, fn))
                    dove_runs.append(timed(dove, fn))
                peerd_s, peerd_result = sorted(peerd_runs, key=lambda r: r[0])[args.repeat // 2]
                dove_s, dove_result = sorted(dove_runs, key=lambda r: r[0])[args.repeat // 2]
                raw: tuple[float, float] | None = None
                used: tuple[float, float] | None = None
                if name in fetched:
                    assert node.pid is not None and dovecot is not None
                    peerd_raw, dove_raw = [], []
                    for _ in range(args.repeat):
                        peerd_raw.append(raw_timed(peer, fetched[name]))
                        dove_raw.append(raw_timed(dove, fetched[name]))
                    raw = (sorted(peerd_raw)[args.repeat // 2], sorted(dove_raw)[args.repeat // 2])
                    # Each server's own CPU time per command (the whole daemon;
                    # Dovecot's imap process), on the bare socket: what a
                    # loaded machine's scheduler does not change.
                    # (SELECT: many, as /proc counts in clock ticks of 10 ms.)
                    times = 100 if name == "SELECT" else 3 * args.repeat
                    before = cpu_seconds([node.pid])
                    for _ in range(times):
                        raw_timed(peer, fetched[name])
                    peerd_cpu = cpu_seconds([node.pid]) - before
                    imaps = imap_processes(dovecot.pid)
                    before = cpu_seconds(imaps)
                    for _ in range(times):
                        raw_timed(dove, fetched[name])
                    used = (peerd_cpu / times, (cpu_seconds(imaps) - before) / times)
                unspy(spy)
                cold = first.get(name)
                if name.startswith(("UID SORT", "UID THREAD")):
                    same = peerd_result[1] == dove_result[1]
                    name = f"{name} ({'same answer' if same else 'answers differ'})"
                if name.startswith("UID SEARCH"):
                    hits = (len(peerd_result[1][0].split()), len(dove_result[1][0].split()))
                    name = f"{name} ({hits[0]}/{hits[1]} hits)"
                if "BODY.PEEK" in name:
                    same = literals(peerd_result) == literals(dove_result)
                    name = f"{name} ({'same octets' if same else 'octets differ'})"
                    print(
                        f"{name:48} {total / peerd_s / 1e6:7.0f} MB/s {total / dove_s / 1e6:6.0f} MB/s {peerd_s / dove_s:6.2f}x"
                    )
                else:
                    print(
                        f"{name:48} {peerd_s * 1000:8.1f}ms {dove_s * 1000:8.1f}ms {peerd_s / dove_s:6.2f}x"
                    )
                if raw is not None:
                    print(
                        f"{'  raw socket, answer not parsed':48} {raw[0] * 1000:8.1f}ms "
                        f"{raw[1] * 1000:8.1f}ms {raw[0] / raw[1]:6.2f}x"
                    )
                if used is not None:
                    print(
                        f"{'  server CPU per command (bare socket)':48} {used[0] * 1000:8.1f}ms "
                        f"{used[1] * 1000:8.1f}ms {used[0] / max(used[1], 1e-9):6.2f}x"
                    )
                if cold is not None and not name.startswith(
                    ("UID FETCH 1:* BODY.PEEK", "UID SEARCH")
                ):
                    print(
                        f"{'  its first run (the warm-up)':48} {cold[0] * 1000:8.1f}ms "
                        f"{cold[1] * 1000:8.1f}ms {cold[0] / cold[1]:6.2f}x"
                    )
            print(f"load average at the end {os.getloadavg()[0]:.1f}")
            peer.logout()
            dove.logout()
        finally:
            node.stop()
            if dovecot is not None:
                dovecot.stop()


if __name__ == "__main__":
    main()
