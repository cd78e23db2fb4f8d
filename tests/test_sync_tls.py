"""The sync channel over TLS with compression, and a partner whose certificate does not verify."""

from __future__ import annotations

import smtplib
import subprocess
from pathlib import Path

from tests.nodes import Node, make_pair
from tests.procs import wait_until


def make_ca(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it (openssl CLI)."""
    ca_key, ca_crt = directory / f"{name}-ca.key", directory / f"{name}-ca.crt"
    key, csr, crt = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.crt"
    ext = directory / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_crt),
        "-days",
        "2",
        "-subj",
        f"/CN={name} test CA",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/CN=127.0.0.1",
    )
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_crt),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(crt),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return ca_crt, crt, key


def test_replication_over_tls_with_compression(tmp_path: Path) -> None:
    ca, crt, key = make_ca(tmp_path, "pair")
    other_ca, _, _ = make_ca(tmp_path, "stranger")
    tls = {
        "tls": {"cert": str(crt), "key": str(key)},
        "sync": {"sync_tls": True, "sync_tls_ca": str(ca), "sync_compress": True},
    }
    alpha, beta = make_pair(tmp_path, {"alpha": tls, "beta": tls})
    try:
        alpha.start()
        beta.start()
        alpha.add_account("tls")
        with smtplib.LMTP("127.0.0.1", alpha.ports["lmtp"]) as lmtp:
            lmtp.sendmail(
                "s@example.test",
                ["tls@example.test"],
                b"Subject: over tls\r\n\r\n" + b"text " * 2000 + b"\r\n",
            )
        wait_until(lambda: _count(beta) == 1, 10, "replicated over TLS")
        report = alpha.replicate("tls")["reports"][0]
        assert report["steps"][-1] == "ENDUSER"
        # A partner certificate from an unknown CA is refused by the client.
        alpha.stop()
        text = alpha.config.read_text().replace(str(ca), str(other_ca))
        alpha.config.write_text(text)
        alpha.start()
        result = alpha.call("POST", "/v1/replicate", {"account": "tls"})
        assert (
            result["errors"]
            and "certificate verify failed" in result["errors"][0]["detail"].lower()
        )
    finally:
        alpha.stop()
        beta.stop()


def _count(node: Node) -> int:
    import urllib.error

    try:
        return len(node.mailbox("tls")["messages"])
    except urllib.error.HTTPError as exc:
        exc.close()
        return 0


def test_imap_starttls_and_pop3_stls(tmp_path: Path) -> None:
    import imaplib
    import poplib
    import ssl

    from tests.nodes import make_single

    ca, crt, key = make_ca(tmp_path, "mail")
    node = make_single(tmp_path, overrides={"tls": {"cert": str(crt), "key": str(key)}})
    node.start()
    try:
        node.add_account("tlsuser")
        context = ssl.create_default_context(cafile=str(ca))
        client = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=20)
        assert "STARTTLS" in client.capabilities
        client.starttls(context)
        assert "STARTTLS" not in client.capabilities
        assert client.login("tlsuser", "secret")[0] == "OK"
        client.logout()
        pop = poplib.POP3("127.0.0.1", node.ports["pop3"], timeout=20)
        assert "STLS" in pop.capa()
        pop.stls(context)
        pop.user("tlsuser")
        pop.pass_("secret")
        assert pop.stat()[0] == 0
        pop.quit()
    finally:
        node.stop()


def test_every_tls_request_on_a_fresh_connection_is_answered_at_once(tmp_path: Path) -> None:
    """A TLS 1.3 client sends its request right behind its Finished; the
    listener must hand those bytes to HTTP even when they were decrypted before
    its own handshake call returned (they were dropped, and the request hung
    until the header timeout, under load)."""
    import http.client
    import ssl
    import time

    ca, crt, key = make_ca(tmp_path, "pair")
    tls = {
        "tls": {"cert": str(crt), "key": str(key)},
        "sync": {"sync_tls": True, "sync_tls_ca": str(ca)},
    }
    _alpha, beta = make_pair(tmp_path, {"alpha": tls, "beta": tls})
    context = ssl.create_default_context(cafile=str(ca))
    try:
        beta.start()
        slowest = 0.0
        for _ in range(150):
            started = time.monotonic()
            conn = http.client.HTTPSConnection(
                "127.0.0.1", beta.ports["sync"], context=context, timeout=30
            )
            try:
                conn.request("GET", "/sync/v1/nothing-here")
                assert conn.getresponse().status in (401, 404, 405)
            finally:
                conn.close()
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 3, f"a request took {slowest:.1f}s"
    finally:
        beta.stop()
