"""The harness itself, against real servers: processes by pid, PostgreSQL, nginx
with an in-process auth_http stub and IMAP backend, Postfix with a socketmap and
LMTP stub, and a real peerd pair from ``write_pair_configs``."""

from __future__ import annotations

import contextlib
import imaplib
import os
import poplib
import signal
import smtplib
import socket
import socketserver
import subprocess
import sys
import threading
import tomllib
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.harness.daemons import Daemon, write_pair_configs
from tests.harness.nginx import Nginx
from tests.harness.postfix import Postfix
from tests.harness.postgres import PgServer
from tests.harness.procs import (
    Proc,
    Registry,
    free_port,
    kill9,
    pid_alive,
    port_open,
    stop_pid,
    wait_until,
)

# --- in-process stubs (threads; each test shuts its own down) -----------------


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def _serve(server: socketserver.BaseServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class AuthHttpStub:
    """nginx's auth_http lookup: every login with password "secret" goes to ``backend``."""

    def __init__(self, backend_port: int) -> None:
        self.requests: list[dict[str, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = {k: v for k, v in self.headers.items()}
                headers["path"] = self.path
                stub.requests.append(headers)
                self.send_response(200)
                password = urllib.parse.unquote_to_bytes(
                    self.headers.get("Auth-Pass", "").encode("latin-1")
                ).decode()
                if password == "secret":
                    self.send_header("Auth-Status", "OK")
                    self.send_header("Auth-Server", "127.0.0.1")
                    self.send_header("Auth-Port", str(backend_port))
                else:
                    self.send_header("Auth-Status", "Invalid login or password")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest's output for failures

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])


class ImapBackend(socketserver.StreamRequestHandler):
    """Just enough IMAP for nginx's proxied LOGIN (RFC 3501 synchronizing literals)."""

    logins: list[tuple[str, str]] = []

    def handle(self) -> None:
        self.wfile.write(b"* OK stub backend ready\r\n")
        while line := self.rfile.readline():
            tag, _, rest = line.decode().rstrip("\r\n").partition(" ")
            command, _, args = rest.partition(" ")
            if command.upper() == "LOGIN":
                parts = self._literals(args)
                ImapBackend.logins.append((parts[0], parts[1]))
                self.wfile.write(f"{tag} OK LOGIN completed by stub\r\n".encode())
            elif command.upper() == "LOGOUT":
                self.wfile.write(f"* BYE\r\n{tag} OK LOGOUT\r\n".encode())
                return
            else:
                self.wfile.write(f"{tag} OK {command}\r\n".encode())

    def _literals(self, args: str) -> list[str]:
        """``{5}`` + CRLF ... : nginx waits for our "+" before each literal."""
        values: list[str] = []
        while args:
            if args.startswith("{") and args.endswith("}"):
                self.wfile.write(b"+ go ahead\r\n")
                size = int(args[1:-1])
                values.append(self.rfile.read(size).decode())
                args = self.rfile.readline().decode().rstrip("\r\n").lstrip(" ")
            else:
                word, _, args = args.partition(" ")
                values.append(word.strip('"'))
        return values


class SocketmapStub(socketserver.StreamRequestHandler):
    """Postfix's socketmap (socketmap_table(5)): netstrings, many requests per connection."""

    routes: dict[str, str] = {}
    requests: list[str] = []

    def handle(self) -> None:
        while True:
            size = b""
            while (c := self.rfile.read(1)) != b":":
                if not c:
                    return
                size += c
            request = self.rfile.read(int(size)).decode()
            self.rfile.read(1)  # the trailing ","
            SocketmapStub.requests.append(request)
            name, _, key = request.partition(" ")
            if name == "transport" and key in self.routes:
                reply = f"OK {self.routes[key]}"
            elif name == "mailbox" and key in self.routes:
                reply = f"OK {key}"
            else:
                reply = "NOTFOUND "
            self.wfile.write(f"{len(reply)}:{reply},".encode())


class LmtpStub(socketserver.StreamRequestHandler):
    """An LMTP server (RFC 2033) that accepts everything: one reply per recipient after DATA."""

    delivered: list[tuple[list[str], bytes]] = []

    def handle(self) -> None:
        self.wfile.write(b"220 stub LMTP\r\n")
        rcpts: list[str] = []
        while line := self.rfile.readline():
            verb = line[:4].upper()
            if verb == b"LHLO":
                self.wfile.write(b"250 stub\r\n")
            elif verb == b"RCPT":
                rcpts.append(line.decode().split(":", 1)[1].strip().strip("<>"))
                self.wfile.write(b"250 2.1.5 ok\r\n")
            elif verb == b"DATA":
                self.wfile.write(b"354 go ahead\r\n")
                data = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data += chunk
                LmtpStub.delivered.append((rcpts, data))
                self.wfile.write(b"250 2.0.0 delivered\r\n" * len(rcpts))
                rcpts = []
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:  # MAIL, RSET, NOOP
                if verb == b"RSET":
                    rcpts = []
                self.wfile.write(b"250 ok\r\n")


def _proc_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid in /proc/{pid}/status")


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# --- procs ---------------------------------------------------------------------


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert not port_open(port)


def test_free_port_is_outside_the_ephemeral_range() -> None:
    # An outgoing connection's local port comes from this range; a port from it
    # may be taken between the pick and the daemon's bind (CI saw EADDRINUSE).
    low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = {free_port() for _ in range(50)}
    assert len(ports) == 50
    assert all(not low <= p <= high for p in ports)


def test_proc_logs_to_its_file_and_stops_by_sigterm(tmp_path: Path) -> None:
    proc = Proc(_python("import time; print('up', flush=True); time.sleep(60)"), tmp_path / "p.log")
    proc.start()
    wait_until(lambda: "up" in proc.tail(), 10, "the child to log")
    assert proc.stop() == -signal.SIGTERM
    assert not pid_alive(proc.pid)


def test_proc_that_ignores_sigterm_is_killed_with_its_helpers(tmp_path: Path) -> None:
    # The child ignores SIGTERM and leaves a grandchild in its process group.
    code = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        "print(g.pid, flush=True); time.sleep(60)"
    )
    proc = Proc(_python(code), tmp_path / "p.log").start()
    wait_until(lambda: proc.tail().strip().isdigit(), 10, "the grandchild's pid")
    grandchild = int(proc.tail().strip())
    assert proc.stop(timeout=0.5) == -signal.SIGKILL
    wait_until(lambda: not pid_alive(grandchild), 5, "the grandchild to die")


def test_kill9_and_stop_pid(tmp_path: Path) -> None:
    a = Proc(_python("import time; time.sleep(60)"), tmp_path / "a.log").start()
    kill9(a.pid)
    assert a.wait(5) == -signal.SIGKILL
    b = Proc(_python("import time; time.sleep(60)"), tmp_path / "b.log").start()
    # stop_pid polls (it is for daemons that are not our children); the zombie
    # our Popen has not reaped yet counts as gone.
    assert stop_pid(b.pid, timeout=5)
    assert b.wait(5) == -signal.SIGTERM


def test_die_with_parent_leaves_nothing_behind_a_killed_parent(tmp_path: Path) -> None:
    # A parent that dies without cleaning up (like pytest killed by a CI timeout):
    # a child started with die_with_parent goes too, even one run as another user.
    user = "nobody" if os.geteuid() == 0 else None
    code = (
        "import os; from pathlib import Path; from tests.harness.procs import Proc;"
        # /bin/sleep: "nobody" cannot run the venv's python under /root.
        f"p = Proc(['sleep', '60'], Path({str(tmp_path / 'c.log')!r}),"
        f" user={user!r}, die_with_parent=True).start(); print(p.pid, flush=True); os._exit(0)"
    )
    parent = subprocess.run(
        _python(code), capture_output=True, text=True, timeout=30, cwd=Path(__file__).parents[2]
    )
    child = int(parent.stdout.strip())
    wait_until(lambda: not pid_alive(child), 10, "the orphaned child to die")


def test_registry_stops_everything_newest_first_even_if_one_fails(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    order: list[str] = []

    class Broken:
        def stop(self) -> None:
            order.append("broken")
            raise RuntimeError("cannot stop")

    first = registry.start(_python("import time; time.sleep(60)"), "first")
    registry.add(Broken())
    second = registry.start(_python("import time; time.sleep(60)"), "second")
    errors = registry.stop_all()
    assert len(errors) == 1 and "cannot stop" in errors[0]
    assert order == ["broken"]
    assert not first.alive() and not second.alive()
    assert (tmp_path / "first.log").exists()
    assert registry.stop_all() == []


def test_procs_fixture_registers(procs: Registry) -> None:
    proc = procs.start(_python("import time; time.sleep(60)"), "sleeper")
    assert proc.alive()  # the fixture's teardown stops it


# --- PostgreSQL ----------------------------------------------------------------


def test_postgres_database_per_test(pg_server: PgServer, pg_url: str) -> None:
    assert pg_url.startswith(f"postgresql+psycopg://postgres@127.0.0.1:{pg_server.port}/t_")
    dbname = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_server.dsn(dbname)) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
        assert conn.execute("SHOW shared_buffers").fetchone() == ("32MB",)
        # A throwaway server: no fsync, but every commit still writes its WAL.
        assert conn.execute("SHOW fsync").fetchone() == ("off",)
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
    other = pg_server.create_database()
    assert other != pg_url
    assert pg_server.pid is not None
    if os.geteuid() == 0:
        assert _proc_uid(pg_server.pid) != 0  # PostgreSQL itself, not a wrapper, as postgres


def test_postgres_server_starts_and_stops_by_pid() -> None:
    server = PgServer().start()
    pid = server.pid
    assert pid is not None and pid_alive(pid)
    url = server.create_database("explicit_name")
    assert url.endswith("/explicit_name")
    server.stop()
    assert not pid_alive(pid)
    assert not server.dir.exists()


# --- nginx ---------------------------------------------------------------------


@pytest.fixture
def imap_backend() -> Iterator[int]:
    ImapBackend.logins = []
    server = _Server(("127.0.0.1", 0), ImapBackend)
    with _serve(server):
        yield int(server.server_address[1])


def test_nginx_routes_imap_login_through_auth_http(
    tmp_path: Path, procs: Registry, imap_backend: int
) -> None:
    lookup = AuthHttpStub(imap_backend)
    with _serve(lookup.server):
        nginx = procs.add(
            Nginx(
                tmp_path / "nginx",
                f"127.0.0.1:{lookup.port}/v1/route/nginx",
                secret="s3cret",
                imap_capabilities=["IMAP4rev1", "IDLE", "X-STUB"],
            )
        ).start()
        imap = imaplib.IMAP4("127.0.0.1", nginx.imap_port, timeout=10)
        try:
            assert "X-STUB" in imap.capabilities  # nginx answers CAPABILITY itself
            with pytest.raises(imaplib.IMAP4.error, match="Invalid login"):
                imap.login("a+b@example.test", "wrong")
        finally:
            imap.shutdown()  # without Auth-Wait nginx has closed the session
        with imaplib.IMAP4("127.0.0.1", nginx.imap_port, timeout=10) as imap:
            typ, data = imap.login("a+b@example.test", "secret")
            assert typ == "OK" and b"completed by stub" in data[0]
            imap.logout()
        assert ImapBackend.logins == [("a+b@example.test", "secret")]
        first = lookup.requests[0]
        assert first["path"] == "/v1/route/nginx"
        assert first["X-Auth-Key"] == "s3cret"
        assert first["Auth-User"] == "a+b@example.test"  # "+" arrives as it is
        assert first["Auth-Protocol"] == "imap"
        assert nginx.pop3_port is not None
        pop = poplib.POP3("127.0.0.1", nginx.pop3_port, timeout=10)
        try:
            assert pop.getwelcome().startswith(b"+OK")
        finally:
            pop.quit()
        pid = nginx.pid
        assert pid is not None
        nginx.stop()
        assert not pid_alive(pid) and not port_open(nginx.imap_port)


def test_nginx_lookup_failover_through_its_http_proxy(
    tmp_path: Path, procs: Registry, imap_backend: int
) -> None:
    lookup = AuthHttpStub(imap_backend)
    with _serve(lookup.server):
        down = f"127.0.0.1:{free_port()}"  # nothing listens: the proxy moves on
        nginx = procs.add(
            Nginx(tmp_path / "nginx", lookups=[down, f"127.0.0.1:{lookup.port}"], pop3=False)
        ).start()
        for _ in range(2):
            with imaplib.IMAP4("127.0.0.1", nginx.imap_port, timeout=10) as imap:
                assert imap.login("alice", "secret")[0] == "OK"
                imap.logout()
        assert len(lookup.requests) == 2


def test_nginx_bad_config_fails_with_nginx_message(tmp_path: Path) -> None:
    nginx = Nginx(tmp_path / "nginx", "127.0.0.1:1/x", imap_capabilities=["{broken"])
    with pytest.raises(RuntimeError, match="nginx -t failed"):
        nginx.start()
    assert nginx.proc is None


# --- Postfix -------------------------------------------------------------------


@pytest.fixture
def lmtp_stub() -> Iterator[int]:
    LmtpStub.delivered = []
    server = _Server(("127.0.0.1", 0), LmtpStub)
    with _serve(server):
        yield int(server.server_address[1])


@pytest.fixture
def socketmap_stub() -> Iterator[tuple[int, Callable[[str, str], None]]]:
    SocketmapStub.routes = {}
    SocketmapStub.requests = []

    def route(key: str, value: str) -> None:
        SocketmapStub.routes[key] = value

    server = _Server(("127.0.0.1", 0), SocketmapStub)
    with _serve(server):
        yield int(server.server_address[1]), route


def test_postfix_relays_to_lmtp_by_socketmap(
    procs: Registry,
    lmtp_stub: int,
    socketmap_stub: tuple[int, Callable[[str, str], None]],
) -> None:
    smap_port, route = socketmap_stub
    route("alice@example.test", f"lmtp:inet:127.0.0.1:{lmtp_stub}")
    postfix = procs.add(Postfix(smap_port, "example.test")).start()
    master = postfix.master_pid()
    assert master is not None and pid_alive(master)

    assert postfix.send("alice@example.test", subject="routed") == {}
    wait_until(lambda: bool(LmtpStub.delivered), 30, "the LMTP stub to receive the message")
    rcpts, data = LmtpStub.delivered[0]
    assert rcpts == ["alice@example.test"] and b"Subject: routed" in data
    postfix.wait_queue_empty()
    postfix.wait_log("status=sent")
    assert "transport alice@example.test" in SocketmapStub.requests

    # The socketmap does not know bob: refused at RCPT time, nothing queued.
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        postfix.send("bob@example.test")
    assert postfix.queue_empty()

    postfix.stop()
    wait_until(lambda: not pid_alive(master), 10, "the Postfix master to exit")
    assert not port_open(postfix.smtp_port)


def test_postfix_defers_while_the_backend_is_down_and_delivers_on_flush(
    procs: Registry,
    socketmap_stub: tuple[int, Callable[[str, str], None]],
) -> None:
    smap_port, route = socketmap_stub
    lmtp_port = free_port()  # nothing there yet
    route("carol@example.test", f"lmtp:inet:127.0.0.1:{lmtp_port}")
    postfix = procs.add(Postfix(smap_port)).start()
    postfix.send("carol@example.test")
    postfix.wait_log("status=deferred")
    assert not postfix.queue_empty()
    LmtpStub.delivered = []
    server = _Server(("127.0.0.1", lmtp_port), LmtpStub)
    with _serve(server):
        postfix.wait_queue_empty()
    assert LmtpStub.delivered and LmtpStub.delivered[0][0] == ["carol@example.test"]


# --- peerd ---------------------------------------------------------------------


def test_write_pair_configs_cross_wires_the_pair(tmp_path: Path) -> None:
    a_path, b_path, ports = write_pair_configs(
        tmp_path,
        {"sync": {"sync_repeat_interval": "200ms"}, "listen": {"socketmap": None}},
        beta={"node": {"local_domains": ["b.test", "example.test"]}},
    )
    alpha, beta = tomllib.loads(a_path.read_text()), tomllib.loads(b_path.read_text())
    all_ports = [p for node in ports.values() for p in node.values()]
    assert len(set(all_ports)) == len(all_ports) == 12
    assert alpha["node"] == {
        "name": "alpha",
        "data_dir": "var/alpha",
        "local_domains": ["example.test"],
    }
    assert alpha["database"]["url"] == "sqlite:///var/alpha/peerd.db"
    assert alpha["listen"]["imap"] == f"127.0.0.1:{ports['alpha']['imap']}"
    assert "socketmap" not in alpha["listen"]
    assert alpha["sync"]["sync_port"] == ports["beta"]["sync"]
    assert beta["sync"]["sync_port"] == ports["alpha"]["sync"]
    assert alpha["sync"]["sync_repeat_interval"] == "200ms"
    assert alpha["sync"]["sync_compress"] is True
    assert alpha["partner"] == {"name": "beta", "api": f"http://127.0.0.1:{ports['beta']['http']}"}
    assert beta["node"]["local_domains"] == ["b.test", "example.test"]
    assert alpha["api"]["token"] == "test-token"


def test_peerd_pair_starts_kill9_restart(tmp_path: Path, procs: Registry) -> None:
    a_path, b_path, ports = write_pair_configs(tmp_path)
    alpha = procs.add(Daemon(a_path)).start(wait=False)
    beta = procs.add(Daemon(b_path)).start(wait=False)
    alpha.wait_ready()
    beta.wait_ready()
    assert port_open(ports["alpha"]["imap"]) and port_open(ports["beta"]["socketmap"])
    assert alpha.call("GET", "/v1/health") is not None
    alpha.kill9()
    assert not alpha.healthy()
    alpha.start()
    beta.restart()
    assert alpha.starts == beta.starts == 2
    assert beta.stop() == 0


def test_daemon_that_cannot_start_fails_with_its_log(tmp_path: Path) -> None:
    a_path, _, _ = write_pair_configs(tmp_path, {"node": {"no_such_key": 1}})
    daemon = Daemon(a_path)
    try:
        with pytest.raises(RuntimeError, match=r"exited .* before it was ready") as info:
            daemon.start(timeout=30)
        assert "no_such_key" in str(info.value)
    finally:
        daemon.stop()
