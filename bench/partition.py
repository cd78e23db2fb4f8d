"""A network partition between two nodes on loopback, without root: TCP links the bench controls.

How this works: every connection one node opens to the other (the sync
channel, the partner's control API, LMTP/IMAP/POP3 routed to the partner)
goes through a :class:`Link`, a forwarder listening on a free loopback port
of its own. :func:`wire_pair` rewrites both nodes' configs (before they
start) so each reaches its partner only through links. :meth:`Links.cut`
is the partition: every live connection through a link is shut down at
once (both ends see it break, as after a reset or a timeout in a real
network), and new ones are accepted and closed straight away, until
:meth:`Links.heal`. Clients of the nodes (LMTP, IMAP, the bench's API calls)
talk to the nodes directly and are not cut: each side of the partition goes
on serving, as the two halves of a real split do.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import tomllib
from typing import Any

from tests.harness.daemons import write_config
from tests.nodes import Node

__all__ = ["Link", "Links", "wire_pair"]

# What a node opens to its partner: [sync] sync_port, [partner] api, [routing] partner_*.
ROUTED = ("lmtp", "imap", "pop3")


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class Link:
    """One forwarder: ``127.0.0.1:port`` to ``127.0.0.1:target``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = int(self.listener.getsockname()[1])
        self.cut = threading.Event()
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.live: set[socket.socket] = set()
        self.connections = 0
        self.broken = 0  # connections the cuts broke
        self.refused = 0  # connections opened during a cut
        threading.Thread(target=self._accept, daemon=True, name=f"link-{self.port}").start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut.is_set():
                self.refused += 1
                _close(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)  # the node behind is down: as a refused connect
                continue
            with self.lock:
                self.live |= {client, upstream}
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            with self.lock:
                gone = src in self.live
                self.live.discard(src)
            if gone:
                _close(src)

    def sever(self) -> None:
        """Start a partition: break every connection, refuse new ones."""
        self.cut.set()
        with self.lock:
            live, self.live = self.live, set()
        self.broken += len(live) // 2
        for sock in live:
            _close(sock)

    def mend(self) -> None:
        self.cut.clear()

    def close(self) -> None:
        self.closed.set()
        self.sever()
        _close(self.listener)


class Links:
    """Every link between a pair: cut and healed together."""

    def __init__(self, links: list[Link]) -> None:
        self.links = links
        self.partitioned = False

    def cut(self) -> None:
        self.partitioned = True
        for link in self.links:
            link.sever()

    def heal(self) -> None:
        for link in self.links:
            link.mend()
        self.partitioned = False

    def close(self) -> None:
        for link in self.links:
            link.close()

    @property
    def broken(self) -> int:
        return sum(link.broken for link in self.links)


def _sections(node: Node) -> dict[str, Any]:
    return tomllib.loads(node.config.read_text())


def wire_pair(alpha: Node, beta: Node) -> Links:
    """Put links between the two (not yet started) nodes; both configs rewritten."""
    links: list[Link] = []
    for node, partner in ((alpha, beta), (beta, alpha)):
        sections = _sections(node)
        sync = Link(partner.port("sync"))
        api = Link(partner.port("http"))
        links += [sync, api]
        sections["sync"]["sync_port"] = sync.port
        sections["partner"]["api"] = f"http://127.0.0.1:{api.port}"
        routing = sections.setdefault("routing", {})
        for service in ROUTED:
            link = Link(partner.port(service))
            links.append(link)
            routing[f"partner_{service}"] = f"127.0.0.1:{link.port}"
        write_config(node.config, sections)
    return Links(links)
