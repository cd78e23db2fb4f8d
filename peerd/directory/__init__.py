"""The routing directory of many pairs: one PostgreSQL database every node of
every pair shares (docs/directory.md).

Each node writes its own pair's rows through (:mod:`.writer`), and answers
routing lookups for accounts of any pair from a cache over it (:mod:`.client`).
The local ownership table stays the source of truth for fencing.
"""

from peerd.directory.client import Directory
from peerd.directory.errors import DirectoryUnavailable
from peerd.directory.rows import AccountEntry, Found, NodeEntry, PairEntry
from peerd.directory.writer import DirectoryWriter, node_entry

__all__ = [
    "AccountEntry",
    "Directory",
    "DirectoryUnavailable",
    "DirectoryWriter",
    "Found",
    "NodeEntry",
    "PairEntry",
    "node_entry",
]
