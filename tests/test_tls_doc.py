"""docs/tls.md, done as written: its openssl commands make the pair's CA and
both nodes' certificates (only the addresses become loopback), and a pair
started with its [tls] and [sync] tables replicates over HTTPS verified
against that CA, and serves IMAP STARTTLS with the node's certificate.
"""

from __future__ import annotations

import imaplib
import smtplib
import socket
import ssl
import subprocess
import tomllib
from pathlib import Path

from tests import proxydocs
from tests.nodes import make_pair, running
from tests.procs import wait_until

DOC = proxydocs.DOC.parent / "tls.md"


def test_the_docs_certificates_secure_a_pair(tmp_path: Path) -> None:
    certs = tmp_path / "tls"
    certs.mkdir()
    script = proxydocs.substitute(
        proxydocs.block("make-certs", DOC), {"192.0.2.1": "127.0.0.1", "192.0.2.2": "127.0.0.1"}
    )
    subprocess.run(["bash", "-euc", script], cwd=certs, check=True, capture_output=True)
    ca = certs / "ca.crt"

    overrides: dict[str, dict[str, dict[str, object]]] = {}
    for name in ("alpha", "beta"):
        text = proxydocs.substitute(
            proxydocs.block("peerd-tls", DOC), {"/etc/peerd/tls/": f"{certs}/"}
        )
        if name == "beta":
            text = proxydocs.substitute(text, {"alpha.crt": "beta.crt", "alpha.key": "beta.key"})
        overrides[name] = tomllib.loads(text)
    alpha, beta = make_pair(tmp_path, overrides)

    with running(alpha, beta):
        alpha.add_account("amy")
        beta.add_account("bob")
        for node, account in ((alpha, "amy"), (beta, "bob")):
            with smtplib.LMTP("127.0.0.1", node.ports["lmtp"], timeout=20) as lmtp:
                lmtp.sendmail("s@example.test", [f"{account}@example.test"], b"Subject: x\r\n\r\n")
        wait_until(lambda: len(beta.mailbox("amy")["messages"]) == 1, 30, "amy's mail on beta")
        wait_until(lambda: len(alpha.mailbox("bob")["messages"]) == 1, 30, "bob's mail on alpha")

        for node in (alpha, beta):
            client = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=20)
            try:
                client.starttls(ssl.create_default_context(cafile=str(ca)))
                peer = client.sock.getpeercert()  # type: ignore[attr-defined]
                names = [value for _, value in peer["subjectAltName"]]
                assert f"{node.name}.example.org" in names
                assert client.login("amy" if node is alpha else "bob", "secret")[0] == "OK"
            finally:
                client.logout()

        # The sync listener speaks only HTTPS: a plain request is not answered.
        with socket.create_connection(("127.0.0.1", alpha.ports["sync"]), timeout=10) as raw:
            raw.sendall(b"GET /sync/v1 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert not raw.recv(100).startswith(b"HTTP/1.1 ")
