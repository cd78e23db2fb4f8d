"""``peerctl import-imap``: copy an account's mail in from any IMAP server.

How this works: peerctl is the old server's IMAP client (:mod:`.imapsource`)
and the node's API client; the node never sees the old server's password.
For each account:

1. LIST the old mailboxes and map each name to ours (:func:`plan`): the
   personal namespace's prefix is dropped (Cyrus's ``INBOX.``), the old
   hierarchy separator becomes ``/`` (a ``/`` inside a level becomes ``_``),
   a mailbox with an RFC 6154 special use (``\\Sent``, ``\\Drafts``,
   ``\\Trash``, ``\\Junk``, ``\\Archive``) takes the name that has that use
   here (``Sent Items`` becomes ``Sent``) unless that name is taken; other
   users' and shared namespaces, ``\\Noselect`` mailboxes and virtual views
   (``\\All``, ``\\Flagged``) are not copied.
2. For each mailbox, ask the node for its import cursor (the old
   UIDVALIDITY and the last old UID copied). Same UIDVALIDITY: fetch only
   the UIDs above it. Otherwise (the old mailbox was rebuilt, or the local
   one already holds mail without a cursor), match by Message-ID, internal
   date and size and fetch only what is not here.
3. Fetch the messages (``BODY.PEEK[]``, flags, INTERNALDATE) in batches of
   at most :data:`BATCH_BYTES` and post each batch to
   ``POST /v1/accounts/{name}/import``: the node appends it behind the
   ownership fence and moves the cursor in the same transaction, so the
   partner gets the mail by replication and a kill at any moment, of
   peerctl or of the node, loses or doubles nothing.

Over quota the node keeps what fits and says so; the import stops with that
error and resumes from there once the quota is raised. A message the node
does not store (it holds NUL octets, as LMTP and APPEND refuse them, or it
is larger than ``[imap] max_literal``) is left out with its old UID and the
reason; the import goes on and the summary lists it.
"""

from __future__ import annotations

import base64
import collections
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.errors import InvalidArgument
from engine.flags import normalize_flags
from engine.msgid import message_key
from peerd.cli.imapsource import Folder, RemoteError, Source

__all__ = [
    "BATCH_BYTES",
    "MAX_BATCH",
    "Account",
    "OverQuota",
    "Progress",
    "Remote",
    "RemoteError",
    "Result",
    "import_account",
    "parse_accounts",
    "plan",
]

BATCH_BYTES = 8 << 20  # message bytes per request (base64 makes it a third more)
BATCH_MESSAGES = 200
MAX_BATCH = 500  # what one request may carry (peerd.control.imapimport.MAX_BATCH)
SEPARATOR = "/"
# RFC 6154 2: the special uses this node gives a mailbox by its name.
SPECIAL_NAMES = {
    "\\sent": "Sent",
    "\\drafts": "Drafts",
    "\\trash": "Trash",
    "\\junk": "Junk",
    "\\archive": "Archive",
}
# Not copied: not mailboxes, or views of other mailboxes' messages.
SKIPPED = frozenset({"\\noselect", "\\nonexistent", "\\all", "\\flagged"})


class Api(Protocol):
    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any: ...


@dataclass(frozen=True, slots=True)
class Remote:
    """Where the old server is and how to log in to it."""

    host: str
    port: int | None = None
    security: str = "plain"  # plain, tls, starttls
    cafile: str | None = None
    insecure: bool = False
    admin: str | None = None  # SASL PLAIN authentication identity (RFC 4616)


@dataclass(frozen=True, slots=True)
class Account:
    """One account to import: the local name, the old login and password."""

    local: str
    user: str
    password: str
    line: int = 0


@dataclass(slots=True)
class Progress:
    """Where the import is, for peerctl's progress line (read from another thread)."""

    account: str = ""
    mailbox: str = ""
    done: int = 0
    total: int = 0
    copied: int = 0
    octets: int = 0

    def line(self) -> str:
        if not self.account:
            return ""
        where = f"{self.account} {self.mailbox}".strip()
        return f"{where} {self.done}/{self.total}, {self.copied} copied ({_mib(self.octets)})"


@dataclass(slots=True)
class Result:
    account: str
    mailboxes: int = 0
    copied: int = 0
    matched: int = 0  # already here (matched by key when UIDVALIDITY changed)
    octets: int = 0
    seconds: float = 0.0
    skipped_flags: list[str] = field(default_factory=list)
    # Messages the node does not store (NUL octets, too large): each with
    # the mailbox here, the old UID and why. The import goes on past them.
    refused: list[dict[str, Any]] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "mailboxes": self.mailboxes,
            "copied": self.copied,
            "matched": self.matched,
            "not_copied": len(self.refused),
            "refused": self.refused,
            "bytes": self.octets,
            "seconds": round(self.seconds, 3),
            "skipped_flags": sorted(set(self.skipped_flags)),
        }

    def text(self) -> str:
        line = (
            f"imported {self.account}: {self.mailboxes} mailbox(es), {self.copied} message(s)"
            f" copied ({_mib(self.octets)}) in {self.seconds:.1f} s"
        )
        if self.matched:
            line += f", {self.matched} already here"
        if self.skipped_flags:
            line += f"; keywords not kept: {' '.join(sorted(set(self.skipped_flags)))}"
        if self.refused:
            line += f"; {len(self.refused)} message(s) not copied:"
            for r in self.refused:
                line += f"\n  {r['mailbox']} old UID {r['uid']}: {r['reason']} ({r['code']})"
        return line


def _mib(octets: int) -> str:
    return f"{octets / (1 << 20):.1f} MiB"


def parse_accounts(text: str, need_password: bool) -> list[Account]:
    """The bulk file: ``ACCOUNT REMOTE_USER PASSWORD`` per line (the password
    is the rest of the line; none with ``--admin``); ``#`` comments."""
    out: list[Account] = []
    errors: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(None, 2)
        if len(fields) < 2 or (need_password and len(fields) < 3):
            want = "ACCOUNT REMOTE_USER PASSWORD" if need_password else "ACCOUNT REMOTE_USER"
            errors.append(f"line {number}: want {want}")
            continue
        out.append(Account(fields[0], fields[1], fields[2] if len(fields) > 2 else "", number))
    if errors:
        raise ValueError("nothing imported:\n" + "\n".join(errors[:20]))
    return out


# -- names ----------------------------------------------------------------------------


def _mapped(folder: Folder, prefix: str, others: Sequence[str]) -> str | None:
    name = folder.name
    if any(p and name.startswith(p) for p in others):
        return None  # another user's or a shared mailbox
    if prefix and name.startswith(prefix) and name.upper() != "INBOX":
        name = name[len(prefix) :]
    levels = name.split(folder.separator) if folder.separator else [name]
    levels = [level.replace(SEPARATOR, "_") for level in levels if level]
    if not levels:
        return None
    if levels[0].upper() == "INBOX":
        levels[0] = "INBOX"
    return SEPARATOR.join(levels)


def plan(
    folders: Sequence[Folder], prefix: str = "", others: Sequence[str] = ()
) -> list[tuple[Folder, str]]:
    """Each old mailbox to copy, with its name here (module docstring, step 1)."""
    named = [(f, _mapped(f, prefix, others)) for f in folders]
    kept = [(f, n) for f, n in named if n is not None]
    taken = {n for _, n in kept}
    renames: dict[str, str] = {}
    for folder, name in kept:
        if folder.attributes & SKIPPED:
            continue
        for use, ours in SPECIAL_NAMES.items():
            if use in folder.attributes and name != ours and ours not in taken:
                renames[name] = ours
                taken.add(ours)
                break
    out: list[tuple[Folder, str]] = []
    used: set[str] = set()
    for folder, name in kept:
        if folder.attributes & SKIPPED:
            continue
        for old, new in renames.items():
            if name == old or name.startswith(old + SEPARATOR):
                name = new + name[len(old) :]
                break
        # Two old names that map to one here (``a/b`` and ``a_b``): the
        # second gets a number, so each keeps a mailbox (and a cursor) of its own.
        unique, n = name, 1
        while unique in used:
            n += 1
            unique = f"{name}_{n}"
        used.add(unique)
        out.append((folder, unique))
    return out


# -- copying --------------------------------------------------------------------------


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _flags(flags: Sequence[str], result: Result) -> list[str]:
    """The flags this node keeps: system flags and valid keywords (\\Recent is
    the session's, RFC 3501 2.3.2)."""
    kept: list[str] = []
    for flag in flags:
        if flag.lower() == "\\recent":
            continue
        try:
            normalize_flags([flag])
        except InvalidArgument:
            result.skipped_flags.append(flag)
            continue
        kept.append(flag)
    return kept


def _batches(todo: Sequence[tuple[int, int]], most: int) -> list[list[int]]:
    out: list[list[int]] = []
    current: list[int] = []
    size = 0
    for uid, octets in todo:
        if current and (size + octets > BATCH_BYTES or len(current) >= most):
            out.append(current)
            current, size = [], 0
        current.append(uid)
        size += octets
    if current:
        out.append(current)
    return out


class OverQuota(Exception):
    """The node refused more mail for the account: it is over its quota."""


def import_account(
    api: Api,
    remote: Remote,
    account: Account,
    progress: Progress,
    connect: Callable[[Remote], Source] | None = None,
    batch: int = BATCH_MESSAGES,
) -> Result:
    """Copy ``account``'s mail (module docstring); raises :class:`RemoteError`
    (login refused, exit status 2), ``ApiError`` (the node refused: over
    quota, not the owner) or ``ConnectionError``."""
    started = time.monotonic()
    result = Result(account.local)
    progress.account, progress.mailbox = account.local, ""
    progress.done = progress.total = progress.copied = progress.octets = 0
    # The account here first: a name that does not exist fails before the
    # old server is asked anything.
    base = f"/v1/accounts/{_quote(account.local)}/import"
    state = api.call("GET", base)
    cursors = {m["mailbox"]: m for m in state["mailboxes"]}
    source = (connect or _connect)(remote)
    try:
        source.login(account.user, account.password, remote.admin)
        (prefix, _sep), others = source.namespaces()
        folders = plan(source.folders(), prefix, others)
        subscribed = source.subscribed()
        for folder, local in folders:
            progress.mailbox = local
            subscribe = folder.name in subscribed
            cursor = cursors.get(local)
            _copy_mailbox(
                api, base, source, folder, local, cursor, subscribe, progress, result, batch
            )
            result.mailboxes += 1
    finally:
        source.close()
    result.seconds = time.monotonic() - started
    return result


def _connect(remote: Remote) -> Source:
    return Source(
        remote.host,
        remote.port,
        security=remote.security,
        cafile=remote.cafile,
        insecure=remote.insecure,
    )


def _copy_mailbox(
    api: Api,
    base: str,
    source: Source,
    folder: Folder,
    local: str,
    cursor: dict[str, Any] | None,
    subscribe: bool,
    progress: Progress,
    result: Result,
    batch: int,
) -> None:
    validity, _uidnext, exists = source.examine(folder.raw)
    after, rematch = 0, False
    if cursor is not None and cursor["uidvalidity"] == validity:
        after = int(cursor["last_uid"])
    elif cursor is not None and (cursor["uidvalidity"] is not None or cursor["exists"]):
        rematch = True
    todo: list[tuple[int, int]] = []
    last = after
    if exists and rematch:
        here = collections.Counter(api.call("GET", f"{base}/keys?mailbox={_quote(local)}")["keys"])
        for fetched in source.message_keys():
            last = max(last, fetched.uid)
            key = message_key(fetched.message_id, fetched.internaldate, fetched.size)
            if here[key] > 0:
                here[key] -= 1
                result.matched += 1
            else:
                todo.append((fetched.uid, fetched.size))
    elif exists:
        todo = source.sizes(after)
        if todo:
            last = max(last, todo[-1][0])
    progress.done, progress.total = 0, len(todo)
    first = True
    posted = after if not rematch else -1
    for uids in _batches(todo, batch):
        messages = []
        for fetched in source.messages(uids):
            assert fetched.data is not None  # Source.messages keeps only those
            messages.append(
                {
                    "uid": fetched.uid,
                    "data": base64.b64encode(fetched.data).decode("ascii"),
                    "internaldate": fetched.internaldate.isoformat(),
                    "flags": _flags(fetched.flags, result),
                }
            )
            result.octets += len(fetched.data)
            progress.octets += len(fetched.data)
        answer = _post(
            api,
            base,
            {
                "mailbox": local,
                "uidvalidity": validity,
                "done_uid": uids[-1],
                "messages": messages,
                "rematch": rematch,
                "subscribe": subscribe and first,
            },
        )
        first = False
        posted = uids[-1]
        for refused in answer.get("refused", []):
            result.refused.append({"mailbox": local, **refused})
        result.copied += answer["appended"]
        progress.copied += answer["appended"]
        progress.done += len(uids)
    if first or posted < last:
        # The mailbox itself, its subscription, and a cursor past the
        # messages that needed no copy.
        _post(
            api,
            base,
            {
                "mailbox": local,
                "uidvalidity": validity,
                "done_uid": last,
                "rematch": rematch,
                "subscribe": subscribe and first,
            },
        )


def _post(api: Api, base: str, body: dict[str, Any]) -> Any:
    try:
        return api.call("POST", base, body)
    except Exception as exc:
        if getattr(exc, "status", None) == 422 and str(exc).startswith("Over Quota"):
            raise OverQuota(
                f"{exc!s} (in {body['mailbox']}; what fits is kept: raise the quota with"
                " `peerctl account quota` and run import-imap again, it resumes there)"
            ) from exc
        raise
