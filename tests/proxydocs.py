"""The front-end configurations of docs/proxies.md, as the tests start them.

How this works: each configuration in the doc follows a ``<!-- test: NAME -->``
marker; :func:`block` returns the fenced block after it, as the admin would
copy it. :func:`substitute` then replaces the doc's addresses, ports and
paths with the test's, and fails when one of them is not in the block, so
the doc and the test cannot drift apart: edit the doc, and the test either
starts what it now says or fails naming the line it no longer finds.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from tests.harness.nginx import NGINX_MAIL_MODULE

__all__ = ["DOC", "block", "nginx_conf", "peerd_sections", "postfix_main", "substitute"]

DOC = Path(__file__).resolve().parent.parent / "docs" / "proxies.md"
ALPHA, BETA = "192.0.2.1", "192.0.2.2"


def block(name: str, doc: Path = DOC) -> str:
    """The fenced code block after ``<!-- test: name -->``."""
    text = doc.read_text()
    match = re.search(rf"<!-- test: {re.escape(name)} -->\n```[a-z]*\n(.*?)\n```", text, re.S)
    if match is None:
        raise AssertionError(f"{doc} has no block marked <!-- test: {name} -->")
    return match.group(1) + "\n"


def substitute(text: str, replacements: dict[str, str]) -> str:
    """Every key replaced by its value; each key must occur in ``text``."""
    for old, new in replacements.items():
        if old not in text:
            raise AssertionError(f"{old!r} is not in the block any more:\n{text}")
        text = text.replace(old, new)
    return text


def peerd_sections(node: str, ports: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    """The doc's peerd tables for ``node`` (alpha as written; beta with the two
    hosts swapped), with the test's loopback ports. ``ports``: per node, the
    ports of lmtp, imap, pop3, http and socketmap."""
    text = block("peerd")
    if node == "beta":
        text = text.replace(ALPHA, "\0").replace(BETA, ALPHA).replace("\0", BETA)
    other = "beta" if node == "alpha" else "alpha"
    here, there = (ALPHA, BETA) if node == "alpha" else (BETA, ALPHA)
    replacements = {"127.0.0.1:10027": f"127.0.0.1:{ports[node]['socketmap']}"}
    doc_ports = {"lmtp": 10024, "imap": 10143, "pop3": 10110, "http": 18080}
    for service in ("lmtp", "imap", "pop3", "http"):  # [listen]
        replacements[f"{here}:{doc_ports[service]}"] = f"127.0.0.1:{ports[node][service]}"
    for service in ("imap", "pop3", "lmtp"):  # [routing] partner_*
        replacements[f"{there}:{doc_ports[service]}"] = f"127.0.0.1:{ports[other][service]}"
    return tomllib.loads(substitute(text, replacements))


def nginx_conf(
    root: Path,
    api: dict[str, int],
    lookup_port: int,
    listen: dict[int, int],
    cert: Path,
    key: Path,
) -> str:
    """A whole nginx.conf: the test's process settings around the doc's two
    blocks. ``api``: alpha's and beta's control API ports; ``listen``: the
    doc's port (143, 993, 110, 995) -> the test's."""
    http = substitute(
        block("nginx-http"),
        {
            f"{ALPHA}:18080": f"127.0.0.1:{api['alpha']}",
            f"{BETA}:18080": f"127.0.0.1:{api['beta']}",
            "127.0.0.1:9080": f"127.0.0.1:{lookup_port}",
        },
    )
    mail = substitute(
        block("nginx-mail"),
        {
            "127.0.0.1:9080": f"127.0.0.1:{lookup_port}",
            "/etc/nginx/tls/mail.example.org.crt": str(cert),
            "/etc/nginx/tls/mail.example.org.key": str(key),
            **{
                f"listen {doc}{' ssl' if doc in (993, 995) else ''};": (
                    f"listen 127.0.0.1:{test}{' ssl' if doc in (993, 995) else ''};"
                )
                for doc, test in listen.items()
            },
        },
    )
    return f"""
load_module {NGINX_MAIL_MODULE};
daemon off;
master_process on;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 128; }}
http {{
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
{http}
}}
{mail}
"""


def postfix_main(socketmap_port: int) -> dict[str, str]:
    """The doc's main.cf lines, pointed at the test's socketmap."""
    text = substitute(block("postfix"), {"127.0.0.1:10027": f"127.0.0.1:{socketmap_port}"})
    lines: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            lines[key.strip()] = value.strip()
    return lines
