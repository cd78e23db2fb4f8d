"""``peerctl account move USER --to-pair NAME``: start a move between pairs
and follow it to the cut-over, one progress line on stderr.

The move runs in the owner node (it survives restarts of either side); this
command starts it, or continues an unfinished one, then asks for its step
every half second until the target pair serves the account. Interrupting the
command does not stop the move: run it again to follow it. ``--abort``
abandons a move that has not cut over.
"""

from __future__ import annotations

import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["MoveStopped", "abort", "progress_line", "transfer"]

POLL = 0.5


class MoveStopped(Exception):
    """The node gave the move up (the account changed hands meanwhile)."""


class Caller(Protocol):
    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any: ...


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def progress_line(move: dict[str, Any]) -> str:
    """One line: the step, then what it has done so far."""
    parts = [f"{move['account']} to pair {move['to_pair']} (node {move['target']}): {move['step']}"]
    if move.get("rounds"):
        parts.append(f"{move['rounds']} copy round(s), {move.get('uploaded', 0)} message(s) sent")
    if move.get("mailbox_bytes"):
        parts.append(
            f"{_mb(int(move['bytes_sent']))} on the wire for {_mb(int(move['mailbox_bytes']))} of mail"
        )
    if move.get("last_error"):
        parts.append(f"retrying: {move['last_error']}")
    return ", ".join(parts)


def _summary(move: dict[str, Any]) -> str:
    wire = int(move["bytes_sent"])
    mail = int(move["mailbox_bytes"])
    ratio = f" ({wire / mail:.2f} of the mailbox bytes)" if mail else ""
    return (
        f"{move['account']}: served by pair {move['to_pair']} (node {move['target']}) at epoch "
        f"{int(move['epoch']) + 1}; writes held {move['writes_held']} s; {wire} bytes on the wire"
        f"{ratio}; the copy on pair {move['from_pair']} is deleted after {move['delete_after']}"
    )


def transfer(
    client: Caller,
    user: str,
    to_pair: str,
    wait: bool = True,
    show: Callable[[str], None] | None = None,
) -> tuple[Any, str]:
    path = f"/v1/accounts/{urllib.parse.quote(user, safe='')}/transfer"
    move = client.call("POST", path, {"to_pair": to_pair})
    if not wait:
        return move, progress_line(move)
    tty = sys.stderr.isatty()
    say = show or (lambda line: _stderr(line, tty))
    last = ""
    while move["step"] not in ("flipped", "done"):
        if not move.get("running") and move.get("note"):
            raise MoveStopped(f"the move of {user} stopped: {move['note']}")
        line = progress_line(move)
        if line != last:
            say(line)
            last = line
        time.sleep(POLL)
        move = client.call("GET", path)
    if tty and show is None:
        print("\r\033[K", end="", file=sys.stderr)
    return move, _summary(move)


def abort(client: Caller, user: str) -> tuple[Any, str]:
    """``account move USER --abort``: abandon a move that has not cut over."""
    path = f"/v1/accounts/{urllib.parse.quote(user, safe='')}/transfer"
    move = client.call("DELETE", path)
    return move, (
        f"{move['account']}: the move to pair {move['to_pair']} is aborted; the copy on"
        f" {move['target']} is deleted and pair {move['from_pair']} ({move['source']}) serves it"
    )


def _stderr(line: str, tty: bool) -> None:
    if tty:
        print(f"\rpeerctl: {line}\033[K", end="", file=sys.stderr)
    else:
        print(f"peerctl: {line}", file=sys.stderr)
    sys.stderr.flush()
