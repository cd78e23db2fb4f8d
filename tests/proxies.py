"""Real proxies for the tests: an nginx mail proxy and a private Postfix instance,
set up as shared/recipes/proxies.md shows, stopped by pid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.procs import Proc, free_port, wait_until

__all__ = ["Nginx", "Postfix", "require"]

NGINX_MAIL = "/usr/lib/nginx/modules/ngx_mail_module.so"


def require(binary: str, path: str | None = None) -> None:
    """Skip when a proxy is missing on a developer's machine; fail in CI."""
    if shutil.which(binary) and (path is None or Path(path).exists()):
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{binary} is not installed, and CI must test with it")
    pytest.skip(f"{binary} not installed")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Nginx:
    def __init__(self, root: Path, lookups: list[int], secret: str) -> None:
        require("nginx", NGINX_MAIL)
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.imap_port = free_port()
        self.pop3_port = free_port()
        self.lookup_port = free_port()
        upstream = " ".join(f"server 127.0.0.1:{p} max_fails=0;" for p in lookups)
        auth_http = f"127.0.0.1:{self.lookup_port}/v1/route/nginx"
        conf = f"""
load_module {NGINX_MAIL};
daemon off;
master_process on;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 128; }}
http {{
    access_log off;
    # auth_http takes one address: this server asks both nodes' lookups,
    # so logins keep working when one node is down (the recipe's advice).
    upstream peerd_lookup {{ {upstream} }}
    server {{
        listen 127.0.0.1:{self.lookup_port};
        location / {{
            proxy_pass http://peerd_lookup;
            proxy_next_upstream error timeout http_502 http_503;
            proxy_connect_timeout 1s;
        }}
    }}
}}
mail {{
    server_name proxy.test;
    auth_http {auth_http};
    auth_http_timeout 5s;
    auth_http_header X-Auth-Key "{secret}";
    proxy_pass_error_message on;
    server {{ listen 127.0.0.1:{self.imap_port}; protocol imap; imap_auth plain login; imap_capabilities IMAP4rev1 LITERAL+ IDLE UIDPLUS MOVE; }}
    server {{ listen 127.0.0.1:{self.pop3_port}; protocol pop3; pop3_auth plain; }}
}}
"""
        self.conf = root / "nginx.conf"
        self.conf.write_text(conf)
        self.proc: Proc | None = None

    def start(self) -> Nginx:
        argv = ["nginx", "-p", f"{self.root}/", "-c", str(self.conf)]
        subprocess.run([*argv, "-t"], check=True, capture_output=True)
        self.proc = Proc(argv, self.root / "nginx.out").start()
        wait_until(lambda: port_open(self.imap_port), 15, "nginx to listen")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(sig=signal.SIGQUIT)


class Postfix:
    """A private Postfix (it must run as root) routing with a socketmap."""

    def __init__(self, socketmap_port: int, domain: str) -> None:
        require("postfix")
        if os.geteuid() != 0:
            pytest.skip("Postfix must run as root")
        # Postfix's own user must reach the queue: pytest's tmp dirs are 0700.
        root = Path(tempfile.mkdtemp(prefix="peerd-postfix-"))
        root.chmod(0o755)
        self.root = root
        self.etc = root / "etc"
        self.etc.mkdir(parents=True)
        (root / "spool").mkdir()
        self.smtp_port = free_port()
        smap = f"socketmap:inet:127.0.0.1:{socketmap_port}"
        main = {
            "queue_directory": f"{root}/spool",
            "data_directory": f"{root}/data",
            "meta_directory": "/etc/postfix",
            "command_directory": "/usr/sbin",
            "daemon_directory": "/usr/lib/postfix/sbin",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "maillog_file": f"{root}/maillog",
            "maillog_file_prefixes": f"/var, /dev/stdout, {root}",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "mydestination": "",
            "alias_maps": "",
            "local_recipient_maps": "",
            "relay_domains": domain,
            "relay_recipient_maps": f"{smap}:mailbox",
            "transport_maps": f"{smap}:transport",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "queue_run_delay": "2s",
            "minimal_backoff_time": "2s",
            "maximal_backoff_time": "4s",
            "lmtp_host_lookup": "native",
            "compatibility_level": "3.6",
        }
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        master = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            fields = line.split()
            if line and not line[0].isspace() and not line.startswith("#") and len(fields) >= 8:
                if fields[0] == "smtp" and fields[1] == "inet":
                    fields[0] = f"127.0.0.1:{self.smtp_port}"
                fields[4] = "n"
                line = "  ".join(fields)
            master.append(line)
        (self.etc / "master.cf").write_text("\n".join(master) + "\n")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["postfix", "-c", str(self.etc), *args], capture_output=True, text=True, timeout=60
        )

    def start(self) -> Postfix:
        self.run("check")
        result = self.run("start")
        if result.returncode != 0:
            raise RuntimeError(f"postfix start failed: {result.stdout}{result.stderr}{self.log()}")
        wait_until(lambda: port_open(self.smtp_port), 30, "postfix to listen")
        return self

    def flush(self) -> None:
        subprocess.run(["postqueue", "-c", str(self.etc), "-f"], capture_output=True, timeout=30)

    def queue_empty(self) -> bool:
        out = subprocess.run(
            ["postqueue", "-c", str(self.etc), "-p"], capture_output=True, text=True, timeout=30
        )
        return "Mail queue is empty" in out.stdout

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        self.run("stop")
        shutil.rmtree(self.root, ignore_errors=True)
