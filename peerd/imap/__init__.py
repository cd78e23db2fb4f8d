"""IMAP4rev1 for peerd: the sans-I/O core (:mod:`peerd.imap.protocol`), message
structure (:mod:`peerd.imap.structure`), SEARCH (:mod:`peerd.imap.search`) and the
asyncio service (:mod:`peerd.imap.server`)."""

from peerd.imap.server import ImapServer, start_imap

__all__ = ["ImapServer", "start_imap"]
