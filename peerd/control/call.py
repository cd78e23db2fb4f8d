"""What a control API handler is given, and how a route is described.

How this works: the daemon builds one :class:`Parts` (the node and every
part the API reports on or drives) and hands it to the application. Each
``/v1`` route is one :class:`Route` in :data:`peerd.control.routes.ROUTES`:
method, path, summary, handler, body and query classes
(:mod:`peerd.control.schema`), the answers it may give. The application
checks the body and query against their classes and calls the handler with
a :class:`Call`: the parts, the request, and the body and query as
dataclasses. The OpenAPI document is rendered from the same routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from aiohttp import web

from peerd.directory import Directory, DirectoryWriter
from peerd.directory.transfer import Mover
from peerd.node.node import Node
from peerd.pair.indexer import Indexer
from peerd.pair.partner import Pair
from peerd.pair.sweep import SpoolSweep
from peerd.replication.reconcile import Reconciler
from peerd.replication.rolling import RollingWorker
from peerd.replication.scrub import Scrubber
from peerd.replication.server import SyncServer

__all__ = ["Call", "Handler", "Parts", "Route", "StatusSource"]

B = TypeVar("B")
Q = TypeVar("Q")


class StatusSource(Protocol):
    """A part that reports itself as JSON (the LMTP worker pool)."""

    async def status(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Parts:
    """The node and the parts the daemon started; None: not running here
    (no partner configured, no sync listener, LMTP in the daemon itself)."""

    node: Node
    pair: Pair | None = None
    worker: RollingWorker | None = None
    # The backup channels' workers by name ([sync.channels.NAME]).
    channels: dict[str, RollingWorker] = field(default_factory=dict)
    reconciler: Reconciler | None = None
    sweep: SpoolSweep | None = None
    indexer: Indexer | None = None
    sync_server: SyncServer | None = None
    lmtp: StatusSource | None = None
    scrubber: Scrubber | None = None
    directory: Directory | None = None
    directory_writer: DirectoryWriter | None = None
    mover: Mover | None = None


@dataclass(frozen=True, slots=True)
class Call(Generic[B, Q]):
    """One request to a handler: its body and query already checked and built."""

    parts: Parts
    request: web.Request
    body: B
    query: Q

    @property
    def node(self) -> Node:
        return self.parts.node

    def path(self, name: str) -> str:
        """A path parameter (``{name}`` in the route's path)."""
        return self.request.match_info[name]

    @property
    def pair(self) -> Pair:
        if self.parts.pair is None:  # the route is only added when there is one
            raise RuntimeError("this node has no partner configured")
        return self.parts.pair

    @property
    def reconciler(self) -> Reconciler:
        if self.parts.reconciler is None:
            raise RuntimeError("this node has no partner configured")
        return self.parts.reconciler

    @property
    def scrubber(self) -> Scrubber:
        if self.parts.scrubber is None:
            raise RuntimeError("the scrub is not running")
        return self.parts.scrubber

    @property
    def sweep(self) -> SpoolSweep:
        if self.parts.sweep is None:
            raise RuntimeError("the spool sweep is not running")
        return self.parts.sweep

    @property
    def indexer(self) -> Indexer:
        if self.parts.indexer is None:
            raise RuntimeError("the full-text indexer is not running")
        return self.parts.indexer


Handler = Callable[[Call[Any, Any]], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    """One route of the control API, described once."""

    method: str
    path: str
    summary: str
    handler: Handler
    body: type | None = None
    query: type | None = None
    responses: tuple[int, ...] = (200,)
    public: bool = False  # no bearer token (the document says ``security: []``)
    partner: bool = False  # only when a partner is configured ([sync] sync_host)
    answer: str = "application/json"  # the content type of a 2xx answer ("": no body)
    # Request and answer headers the route reads and writes: (name, meaning).
    headers_in: tuple[tuple[str, str], ...] = ()
    headers_out: tuple[tuple[str, str], ...] = ()
    # An admin action the mail log records (who asked, how, the answer); "": none.
    action: str = ""
    # The largest body the route takes, in bytes; 0: the API's default (1 MiB).
    max_body: int = 0
