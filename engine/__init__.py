"""peerd's mail store and replication engine.

The engine knows nothing of HTTP, IMAP or ownership policy: services reach it
through :class:`engine.store.Store` and the operation modules
(``accounts``, ``mailbox``, ``messages``, ``delivery``, ``synclog``), and
epochs reach it as plain values.

``Store`` is imported on first use (PEP 562 ``__getattr__``): a process that
needs only a light module (``engine.limits`` for the config, e.g. peerctl)
does not pay for SQLAlchemy, about a third of a second of CPU at each start.
"""

# No ``from __future__ import annotations`` here: it would bind ``annotations``
# in this namespace over the submodule engine.annotations.
from typing import TYPE_CHECKING, Any

from engine.errors import EngineError
from engine.spool import Spool, guid_of

if TYPE_CHECKING:
    from engine.store import Store

__all__ = ["EngineError", "Spool", "Store", "guid_of"]


def __getattr__(name: str) -> Any:
    if name == "Store":
        from engine.store import Store

        return Store
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
