"""A real nginx mail proxy (``auth_http``) in a temp dir, as shared/recipes/proxies.md shows.

nginx runs in the foreground (``daemon off``) with a master process, so the pid
we hold is the master's; it is stopped with SIGQUIT (graceful) and then SIGKILL,
and its workers share its process group. The config is checked with ``-t``
before the real start, so a bad config fails with nginx's own message.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.harness.procs import Proc, free_port, wait_port

__all__ = ["NGINX_MAIL_MODULE", "Nginx", "require_nginx"]

NGINX_MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"
DEFAULT_IMAP_CAPABILITIES = ("IMAP4rev1", "LITERAL+", "IDLE", "UIDPLUS", "MOVE")


def require_nginx() -> str:
    """The nginx binary. Missing (or no mail module): skip locally, fail in CI."""
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary and Path(NGINX_MAIL_MODULE).exists():
        return binary
    if os.environ.get("CI") == "true":
        pytest.fail("nginx with the mail module is not installed, and CI must test with it")
    pytest.skip("nginx or its mail module (libnginx-mod-mail) not installed")


class Nginx:
    """``Nginx(root, auth_http="127.0.0.1:P/v1/route/nginx").start()`` ... ``stop()``.

    Give ``lookups`` (``["127.0.0.1:P", ...]``) instead of ``auth_http`` to have
    nginx ask several lookups through its own ``http{}`` proxy with
    ``proxy_next_upstream``: ``auth_http`` itself takes one address, and this is
    how logins keep working while one node is down (the recipe's advice).
    """

    def __init__(
        self,
        root: Path,
        auth_http: str | None = None,
        *,
        lookups: Sequence[str] = (),
        secret: str | None = None,
        imap_port: int | None = None,
        pop3_port: int | None = None,
        imap_capabilities: Sequence[str] = DEFAULT_IMAP_CAPABILITIES,
        pop3: bool = True,
        config: str | None = None,
        wait_ports: Sequence[int] = (),
    ) -> None:
        """``config``: a whole nginx.conf written elsewhere (docs/proxies.md's,
        by tests/proxydocs.py), used as it is; give its ``imap_port`` and
        ``pop3_port``, and any other port to wait for in ``wait_ports``."""
        if config is not None:
            self.binary = require_nginx()
            self.root = root
            self.root.mkdir(parents=True, exist_ok=True)
            self.imap_port = imap_port or 0
            self.pop3_port: int | None = pop3_port
            self.lookup_port: int | None = None
            self.wait_ports = tuple(wait_ports)
            self.auth_http = ""
            self.conf = root / "nginx.conf"
            self.conf.write_text(config)
            self.proc: Proc | None = None
            return
        if (auth_http is None) == (not lookups):
            raise ValueError("give exactly one of auth_http or lookups")
        self.wait_ports = ()
        self.binary = require_nginx()
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.imap_port = imap_port or free_port()
        self.pop3_port = (pop3_port or free_port()) if pop3 else None
        self.lookup_port = free_port() if lookups else None
        self.auth_http = auth_http or f"127.0.0.1:{self.lookup_port}/v1/route/nginx"
        self.conf = root / "nginx.conf"
        self.conf.write_text(self._config(lookups, secret, imap_capabilities))
        self.proc = None

    def _config(
        self, lookups: Sequence[str], secret: str | None, capabilities: Sequence[str]
    ) -> str:
        root = self.root
        http = ""
        if lookups:
            servers = " ".join(f"server {addr} max_fails=0;" for addr in lookups)
            http = f"""
http {{
    access_log off;
    # Temp paths inside our dir: the compiled-in ones are under /var/lib/nginx.
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    upstream peerd_lookup {{ {servers} }}
    server {{
        listen 127.0.0.1:{self.lookup_port};
        location / {{
            proxy_pass http://peerd_lookup;
            proxy_next_upstream error timeout http_502 http_503;
            proxy_connect_timeout 1s;
        }}
    }}
}}"""
        header = f'auth_http_header X-Auth-Key "{secret}";' if secret else ""
        pop3 = (
            f"server {{ listen 127.0.0.1:{self.pop3_port}; protocol pop3; pop3_auth plain; }}"
            if self.pop3_port
            else ""
        )
        return f"""
load_module {NGINX_MAIL_MODULE};
daemon off;
master_process on;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 128; }}
{http}
mail {{
    server_name proxy.test;
    auth_http {self.auth_http};
    auth_http_timeout 5s;
    {header}
    proxy_pass_error_message on;
    server {{ listen 127.0.0.1:{self.imap_port}; protocol imap; imap_auth plain login; imap_capabilities {" ".join(capabilities)}; }}
    {pop3}
}}
"""

    def _argv(self) -> list[str]:
        # -e: the error log before the config is read (else /var/log/nginx/error.log).
        return [
            self.binary,
            "-p",
            f"{self.root}/",
            "-c",
            str(self.conf),
            "-e",
            f"{self.root}/error.log",
        ]

    def start(self, timeout: float = 15) -> Nginx:
        check = subprocess.run([*self._argv(), "-t"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{check.stderr}\n{self.conf.read_text()}")
        self.proc = Proc(
            self._argv(),
            self.root / "nginx.out",
            cwd=self.root,
            stop_signal=signal.SIGQUIT,
            die_with_parent=True,
        ).start()
        try:
            for port in (self.imap_port, self.pop3_port, self.lookup_port, *self.wait_ports):
                if port:
                    wait_port(port, timeout, f"nginx to listen on {port}")
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)
