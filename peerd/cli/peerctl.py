"""``peerctl``: the admin CLI, a client of the node's control API.

How this works: ``-c FILE`` reads the node's config for the API address and
bearer token (or ``--api URL`` and ``--token``/``$PEERD_TOKEN``). Each
sub-command is one function that makes one or a few API calls and prints the
answer for people, or the raw JSON with ``--json``. Any API problem is printed
as ``peerctl: <title>: <detail>`` and the exit status is non-zero: 1 for a
refused request, 2 for bad usage (and for a command that needs a partner on
a node configured without one: the node's one line), 3 when the node cannot
be reached.

Why one module of about 700 lines: it is a flat table of sub-commands, each
a short function next to its argparse entry, and nothing else; splitting it
would scatter the table a reader looks up a command in.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from peerd.cli import imapimport, importfile, transfer
from peerd.node.config import ConfigError, load_config, parse_size
from peerd.node.version import release

__all__ = ["ApiError", "Client", "main"]

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


# The problem code of a command that needs a partner on a node without one
# (peerd.control.app.NO_PARTNER): a usage error, said in the node's words.
NO_PARTNER = "no_partner"


class ApiError(Exception):
    def __init__(
        self, status: int, title: str, detail: str = "", body: Any = None, code: str = ""
    ) -> None:
        super().__init__(f"{title}: {detail}" if detail else title)
        self.status = status
        self.body = body
        self.code = code
        self.detail = detail


@dataclass(slots=True)
class Client:
    base: str
    token: str
    timeout: float = 600.0
    # The partner's control API, when the config names it ([partner] api):
    # `peerctl status` shows both nodes.
    partner: Client | None = None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base.rstrip("/") + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        # The node's mail log says an admin action came through peerctl.
        request.add_header("User-Agent", f"peerctl/{release()}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                problem = json.loads(exc.read())
                raise ApiError(
                    exc.code,
                    problem.get("title", exc.reason),
                    problem.get("detail", ""),
                    code=str(problem.get("code", "")),
                )
            except (json.JSONDecodeError, AttributeError):
                raise ApiError(exc.code, str(exc.reason)) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectionError(f"cannot reach {self.base}: {exc}") from exc


def quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


# Accounts per request of `account import` (the API's
# peerd.control.accountimport.MAX_BATCH).
IMPORT_BATCH = 1000


def _read_password(args: argparse.Namespace) -> str:
    if getattr(args, "password_file", None):
        try:
            with open(args.password_file) as handle:
                password = handle.readline().rstrip("\r\n")
        except OSError as exc:
            raise ValueError(
                f"--password-file {args.password_file}: cannot read it ({exc.strerror})"
            ) from exc
    elif getattr(args, "password_stdin", False):
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise ValueError("the passwords differ")
    else:
        raise ValueError("give --password-file F or --password-stdin")
    if not password:
        raise ValueError("empty password")
    return password


def _size(n: int | None) -> str:
    if n is None:
        return "unlimited"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    return str(n)


def _duration(seconds: float | None) -> str:
    """``1h``, ``2m30s``, ``1.5s``: the way people write durations."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}".rstrip("0").rstrip(".") + "s"
    whole = round(seconds)
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            count, whole = divmod(whole, size)
            out += f"{count}{unit}"
            if len(out) >= 4:  # two units are enough: 1h30m, not 1h30m12s
                break
    return out or "0s"


_ISO_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)?")


def _humane(text: str) -> str:
    """Free text from the node with its ISO timestamps as people write them."""
    return _ISO_RE.sub(lambda m: _when(m.group(0), ago=False), text)


def _when(stamp: str | None, none: str = "never", ago: bool = True) -> str:
    """An ISO timestamp as ``2026-12-04 14:51:06 UTC (3m ago)``: no microseconds."""
    if not stamp:
        return none
    try:
        moment = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    moment = moment.astimezone(dt.UTC)
    shown = f"{moment:%Y-%m-%d %H:%M:%S} UTC"
    if not ago:
        return shown
    since = (dt.datetime.now(dt.UTC) - moment).total_seconds()
    return (
        f"{shown} ({_duration(since)} ago)" if since >= 0 else f"{shown} (in {_duration(-since)})"
    )


def _value(value: Any) -> str:
    """A JSON value for people: no Python None/True/False."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return _humane(str(value))


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    return "\n".join(lines)


# -- commands ------------------------------------------------------------------


def cmd_account_add(client: Client, args: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"name": args.user, "password": _read_password(args)}
    if args.quota is not None:
        body["quota_limit"] = _quota(args.quota)
    if args.owner:
        body["owner"] = args.owner
    result = client.call("POST", "/v1/accounts", body)
    return (
        result,
        f"created {result['name']} (owner {result['owner']}, quota {_size(result['quota_limit'])})",
    )


def cmd_account_list(client: Client, args: argparse.Namespace) -> Any:
    query = f"?owner={quote(args.owner)}" if getattr(args, "owner", None) else ""
    result = client.call("GET", "/v1/accounts" + query)
    rows = [
        [
            a["name"],
            a["owner"] or "-",
            a["home"] or "-",
            str(a["epoch"]),
            a["state"],
            _size(a["quota_used"]),
            _size(a["quota_limit"]),
        ]
        for a in result["accounts"]
    ]
    return result, _table(rows, ["ACCOUNT", "OWNER", "HOME", "EPOCH", "STATE", "USED", "QUOTA"])


def cmd_account_del(client: Client, args: argparse.Namespace) -> Any:
    result = client.call("DELETE", f"/v1/accounts/{quote(args.user)}")
    text = f"deleted {result['deleted']}"
    if result.get("replicated") is True:
        text += " (on the partner too)"
    elif result.get("replicated") is False:
        text += " (the partner has not taken the deletion yet; it will when it answers)"
    return result, text


def cmd_account_passwd(client: Client, args: argparse.Namespace) -> Any:
    body = {"password": _read_password(args)}
    result = client.call("PUT", f"/v1/accounts/{quote(args.user)}/password", body)
    return result, f"password changed for {args.user}"


def _quota(text: str) -> int | None:
    """A quota as the config writes sizes (``10M``, ``1G``, bytes), or ``none``."""
    if text.strip().lower() in ("none", "unlimited"):
        return None
    try:
        return parse_size(text)
    except ValueError:
        raise ValueError(f"quota {text!r}: give bytes, a size like 10M or 1G, or none") from None


def cmd_account_rename(client: Client, args: argparse.Namespace) -> Any:
    body = {"new_name": args.new_name}
    result = client.call("POST", f"/v1/accounts/{quote(args.user)}/rename", body)
    text = f"renamed {args.user} to {result['name']} (owner {result['owner']})"
    if result.get("forwarded_to"):
        text += f", done by its owner {result['forwarded_to']}"
    if result.get("replicated") is True:
        text += " (on the partner too)"
    elif result.get("replicated") is False:
        text += " (the partner has not taken the rename yet; it will when it answers)"
    failed = [h["hook"] for h in result.get("hooks", []) if not h["acknowledged"]]
    if failed:
        text += f"; proxy hooks not told yet (retrying): {', '.join(failed)}"
    return result, text


def cmd_account_import(client: Client, args: argparse.Namespace) -> Any:
    """Read the whole file first: a line it cannot take stops the import
    before anything is sent (exit 2, the lines named)."""
    try:
        with open(args.file, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {args.file}: {exc}") from exc
    if not 1 <= args.batch <= IMPORT_BATCH:
        # 0 stopped in range() ("arg 3 must not be zero"); a negative one
        # sent nothing and said "imported 0 of N" with exit status 0.
        raise ValueError(f"--batch must be 1 to {IMPORT_BATCH}")
    entries, errors = importfile.parse(text, args.format)
    if errors:
        shown = [f"{args.file}:{e}" for e in errors[:20]]
        if len(errors) > 20:
            shown.append(f"... and {len(errors) - 20} more")
        raise ValueError("nothing imported:\n" + "\n".join(shown))
    created: list[str] = []
    failed: list[dict[str, Any]] = []
    started = time.monotonic()
    for start in range(0, len(entries), args.batch):
        batch = entries[start : start + args.batch]
        body = {
            "accounts": [
                {
                    k: v
                    for k, v in (
                        ("name", e.name),
                        ("password", e.password),
                        ("password_hash", e.password_hash),
                        ("quota_limit", e.quota_limit),
                    )
                    if v is not None
                }
                for e in batch
            ]
        }
        result = client.call("POST", "/v1/accounts/import", body)
        created += result["created"]
        for item in result["failed"]:
            failed.append({**item, "line": batch[item["index"]].line})
        if time.monotonic() - started > 2 and not args.json:
            done = min(start + args.batch, len(entries))
            print(f"  {done}/{len(entries)} accounts", file=sys.stderr, flush=True)
    seconds = time.monotonic() - started
    lines = [f"imported {len(created)} of {len(entries)} account(s) in {seconds:.1f} s"]
    lines += [f"  {args.file}:line {f['line']}: {f['name']}: {f['detail']}" for f in failed]
    result = {"created": created, "failed": failed, "seconds": round(seconds, 3)}
    if failed:
        print("\n".join(lines))
        raise ApiError(409, "import incomplete", f"{len(failed)} account(s) not created")
    return result, "\n".join(lines)


def cmd_import_imap(client: Client, args: argparse.Namespace) -> Any:
    """Copy mail in from another IMAP server (:mod:`peerd.cli.imapimport`)."""
    try:
        with open(args.password_file) as handle:
            password = handle.readline().rstrip("\r\n")
        bulk = ""
        if args.bulk:
            with open(args.bulk, encoding="utf-8") as handle:
                bulk = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {exc}") from exc
    if not 1 <= args.batch <= imapimport.MAX_BATCH:
        raise ValueError(f"--batch must be 1 to {imapimport.MAX_BATCH}")
    if args.bulk:
        jobs = imapimport.parse_accounts(bulk, need_password=args.admin is None)
        jobs = [
            imapimport.Account(j.local, j.user, password if args.admin else j.password, j.line)
            for j in jobs
        ]
    elif args.user and args.account:
        jobs = [imapimport.Account(args.account, args.user, password)]
    else:
        raise ValueError("give --user and --account, or --bulk FILE")
    remote = imapimport.Remote(
        args.host,
        args.port,
        "tls" if args.tls else "starttls" if args.starttls else "plain",
        args.cafile,
        args.insecure,
        args.admin,
    )
    progress: imapimport.Progress = args.progress
    results: list[dict[str, Any]] = []
    lines: list[str] = []
    failed: list[str] = []
    for job in jobs:
        try:
            done = imapimport.import_account(client, remote, job, progress, batch=args.batch)
        except imapimport.OverQuota as exc:
            if not args.bulk:
                raise ApiError(422, "over quota", f"{job.local}: {exc}") from exc
            failed.append(f"{job.local}: over quota: {exc}")
            continue
        except (imapimport.RemoteError, ApiError) as exc:
            if not args.bulk:
                raise
            failed.append(f"{args.bulk}:line {job.line}: {job.local}: {exc}")
            continue
        results.append(done.json())
        lines.append(done.text())
    if failed:
        print("\n".join(lines + [f"  failed: {f}" for f in failed]))
        raise ApiError(409, "import incomplete", f"{len(failed)} of {len(jobs)} account(s) failed")
    result = results[0] if len(results) == 1 and not args.bulk else {"accounts": results}
    return result, "\n".join(lines)


def _message_limit(text: str) -> int | None:
    """``--messages``: a number of messages, or ``none``."""
    if text.strip().lower() in ("none", "unlimited"):
        return None
    if not (text.strip().isascii() and text.strip().isdigit()):
        raise ValueError(f"--messages {text!r}: give a number of messages, or none")
    return int(text)


def cmd_account_quota(client: Client, args: argparse.Namespace) -> Any:
    limit = _quota(args.limit)
    body: dict[str, Any] = {"quota_limit": limit}
    if args.messages is not None:
        body["message_limit"] = _message_limit(args.messages)
    result = client.call("PUT", f"/v1/accounts/{quote(args.user)}/quota", body)
    messages = result.get("message_limit")
    shown = "" if messages is None else f", at most {messages} messages"
    return result, f"quota of {args.user}: {_size(limit)}{shown}"


def cmd_mailbox_list(client: Client, args: argparse.Namespace) -> Any:
    result = client.call("GET", f"/v1/accounts/{quote(args.user)}/mailboxes")
    rows = [
        [
            m["name"],
            m["uniqueid"],
            str(m["uidvalidity"]),
            str(m["last_uid"]),
            str(m["highestmodseq"]),
            str(m["exists"]),
            m["checksum"],
        ]
        for m in result["mailboxes"]
    ]
    text = _table(
        rows, ["MAILBOX", "UNIQUEID", "UIDVALIDITY", "LAST_UID", "MODSEQ", "EXISTS", "CHECKSUM"]
    )
    return result, text


def cmd_mailbox_show(client: Client, args: argparse.Namespace) -> Any:
    query = "?expunged=1" if args.expunged else ""
    result = client.call(
        "GET", f"/v1/accounts/{quote(args.user)}/mailboxes/{quote(args.mailbox)}{query}"
    )
    head = (
        f"{result['name']} uniqueid {result['uniqueid']} uidvalidity {result['uidvalidity']} "
        f"last_uid {result['last_uid']} highestmodseq {result['highestmodseq']} "
        f"exists {result['exists']} checksum {result['checksum']}"
    )
    rows = [
        [
            str(m["uid"]),
            m["guid"],
            str(m["modseq"]),
            str(m["size"]),
            "(" + " ".join(m["flags"]) + ")" + (" EXPUNGED" if m["expunged"] else ""),
        ]
        for m in result["messages"]
    ]
    return result, head + "\n" + _table(rows, ["UID", "GUID", "MODSEQ", "SIZE", "FLAGS"])


def _yes(value: Any) -> str:
    return "unknown" if value is None else "yes" if value else "NO"


def _partner_line(result: dict[str, Any]) -> str:
    """Reachable, lag, last success and last error of the replication to the partner."""
    return (
        f"partner {result.get('partner') or '-'} ({result.get('target') or '-'}): "
        f"reachable {_yes(result.get('reachable'))}, "
        f"last success {_when(result.get('last_success'))}, "
        f"last error {result.get('last_error') or '-'}"
        + (f" at {_when(result.get('last_error_at'))}" if result.get("last_error") else "")
    )


def _hook_line(name: str, state: dict[str, Any]) -> str:
    if state["ok"] and not state["pending"]:
        return f"proxy hook {name}: ok ({state['failures']} failure(s) so far)"
    return (
        f"proxy hook {name}: FAILING, {state['pending']} account(s) waiting, retried in the "
        f"background ({state['failures']} failure(s)): {state['last_error']}"
    )


def _account_status(client: Client, user: str) -> Any:
    result = client.call("GET", f"/v1/status?account={quote(user)}")
    lines = [
        f"account {result['account']} on {result['node']}: owner {result['owner']} "
        f"(home {result['home']}), epoch {result['epoch']}, {result['state']}",
        f"sync log depth {result['sync_log_depth']}  oldest {_when(result.get('oldest_pending'), '-')}"
        f"  lag {_duration(result['lag_seconds'])}",
    ]
    if "reachable" in result:
        lines.append(_partner_line(result))
    else:
        lines.append("replication: off (no [sync] sync_host)")
    return result, "\n".join(lines)


def _sweep_line(sweep: dict[str, Any]) -> str:
    interval = sweep["interval_seconds"]
    every = f"every {_duration(interval)}" if interval else "on demand"
    line = (
        f"spool sweep: {every}, grace {_duration(sweep['grace_seconds'])}, {sweep['runs']} run(s)"
    )
    last = sweep.get("last")
    if last:
        line += (
            f"; last {_when(last['started_at'])} removed {last['removed']} file(s) "
            f"({_size(last['bytes_freed'])}), {sweep['waiting']} waiting"
        )
    if sweep.get("held_back"):
        line += f"\n  HELD BACK: {sweep['held_back']}"
    return line


def cmd_status(client: Client, args: argparse.Namespace) -> Any:
    if getattr(args, "user", None):
        return _account_status(client, args.user)
    result, text = _node_status(client)
    if client.partner is not None and not getattr(args, "local", False):
        # Both nodes on one screen: the partner as it sees itself.
        try:
            _, other = _node_status(client.partner)
        except (ApiError, ConnectionError) as exc:
            other = f"node {result.get('partner') or 'partner'}: not answering ({exc})"
        text += "\n\n" + other
    return result, text


def _node_status(client: Client) -> tuple[dict[str, Any], str]:
    result = client.call("GET", "/v1/status")
    owned = ", ".join(f"{k}={v}" for k, v in sorted(result.get("owned", {}).items())) or "-"
    lines = [
        f"node {result['node']} (partner {result.get('partner') or '-'})",
        f"accounts {result['accounts']}  owned {owned}",
        f"sync log depth {result['sync_log_depth']}  oldest {_when(result.get('sync_log_oldest'), '-')}",
    ]
    if result.get("startup"):
        lines.append(f"startup: {_humane(str(result['startup']))}")
    replication = result.get("replication")
    if isinstance(replication, dict):
        lines.append(_partner_line(replication) + f", lag {_duration(replication['lag_seconds'])}")
        if replication.get("rolling", "running") != "running":
            lines.append(
                f"rolling replication: {str(replication['rolling']).upper()} by"
                f" sync_shutdown_file {replication.get('shutdown_file')}"
                " (the sync log is kept; remove the file, then SIGHUP or restart)"
            )
    for name, channel in sorted((result.get("channels") or {}).items()):
        lines.append(
            f"backup channel {name} ({channel.get('target') or '-'}): "
            f"reachable {_yes(channel.get('reachable'))}, "
            f"sync log depth {channel['sync_log_depth']}, lag {_duration(channel['lag_seconds'])}, "
            f"last success {_when(channel.get('last_success'))}, "
            f"last error {channel.get('last_error') or '-'}"
        )
    for name, state in sorted((result.get("proxy_hooks") or {}).items()):
        lines.append(_hook_line(name, state))
    lmtp = result.get("lmtp")
    if isinstance(lmtp, dict):
        workers = lmtp.get("workers", [])
        pids = ", ".join(str(w.get("pid")) for w in workers) or "-"
        restarts = sum(int(w.get("restarts", 0)) for w in workers)
        lines.append(f"lmtp: {len(workers)} worker process(es) (pid {pids}), restarts {restarts}")
    sweep = result.get("spool_sweep")
    if isinstance(sweep, dict):
        lines.append(_sweep_line(sweep))
    integrity = result.get("integrity")
    if isinstance(integrity, dict):
        lines += _integrity_lines(integrity)
    database = result.get("database")
    if isinstance(database, dict):
        lines.append(_database_line(database))
    for key, value in result.items():
        shown = (
            "owned",
            "replication",
            "channels",
            "proxy_hooks",
            "lmtp",
            "spool_sweep",
            "integrity",
            "database",
        )
        if isinstance(value, dict) and value and key not in shown:
            lines.append(f"{key}: " + ", ".join(f"{k}={_value(v)}" for k, v in value.items()))
    return result, "\n".join(lines)


def _rate(rate: int) -> str:
    return f"{rate / (1 << 20):g} MiB/s" if rate else "full speed"


def _integrity_lines(integrity: dict[str, Any]) -> list[str]:
    scrub = integrity.get("scrub") or {}
    when = scrub.get("schedule") or "on demand only"
    line = (
        f"integrity: {integrity['damaged']} damaged body(ies), "
        f"{integrity['unrepairable']} unrepairable; scrub {when} at {_rate(scrub.get('rate', 0))}"
    )
    last = scrub.get("last")
    if scrub.get("running"):
        line += ", running now"
    elif last:
        line += (
            f", last {_when(last['started_at'])}: {last['files']} file(s), "
            f"{len(last['damaged'])} damaged, {len(last['repaired'])} repaired"
        )
    lines = [line]
    for body in integrity.get("bodies", []):
        state = "UNREPAIRABLE" if body["unrepairable"] else "damaged"
        note = f" ({body['last_error']})" if body.get("last_error") else ""
        lines.append(
            f"  {state} {body['guid']}: {body['what']}, found by {body['found_by']} "
            f"at {_when(body['found_at'])}{note}"
        )
    return lines


def _database_line(check: dict[str, Any]) -> str:
    if not check["checked"]:
        return f"database: not checked ({check['note']})"
    if check["ok"]:
        return f"database: ok ({check['backend']} {check['method']}, {_duration(check['seconds'])})"
    return f"database: DAMAGED: {', '.join(check['objects']) or '?'}: {check['problems'][0]}"


def cmd_scrub(client: Client, args: argparse.Namespace) -> Any:
    body: dict[str, Any] = {}
    if args.user:
        body["account"] = args.user
    if args.rate is not None:
        body["rate"] = parse_size(args.rate)
    if args.background:
        body["background"] = True
        result = client.call("POST", "/v1/scrub", body)
        text = (
            "scrub started; `peerctl status` shows it running, then its result"
            if result["started"]
            else "a scrub is running already; `peerctl status` shows it"
        )
        return result, text
    result = client.call("POST", "/v1/scrub", body)
    repaired, unrepairable = set(result["repaired"]), set(result["unrepairable"])
    lines = [
        f"scrubbed {result['files']} file(s), {result['bytes']} bytes in {result['seconds']} s "
        f"({result['files_per_second']} files/s, {result['mb_per_second']} MB/s): "
        f"{len(result['damaged'])} damaged, {len(repaired)} repaired from the partner, "
        f"{len(unrepairable)} unrepairable"
    ]
    for item in result["damaged"]:
        guid = item["guid"]
        fate = (
            "repaired"
            if guid in repaired
            else "UNREPAIRABLE (the partner has no whole copy either)"
            if guid in unrepairable
            else "NOT REPAIRED (the partner did not answer; retried)"
        )
        lines.append(f"  {guid}: {item['what']} -> {fate}")
    if unrepairable or result["not_repaired"]:
        print("\n".join(lines))
        raise ApiError(
            500, "damage left", f"{len(unrepairable) + len(result['not_repaired'])} body(ies)"
        )
    return result, "\n".join(lines)


def cmd_check_db(client: Client, args: argparse.Namespace) -> Any:
    result = client.call("POST", "/v1/check-db", {"full": True} if args.full else {})
    line = _database_line(result)
    if result["checked"] and not result["ok"]:
        print(line)
        raise ApiError(500, "database damaged", "; ".join(result["objects"]) or "see above")
    return result, line


def cmd_replicate(client: Client, args: argparse.Namespace) -> Any:
    body: dict[str, Any] = {}
    if args.rolling:
        raise ValueError(
            "-r: rolling replication is the daemon's own ([sync] sync_log = true, the"
            " default); `peerctl status` shows it; replicate syncs now (-u USER or -A)"
        )
    if args.all:
        body["all"] = True
    elif args.user:
        body["account"] = args.user
    else:
        raise ValueError("give -u USER or -A (--all)")
    if args.channel:
        body["channel"] = args.channel
    if args.mailbox:
        body["mailboxes"] = args.mailbox
    if args.compress:
        body["compress"] = True
    if args.server:
        body["target"] = args.server
    result = client.call("POST", "/v1/replicate", body)
    lines: list[str] = []
    for report in result.get("reports", []):
        if args.verbose:
            lines.extend(report["steps"])
        if args.verbose > 1:
            lines.extend("  " + r for r in report["requests"])
        if not args.verbose:
            lines.append(
                f"{report['account']}: uploaded {report['uploaded']}, expunged {report['expunged']}, "
                f"flags {report['setflags']}, copied back {report['copied_back']}, "
                f"{report['bytes_sent']}/{report['bytes_received']} bytes out/in, "
                f"{report['seconds'] * 1000:.1f} ms"
            )
        for line in report.get("repairs", []):
            lines.append(f"  repair: {line}")
    for error in result.get("errors", []):
        lines.append(f"{error['account']}: FAILED {error['error']}: {error['detail']}")
    if args.all:
        lines.append(f"{result['accounts']} accounts in {result['seconds']:.3f} s")
    if result.get("errors"):
        print("\n".join(lines))
        raise ApiError(502, "replication failed", f"{len(result['errors'])} account(s)")
    return result, "\n".join(lines)


def cmd_synclog(client: Client, args: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"account": args.user}
    if args.mailbox:
        body["mailboxes"] = args.mailbox
    result = client.call("POST", "/v1/synclog", body)
    return result, f"queued {result['queued']} sync log row(s) for {args.user}"


def cmd_owner(client: Client, args: argparse.Namespace) -> Any:
    row = client.call("GET", f"/v1/owner/{quote(args.user)}")
    return row, (
        f"{row['account']}: owner {row['owner']} (home {row['home']}), epoch {row['epoch']}, "
        f"{row['state']} — {row['reason']} at {row['updated_at']}"
    )


def _hooks(report: list[dict[str, Any]], where: str = "") -> list[str]:
    at = f" ({where})" if where else ""
    return [
        f"proxy hook {h['hook']}{at}: "
        + ("acknowledged" if h["acknowledged"] else f"FAILED {h['error']} (retrying)")
        for h in report
    ]


def _uninformed(result: dict[str, Any], partner: str) -> list[str]:
    if result.get("partner_informed") is False:
        return [
            f"WARNING: {partner} did not take the new ownership rows; it refuses writes for "
            "these accounts until it does (run the command again, or check it)"
        ]
    return []


def cmd_failover(client: Client, args: argparse.Namespace) -> Any:
    result = client.call("POST", "/v1/failover", {"force": bool(args.force)})
    lines = [f"took {len(result['taken'])} account(s) in {result['seconds']} s"]
    if result.get("forced_while_partner_answered"):
        lines[0] += " (forced: the partner still answers)"
    lines += [
        f"  {r['account']}: owner {r['owner']}, epoch {r['epoch']}, {r['state']}"
        for r in result["taken"]
    ]
    if result.get("partner_informed"):
        lines.append("the partner took the new ownership rows")
    lines += _uninformed(result, "the partner")
    lines += _hooks(result["hooks"])
    return result, "\n".join(lines)


def _moved(part: dict[str, Any], where: str = "") -> list[str]:
    lines = [
        f"{r['account']}: now owned by {r['owner']} at epoch {r['epoch']}"
        for r in part.get("moved", [])
    ]
    lines += [f"{a}: already there" for a in part.get("already", [])]
    lines += _uninformed(part, "the partner")
    return lines + _hooks(part.get("hooks", []), where)


def cmd_switchover(client: Client, args: argparse.Namespace) -> Any:
    if args.all_from and args.users:
        raise ValueError("give USER... or --all-from NODE, not both")
    if not args.all_from and not args.users:
        raise ValueError("give USER... or --all-from NODE")
    body: dict[str, Any] = (
        {"all_from": args.all_from} if args.all_from else {"accounts": args.users}
    )
    result = client.call("POST", "/v1/switchover", body)
    lines = []
    if result.get("forwarded"):
        lines += _moved(result["forwarded"], "on the owner")
    lines += _moved(result)
    lines.append(f"done in {result['seconds']} s{_held(result)}")
    return result, "\n".join(lines)


def cmd_failback(client: Client, args: argparse.Namespace) -> Any:
    result = client.call("POST", "/v1/failback", {})
    if not result.get("requested"):
        return result, result.get("detail", "nothing to move")
    partner = result["partner"]
    lines = [f"{r['account']}: home again, epoch {r['epoch']}" for r in partner.get("moved", [])]
    lines += [f"{a}: already home" for a in partner.get("already", [])]
    lines += _uninformed(result, "this node")
    lines += _hooks(partner.get("hooks", []), "on the partner")
    lines += _hooks(result.get("hooks", []))
    lines.append(f"done in {result['seconds']} s{_held(result)}")
    return result, "\n".join(lines)


def _held(result: dict[str, Any]) -> str:
    """How long writes were held, this node's or the owner's (forwarded)."""
    forwarded = result.get("forwarded") or {}
    held = max(float(result.get("writes_held", 0.0)), float(forwarded.get("writes_held", 0.0)))
    return f", writes held {held} s" if held else ""


def cmd_account_move(client: Client, args: argparse.Namespace) -> Any:
    if args.abort:
        return transfer.abort(client, args.user)
    if args.to_pair:
        try:
            return transfer.transfer(client, args.user, args.to_pair, wait=not args.no_wait)
        except transfer.MoveStopped as exc:
            raise ApiError(409, "move stopped", str(exc)) from exc
    row = client.call("POST", f"/v1/accounts/{quote(args.user)}/move", {"to": args.to})
    return (
        row,
        f"{row['account']}: home is now {row['home']} (owner {row['owner']}, epoch {row['epoch']})",
    )


def cmd_route(client: Client, args: argparse.Namespace) -> Any:
    route = client.call("GET", f"/v1/route/{quote(args.user)}")
    return route, (
        f"{route['account']}: {route['owner']} epoch {route['epoch']} imap {route['imap']} "
        f"pop3 {route['pop3']} lmtp {route['lmtp']}"
    )


def cmd_pair_list(client: Client, args: argparse.Namespace) -> Any:
    result = client.call("GET", "/v1/pairs")
    lines = []
    for pair in result["pairs"]:
        owned = ", ".join(f"{k}={v}" for k, v in sorted(pair["owned"].items())) or "-"
        mark = " (this pair)" if pair["pair"] == result["pair"] else ""
        lines.append(f"pair {pair['pair']}{mark}: {pair['accounts']} accounts, owned {owned}")
        for node in pair["nodes"]:
            health = "up" if node["up"] else "DOWN"
            lines.append(
                f"  {node['node']}: {health}, heartbeat {node['heartbeat_age']} s ago"
                f"  imap {node['imap']} pop3 {node['pop3']} lmtp {node['lmtp']} api {node['api']}"
            )
    return result, "\n".join(lines) or "no pairs in the directory"


def cmd_reconcile(client: Client, args: argparse.Namespace) -> Any:
    if not args.user and not args.all:
        raise ValueError("give -u USER or --all")
    result = client.call("POST", "/v1/reconcile", {"account": args.user} if args.user else {})
    text = (
        f"checked {result['accounts_checked']} account(s) in {result['seconds']} s: "
        f"{result['mailboxes_repaired']} mailbox(es) repaired, {result['messages_uploaded']} uploaded, "
        f"{result['messages_copied_back']} copied back"
    )
    for failure in result["failures"]:
        text += f"\n  FAILED {failure}"
    if result["failures"]:
        print(text)
        raise ApiError(502, "reconcile failed", f"{len(result['failures'])} account(s)")
    return result, text


def cmd_spool_sweep(client: Client, args: argparse.Namespace) -> Any:
    result = client.call("POST", "/v1/spool/sweep", {"force": True} if args.force else {})
    text = (
        f"removed {result['removed']} file(s), {result['bytes_freed']} bytes, "
        f"in {result['seconds']} s; {result['condemned']} unnamed file(s) wait out the grace"
    )
    if result["held_back"]:
        text += f"\nHELD BACK: {result['held_back']}"
    for error in result["errors"]:
        text += f"\n  FAILED {error}"
    return result, text


def cmd_index_rebuild(client: Client, args: argparse.Namespace) -> Any:
    if bool(args.user) == bool(args.all):
        raise ConfigError("give -u USER or --all")
    body = {"all": True} if args.all else {"account": args.user}
    result = client.call("POST", "/v1/index/rebuild", body)
    text = (
        f"indexed {result['indexed']} message text(s) of {result['account'] or 'every account'} "
        f"in {result['seconds']} s"
    )
    if result["missing"]:
        text += f"; {result['missing']} unreadable (bytes gone)"
    if result["forgotten"]:
        text += f"; {result['forgotten']} row(s) no live message names dropped"
    return result, text


def cmd_index_status(client: Client, args: argparse.Namespace) -> Any:
    query = f"?account={quote(args.user)}" if args.user else ""
    result = client.call("GET", f"/v1/index{query}")
    text = (
        f"full-text index of {result['account'] or 'the node'}: {result['indexed']} of "
        f"{result['messages']} message text(s) indexed, {result['pending']} pending"
    )
    return result, text


Command = Callable[[Client, argparse.Namespace], Any]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peerctl", description="administer a peerd node")
    parser.add_argument("--version", action="version", version=f"peerctl {release()}")
    parser.add_argument("-c", "--config", help="the node's TOML file (API address and token)")
    parser.add_argument("--api", help="control API base URL, e.g. http://127.0.0.1:18080")
    parser.add_argument("--token", help="bearer token (default: from the config or $PEERD_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")
    sub = parser.add_subparsers(dest="command", required=True)

    account = sub.add_parser("account", help="accounts").add_subparsers(dest="sub", required=True)
    p = account.add_parser("add", help="create an account")
    p.add_argument("user")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--password-file")
    group.add_argument("--password-stdin", action="store_true")
    p.add_argument("--quota", help="quota: bytes or a size like 10M, 1G (default: none)")
    p.add_argument("--owner", help="the node that owns it (default: this node)")
    p.set_defaults(func=cmd_account_add)
    p = account.add_parser("list", help="list accounts")
    p.add_argument("--owner")
    p.set_defaults(func=cmd_account_list)
    p = account.add_parser("del", help="delete an account and all its mail")
    p.add_argument("user")
    p.set_defaults(func=cmd_account_del)
    p = account.add_parser("passwd", help="change a password")
    p.add_argument("user")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--password-file")
    group.add_argument("--password-stdin", action="store_true")
    p.set_defaults(func=cmd_account_passwd)
    p = account.add_parser("import", help="create many accounts from a CSV or passwd-file")
    p.add_argument("file", help="name,password_or_hash,quota lines, or a Dovecot passwd-file")
    p.add_argument("--format", choices=importfile.FORMATS, default="auto")
    p.add_argument("--batch", type=int, default=1000, help="accounts per request (at most 1000)")
    p.set_defaults(func=cmd_account_import)
    p = account.add_parser("rename", help="rename an account (mail, scripts and UIDs follow)")
    p.add_argument("user")
    p.add_argument("new_name")
    p.set_defaults(func=cmd_account_rename)
    p = account.add_parser(
        "move", help="change an account's home node, or move it to another pair (--to-pair)"
    )
    p.add_argument("user")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", help="the new home node, in this pair")
    where.add_argument("--to-pair", help="another pair of the routing directory (run on the owner)")
    where.add_argument(
        "--abort",
        action="store_true",
        help="abandon a move to another pair that has not cut over (run on the owner)",
    )
    p.add_argument("--no-wait", action="store_true", help="start the move and return (--to-pair)")
    p.set_defaults(func=cmd_account_move)
    p = account.add_parser("quota", help="set a quota: bytes, a size like 5M or 1G, or 'none'")
    p.add_argument("user")
    p.add_argument("limit")
    p.add_argument(
        "--messages", help="also limit the number of messages (QUOTA MESSAGE), or 'none'"
    )
    p.set_defaults(func=cmd_account_quota)

    p = sub.add_parser("import-imap", help="copy mail in from another IMAP server (resumable)")
    p.add_argument("--host", required=True, help="the old IMAP server")
    p.add_argument("--port", type=int, help="default 143, or 993 with --tls")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--tls", action="store_true", help="TLS from the start (imaps)")
    group.add_argument("--starttls", action="store_true", help="STARTTLS after connecting")
    p.add_argument("--cafile", help="CA certificates to verify the old server with")
    p.add_argument("--insecure", action="store_true", help="do not verify its certificate")
    p.add_argument("--user", help="the old server's login name")
    p.add_argument("--password-file", required=True, help="its password (the admin's with --admin)")
    p.add_argument("--admin", help="log in as this admin for the user (SASL PLAIN authcid)")
    p.add_argument("--account", help="the account here that receives the mail")
    p.add_argument("--bulk", help="a file of ACCOUNT REMOTE_USER PASSWORD lines")
    p.add_argument("--batch", type=int, default=200, help="messages per request (at most 500)")
    p.set_defaults(func=cmd_import_imap)

    mailbox = sub.add_parser("mailbox", help="mailboxes").add_subparsers(dest="sub", required=True)
    p = mailbox.add_parser("list", help="an account's mailboxes")
    p.add_argument("user")
    p.set_defaults(func=cmd_mailbox_list)
    p = mailbox.add_parser("show", help="one mailbox's records: uid, GUID, flags, modseq")
    p.add_argument("user")
    p.add_argument("mailbox")
    p.add_argument("--expunged", action="store_true", help="include expunged records")
    p.set_defaults(func=cmd_mailbox_show)

    p = sub.add_parser("replicate", help="sync to the partner now (like sync_client -u/-m/-A)")
    p.add_argument("-u", "--user", help="the account")
    p.add_argument("-A", "--all", action="store_true", help="every account this node owns")
    p.add_argument(
        "-n", "--channel", help="to this backup channel ([sync.channels.NAME]), not the partner"
    )
    # sync_client -r is the daemon's rolling worker here: said so, not taken.
    p.add_argument("-r", dest="rolling", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-m", "--mailbox", action="append", help="only this mailbox (repeatable)")
    p.add_argument("-S", "--server", help="the partner's sync listener host[:port]")
    p.add_argument("-z", "--compress", action="store_true", help="compress the traffic")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v steps, -v -v requests")
    p.set_defaults(func=cmd_replicate)
    p = sub.add_parser("synclog", help="queue a row in the rolling sync log (like cyr_synclog)")
    p.add_argument("-u", "--user", required=True)
    p.add_argument("-m", "--mailbox", action="append")
    p.set_defaults(func=cmd_synclog)

    p = sub.add_parser("owner", help="an account's owner, home, epoch and state")
    p.add_argument("user")
    p.set_defaults(func=cmd_owner)
    p = sub.add_parser("accounts", help="accounts with their owners (account list)")
    p.add_argument("--owner")
    p.set_defaults(func=cmd_account_list)
    p = sub.add_parser("route", help="where proxies send an account")
    p.add_argument("user")
    p.set_defaults(func=cmd_route)
    pair = sub.add_parser("pair", help="the pairs of the routing directory").add_subparsers(
        dest="sub", required=True
    )
    p = pair.add_parser("list", help="every pair, its nodes, accounts and health")
    p.set_defaults(func=cmd_pair_list)
    p = sub.add_parser("failover", help="take every account of the dead partner")
    p.add_argument("--force", action="store_true", help="even though the partner answers")
    p.set_defaults(func=cmd_failover)
    p = sub.add_parser("switchover", help="move accounts to the other node (both up)")
    p.add_argument("users", nargs="*")
    p.add_argument("--all-from", help="every account this node owns... or that NODE owns")
    p.set_defaults(func=cmd_switchover)
    p = sub.add_parser("failback", help="bring home every account whose home is this node")
    p.set_defaults(func=cmd_failback)

    p = sub.add_parser(
        "reconcile", help="full compare with the partner now, repairing what differs"
    )
    p.add_argument("-u", "--user")
    p.add_argument("--all", action="store_true")
    p.set_defaults(func=cmd_reconcile)

    spool = sub.add_parser("spool", help="the message spool").add_subparsers(
        dest="sub", required=True
    )
    p = spool.add_parser("sweep", help="remove the files no live message names (after a grace)")
    p.add_argument("--force", action="store_true", help="remove even when most files look unnamed")
    p.set_defaults(func=cmd_spool_sweep)

    index = sub.add_parser("index", help="the full-text index of SEARCH BODY/TEXT").add_subparsers(
        dest="sub", required=True
    )
    p = index.add_parser("rebuild", help="extract the text of an account's messages again")
    p.add_argument("-u", "--user", help="this account's messages")
    p.add_argument("--all", action="store_true", help="every account's")
    p.set_defaults(func=cmd_index_rebuild)
    p = index.add_parser("status", help="how many messages the index holds")
    p.add_argument("-u", "--user", help="only this account's messages")
    p.set_defaults(func=cmd_index_status)

    p = sub.add_parser(
        "scrub", help="read every message body, repair damaged ones from the partner"
    )
    p.add_argument("-u", "--user", help="only this account's messages")
    p.add_argument("--background", action="store_true", help="start it and return at once")
    p.add_argument("--rate", help="bytes per second instead of [scrub] rate (20M; 0: full speed)")
    p.set_defaults(func=cmd_scrub)
    p = sub.add_parser("check-db", help="run the database's own integrity check now")
    p.add_argument("--full", action="store_true", help="SQLite integrity_check too")
    p.set_defaults(func=cmd_check_db)

    p = sub.add_parser("status", help="both nodes' status (this node's, then its partner's)")
    p.add_argument("-u", "--user", help="status of one account")
    p.add_argument("--local", action="store_true", help="this node only")
    p.set_defaults(func=cmd_status)
    return parser


def make_client(args: argparse.Namespace) -> Client:
    base, token = args.api, args.token or os.environ.get("PEERD_TOKEN", "")
    partner: Client | None = None
    if args.config:
        config = load_config(args.config)
        if base is None and config.listen.http is not None:
            base = f"http://{config.listen.http}"
        token = token or config.api.token
        if config.partner.api and args.api is None:
            partner = Client(config.partner.api, config.partner.token or config.api.token, 10.0)
    if not base and args.config:
        # "give -c FILE" would be no help to one who did.
        raise ConfigError(
            f"{args.config} has no [listen] http: the node serves no control API;"
            " set it (and restart the node), or give --api URL"
        )
    if not base:
        raise ConfigError("give -c FILE or --api URL")
    return Client(base, token, partner=partner)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C (at a password prompt, or waiting for a long command): one
        # line, no traceback. A request already sent may still complete.
        print("\npeerctl: interrupted", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # `peerctl status | head`: the reader left; nothing to say to it.
        # Point stdout at /dev/null so the interpreter's final flush is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_USAGE


PROGRESS_AFTER = 2.0  # seconds before a command says it is still running
# The commands that can run for long (one request each, answered at the end).
SLOW_COMMANDS = frozenset(
    {
        "failback",
        "failover",
        "switchover",
        "reconcile",
        "replicate",
        "scrub",
        "spool sweep",
        "check-db",
        "account move",
        "import-imap",
    }
)


def _with_progress(what: str, run: Callable[[], Any], note: Callable[[], str] = str) -> Any:
    """``run()``; if it takes longer than :data:`PROGRESS_AFTER`, a progress
    line on stderr: rewritten every second on a terminal, else one line now
    and then every 10 s (a log or a pipe should not fill with them).
    ``note()`` says where a command is (``import-imap``: the account and
    mailbox, messages done)."""
    outcome: list[Any] = []

    def work() -> None:
        try:
            outcome.append((True, run()))
        except BaseException as exc:  # handed to the main thread as is
            outcome.append((False, exc))

    worker = threading.Thread(target=work, name="peerctl", daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(PROGRESS_AFTER)
    tty = sys.stderr.isatty()
    shown = False
    while worker.is_alive():
        elapsed = _duration(time.monotonic() - started)
        where = note()
        where = f" ({where})" if where else ""
        if tty:
            print(
                f"\rpeerctl: {what}: running for {elapsed}...{where}\033[K",
                end="",
                file=sys.stderr,
            )
            shown = True
        else:
            print(f"peerctl: {what}: still running after {elapsed}{where}", file=sys.stderr)
        sys.stderr.flush()
        worker.join(1.0 if tty else 10.0)
    if shown:
        print("\r\033[K", end="", file=sys.stderr)
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        client = make_client(args)
        what = " ".join(x for x in (args.command, getattr(args, "sub", None)) if x)
        if what in SLOW_COMMANDS and not getattr(args, "to_pair", None):  # it shows its own
            progress = args.progress = imapimport.Progress()
            result, text = _with_progress(what, lambda: args.func(client, args), progress.line)
        else:  # e.g. a password prompt: in this thread, whose Ctrl-C restores the terminal
            result, text = args.func(client, args)
    except EOFError:
        print("\npeerctl: no password given (end of input)", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"peerctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"peerctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as exc:
        if exc.code == NO_PARTNER:  # the command cannot work on this node at all
            print(f"peerctl: {exc.detail}", file=sys.stderr)
            return EXIT_USAGE
        print(f"peerctl: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except ConnectionError as exc:
        print(f"peerctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    elif text:
        print(text)
    sys.stdout.flush()  # a closed pipe shows here, inside main's handler
    return 0


if __name__ == "__main__":
    sys.exit(main())
