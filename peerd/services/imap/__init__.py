"""The IMAP service: asyncio sessions over :mod:`peerd.protocols.imap` and the store.

How this works: :mod:`~peerd.services.imap.server` listens and keeps the open
sessions; :mod:`~peerd.services.imap.session` is one connection's loop (bytes
in, the core's events out, one handler per command, the core's answers back);
:mod:`~peerd.services.imap.handlers` is the table of handlers by command
class, joined from one module per group of commands:

- :mod:`~peerd.services.imap.connection`: CAPABILITY, NOOP, CHECK, LOGOUT, ID,
  STARTTLS, LOGIN, AUTHENTICATE;
- :mod:`~peerd.services.imap.mailboxes`: ENABLE, NAMESPACE, SELECT, EXAMINE,
  CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, STATUS, APPEND;
- :mod:`~peerd.services.imap.messages`: CLOSE, UNSELECT, EXPUNGE, UID EXPUNGE,
  STORE, COPY, MOVE;
- :mod:`~peerd.services.imap.fetch`: FETCH; :mod:`~peerd.services.imap.search`:
  SEARCH; :mod:`~peerd.services.imap.idle`: IDLE.

Handlers reach the store only through
:class:`~peerd.services.mailstore.AccountStore` (typed values; every write
behind the ownership fence).
"""

from peerd.services.imap.server import ImapServer, start_imap

__all__ = ["ImapServer", "start_imap"]
