"""Moving an account between pairs (peerctl account move USER --to-pair NAME):
two real pairs (four daemons) sharing one real PostgreSQL directory, mail
delivered all along with smtplib.LMTP to whichever node accepts it, and a
node of either pair SIGKILLed at each step of the move (held there by a
failpoint, :mod:`peerd.node.failpoints`), restarted, the move resumed.
Every acknowledged message must be in the target pair exactly once, and the
source pair must no longer hold the account.

The four daemons are started once for the module; each case moves its own
account. The failpoints are read from a file the test rewrites, so a case
needs no restart but the one of the node it kills."""

from __future__ import annotations

import collections
import imaplib
import smtplib
import threading
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness.postgres import PgServer
from tests.nodes import Node, idling, make_pair, peerctl
from tests.procs import free_port, wait_until

GRACE = 2.0  # [routing] transfer_grace in these pairs


@dataclass
class Site:
    one: tuple[Node, Node]
    two: tuple[Node, Node]
    failpoints: Path

    @property
    def nodes(self) -> tuple[Node, ...]:
        return (*self.one, *self.two)

    def fail_at(self, spec: str) -> None:
        self.failpoints.write_text(spec)


def _pair(workdir: Path, name: str, directory: str, failpoints: Path) -> tuple[Node, Node]:
    ports = {"alpha": free_port(), "beta": free_port()}
    nodes = make_pair(
        workdir,
        {
            node: {
                "listen": {"socketmap": f"127.0.0.1:{ports[node]}"},
                "routing": {
                    "directory_url": directory,
                    "pair": name,
                    "directory_cache_ttl": "0.5s",
                    "directory_heartbeat": "0.5s",
                    "transfer_grace": f"{GRACE}s",
                },
            }
            for node in ports
        },
    )
    for node in nodes:
        node.extra_env["PEERD_FAILPOINTS"] = f"@{failpoints}"
    return nodes


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pg_server: PgServer) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("transfer")
    url = pg_server.create_database()
    failpoints = root / "failpoints"
    one = _pair(root / "one", "one", url, failpoints)
    two = _pair(root / "two", "two", url, failpoints)
    try:
        for node in (*one, *two):
            node.start(wait=False)
        for node in (*one, *two):
            node.wait_ready()
        yield Site(one, two, failpoints)
    finally:
        # All four at once (each stops by its pid): a stop waits out a drain.
        stops = [threading.Thread(target=node.stop) for node in (*one, *two)]
        for thread in stops:
            thread.start()
        for thread in stops:
            thread.join()


def _message(subject: str) -> bytes:
    return f"Subject: {subject}\r\nFrom: s@example.test\r\n\r\n{subject} body\r\n".encode()


@dataclass
class Deliverer:
    """Delivers ``TAG-N`` to ``account`` without pause, like an MTA that tries
    every node it knows until one accepts; a number is never sent twice (a
    message whose answer was lost may be stored, and must not be doubled)."""

    nodes: tuple[Node, ...]
    account: str
    tag: str
    acked: list[str] = field(default_factory=list)
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Deliverer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            subject = f"{self.tag}-{n}"
            n += 1
            if self._deliver(subject):
                self.acked.append(subject)
            else:
                time.sleep(0.05)

    def _deliver(self, subject: str) -> bool:
        for node in self.nodes:
            try:
                with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=10) as lmtp:
                    lmtp.sendmail(
                        "s@example.test", [f"{self.account}@example.test"], _message(subject)
                    )
                    return True
            except smtplib.SMTPRecipientsRefused as exc:
                code = next(iter(exc.recipients.values()))[0]
                self.refused[f"{node.workdir.name}/{node.name} {code}"] += 1
            except (smtplib.SMTPException, OSError):
                continue
        return False

    def wait_for(self, count: int, timeout: float = 20) -> None:
        wait_until(lambda: len(self.acked) >= count, timeout, f"{count} messages acknowledged")


def _move(node: Node, account: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = node.call("GET", f"/v1/accounts/{account}/transfer")
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise
    return found


def _paused(node: Node, failpoint: str) -> int:
    return node.log.read_text(errors="replace").count(f"failpoint {failpoint}: pausing")


def _retries(node: Node, account: str) -> int:
    """How often the node's move of ``account`` failed a step and waits to retry."""
    lines = node.log.read_text(errors="replace").splitlines()
    return sum(1 for line in lines if f"move of {account}: " in line and "(again in" in line)


def _wait_retried(node: Node, account: str, before: int) -> None:
    wait_until(lambda: _retries(node, account) > before, 30, "the source retries")


def _wait_paused(node: Node, failpoint: str, before: int) -> None:
    wait_until(lambda: _paused(node, failpoint) > before, GRACE + 30, f"paused at {failpoint}")


def _exists(node: Node, account: str) -> bool:
    try:
        node.call("GET", f"/v1/accounts/{account}")
    except urllib.error.HTTPError:
        return False
    return True


def _check_moved(site: Site, account: str, acked: list[str]) -> None:
    (one_a, one_b), (two_a, two_b) = site.one, site.two
    subjects = two_a.audit(account)
    counts = collections.Counter(subjects)
    doubled = [s for s, n in counts.items() if n > 1]
    assert not doubled, doubled
    lost = sorted(set(acked) - set(subjects))
    assert not lost, f"acknowledged and lost: {lost}"
    # The target's partner gets it by the target pair's rolling replication.
    wait_until(lambda: sorted(two_b.audit(account)) == sorted(two_a.audit(account)), 30, "two/beta")
    # The source pair holds it no more; its lookups name the target pair.
    assert not _exists(one_a, account) and not _exists(one_b, account)
    route = one_b.call("GET", f"/v1/route/{account}")
    assert (route["pair"], route["owner"], route["source"]) == ("two", "alpha", "directory")
    assert route["lmtp"] == f"127.0.0.1:{two_a.ports['lmtp']}"
    with (
        smtplib.LMTP("127.0.0.1", one_a.ports["lmtp"], timeout=10) as lmtp,
        pytest.raises(smtplib.SMTPRecipientsRefused),
    ):
        lmtp.sendmail("s@example.test", [f"{account}@example.test"], _message("late"))


def test_move_with_peerctl_copies_cuts_over_and_deletes_the_source(site: Site) -> None:
    (one_a, one_b), (two_a, _) = site.one, site.two
    # The source's copy stays a while after the grace: long enough to see
    # the source refuse a login for an account it still holds.
    site.fail_at("transfer.delete=8")
    one_a.add_account("mover")
    wait_until(lambda: _exists(one_b, "mover"), 10, "replicated in pair one")
    wait_until(
        lambda: two_a.call("GET", "/v1/route/mover")["pair"] == "one", 10, "in the directory"
    )
    sock, stream = idling(one_a, "mover")
    try:
        with Deliverer(site.nodes, "mover", "plain") as mail:
            mail.wait_for(30)
            result = peerctl(one_a, "account", "move", "mover", "--to-pair", "two")
            assert result.returncode == 0, result.stderr
            assert "mover: served by pair two (node alpha) at epoch 2" in result.stdout
            assert "peerctl: mover to pair two (node alpha): copy" in result.stderr
            # The open session was closed at the cut-over (RFC 5530 UNAVAILABLE).
            assert b"* BYE [UNAVAILABLE]" in stream.read()
            # Until the grace ends the source still has the account, and
            # refuses its logins; the target serves them.
            refused = imaplib.IMAP4("127.0.0.1", one_a.ports["imap"], timeout=20)
            try:
                with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
                    refused.login("mover", "secret")
            finally:
                refused.logout()
            # Its lookups there already follow the directory.
            route = one_a.call("GET", "/v1/route/mover")
            assert (route["pair"], route["source"]) == ("two", "directory"), route
            site.fail_at("")
            mail.wait_for(len(mail.acked) + 20)
        client = imaplib.IMAP4("127.0.0.1", two_a.ports["imap"], timeout=20)
        client.login("mover", "secret")
        typ, data = client.select("INBOX")
        assert typ == "OK" and int(data[0] or 0) >= len(mail.acked)
        client.logout()
    finally:
        stream.close()
        sock.close()
    move = _move(one_a, "mover")
    assert move is not None and move["step"] in ("flipped", "done")
    # Well under a second on a quiet host (bench/move.py measures it); the
    # bound leaves room for a loaded one.
    assert 0 < move["writes_held"] <= 3.0, move
    assert move["bytes_sent"] > 0 and move["mailbox_bytes"] > 0
    wait_until(lambda: (_move(one_a, "mover") or {}).get("step") == "done", GRACE + 15, "deleted")
    _check_moved(site, "mover", mail.acked)
    # A second move of the same account is refused where it no longer lives.
    again = peerctl(one_a, "account", "move", "mover", "--to-pair", "two")
    assert again.returncode != 0


# Each case: the steps (failpoint the source pauses at, node killed there) of
# one move, in order. Together they kill a node of either pair at each step.
CASES = {
    # The move recorded, nothing copied: the source dies; then the target
    # dies during the final delta (writes held; the cut-over is undone).
    "copy-source,held-target": [("transfer.copy", "one/alpha"), ("transfer.held", "two/alpha")],
    # The target dies between copy rounds; then the source dies after its
    # own flip, before the target is told.
    "copied-target,flipped-source": [
        ("transfer.copied", "two/alpha"),
        ("transfer.flipped_here", "one/alpha"),
    ],
    # The source dies with writes held; then the source's partner dies
    # before the source's copy is deleted.
    "held-source,delete-partner": [("transfer.held", "one/alpha"), ("transfer.delete", "one/beta")],
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_node_killed_at_each_step_loses_no_acknowledged_message(site: Site, case: str) -> None:
    (one_a, one_b) = site.one
    nodes = {f"{n.workdir.name}/{n.name}": n for n in site.nodes}
    account = case.replace(",", "-")
    site.fail_at("")
    one_a.add_account(account)
    wait_until(lambda: _exists(one_b, account), 10, "replicated in pair one")
    wait_until(
        lambda: site.two[0].call("GET", f"/v1/route/{account}")["pair"] == "one",
        10,
        "in the directory",
    )
    steps = CASES[case]

    def fail_at(n: int) -> int:
        """Set step ``n``'s failpoint (none past the last); the pauses so far."""
        if n == len(steps):
            site.fail_at("")
            return 0
        failpoint, _ = steps[n]
        # The source waits there until the failpoint is lifted (the victim
        # killed meanwhile); then goes on, or is dead itself.
        site.fail_at(f"{failpoint}=60")
        return _paused(one_a, failpoint)

    with Deliverer(site.nodes, account, account) as mail:
        mail.wait_for(20)
        before = fail_at(0)
        one_a.call("POST", f"/v1/accounts/{account}/transfer", {"to_pair": "two"})
        for n, (failpoint, victim) in enumerate(steps):
            _wait_paused(one_a, failpoint, before)
            if failpoint == "transfer.held":
                _assert_held(one_a, account)
            killed = nodes[victim]
            retries = _retries(one_a, account)
            killed.kill9()
            # The next step's failpoint (this one lifted) before the
            # restart: a restarted source resumes the move at once.
            before = fail_at(n + 1)
            if killed is not one_a:
                # Back only once the source, going on, has found it dead.
                _wait_retried(one_a, account, retries)
            killed.start(wait=False)
            killed.wait_ready()
        wait_until(
            lambda: (_move(one_a, account) or {}).get("step") == "done", GRACE + 45, "move done"
        )
        mail.wait_for(len(mail.acked) + 5)
    move = _move(one_a, account)
    # (writes_held here may include a failpoint's pause: a final delta with
    # nothing to send needs no answer from a target killed meanwhile.)
    assert move is not None and move["writes_held"] > 0, move
    _check_moved(site, account, mail.acked)


def _assert_held(source: Node, account: str) -> None:
    """Writes are held: the source answers LMTP with a temporary failure that
    says why. At RCPT as a rule; after DATA when the LMTP worker still had a
    recent "yes" for the recipient (the fence runs again in the delivery's
    own transaction): either way the message is not taken."""
    with smtplib.LMTP("127.0.0.1", source.ports["lmtp"], timeout=10) as lmtp:
        try:
            lmtp.sendmail("s@example.test", [f"{account}@example.test"], _message("x"))
        except smtplib.SMTPRecipientsRefused as refusal:
            code, text = next(iter(refusal.recipients.values()))
        except smtplib.SMTPDataError as refusal:
            error = refusal.smtp_error
            code, text = refusal.smtp_code, error if isinstance(error, bytes) else error.encode()
        else:
            pytest.fail("a delivery was taken while writes were held")
    assert code == 451 and text.startswith(b"4.3.0 Account is being handed over"), (code, text)


def _deliver_to(node: Node, account: str, subject: str) -> int:
    with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=10) as lmtp:
        try:
            lmtp.sendmail("s@example.test", [f"{account}@example.test"], _message(subject))
        except smtplib.SMTPRecipientsRefused as exc:
            return int(next(iter(exc.recipients.values()))[0])
    return 250


@pytest.mark.parametrize("failpoint", ["transfer.copied", "transfer.held"])
def test_abort_before_the_cut_over_keeps_the_account_at_the_source(
    site: Site, failpoint: str
) -> None:
    """``account move --abort`` while copying, and with writes held: the
    target's copy goes, the source serves (writes taken again), the
    directory still routes to the source pair, no acknowledged mail lost."""
    (one_a, one_b), (two_a, _) = site.one, site.two
    account = f"abort-{failpoint.split('.')[1]}"
    site.fail_at("")
    one_a.add_account(account)
    wait_until(lambda: _exists(one_b, account), 10, "replicated in pair one")
    wait_until(
        lambda: two_a.call("GET", f"/v1/route/{account}")["pair"] == "one", 10, "in the directory"
    )
    with Deliverer(site.nodes, account, account) as mail:
        mail.wait_for(20)
        before = _paused(one_a, failpoint)
        site.fail_at(f"{failpoint}=60")
        one_a.call("POST", f"/v1/accounts/{account}/transfer", {"to_pair": "two"})
        _wait_paused(one_a, failpoint, before)
        assert _exists(two_a, account)  # the copy is there
        if failpoint == "transfer.held":
            _assert_held(one_a, account)
        aborted = peerctl(one_a, "account", "move", account, "--abort")
        assert aborted.returncode == 0, aborted.stderr
        assert f"{account}: the move to pair two is aborted" in aborted.stdout
        site.fail_at("")
        # The source serves it again at once, writes included.
        assert _deliver_to(one_a, account, "after-abort") == 250
        mail.acked.append("after-abort")
        mail.wait_for(len(mail.acked) + 10)
    assert not _exists(two_a, account)
    assert _move(one_a, account) is None
    assert one_a.call("GET", f"/v1/owner/{account}")["owner"] == "alpha"
    wait_until(
        lambda: two_a.call("GET", f"/v1/route/{account}")["pair"] == "one", 10, "routed to one"
    )
    counts = collections.Counter(one_a.audit(account))
    assert not [s for s, n in counts.items() if n > 1]
    assert not set(mail.acked) - set(counts), "acknowledged and lost"
    # Aborted again: nothing to abort.
    again = peerctl(one_a, "account", "move", account, "--abort")
    assert again.returncode != 0 and "no move of" in again.stderr, again.stderr


def test_abort_after_the_cut_over_is_refused_and_the_move_goes_on(site: Site) -> None:
    (one_a, one_b), (two_a, _) = site.one, site.two
    account = "abort-late"
    site.fail_at("")
    one_a.add_account(account)
    wait_until(lambda: _exists(one_b, account), 10, "replicated in pair one")
    wait_until(
        lambda: two_a.call("GET", f"/v1/route/{account}")["pair"] == "one", 10, "in the directory"
    )
    with Deliverer(site.nodes, account, account) as mail:
        mail.wait_for(10)
        # Paused after the local flip, before the target is told (the
        # directory still says "cutover"): the cut-over has committed.
        before = _paused(one_a, "transfer.flipped_here")
        site.fail_at("transfer.flipped_here=60")
        one_a.call("POST", f"/v1/accounts/{account}/transfer", {"to_pair": "two"})
        _wait_paused(one_a, "transfer.flipped_here", before)
        refused = peerctl(one_a, "account", "move", account, "--abort")
        assert refused.returncode != 0
        assert "has cut over" in refused.stderr and "move it to pair one" in refused.stderr
        site.fail_at("")
        wait_until(
            lambda: (_move(one_a, account) or {}).get("step") == "done", GRACE + 45, "move done"
        )
        mail.wait_for(len(mail.acked) + 5)
    _check_moved(site, account, mail.acked)


def test_abort_a_stuck_move_after_a_switchover_in_the_source_pair(site: Site) -> None:
    """The account was switched over to the source's partner during the move:
    the move stops (transfer_stuck); ``--abort`` on the node that began it
    removes the target's copy and the directory's move, and the partner
    keeps serving it."""
    (one_a, one_b), (two_a, _) = site.one, site.two
    account = "abort-stuck"
    site.fail_at("")
    one_a.add_account(account)
    wait_until(lambda: _exists(one_b, account), 10, "replicated in pair one")
    wait_until(
        lambda: two_a.call("GET", f"/v1/route/{account}")["pair"] == "one", 10, "in the directory"
    )
    before = _paused(one_a, "transfer.copied")
    site.fail_at("transfer.copied=60")
    one_a.call("POST", f"/v1/accounts/{account}/transfer", {"to_pair": "two"})
    _wait_paused(one_a, "transfer.copied", before)
    one_a.call("POST", "/v1/switchover", {"accounts": [account]})
    one_a.kill9()
    site.fail_at("")
    one_a.start()
    wait_until(
        lambda: "owned by beta" in (_move(one_a, account) or {}).get("note", ""), 30, "stuck"
    )
    aborted = peerctl(one_a, "account", "move", account, "--abort")
    assert aborted.returncode == 0, aborted.stderr
    assert not _exists(two_a, account)
    assert _move(one_a, account) is None
    assert _deliver_to(one_b, account, "still-here") == 250


def test_import_cursors_move_with_the_account(site: Site) -> None:
    """``import-imap`` resumes on the target pair after a move: its cursors
    travel with the copy like the rest of the account."""
    one_a, (two_a, two_b) = site.one[0], site.two
    account = "cursor-move"
    site.fail_at("")
    one_a.add_account(account)
    wait_until(
        lambda: two_a.call("GET", f"/v1/route/{account}")["pair"] == "one", 10, "in the directory"
    )
    one_a.call(
        "POST",
        f"/v1/accounts/{account}/import",
        {"mailbox": "INBOX", "uidvalidity": 9, "done_uid": 42},
    )
    moved = peerctl(one_a, "account", "move", account, "--to-pair", "two")
    assert moved.returncode == 0, moved.stderr

    def cursor(node: Node) -> tuple[Any, Any]:
        state = node.call("GET", f"/v1/accounts/{account}/import")
        inbox = next(m for m in state["mailboxes"] if m["mailbox"] == "INBOX")
        return inbox["uidvalidity"], inbox["last_uid"]

    assert cursor(two_a) == (9, 42)
    wait_until(lambda: _exists(two_b, account) and cursor(two_b) == (9, 42), 30, "two/beta")
