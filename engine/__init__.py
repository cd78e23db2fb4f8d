"""peerd's mail store and replication engine.

The engine knows nothing of HTTP, IMAP or ownership policy: services reach it
through :class:`engine.store.Store` and the operation modules
(``accounts``, ``mailbox``, ``messages``, ``delivery``, ``synclog``), and
epochs reach it as plain values.
"""

from engine.errors import EngineError
from engine.spool import Spool, guid_of
from engine.store import Store

__all__ = ["EngineError", "Spool", "Store", "guid_of"]
