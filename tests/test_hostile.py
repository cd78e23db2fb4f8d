"""Issue 9, the node and HTTP side: strangers and hostile users against a real daemon.

The failed-login throttle (per account and per source address, across
connections, with its fail2ban line), ``/v1/route/nginx`` sharing it, the
start-up refusals (auth_http without a secret off loopback, a cleartext sync
channel to a remote partner), config errors that never echo a value, and
``password_hash`` parameters within the node's bounds.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LoneNode
from tests.harness.daemons import TOKEN, ModuleNodes, to_toml
from tests.test_api_cli import request

# The fail2ban failregex documented in docs/security.md.
FAILREGEX = r"login failed: rip=<HOST> proto=\S+ user="


def nginx_ask(node: LoneNode, user: str, password: str, client_ip: str) -> str:
    req = urllib.request.Request(f"{node.api}/v1/route/nginx")
    for key, value in {
        "Auth-Method": "plain",
        "Auth-User": user,
        "Auth-Pass": password,
        "Auth-Protocol": "imap",
        "Auth-Login-Attempt": "1",
        "Client-IP": client_ip,
    }.items():
        req.add_header(key, value)
    with urllib.request.urlopen(req, timeout=30) as response:
        return str(response.headers["Auth-Status"])


def test_failed_logins_are_throttled_per_account_and_per_address(
    lone_node: Callable[..., LoneNode],
) -> None:
    node = lone_node(
        {"auth": {"max_failures_per_account": 3, "max_failures_per_ip": 5, "failure_window": "5m"}}
    )
    node.add_account("carol")
    node.add_account("dave")
    assert nginx_ask(node, "carol", "secret", "192.0.2.1") == "OK"
    # Three wrong passwords for carol, each from another address (another
    # connection as far as the node knows): then even the right one is refused.
    for n in range(3):
        assert nginx_ask(node, "carol", f"guess{n}", f"192.0.2.{10 + n}") != "OK"
    assert nginx_ask(node, "carol", "secret", "192.0.2.99") != "OK"
    # dave is not touched by carol's throttle.
    assert nginx_ask(node, "dave", "secret", "192.0.2.99") == "OK"
    # One address spraying names (known or not) is throttled as an address.
    for n in range(5):
        assert nginx_ask(node, f"nobody{n}", "x", "198.51.100.7") != "OK"
    assert nginx_ask(node, "dave", "secret", "198.51.100.7") != "OK"
    assert nginx_ask(node, "dave", "secret", "198.51.100.8") == "OK"

    log = (node.workdir / f"{node.name}.log").read_text()
    pattern = re.compile(FAILREGEX.replace("<HOST>", r"(?P<host>\S+)"))
    hosts = [m.group("host") for m in pattern.finditer(log)]
    assert hosts.count("198.51.100.7") == 6  # five wrong, one throttled
    assert {"192.0.2.10", "192.0.2.11", "192.0.2.12"} <= set(hosts)
    assert "Traceback" not in log
    metrics = urllib.request.urlopen(f"{node.api}/metrics", timeout=10).read().decode()
    assert re.search(r"^peerd_auth_throttled(_total)? [1-9]", metrics, re.M), metrics


def _start_with(tmp_path: Path, node: LoneNode, change: Callable[[dict[str, Any]], None]) -> str:
    """Run ``peerd run`` on a changed copy of the node's config; its stderr
    (the daemon must refuse and exit: a start would hit the timeout)."""
    config = tomllib.loads(node.config.read_text())
    change(config)
    path = tmp_path / "changed.toml"
    path.write_text(to_toml(config))
    done = subprocess.run(
        [sys.executable, "-m", "peerd", "run", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=node.workdir,
    )
    assert done.returncode != 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_start_refusals_and_config_errors_name_the_key_not_the_value(
    lone_node: Callable[..., LoneNode], tmp_path: Path
) -> None:
    node = lone_node(start=False)

    def secret_list(config: dict[str, Any]) -> None:
        config["api"]["token"] = ["tok-very-secret"]

    error = _start_with(tmp_path, node, secret_list)
    assert "[api] token" in error and "tok-very-secret" not in error

    def bad_duration(config: dict[str, Any]) -> None:
        config["sync"]["sync_password"] = "pw-very-secret"
        config["sync"]["sync_timeout"] = "pw-very-secret"

    error = _start_with(tmp_path, node, bad_duration)
    assert "sync_timeout" in error and "pw-very-secret" not in error

    def open_api(config: dict[str, Any]) -> None:
        port = config["listen"]["http"].rpartition(":")[2]
        config["listen"]["http"] = f"0.0.0.0:{port}"
        config.setdefault("routing", {})["auth_http_secret"] = ""

    assert "auth_http_secret" in _start_with(tmp_path, node, open_api)

    def remote_partner(config: dict[str, Any]) -> None:
        config["sync"]["sync_host"] = "192.0.2.1"
        config["sync"].pop("sync_tls", None)

    assert "sync_tls" in _start_with(tmp_path, node, remote_partner)


@pytest.fixture
def shared_lone(module_nodes: ModuleNodes) -> LoneNode:
    """The module's lone node with the default config, for the tests that
    only send it requests (each its own accounts: earlier tests' are
    deleted); a test with a config of its own takes ``lone_node``."""
    return module_nodes.lone()


def test_password_hash_parameters_are_bounded(shared_lone: LoneNode) -> None:
    node = shared_lone
    salt, digest = "AAAAAAAAAAAAAAAAAAAAAA", "A" * 43
    for params in ("ln=15,r=8,p=64", "ln=24,r=8,p=1", "ln=15,r=1024,p=1"):
        status, _, body = request(
            node,
            "POST",
            "/v1/accounts",
            {"name": "amy", "password_hash": f"$scrypt${params}${salt}${digest}"},
        )
        assert status == 422, body
    status, _, _ = request(
        node,
        "POST",
        "/v1/accounts",
        {"name": "amy", "password_hash": f"$scrypt$ln=15,r=8,p=1${salt}${digest}"},
    )
    assert status == 201


def _post(url: str, data: bytes, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=data, method="POST")
    for key, value in headers.items():
        req.add_header(key, value)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code)


HOSTILE_BODIES: dict[str, tuple[bytes, dict[str, str]]] = {
    # Every field that carries an epoch, at once (a handler reads its own).
    "huge epoch": (
        b'{"account": "carol", "ownership": OWN, "rows": [OWN], "name": "carol",'
        b' "accounts": [{"account": "carol", "ownership": OWN, "digest": "x"}],'
        b' "password": "x", "target": "beta", "epoch": EPOCH}'.replace(
            b"OWN", b'{"owner": "alpha", "home": "alpha", "epoch": EPOCH, "state": "normal"}'
        ).replace(b"EPOCH", str(2**70).encode()),
        {},
    ),
    "deep JSON": (b"[" * 100_000 + b"]" * 100_000, {}),
    "deep object": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, {}),
    "long integer": (b'{"account": "carol", "epoch": ' + b"9" * 100_000 + b"}", {}),
    # A lone surrogate, escaped and as raw CESU-8 octets, in the password of
    # an account to create: its hash encoded it, a 500 and a traceback.
    "lone surrogate": (b'{"name": "dave", "password": "\\ud800"}', {}),
    "CESU-8 surrogate": (b'{"name": "erin", "password": "\xed\xa0\x80"}', {}),
    "gzip": (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage", {"Content-Encoding": "gzip"}),
    "bad UTF-8": (b'{"account": "\xff\xfe", "name": "\xc3("}', {}),
}


def test_hostile_bodies_get_a_4xx_and_one_log_line(shared_lone: LoneNode) -> None:
    import base64

    node = shared_lone
    node.add_account("carol")
    basic = "Basic " + base64.b64encode(b"repl:repl-secret").decode()
    sync = f"http://127.0.0.1:{node.port('sync')}/sync/v1"
    targets = [
        (f"{sync}/{path}", {"Authorization": basic})
        for path in ("apply", "ownership", "request_sync", "user_some", "delta", "digests")
    ] + [
        (f"{node.api}/v1/{path}", {"Authorization": f"Bearer {TOKEN}"})
        for path in ("accounts", "replicate", "accounts/carol/quota")
    ]
    statuses = {}
    for url, auth in targets:
        for what, (data, headers) in HOSTILE_BODIES.items():
            if what == "huge epoch" and url.endswith("request_sync"):
                continue  # names accounts only: no epoch to refuse
            status = _post(url, data, {"Content-Type": "application/json", **auth, **headers})
            statuses[(url.rpartition("/v1/")[2], what)] = status
    bad = {k: v for k, v in statuses.items() if not 400 <= v < 500}
    assert not bad, "\n".join(f"{k}: {v}" for k, v in bad.items())
    health = urllib.request.urlopen(f"{node.api}/v1/health", timeout=5)
    assert health.status == 200
    log = (node.workdir / f"{node.name}.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def test_replicate_never_sends_the_sync_credentials_elsewhere(
    lone_node: Callable[..., LoneNode],
) -> None:
    import socket
    import threading

    # The partner's sync host is 127.0.0.1; a listener on another loopback
    # address plays the stranger's host.
    node = lone_node({"sync": {"sync_host": "127.0.0.1", "sync_repeat_interval": "1h"}})
    node.add_account("carol")
    stranger = socket.create_server(("127.0.0.2", 0))
    stranger.settimeout(10)
    heard: list[bytes] = []

    def listen() -> None:
        try:
            conn, _ = stranger.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                heard.append(conn.recv(65536))
            except OSError:
                pass

    thread = threading.Thread(target=listen)
    thread.start()
    try:
        port = stranger.getsockname()[1]
        status, _, body = request(
            node, "POST", "/v1/replicate", {"account": "carol", "target": f"127.0.0.2:{port}"}
        )
    finally:
        # close() alone does not wake a thread blocked in accept() (it waited
        # out its 10 s timeout); shutdown() does, at once.
        try:
            stranger.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        stranger.close()
        thread.join(15)
    assert status == 422, body
    assert "sync_host" in body["detail"]
    assert heard == [], heard


@pytest.fixture(scope="module")
def sync_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The CA, certificate and key of the module's TLS sync listener."""
    from tests.test_sync_tls import make_ca

    return make_ca(tmp_path_factory.mktemp("ca"), "alpha")


@pytest.fixture
def tls_sync_node(module_nodes: ModuleNodes, sync_ca: tuple[Path, Path, Path]) -> LoneNode:
    """The module's lone node whose sync listener takes TLS only, with a cap
    of 3 connections per address and a 2 s header timeout: the two tests
    that only connect to it share it (each reads the log lines written
    since it began)."""
    _, crt, key = sync_ca
    return module_nodes.lone(
        {
            "tls": {"cert": str(crt), "key": str(key)},
            "sync": {"sync_tls": True},
            # Failed handshakes must give their place back: more of them than the cap.
            "http": {"max_connections_per_ip": 3, "header_timeout": "2s"},
        }
    )


def test_failed_tls_handshakes_on_the_sync_listener_log_no_traceback(
    tls_sync_node: LoneNode,
) -> None:
    import socket

    node = tls_sync_node
    for hello in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05garbage", b""):
        with socket.create_connection(("127.0.0.1", node.port("sync")), timeout=10) as sock:
            sock.sendall(hello)
            sock.shutdown(socket.SHUT_WR)
            try:
                while sock.recv(4096):
                    pass
            except OSError:
                pass
    assert urllib.request.urlopen(f"{node.api}/v1/health", timeout=5).status == 200
    log = (node.workdir / f"{node.name}.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def test_a_failed_tls_handshake_on_the_sync_listener_is_one_log_line(
    tls_sync_node: LoneNode, sync_ca: tuple[Path, Path, Path]
) -> None:
    """A plain-text client on a TLS sync listener: one line naming the listener
    and the client per failed handshake, and the listener keeps working over TLS."""
    import socket
    import ssl

    from tests.procs import wait_until

    node = tls_sync_node
    ca = sync_ca[0]
    logged = node.log.stat().st_size  # the module's node: only this test's lines count
    hellos = (
        b"GET /sync/v1/state HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x00\x05garbage",
        b"PRI * HTTP/2.0\r\n\r\n",
        b"\x16\x03\x03\x00\x01\x01",
    )
    # A client that says nothing is cut off at header_timeout (no TLS line for it).
    silent = socket.create_connection(("127.0.0.1", node.port("sync")), timeout=10)
    assert _closed_within(silent, 6)
    silent.close()
    for hello in hellos:
        with socket.create_connection(("127.0.0.1", node.port("sync")), timeout=10) as sock:
            sock.sendall(hello)
            sock.shutdown(socket.SHUT_WR)  # a cut record fails the handshake at once
            try:
                while sock.recv(4096):
                    pass
            except OSError:
                pass
    # A real TLS client still gets an HTTP answer (401 without credentials).
    context = ssl.create_default_context(cafile=str(ca))
    raw = socket.create_connection(("127.0.0.1", node.port("sync")), timeout=10)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET /sync/v1/state HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert tls.recv(4096).startswith(b"HTTP/1.1 ")

    def failed() -> list[str]:
        log = node.log.read_bytes()[logged:].decode(errors="replace")
        return [line for line in log.splitlines() if "TLS handshake with" in line]

    wait_until(lambda: len(failed()) >= len(hellos), 10, "the log lines")
    lines = failed()
    assert len(lines) == len(hellos), lines
    assert all("sync listener: TLS handshake with 127.0.0.1 failed: " in line for line in lines)
    log = node.log.read_text()
    assert "Traceback" not in log, log[-3000:]


def _closed_within(sock: Any, seconds: float) -> bool:
    """True if the peer closes (or resets) ``sock`` within ``seconds``."""

    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except (OSError, ConnectionResetError):
        return True
    return True


def test_http_listeners_cap_connections_and_cut_slow_headers(
    lone_node: Callable[..., LoneNode],
) -> None:
    import socket
    import time

    node = lone_node(
        {"http": {"max_connections": 50, "max_connections_per_ip": 3, "header_timeout": "2s"}}
    )

    def check(what: str, port: int) -> None:
        slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        try:
            for sock in slow:
                sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")  # never ends
            time.sleep(0.3)
            # The fourth connection from the same address is refused at once.
            with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
                assert _closed_within(extra, 1.5), what
            # The slow ones are cut after header_timeout.
            started = time.monotonic()
            assert all(_closed_within(sock, 6) for sock in slow), what
            assert time.monotonic() - started < 5
        finally:
            for sock in slow:
                sock.close()

    # The two listeners at once (their caps are their own): one header_timeout
    # of waiting instead of two in a row.
    with ThreadPoolExecutor(2) as pool:
        checks = [
            pool.submit(check, what, port)
            for what, port in (
                ("control API", node.port("http")),
                ("sync listener", node.port("sync")),
            )
        ]
        for done in checks:
            done.result()
    time.sleep(0.2)
    # Slots are free again: an ordinary request is served.
    assert urllib.request.urlopen(f"{node.api}/v1/health", timeout=5).status == 200
    log = (node.workdir / f"{node.name}.log").read_text()
    for what in ("control API", "sync listener"):
        assert f"{what}: refused a connection from 127.0.0.1" in log
        assert f"{what}: closed a connection from 127.0.0.1: no complete request header" in log
    assert "Traceback" not in log


def test_flags_past_the_sync_limit_are_refused_where_they_enter(shared_lone: LoneNode) -> None:
    import imaplib

    node = shared_lone
    node.add_account("carol")
    with node.lmtp() as lmtp:
        lmtp.sendmail("x@example.test", ["carol@example.test"], b"Subject: one\r\n\r\nbody\r\n")
    keywords = " ".join(f"keyword{n:05d}" for n in range(800))  # 9,599 characters
    imap = imaplib.IMAP4("127.0.0.1", node.port("imap"), timeout=30)
    try:
        imap.login("carol", "secret")
        imap.select("INBOX")
        typ, data = imap.store("1", "+FLAGS.SILENT", f"({keywords})")
        assert typ == "NO" and b"[LIMIT]" in data[0], (typ, data)
        typ, data = imap.fetch("1", "(FLAGS)")
        first = data[0]
        assert typ == "OK" and isinstance(first, bytes) and b"keyword" not in first
        # Within the limit, flags are kept as before.
        assert imap.store("1", "+FLAGS.SILENT", "(keyword00001 \\Seen)")[0] == "OK"
    finally:
        imap.logout()
    # The account still replicates: the record the partner would refuse never existed.
    status, _, body = request(node, "GET", "/v1/accounts/carol/mailboxes/INBOX")
    assert status == 200
    assert sorted(body["messages"][0]["flags"]) == ["\\Seen", "keyword00001"]


def test_an_account_the_partner_refuses_is_shown_and_others_replicate(tmp_path: Path) -> None:
    import base64
    import os

    from tests.nodes import make_pair
    from tests.procs import wait_until
    from tests.test_replication import boxes, deliver

    # beta takes sync requests of at most 200 KiB: one 300 KB message of
    # "big" makes every sync of that account a permanent refusal.
    alpha, beta = make_pair(
        tmp_path,
        {
            "alpha": {"sync": {"sync_compress": False}},
            # (beta's own entry limits stay below it, or it refuses to start)
            "beta": {
                "sync": {"sync_max_request": "200K"},
                "imap": {"max_literal": "100K"},
                "lmtp": {"max_message_size": "100K"},
            },
        },
    )
    try:
        alpha.start()
        beta.start()
        alpha.add_account("big")
        alpha.add_account("small")
        wait_until(lambda: "small" in str(beta.call("GET", "/v1/accounts")), 60, "accounts")
        deliver(alpha, "big@example.test", "huge", base64.encodebytes(os.urandom(220_000)))

        def refused() -> dict[str, Any]:
            return dict(alpha.call("GET", "/v1/status")["replication"]["refused_accounts"])

        wait_until(lambda: "big" in refused(), 60, "big shown as refused")
        assert "200" in refused()["big"] or "exceeds" in refused()["big"], refused()
        deliver(alpha, "small@example.test", "after")
        wait_until(lambda: boxes(beta, "small") == boxes(alpha, "small"), 60, "small replicates")
        metrics = urllib.request.urlopen(f"{alpha.api}/metrics", timeout=10).read().decode()
        assert "peerd_sync_refused_accounts 1" in metrics
        log = (alpha.workdir / f"{alpha.name}.log").read_text()
        assert log.count("partner refuses every sync of big") == 1
    finally:
        alpha.stop()
        beta.stop()


def test_http_listeners_cut_slow_bodies_and_idle_keepalive(
    lone_node: Callable[..., LoneNode],
) -> None:
    import base64
    import socket
    import time

    node = lone_node({"http": {"body_timeout": "2s", "keepalive_timeout": "2s"}})
    basic = "Basic " + base64.b64encode(b"repl:repl-secret").decode()
    listeners = (
        ("control API", node.port("http"), "/v1/accounts", f"Bearer {TOKEN}"),
        ("sync listener", node.port("sync"), "/sync/v1/user_some", basic),
    )

    def slow_body(port: int, path: str, auth: str) -> float | None:
        """A body that stops arriving: seconds until it is cut (None: not in 8 s)."""
        with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
            slow.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
            )
            started = time.monotonic()
            return time.monotonic() - started if _closed_within(slow, 8) else None

    def idle_keepalive(port: int, path: str, auth: str) -> float | None:
        """A keep-alive connection left idle after a request: seconds until it
        is closed (None: not in 8 s); the answer arrives first."""
        with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:
            idle.sendall(
                f"GET /v1/health HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode()
            )
            started = time.monotonic()
            idle.settimeout(5)
            assert idle.recv(4096).startswith(b"HTTP/1.1 ")
            return time.monotonic() - started if _closed_within(idle, 8) else None

    # The four cases at once (each times its own connection): one wait of
    # about 2 s instead of four in a row.
    with ThreadPoolExecutor(4) as pool:
        cases = {
            (what, kind): pool.submit(case, port, path, auth)
            for what, port, path, auth in listeners
            for kind, case in (("slow body", slow_body), ("idle keep-alive", idle_keepalive))
        }
        took = {key: future.result() for key, future in cases.items()}
    for (what, kind), seconds in took.items():
        assert seconds is not None and 1.5 < seconds < 7, f"{what}: {kind}: {seconds}"
    # The listeners still serve.
    assert urllib.request.urlopen(f"{node.api}/v1/health", timeout=5).status == 200
    log = (node.workdir / f"{node.name}.log").read_text()
    for what, *_ in listeners:
        assert f"{what}: closed a connection from 127.0.0.1: request body not complete" in log
    assert "Traceback" not in log


def _raw_request(port: int, method: str, path: str, headers: list[bytes]) -> bytes:
    """The answer's head to a request sent as raw bytes (urllib cannot send a
    header value that is not Latin-1 text)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        request = b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % (method.encode(), path.encode())
        headers = [*headers, b"Content-Length: 0"]
        sock.sendall(request + b"".join(h + b"\r\n" for h in headers) + b"\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


@pytest.mark.parametrize("value", [b"\xff", b"Bearer \xc3(", b"Basic \x80\x80"])
def test_credentials_that_are_not_utf8_are_refused_not_a_500(
    lone_node: Callable[..., LoneNode], value: bytes
) -> None:
    """aiohttp keeps a header's invalid UTF-8 as surrogates: the checks of the
    bearer token, the sync credentials and auth_http's shared secret compare
    them as bytes, never str.encode() them (which raised, a 500 and a
    traceback)."""
    node = lone_node({"routing": {"auth_http_secret": "s3cret"}})
    http = node.port("http")
    answer = _raw_request(http, "GET", "/v1/accounts", [b"Authorization: " + value])
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    sync = node.port("sync")
    answer = _raw_request(sync, "POST", "/sync/v1/hello", [b"Authorization: " + value])
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    nginx = [b"Auth-Protocol: imap", b"Auth-User: carol", b"Auth-Pass: x"]
    answer = _raw_request(http, "GET", "/v1/route/nginx", [*nginx, b"X-Auth-Key: " + value])
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert b"Auth-Status: Temporary server problem" in answer, answer[:400]
    # The right secret, and a Client-IP that is no address: refused, never
    # written into the failed-login line fail2ban reads.
    secret = [b"X-Auth-Key: s3cret", b"Client-IP: " + value]
    answer = _raw_request(http, "GET", "/v1/route/nginx", [*nginx, *secret])
    assert b"Auth-Status: Client-IP is not an IP address" in answer, answer[:400]
    log = (node.workdir / f"{node.name}.log").read_text()
    assert "Traceback" not in log, log[-3000:]
