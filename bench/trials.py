"""SIGKILL and partition trials against a real pair, and what each left behind (issue 15).

How this works: one pair (alpha, beta; rolling replication) runs through
every trial, its nodes joined only through :mod:`bench.partition` links.
Each trial creates a fresh account on alpha (so its checks read only its own
mail), waits until beta knows it, then runs a continuous LMTP load
(:class:`~tests.harness.clients.SteadyLoad`, alpha first, beta as the second
next hop; only a 250 counts as acknowledged) and an IMAP client setting and
clearing flags on alpha, and injects one fault, in turn:

- ``kill-owner``: SIGKILL alpha, start it again;
- ``kill-replica``: SIGKILL beta, start it again;
- ``partition``: cut every link for 0.5 to 2 s, then heal;
- ``split-brain``: cut; beta fails over (it cannot reach alpha) and takes
  mail on its side while alpha goes on taking mail on its own; heal; alpha
  adopts beta's newer row and hands over what it took; ``failback`` on alpha
  brings the accounts home.

After the fault the load stops; the trial waits (up to ``settle`` seconds)
until both sync logs are empty and the two INBOXes agree, then counts:
acknowledged deliveries missing on the owner (**lost**), subjects stored
more than once (**duplicated**), and whether the two nodes differ in
records (UID and GUID), flags, or modseqs (each record's and the mailbox's
HIGHESTMODSEQ) (**divergent**). Every second trial then damages one body on
one node (a byte flipped, a file cut in half, or a file gone, in turn) and
runs ``POST /v1/scrub`` for that account there: **damaged-and-repaired**
counts the bodies whose file is whole again (its SHA-1 equals its GUID).
"""

from __future__ import annotations

import contextlib
import hashlib
import imaplib
import random
import threading
import time
import urllib.error
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.partition import Links, wire_pair
from tests.harness.clients import SteadyLoad
from tests.nodes import Node, make_pair, running
from tests.procs import wait_until

__all__ = ["KINDS", "Tally", "run_trials"]

KINDS = ("kill-owner", "kill-replica", "partition", "split-brain")
DAMAGES = ("flip", "cut", "remove")


@dataclass
class Tally:
    """The sums over all trials (and the trials that went wrong, by number)."""

    trials: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    kind_seconds: dict[str, float] = field(default_factory=dict)
    acknowledged: int = 0
    deferred: int = 0
    lost: int = 0
    duplicated: int = 0
    divergent_records: int = 0
    divergent_flags: int = 0
    divergent_modseqs: int = 0
    unsettled: int = 0  # trials whose sync logs did not drain in time
    damaged: int = 0
    repaired: int = 0
    flag_changes: int = 0
    links_broken: int = 0
    logs: dict[str, int] = field(default_factory=dict)  # tracebacks, ERROR lines
    error_lines: list[str] = field(default_factory=list)  # the first few ERROR lines
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _known(node: Node, account: str) -> bool:
    try:
        return bool(node.call("GET", f"/v1/owner/{account}"))
    except (urllib.error.URLError, OSError):
        return False


def _owner(node: Node, account: str) -> str:
    return str(node.call("GET", f"/v1/owner/{account}")["owner"])


def _depth(node: Node) -> int:
    return int(node.call("GET", "/v1/status")["sync_log_depth"])


def _inbox(node: Node, account: str) -> dict[str, Any]:
    return dict(node.mailbox(account))


def _spool(node: Node, guid: str) -> Path:
    return node.workdir / "var" / node.name / "spool" / guid[:2] / guid


class Flagger:
    """An IMAP client on alpha setting and clearing ``\\Flagged`` on random
    messages until stopped; failures (alpha killed, account held) are skipped."""

    def __init__(self, node: Node, account: str, seed: int) -> None:
        self.node, self.account = node, account
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.changes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Flagger:
        self.thread.start()
        return self

    def join(self) -> None:
        self.stop.set()
        self.thread.join(60)

    def _run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError, imaplib.IMAP4.error, EOFError):
                imap = imaplib.IMAP4("127.0.0.1", self.node.port("imap"), timeout=10)
                try:
                    imap.login(self.account, "secret")
                    imap.select("INBOX")
                    while not self.stop.wait(0.1):
                        typ, data = imap.uid("SEARCH", "ALL")
                        uids = data[0].split() if typ == "OK" and data[0] else []
                        if not uids:
                            continue
                        uid = self.rng.choice(uids).decode()
                        sign = self.rng.choice("+-")
                        typ, _ = imap.uid("STORE", uid, f"{sign}FLAGS.SILENT", "(\\Flagged)")
                        self.changes += typ == "OK"
                finally:
                    with contextlib.suppress(OSError, imaplib.IMAP4.error, EOFError):
                        imap.logout()
            self.stop.wait(0.2)


class Trials:
    def __init__(self, alpha: Node, beta: Node, links: Links, seed: int, settle: float) -> None:
        self.alpha, self.beta, self.links = alpha, beta, links
        self.rng = random.Random(seed)
        self.settle = settle
        self.tally = Tally()
        self.extra: SteadyLoad | None = None  # the split-brain trial's load on beta

    # -- faults ------------------------------------------------------------

    def _restart(self, node: Node) -> None:
        node.kill9()
        time.sleep(self.rng.uniform(0.1, 0.5))
        node.start(timeout=120)

    def _partition(self) -> None:
        self.links.cut()
        time.sleep(self.rng.uniform(0.5, 2.0))
        self.links.heal()

    def _split_brain(self, account: str, n: int) -> None:
        self.links.cut()
        try:
            self.beta.call("POST", "/v1/failover", {})
            # Both sides take mail for the account now: alpha still thinks it
            # owns it (the load's first hop), beta owns it at a higher epoch.
            other = SteadyLoad([self.beta.port("lmtp")], account, rate=10, tag=f"t{n}b").start()
            time.sleep(self.rng.uniform(0.5, 2.0))
            other.join()
            self.extra = other
        finally:
            self.links.heal()
        wait_until(lambda: _owner(self.alpha, account) == "beta", 60, "alpha adopts beta's row")

    def _failback(self) -> None:
        deadline = time.monotonic() + 120
        while True:
            try:
                answer = self.alpha.call("POST", "/v1/failback", {})
                if answer.get("partner_informed", True) is not False:
                    return
            except urllib.error.HTTPError as exc:
                exc.close()
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    # -- one trial ---------------------------------------------------------

    def trial(self, n: int, kind: str) -> None:
        alpha, beta = self.alpha, self.beta
        account = f"t{n}"
        alpha.add_account(account)
        wait_until(lambda: _known(beta, account), 60, f"{account} on beta")
        self.extra = None
        load = SteadyLoad(
            [alpha.port("lmtp"), beta.port("lmtp")], account, rate=20, threads=2, tag=f"t{n}"
        ).start()
        flagger = Flagger(alpha, account, n).start()
        try:
            time.sleep(self.rng.uniform(0.5, 1.5))
            if kind == "kill-owner":
                self._restart(alpha)
            elif kind == "kill-replica":
                self._restart(beta)
            elif kind == "partition":
                self._partition()
            else:
                self._split_brain(account, n)
            time.sleep(0.5)
        finally:
            load.join()
            flagger.join()
        if kind == "split-brain":
            self._failback()
        self.tally.by_kind[kind] += 1
        self.tally.flag_changes += flagger.changes
        acked = list(load.acked) + (self.extra.acked if self.extra else [])
        self.tally.acknowledged += len(acked)
        self.tally.deferred += len(load.deferred) + (len(self.extra.deferred) if self.extra else 0)
        self._check(n, account, acked)
        if n % 2 == 0:
            self._damage(n, account)

    def _settled(self, account: str) -> bool:
        if _depth(self.alpha) or _depth(self.beta):
            return False
        a, b = _inbox(self.alpha, account), _inbox(self.beta, account)
        return bool(a["messages"] == b["messages"] and a["highestmodseq"] == b["highestmodseq"])

    def _check(self, n: int, account: str, acked: list[str]) -> None:
        alpha, beta = self.alpha, self.beta
        try:
            wait_until(lambda: self._settled(account), self.settle, f"t{n} settled")
        except TimeoutError:
            self.tally.unsettled += 1
            self.tally.failures.append(f"trial {n}: sync logs or INBOXes still differ")
        owner = alpha if _owner(alpha, account) == "alpha" else beta
        stored = Counter(owner.audit(account))
        lost = [s for s in acked if not stored[s]]
        dups = [s for s, c in stored.items() if c > 1]
        self.tally.lost += len(lost)
        self.tally.duplicated += sum(stored[s] - 1 for s in dups)
        if lost:
            self.tally.failures.append(f"trial {n}: lost {lost[:5]}")
        if dups:
            self.tally.failures.append(f"trial {n}: duplicated {dups[:5]}")
        a, b = _inbox(alpha, account), _inbox(beta, account)
        ra = {(m["uid"], m["guid"]): m for m in a["messages"]}
        rb = {(m["uid"], m["guid"]): m for m in b["messages"]}
        if set(ra) != set(rb):
            self.tally.divergent_records += 1
            self.tally.failures.append(f"trial {n}: records differ {set(ra) ^ set(rb)}")
        shared = set(ra) & set(rb)
        if any(sorted(ra[k]["flags"]) != sorted(rb[k]["flags"]) for k in shared):
            self.tally.divergent_flags += 1
            self.tally.failures.append(f"trial {n}: flags differ")
        if (
            any(ra[k]["modseq"] != rb[k]["modseq"] for k in shared)
            or a["highestmodseq"] != b["highestmodseq"]
        ):
            self.tally.divergent_modseqs += 1
            self.tally.failures.append(
                f"trial {n}: modseqs differ (HIGHESTMODSEQ {a['highestmodseq']} / "
                f"{b['highestmodseq']})"
            )
        beta.audit(account)  # the replica's own files and bookkeeping are whole

    def _damage(self, n: int, account: str) -> None:
        records = self.alpha.records(account)
        if not records:
            return
        node = self.beta if (n // 2) % 2 == 0 else self.alpha
        how = DAMAGES[(n // 2) % len(DAMAGES)]
        guid = str(self.rng.choice(records)["guid"])
        path = _spool(node, guid)
        data = path.read_bytes()
        if how == "flip":
            flipped = bytearray(data)
            flipped[len(data) // 2] ^= 0x01
            path.write_bytes(bytes(flipped))
        elif how == "cut":
            path.write_bytes(data[: len(data) // 2])
        else:
            path.unlink()
        self.tally.damaged += 1
        result = node.call("POST", "/v1/scrub", {"account": account, "rate": 0})
        whole = path.exists() and hashlib.sha1(path.read_bytes()).hexdigest() == guid
        if whole and guid in result["repaired"]:
            self.tally.repaired += 1
        else:
            self.tally.failures.append(f"trial {n}: {how} {guid} on {node.name} not repaired")


def run_trials(
    workdir: Path, trials: int, seed: int = 15, settle: float = 60.0, progress: bool = True
) -> Tally:
    """``trials`` fault trials (the kinds in turn) on one pair; the tally."""
    alpha, beta = make_pair(workdir)
    links = wire_pair(alpha, beta)
    runner = Trials(alpha, beta, links, seed, settle)
    started = time.monotonic()
    try:
        with running(alpha, beta):
            for n in range(trials):
                kind = KINDS[n % len(KINDS)]
                began = time.monotonic()
                try:
                    runner.trial(n, kind)
                except Exception as exc:  # one trial's trouble is a finding, not the end
                    runner.tally.failures.append(f"trial {n} ({kind}): {exc!r}")
                    links.heal()
                    for node in (alpha, beta):
                        if not node.healthy():
                            with contextlib.suppress(Exception):
                                node.start(timeout=120)
                runner.tally.trials += 1
                spent = runner.tally.kind_seconds.get(kind, 0.0) + time.monotonic() - began
                runner.tally.kind_seconds[kind] = spent
                if progress and (n + 1) % 10 == 0:
                    t = runner.tally
                    print(
                        f"  ... {n + 1} trials, {t.acknowledged} acknowledged, {t.lost} lost, "
                        f"{len(t.failures)} findings, {time.monotonic() - started:.0f} s",
                        flush=True,
                    )
    finally:
        links.close()
    runner.tally.links_broken = links.broken
    runner.tally.seconds = time.monotonic() - started
    runner.tally.logs, runner.tally.error_lines = _log_findings(alpha, beta)
    return runner.tally


def _log_findings(*nodes: Node) -> tuple[dict[str, int], list[str]]:
    """Tracebacks and ERROR lines in the daemons' logs over all the trials
    (counts, and the first five ERROR lines)."""
    out: Counter[str] = Counter()
    errors: list[str] = []
    for node in nodes:
        for line in node.log.read_text(errors="replace").splitlines():
            if line.startswith("Traceback"):
                out["tracebacks"] += 1
            if " ERROR " in line:
                out["error lines"] += 1
                if len(errors) < 5:
                    errors.append(line[:300])
            if "ConnectionResetError" in line:
                out["ConnectionResetError lines"] += 1
    return dict(out), errors
