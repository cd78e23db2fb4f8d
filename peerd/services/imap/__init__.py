"""The IMAP service: asyncio sessions over :mod:`peerd.protocols.imap` and the store."""

from peerd.services.imap.server import ImapServer, start_imap

__all__ = ["ImapServer", "start_imap"]
