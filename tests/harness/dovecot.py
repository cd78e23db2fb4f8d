"""A private Dovecot on a loopback port: the old server ``import-imap`` reads.

Its own config, passdb and maildirs in a temporary directory; ``dovecot -F``
runs in the foreground as our child (its own process group), stopped by pid.
As root, Dovecot's login processes must not be root: they run as
``dovenull``, its internal processes as ``dovecot`` and the mail as
``nobody`` (the directory is made traversable for them). As another user,
everything runs as that user. Users log in with ``{PLAIN}`` passwords; a
master user (``masters``) may log in as anyone with SASL PLAIN
(authzid = the user, authcid = the master).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.harness.certs import self_signed
from tests.harness.procs import Proc, free_port, wait_port

__all__ = ["Dovecot", "require_dovecot"]

BINARY = "/usr/sbin/dovecot"


def require_dovecot() -> None:
    """Missing: skip locally, fail in CI (scripts/test.sh installs dovecot-imapd)."""
    problem = None
    if not Path(BINARY).exists():
        problem = "dovecot is not installed"
    elif not Path("/usr/lib/dovecot/imap").exists():
        problem = "dovecot-imapd is not installed"
    elif os.geteuid() == 0 and not _users_exist("dovecot", "dovenull", "nobody"):
        problem = "the dovecot/dovenull users are missing"
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{problem}, and CI must test import-imap against Dovecot")
    pytest.skip(problem)


def _users_exist(*names: str) -> bool:
    try:
        for name in names:
            pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _conf(root: Path, port: int, tls_port: int | None) -> str:
    if os.geteuid() == 0:
        internal, login, mail_user = "dovecot", "dovenull", "nobody"
        mail_group = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
    else:
        internal = login = mail_user = pwd.getpwuid(os.geteuid()).pw_name
        mail_group = grp.getgrgid(os.getegid()).gr_name
    return f"""
instance_name = peerd-test-{port}
base_dir = {root}/run
state_dir = {root}/state
protocols = imap
listen = 127.0.0.1
log_path = {root}/dovecot.log
{_tls(root) if tls_port else "ssl = no"}
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{root}/mail/%n
default_internal_user = {internal}
default_internal_group = {grp.getgrgid(pwd.getpwnam(internal).pw_gid).gr_name}
default_login_user = {login}
mail_uid = {mail_user}
mail_gid = {mail_group}
first_valid_uid = 1
first_valid_gid = 1
auth_master_user_separator = *
passdb {{
  driver = passwd-file
  master = yes
  args = scheme=PLAIN {root}/masters
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {root}/users
}}
userdb {{
  driver = static
  args = uid={mail_user} gid={mail_group} home={root}/mail/%n
}}
namespace inbox {{
  inbox = yes
  separator = .
  mailbox "Sent Messages" {{
    special_use = \\Sent
  }}
  mailbox "Deleted Messages" {{
    special_use = \\Trash
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port or 0}
  }}
}}
service anvil {{
  chroot =
}}
"""


def _tls(root: Path) -> str:
    return f"ssl = yes\nssl_cert = <{root}/dovecot.crt\nssl_key = <{root}/dovecot.key"


class Dovecot:
    """``Dovecot(tmp, {"alice": "pw"}).start()`` ... ``stop()``; ``port`` is its IMAP port."""

    def __init__(
        self,
        workdir: Path,
        users: Mapping[str, str],
        masters: Mapping[str, str] | None = None,
        *,
        tls: bool = False,
    ) -> None:
        """``tls``: a self-signed certificate for 127.0.0.1 (:attr:`cert`),
        STARTTLS on :attr:`port` and implicit TLS on :attr:`tls_port`."""
        # A directory of its own under /tmp: pytest's tmp_path is 0700 root's,
        # which Dovecot's unprivileged processes could not enter.
        self.root = Path(tempfile.mkdtemp(prefix="peerd-dovecot-"))
        self.root.chmod(0o755)
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.cert = self.root / "dovecot.crt"
        if tls:
            self_signed(self.root, "dovecot")
            (self.root / "dovecot.key").chmod(0o600)
        for sub in ("run", "state", "mail"):
            (self.root / sub).mkdir()
        self._write("users", users)
        self._write("masters", masters or {})
        (self.root / "dovecot.conf").write_text(_conf(self.root, self.port, self.tls_port))
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.root / "mail", nobody.pw_uid, nobody.pw_gid)
        self.proc = Proc(
            [BINARY, "-F", "-c", str(self.root / "dovecot.conf")], workdir / "dovecot.log"
        )

    def _write(self, name: str, users: Mapping[str, str]) -> None:
        path = self.root / name
        path.write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in users.items()))
        path.chmod(0o644)

    def start(self) -> Dovecot:
        self.proc.start()
        for port in (self.port, self.tls_port):
            if port is not None:
                wait_port(port, what=f"dovecot: {self.proc.tail()}")
        return self

    def stop(self) -> None:
        """By its pid (SIGTERM; the master stops its own children), then the directory."""
        try:
            self.proc.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.root / "dovecot.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""
