"""A private Postfix instance routing a relay domain with a ``socketmap``, per
shared/recipes/proxies.md.

Postfix must run as root. ``postfix -c DIR start`` daemonises the master, so we
do not hold it as a child: :meth:`Postfix.stop` runs ``postfix -c DIR stop``
and then, by the pid in the instance's own ``master.pid``, makes sure that
master and its process group are gone (never by name: another Postfix may be
running on the machine).
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.harness.procs import free_port, kill9, pid_alive, stop_pid, wait_port, wait_until

__all__ = ["Postfix", "require_postfix"]


def require_postfix() -> None:
    """Missing, or not root: skip locally, fail in CI."""
    problem = None
    if not (shutil.which("postfix") or Path("/usr/sbin/postfix").exists()):
        problem = "postfix is not installed"
    elif not Path("/etc/postfix/master.cf").exists():
        problem = "/etc/postfix/master.cf is missing"
    elif os.geteuid() != 0:
        problem = "Postfix must run as root"
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{problem}, and CI must test with Postfix")
    pytest.skip(problem)


class Postfix:
    """``Postfix(socketmap_port, "example.test").start()`` ... ``stop()``.

    Recipients in ``relay_domain`` are checked (``mailbox``) and routed
    (``transport``) by the socketmap at 127.0.0.1:``socketmap_port``.
    """

    def __init__(
        self,
        socketmap_port: int,
        relay_domain: str = "example.test",
        routing: dict[str, str] | None = None,
    ) -> None:
        """``routing``: main.cf's routing lines from elsewhere (docs/proxies.md's,
        by tests/proxydocs.py) instead of the relay domain and its maps here."""
        require_postfix()
        # Not pytest's tmp_path (0700): Postfix's own user must reach the queue.
        self.root = Path(tempfile.mkdtemp(prefix="peerd-postfix-"))
        self.root.chmod(0o755)
        self.etc = self.root / "etc"
        self.etc.mkdir()
        (self.root / "spool").mkdir()  # not data/: Postfix creates it with its owner
        self.smtp_port = free_port()
        self.socketmap_port = socketmap_port
        self.relay_domain = relay_domain
        smap = f"socketmap:inet:127.0.0.1:{socketmap_port}"
        main = {
            "compatibility_level": "3.6",  # silences the backwards-compatibility warnings
            "queue_directory": f"{self.root}/spool",
            "data_directory": f"{self.root}/data",
            "meta_directory": "/etc/postfix",
            "command_directory": "/usr/sbin",
            "daemon_directory": "/usr/lib/postfix/sbin",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "maillog_file": f"{self.root}/maillog",
            "maillog_file_prefixes": f"/var, /dev/stdout, {self.root}",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "mydestination": "",
            "alias_maps": "",
            "local_recipient_maps": "",
            "relay_domains": relay_domain,
            "relay_recipient_maps": f"{smap}:mailbox",
            "transport_maps": f"{smap}:transport",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "queue_run_delay": "2s",
            "minimal_backoff_time": "2s",
            "maximal_backoff_time": "4s",
            "lmtp_host_lookup": "native",
        }
        if routing is not None:
            for key in ("relay_domains", "relay_recipient_maps", "transport_maps"):
                del main[key]
            main.update(routing)
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        (self.etc / "master.cf").write_text(self._master_cf())
        self.started = False

    def _master_cf(self) -> str:
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            fields = line.split()
            # A service line starts in column 0; continuation lines are indented.
            if line and not line[0].isspace() and not line.startswith("#") and len(fields) >= 8:
                if fields[0] == "smtp" and fields[1] == "inet":
                    fields[0] = f"127.0.0.1:{self.smtp_port}"
                fields[4] = "n"  # no chroot: the chroot would lack our paths and resolv.conf
                line = "  ".join(fields)
            lines.append(line)
        return "\n".join(lines) + "\n"

    def postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["postfix", "-c", str(self.etc), *args], capture_output=True, text=True, timeout=timeout
        )

    def start(self, timeout: float = 30) -> Postfix:
        check = self.postfix("check")
        if check.returncode != 0:
            raise RuntimeError(f"postfix check failed:\n{check.stdout}{check.stderr}")
        self.started = True  # from here on stop() has something to do
        result = self.postfix("start")
        if result.returncode != 0:
            self.stop()
            raise RuntimeError(f"postfix start failed:\n{result.stdout}{result.stderr}{self.log()}")
        try:
            wait_port(self.smtp_port, timeout, f"Postfix smtpd on {self.smtp_port}")
        except BaseException:
            self.stop()
            raise
        return self

    def master_pid(self) -> int | None:
        try:
            return int((self.root / "spool" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def send(
        self,
        to: str | Sequence[str],
        body: str = "hello\n",
        sender: str = "sender@sender.test",
        subject: str = "test",
        message: bytes | None = None,
    ) -> dict[str, tuple[int, bytes]]:
        """Submit one message over SMTP; returns smtplib's refused recipients (raises
        if all are refused). Give ``message`` to send those bytes as they are."""
        rcpts = [to] if isinstance(to, str) else list(to)
        if message is None:
            msg = EmailMessage()
            msg["From"] = sender
            msg["To"] = ", ".join(rcpts)
            msg["Subject"] = subject
            msg.set_content(body)
            message = msg.as_bytes()
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as smtp:
            return smtp.sendmail(sender, rcpts, message)

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_log(self, text: str, timeout: float = 30) -> None:
        """Wait until ``text`` appears in the maillog (it is written asynchronously)."""
        try:
            wait_until(lambda: text in self.log(), timeout, f"{text!r} in the maillog", 0.2)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- maillog ---\n{self.log()[-4000:]}") from None

    def flush(self) -> None:
        """``postqueue -f``: retry deferred mail now instead of after the backoff."""
        subprocess.run(
            ["postqueue", "-c", str(self.etc), "-f"], capture_output=True, text=True, timeout=30
        )

    def queue(self) -> str:
        return subprocess.run(
            ["postqueue", "-c", str(self.etc), "-p"], capture_output=True, text=True, timeout=30
        ).stdout

    def queue_empty(self) -> bool:
        return "Mail queue is empty" in self.queue()

    def wait_queue_empty(self, timeout: float = 30, flush_every: float = 2.0) -> None:
        """Flush now and then until the queue is empty; on timeout show the queue and log."""
        deadline = time.monotonic() + timeout
        next_flush = 0.0
        while time.monotonic() < deadline:
            if self.queue_empty():
                return
            if time.monotonic() >= next_flush:
                self.flush()
                next_flush = time.monotonic() + flush_every
            time.sleep(0.2)
        raise TimeoutError(
            f"Postfix queue not empty after {timeout}s:\n{self.queue()}\n"
            f"--- maillog ---\n{self.log()[-4000:]}"
        )

    def reload(self) -> None:
        """Clears the per-process lookup caches (up to 30 s) after an ownership change."""
        self.postfix("reload")

    def stop(self) -> None:
        if self.started:
            pid = self.master_pid()
            self.postfix("stop")
            if pid is not None:
                # `postfix stop` only signals; make sure the master is gone, and
                # then its helpers (it runs in its own session, group id = its pid).
                if pid_alive(pid):
                    stop_pid(pid, timeout=10)
                kill9(pid, group=True)
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)
