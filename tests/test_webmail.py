"""Roundcube, Debian's webmail package, against a real node.

The test writes Roundcube a configuration of its own (``imap_host`` is the
node's IMAP port on loopback, an SQLite database, the temp and log folders
all in the test's directory), serves Roundcube with PHP's built-in server
and drives it over HTTP the way its browser UI does: the login form with its
request token and session cookie, then the AJAX actions (``list`` sorted by
date and in threads, ``show``, ``move``, ``delete``, a folder created from
the settings). Roundcube's answers are checked, and so is what the node's
store holds afterwards, through imaplib. ``imap_debug`` makes Roundcube log
its whole IMAP conversation: the test checks that the folder views came from
the server's own SORT and THREAD and that no command got a BAD.
``messages_cache`` is on, so a listing after a change made by another client
goes through Roundcube's QRESYNC resync (ENABLE QRESYNC, CHANGEDSINCE,
VANISHED).

Debian's package reads its configuration folder from ROUNDCUBE_CONFIG_DIR
(its iniset.php), which is how one machine serves a private Roundcube here.
"""

from __future__ import annotations

import http.cookiejar
import imaplib
import json
import os
import re
import smtplib
import sqlite3
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from tests.harness.procs import Registry, wait_port
from tests.nodes import Node
from tests.procs import free_port, require

ROUNDCUBE: Final = Path("/var/lib/roundcube")  # Debian's document root (index.php)
ROUNDCUBE_ETC: Final = Path("/etc/roundcube")  # defaults.inc.php, mimetypes.php
SCHEMA: Final = Path("/usr/share/roundcube/SQL/sqlite.initial.sql")

# Five messages, delivered in this order (UIDs 1-5); their Date headers put
# them in another order, so a date sort and an arrival sort differ.
MESSAGES: Final = (
    ("<plans@t>", "Plans", "Tue, 2 Jan 2024 10:00:00 +0000", None),
    ("<lunch@t>", "Lunch", "Thu, 4 Jan 2024 10:00:00 +0000", None),
    ("<replans@t>", "Re: Plans", "Wed, 3 Jan 2024 10:00:00 +0000", "<plans@t>"),
    ("<old@t>", "Old news", "Mon, 1 Jan 2024 10:00:00 +0000", None),
    ("<spam@t>", "Buy now", "Fri, 5 Jan 2024 10:00:00 +0000", None),
)


def deliver(node: Node) -> None:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"]) as lmtp:
        for n, (message_id, subject, date, parent) in enumerate(MESSAGES):
            refs = f"In-Reply-To: {parent}\r\nReferences: {parent}\r\n" if parent else ""
            lmtp.sendmail(
                "bob@example.test",
                ["alice@example.test"],
                (
                    f"From: Bob <bob@example.test>\r\nTo: alice@example.test\r\n"
                    f"Subject: {subject}\r\nDate: {date}\r\nMessage-ID: {message_id}\r\n"
                    f"{refs}\r\nbody number {n}\r\n"
                ).encode(),
            )


def write_config(home: Path, imap_port: int) -> Path:
    """Roundcube's configuration folder and SQLite database in ``home``."""
    config = home / "config"
    for sub in ("config", "temp", "logs"):
        (home / sub).mkdir(parents=True)
    for name in ("defaults.inc.php", "mimetypes.php"):
        (config / name).symlink_to(ROUNDCUBE_ETC / name)
    database = home / "roundcube.db"
    with sqlite3.connect(database) as db:
        db.executescript(SCHEMA.read_text())
    settings = {
        "db_dsnw": f"sqlite:///{database}?mode=0600",
        "imap_host": f"127.0.0.1:{imap_port}",
        "imap_debug": True,  # the IMAP conversation goes to logs/imap.log
        "imap_cache": "db",
        "messages_cache": True,  # a listing resyncs its cache with QRESYNC
        "create_default_folders": True,  # Drafts, Sent, Junk, Trash at the first login
        "temp_dir": f"{home / 'temp'}/",
        "log_dir": f"{home / 'logs'}/",
        "des_key": "peerd-test-key-24-chars!",
        "plugins": [],
        "skin": "elastic",
        "enable_installer": False,
        "smtp_host": "",
    }
    lines = ["<?php", "$config = [];"]
    lines += [f"$config[{json.dumps(key)}] = {php(value)};" for key, value in settings.items()]
    (config / "config.inc.php").write_text("\n".join(lines) + "\n")
    return config


def php(value: object) -> str:
    """A PHP literal for a string, bool or list of strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(php(item) for item in value) + "]"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class Roundcube:
    """An HTTP client of one Roundcube, with the browser's cookie jar and token."""

    base: str
    logs: Path
    opener: urllib.request.OpenerDirector
    token: str = ""

    def get(self, **query: str) -> str:
        url = self.base + "/?" + urllib.parse.urlencode(query)
        with self.opener.open(url, timeout=30) as response:
            return str(response.read().decode())

    def post(self, query: dict[str, str], form: dict[str, str], ajax: bool = True) -> str:
        request = urllib.request.Request(
            self.base + "/?" + urllib.parse.urlencode(query),
            data=urllib.parse.urlencode(form).encode(),
        )
        if ajax:
            request.add_header("X-Roundcube-Request", self.token)
        with self.opener.open(request, timeout=30) as response:
            return str(response.read().decode())

    def login(self, user: str, password: str) -> None:
        self.token = request_token(self.get())
        page = self.post(
            {"_task": "login"},
            {
                "_token": self.token,
                "_task": "login",
                "_action": "login",
                "_timezone": "UTC",
                "_url": "",
                "_user": user,
                "_pass": password,
            },
            ajax=False,
        )
        # The 302 goes to the mail view, whose page carries the session's token.
        self.token = request_token(page)

    def action(self, task: str, action: str, **form: str) -> dict[str, Any]:
        """An AJAX POST as Roundcube's UI sends it; its JSON answer."""
        answer = self.post({"_task": task, "_action": action}, {**form, "_remote": "1"})
        reply: dict[str, Any] = json.loads(answer)
        return reply

    def listing(self, mailbox: str, sort: str, threads: bool) -> dict[str, Any]:
        """``_action=list`` (a GET, as the UI sends it)."""
        answer = self.get(
            _task="mail",
            _action="list",
            _mbox=mailbox,
            _sort=sort,
            _threads="1" if threads else "0",
            _remote="1",
        )
        reply: dict[str, Any] = json.loads(answer)
        return reply

    def imap_log(self) -> str:
        return (self.logs / "imap.log").read_text(errors="replace")


def request_token(page: str) -> str:
    found = re.search(r'"request_token":"([^"]+)"', page)
    assert found, page[-2000:]
    return found.group(1)


def rows(reply: dict[str, Any]) -> list[tuple[int, dict[str, Any], dict[str, Any]]]:
    """The ``add_message_row(uid, columns, flags, ...)`` calls of a list answer."""
    decoder = json.JSONDecoder()
    found = []
    for line in str(reply["exec"]).splitlines():
        head = re.match(r"this\.add_message_row\((\d+),", line)
        if not head:
            continue
        columns, end = decoder.raw_decode(line, head.end())
        flags, _ = decoder.raw_decode(line, end + 1)
        found.append((int(head.group(1)), columns, flags))
    return found


def threads_of(reply: dict[str, Any]) -> list[int]:
    """The roots of the threads that have children (``init_threads``)."""
    found = re.search(r"this\.init_threads\((\[[\d,]*\])", str(reply["exec"]))
    assert found, reply["exec"]
    roots: list[int] = json.loads(found.group(1))
    return roots


@pytest.fixture
def roundcube(node: Node, tmp_path: Path, procs: Registry) -> Roundcube:
    """Roundcube under ``php -S`` on loopback, for alice on ``node``; stopped by pid."""
    require("php")
    assert (ROUNDCUBE / "index.php").exists(), "Debian's roundcube-core is not installed"
    node.add_account("alice")
    home = tmp_path / "roundcube"
    config = write_config(home, node.ports["imap"])
    port = free_port()
    procs.start(  # the procs fixture stops it by pid
        ["php", "-S", f"127.0.0.1:{port}", "-t", str(ROUNDCUBE)],
        "roundcube",
        env={**os.environ, "ROUNDCUBE_CONFIG_DIR": str(config)},
    )
    wait_port(port, 15, "php -S (Roundcube)")
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    return Roundcube(f"http://127.0.0.1:{port}", home / "logs", opener)


def store(node: Node, mailbox: str) -> dict[int, tuple[str, set[str]]]:
    """What the node holds in ``mailbox``: UID -> (Message-ID, flags), through imaplib."""
    client = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=30)
    try:
        client.login("alice", "secret")
        status, _ = client.select(mailbox, readonly=True)
        assert status == "OK", mailbox
        status, data = client.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert status == "OK"
        held = {}
        for item in data:
            if not isinstance(item, tuple):
                continue
            meta, header = item[0].decode(), item[1].decode()
            uid = re.search(r"UID (\d+)", meta)
            flags = re.search(r"FLAGS \(([^)]*)\)", meta)
            assert uid and flags, meta
            message_id = header.split(":", 1)[1].strip() if ":" in header else ""
            held[int(uid.group(1))] = (message_id, set(flags.group(1).split()) - {"\\Recent"})
        return held
    finally:
        client.logout()


def test_roundcube_lists_sorted_and_threaded_reads_moves_and_deletes(
    node: Node, roundcube: Roundcube
) -> None:
    deliver(node)
    roundcube.login("alice", "secret")

    # The folder sorted by date, newest first: the Date headers' order, not arrival's.
    reply = roundcube.listing("INBOX", "date_DESC", threads=False)
    assert [uid for uid, _, _ in rows(reply)] == [5, 2, 3, 1, 4]
    assert [columns["subject"] for _, columns, _ in rows(reply)] == [
        "Buy now",
        "Lunch",
        "Re: Plans",
        "Plans",
        "Old news",
    ]
    assert reply["env"]["messagecount"] == 5

    # Another client flags one message and expunges another; Roundcube's
    # cached listing catches up through QRESYNC (CHANGEDSINCE, VANISHED).
    client = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=30)
    client.login("alice", "secret")
    client.select("INBOX")
    client.uid("STORE", "3", "+FLAGS", "(\\Flagged)")
    client.uid("STORE", "5", "+FLAGS", "(\\Deleted)")
    client.expunge()
    client.logout()
    reply = roundcube.listing("INBOX", "date_DESC", threads=False)
    assert [(uid, flags.get("flagged")) for uid, _, flags in rows(reply)] == [
        (2, None),
        (3, 1),
        (1, None),
        (4, None),
    ]

    # In threads: "Re: Plans" under "Plans"; the roots newest first, and
    # "Plans" the only thread with children.
    reply = roundcube.listing("INBOX", "date_DESC", threads=True)
    assert reply["env"]["threading"] is True
    assert threads_of(reply) == [1]
    listed = {uid: flags for uid, _, flags in rows(reply)}
    assert listed[3].get("parent_uid") == 1 and listed[3].get("depth") == 1
    assert listed[1].get("has_children") is True
    assert [uid for uid, _, _ in rows(reply)] == [2, 1, 3, 4]

    # Read one: its body is shown, and the server now has it \Seen.
    page = roundcube.get(_task="mail", _action="show", _uid="1", _mbox="INBOX")
    assert "body number 0" in page and "Plans" in page
    assert "\\Seen" in store(node, "INBOX")[1][1]

    # A folder made from the settings, and a message moved into it.
    roundcube.post(
        {"_task": "settings", "_action": "save-folder"},
        {"_token": roundcube.token, "_name": "Projects", "_parent": "", "_mbox": ""},
        ajax=False,
    )
    reply = roundcube.action("mail", "move", _uid="2", _mbox="INBOX", _target_mbox="Projects")
    assert "moved successfully" in reply["exec"], reply
    assert [mid for mid, _ in store(node, "Projects").values()] == ["<lunch@t>"]

    # Delete, as the UI's button does it: outside Trash (made at the first
    # login) it is a move to Trash; in Trash, _action=delete, for good.
    reply = roundcube.action("mail", "move", _uid="4", _mbox="INBOX", _target_mbox="Trash")
    assert "moved to Trash successfully" in reply["exec"], reply
    trash = store(node, "Trash")
    assert [mid for mid, _ in trash.values()] == ["<old@t>"]
    reply = roundcube.action("mail", "delete", _uid=str(min(trash)), _mbox="Trash")
    assert "deleted successfully" in reply["exec"], reply
    assert store(node, "Trash") == {}
    assert {uid: mid for uid, (mid, _) in store(node, "INBOX").items()} == {
        1: "<plans@t>",
        3: "<replans@t>",
    }

    # Every view came from the server's SORT and THREAD, and nothing was BAD.
    conversation = roundcube.imap_log()
    assert re.search(r"C: A\d+ ENABLE QRESYNC", conversation)
    assert re.search(r"C: A\d+ UID SORT \(DATE\) ", conversation)
    assert re.search(r"C: A\d+ UID THREAD REFERENCES ", conversation)
    assert re.search(
        r"C: A\d+ UID FETCH [\d:,]+ \(FLAGS\) \(CHANGEDSINCE \d+ VANISHED\)", conversation
    )
    assert re.search(r"S: \* VANISHED \(EARLIER\) 5\b", conversation)
    assert not re.search(r"S: A\d+ BAD", conversation), re.findall(r".*S: A\d+ BAD.*", conversation)
    errors = roundcube.logs / "errors.log"
    assert not errors.exists() or not errors.read_text().strip(), errors.read_text()
