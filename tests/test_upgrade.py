"""An older release's database, brought forward by every migration since (docs/upgrading.md).

How this works: ``tests/data/releases/<release>/`` is a snapshot a real node
of that release made (``python -m tests.test_upgrade snapshot DIR``): every
row of every table as JSON (``rows.json``, with the schema revision it was
taken at), the spool's files, and ``expect.json``, what a user saw then
(accounts, passwords, mailboxes, each message's UID, GUID and flags,
subscriptions). The test builds a fresh database at the snapshot's revision
with Alembic, loads the rows (SQLite and PostgreSQL), then upgrades **one
revision at a time** to head — so each future migration runs on real data
without anyone writing a test for it — checking after every step that no
account, mailbox or message row went missing. At head it starts today's
daemon on that database and spool and checks, over IMAP, that every account
logs in with its old password and sees its mail byte for byte with its
flags, and that a new delivery works. Add a snapshot for each release
whose schema differs from the last one's.
"""

from __future__ import annotations

import base64
import datetime as dt
import email
import hashlib
import imaplib
import json
import re
import shutil
import smtplib
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, create_engine, func, inspect, select, text

import migrations
from tests.nodes import Node, make_single, running

RELEASES = Path(__file__).resolve().parent / "data" / "releases"
# Rows no migration may lose: the mail and who it belongs to.
KEPT = ("accounts", "mailboxes", "messages", "ownership", "subscriptions")


def _encode(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return {"$datetime": aware.isoformat()}
    if isinstance(value, bytes | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "$datetime" in value:
        return dt.datetime.fromisoformat(value["$datetime"])
    if isinstance(value, dict) and "$bytes" in value:
        return base64.b64decode(value["$bytes"])
    return value


def _revisions() -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(migrations.alembic_config(""))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def _counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
            meta = MetaData()
            meta.reflect(conn, only=[t for t in KEPT if t in names])
            return {
                name: conn.execute(select(func.count()).select_from(table)).scalar_one()
                for name, table in meta.tables.items()
            }
    finally:
        engine.dispose()


def load(snapshot: Path, url: str, data_dir: Path) -> str:
    """Build the snapshot's database at ``url`` (at its revision) and spool; return the revision."""
    dump = json.loads((snapshot / "rows.json").read_text())
    migrations.upgrade(url, dump["revision"])
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            meta = MetaData()
            meta.reflect(conn)
            for table in meta.sorted_tables:
                rows = dump["tables"].get(table.name, [])
                if rows:
                    conn.execute(
                        table.insert(), [{k: _decode(v) for k, v in row.items()} for row in rows]
                    )
                # PostgreSQL: serial columns go on after the loaded ids.
                if conn.dialect.name == "postgresql" and "id" in table.c and rows:
                    conn.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                            f"(SELECT max(id) FROM {table.name}))"
                        )
                    )
    finally:
        engine.dispose()
    shutil.copytree(snapshot / "spool", data_dir / "spool", dirs_exist_ok=True)
    return str(dump["revision"])


_LIST = re.compile(rb'\((?P<attrs>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.+)$')


def _mailbox_name(line: bytes) -> str:
    match = _LIST.match(line)
    assert match, line
    return match.group("name").decode().strip('"')


def _imap_view(node: Node, account: str, password: str) -> dict[str, Any]:
    """What ``account`` sees over IMAP: per mailbox, [uid, sha1 of the bytes,
    flags] of each message; and the subscriptions."""
    imap = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=30)
    try:
        imap.login(account, password)
        _, listed = imap.list()
        view: dict[str, Any] = {}
        for name in sorted(_mailbox_name(line) for line in listed if isinstance(line, bytes)):
            imap.select(f'"{name}"', readonly=True)
            _, data = imap.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
            messages = []
            for item in data:
                if not isinstance(item, tuple):
                    continue
                flags = sorted(f.decode() for f in imaplib.ParseFlags(item[0]))
                uid = re.search(rb"UID (\d+)", item[0])
                assert uid, item[0]
                messages.append([int(uid.group(1)), hashlib.sha1(item[1]).hexdigest(), flags])
            view[name] = sorted(messages)
        _, subscribed = imap.lsub()
        view["$subscribed"] = sorted(
            _mailbox_name(line) for line in subscribed if isinstance(line, bytes)
        )
        return view
    finally:
        try:
            imap.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def _snapshots() -> list[Path]:
    return sorted(p for p in RELEASES.iterdir() if (p / "rows.json").exists())


def test_every_revision_is_covered_by_a_snapshot_older_than_it() -> None:
    """The oldest snapshot is at the first revision: every migration since runs on its data."""
    oldest = min(
        _revisions().index(json.loads((s / "rows.json").read_text())["revision"])
        for s in _snapshots()
    )
    assert oldest == 0, "the oldest release snapshot must be at the first revision"


def _upgrade_step_by_step(url: str, start: str) -> list[str]:
    revisions = _revisions()
    before = _counts(url)
    assert before["messages"] > 0 and before["accounts"] > 0
    steps = revisions[revisions.index(start) + 1 :]
    for revision in steps:
        migrations.upgrade(url, revision)
        after = _counts(url)
        for table, count in before.items():
            assert after.get(table, count) >= count, f"{revision} lost {table} rows"
        before = after
    migrations.upgrade(url, "head")
    return steps


def _check_at_head(node: Node, snapshot: Path) -> None:
    expect = json.loads((snapshot / "expect.json").read_text())
    with running(node):
        for account, seen in expect["accounts"].items():
            assert _imap_view(node, account, seen["password"]) == seen["view"], account
        # The upgraded store takes new mail (PostgreSQL: its sequences were set).
        account = next(iter(expect["accounts"]))
        with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30) as lmtp:
            lmtp.sendmail(
                "s@example.test", [f"{account}@example.test"], b"Subject: after\r\n\r\nnew\r\n"
            )
        inbox = node.mailbox(account)["messages"]
        assert len(inbox) == len(expect["accounts"][account]["view"]["INBOX"]) + 1


@pytest.mark.parametrize("snapshot", _snapshots(), ids=lambda p: p.name)
def test_a_release_database_upgrades_to_head_on_sqlite(snapshot: Path, tmp_path: Path) -> None:
    node = make_single(tmp_path)
    data_dir = tmp_path / "var" / node.name
    data_dir.mkdir(parents=True)
    url = f"sqlite:///{data_dir / 'peerd.db'}"
    start = load(snapshot, url, data_dir)
    _upgrade_step_by_step(url, start)
    _check_at_head(node, snapshot)


@pytest.mark.parametrize("snapshot", _snapshots(), ids=lambda p: p.name)
def test_a_release_database_upgrades_to_head_on_postgresql(
    snapshot: Path, tmp_path: Path, pg_url: str
) -> None:
    node = make_single(tmp_path, overrides={"database": {"url": pg_url}})
    data_dir = tmp_path / "var" / node.name
    data_dir.mkdir(parents=True)
    start = load(snapshot, pg_url, data_dir)
    _upgrade_step_by_step(pg_url, start)
    _check_at_head(node, snapshot)


# -- making a snapshot (once per release whose schema changed) -----------------


def _message(subject: str, body: str) -> bytes:
    msg = email.message.EmailMessage()
    msg["From"] = "sender@example.test"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '.')}@snapshot.test>"
    msg.set_content(body)
    return msg.as_bytes().replace(b"\n", b"\r\n")


def make_snapshot(out: Path) -> None:
    """Run a node of this release, give it mail, record its rows, spool and views."""
    work = out.parent / f".{out.name}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    node = make_single(work)
    accounts = {"alice": "alice-old-pw", "bob@example.org": "b0b pass"}
    with running(node):
        for name, password in accounts.items():
            node.add_account(name, password)
        node.call("PUT", "/v1/accounts/alice/quota", {"quota_limit": 10 << 20})
        with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=30) as lmtp:
            for i in range(1, 5):
                lmtp.sendmail(
                    "s@example.test", ["alice@example.test"], _message(f"alice {i}", "x" * i)
                )
            lmtp.sendmail("s@example.test", ["bob@example.org"], _message("bob 1", "hello bob"))
        imap = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=30)
        imap.login("alice", accounts["alice"])
        imap.create("Archive")
        imap.subscribe("Archive")
        imap.select("INBOX")
        imap.uid("STORE", "1", "+FLAGS", "(\\Seen \\Flagged)")
        imap.uid("STORE", "2", "+FLAGS", "($Label1)")
        imap.uid("COPY", "2", "Archive")
        imap.uid("STORE", "3", "+FLAGS", "(\\Deleted)")
        imap.expunge()
        imap.logout()
        expect = {
            name: {"password": password, "view": _imap_view(node, name, password)}
            for name, password in accounts.items()
        }
    url = f"sqlite:///{node.db_path}"
    engine = create_engine(url)
    with engine.connect() as conn:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        meta = MetaData()
        meta.reflect(conn)
        tables = {
            table.name: [
                {k: _encode(v) for k, v in row._mapping.items()}
                for row in conn.execute(select(table))
            ]
            for table in meta.sorted_tables
            if table.name != "alembic_version"
        }
    engine.dispose()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    from peerd.node.version import release

    (out / "rows.json").write_text(
        json.dumps({"release": release(), "revision": revision, "tables": tables}, indent=1)
    )
    (out / "expect.json").write_text(json.dumps({"accounts": expect}, indent=1))
    spool = node.db_path.parent / "spool"
    for path in sorted(spool.glob("[0-9a-f][0-9a-f]/*")):
        target = out / "spool" / path.relative_to(spool)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    shutil.rmtree(work)


if __name__ == "__main__":
    if sys.argv[1:2] != ["snapshot"] or len(sys.argv) != 3:
        sys.exit("usage: python -m tests.test_upgrade snapshot tests/data/releases/<release>")
    make_snapshot(Path(sys.argv[2]).resolve())
