"""IMAP4rev1 for peerd.

The sans-I/O protocol core (no sockets, no asyncio, no database), the only
one the package has; the live server runs on it:

- :mod:`~peerd.imap.parser`: :class:`CommandReader` turns bytes into events
  (commands, continuation requests, protocol errors); raw lines for IDLE and
  AUTHENTICATE; SASL PLAIN responses.
- :mod:`~peerd.imap.commands`: one frozen dataclass per command.
- :mod:`~peerd.imap.states`: the session states and which commands each allows.
- :mod:`~peerd.imap.responses`: values, responses and response codes as bytes.
- :mod:`~peerd.imap.sequence`, :mod:`~peerd.imap.fetchatt`,
  :mod:`~peerd.imap.searchkey`: sequence sets, FETCH items, the SEARCH AST
  (its node classes are used as ``searchkey.Not`` etc., so they are not
  re-exported here).
- :mod:`~peerd.imap.ratelimit`: the command rate limit, given the time.

Beside it, still without I/O: :mod:`~peerd.imap.structure` (MIME parts,
ENVELOPE, BODYSTRUCTURE, BODY[section]) and :mod:`~peerd.imap.search` (the
SEARCH AST evaluated over a mailbox snapshot).

The asyncio service is :mod:`peerd.imap.server`. Its two names are
re-exported lazily, so that importing the core does not import the server,
the store and SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peerd.imap.commands import (
    Append,
    Authenticate,
    Capability,
    Check,
    Close,
    Command,
    Copy,
    Create,
    Delete,
    Enable,
    Examine,
    Expunge,
    Fetch,
    Id,
    Idle,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    QResync,
    Rename,
    Search,
    Select,
    StartTLS,
    Status,
    Store,
    Subscribe,
    UidExpunge,
    Unselect,
    Unsubscribe,
    mailbox_name,
    normalize_flag,
)
from peerd.imap.fetchatt import (
    BodySection,
    FetchAtt,
    Item,
    SectionKind,
    parse_fetch_atts,
    response_name,
    sets_seen,
)
from peerd.imap.parser import (
    CommandReader,
    ContinuationNeeded,
    Event,
    Line,
    ProtocolError,
    decode_sasl_response,
    plain_credentials,
)
from peerd.imap.ratelimit import CommandRate, Verdict
from peerd.imap.responses import (
    CODE_ALERT,
    CODE_ALREADYEXISTS,
    CODE_APPENDUID,
    CODE_AUTHENTICATIONFAILED,
    CODE_BADCHARSET,
    CODE_CANNOT,
    CODE_CAPABILITY,
    CODE_CLIENTBUG,
    CODE_CLOSED,
    CODE_COPYUID,
    CODE_HIGHESTMODSEQ,
    CODE_LIMIT,
    CODE_MODIFIED,
    CODE_NOMODSEQ,
    CODE_NONEXISTENT,
    CODE_OVERQUOTA,
    CODE_PARSE,
    CODE_PERMANENTFLAGS,
    CODE_READ_ONLY,
    CODE_READ_WRITE,
    CODE_REFERRAL,
    CODE_SERVERBUG,
    CODE_TOOBIG,
    CODE_TRYCREATE,
    CODE_UIDNEXT,
    CODE_UIDNOTSTICKY,
    CODE_UIDVALIDITY,
    CODE_UNAVAILABLE,
    CODE_UNSEEN,
    Atom,
    CommandError,
    Raw,
    astring,
    continuation,
    decode_mailbox,
    encode_mailbox,
    fetch_response,
    flag_list,
    internaldate,
    literal,
    mailbox,
    nstring,
    render,
    response_code,
    string,
    tagged,
    untagged,
    untagged_status,
)
from peerd.imap.searchkey import SearchKey, parse_search_key
from peerd.imap.sequence import STAR, SequenceSet
from peerd.imap.states import ALLOWED, State, allowed

if TYPE_CHECKING:
    from peerd.imap.server import ImapServer, start_imap

__all__ = [
    "ALLOWED",
    "CODE_ALERT",
    "CODE_ALREADYEXISTS",
    "CODE_APPENDUID",
    "CODE_AUTHENTICATIONFAILED",
    "CODE_BADCHARSET",
    "CODE_CANNOT",
    "CODE_CAPABILITY",
    "CODE_CLIENTBUG",
    "CODE_CLOSED",
    "CODE_COPYUID",
    "CODE_HIGHESTMODSEQ",
    "CODE_LIMIT",
    "CODE_MODIFIED",
    "CODE_NOMODSEQ",
    "CODE_NONEXISTENT",
    "CODE_OVERQUOTA",
    "CODE_PARSE",
    "CODE_PERMANENTFLAGS",
    "CODE_READ_ONLY",
    "CODE_READ_WRITE",
    "CODE_REFERRAL",
    "CODE_SERVERBUG",
    "CODE_TOOBIG",
    "CODE_TRYCREATE",
    "CODE_UIDNEXT",
    "CODE_UIDNOTSTICKY",
    "CODE_UIDVALIDITY",
    "CODE_UNAVAILABLE",
    "CODE_UNSEEN",
    "STAR",
    "Append",
    "Atom",
    "Authenticate",
    "BodySection",
    "Capability",
    "Check",
    "Close",
    "Command",
    "CommandError",
    "CommandRate",
    "CommandReader",
    "ContinuationNeeded",
    "Copy",
    "Create",
    "Delete",
    "Enable",
    "Event",
    "Examine",
    "Expunge",
    "Fetch",
    "FetchAtt",
    "Id",
    "Idle",
    "ImapServer",
    "Item",
    "Line",
    "List",
    "Login",
    "Logout",
    "Lsub",
    "Move",
    "Namespace",
    "Noop",
    "ProtocolError",
    "QResync",
    "Raw",
    "Rename",
    "Search",
    "SearchKey",
    "SectionKind",
    "Select",
    "SequenceSet",
    "StartTLS",
    "State",
    "Status",
    "Store",
    "Subscribe",
    "UidExpunge",
    "Unselect",
    "Unsubscribe",
    "Verdict",
    "allowed",
    "astring",
    "continuation",
    "decode_mailbox",
    "decode_sasl_response",
    "encode_mailbox",
    "fetch_response",
    "flag_list",
    "internaldate",
    "literal",
    "mailbox",
    "mailbox_name",
    "normalize_flag",
    "nstring",
    "parse_fetch_atts",
    "parse_search_key",
    "plain_credentials",
    "render",
    "response_code",
    "response_name",
    "sets_seen",
    "start_imap",
    "string",
    "tagged",
    "untagged",
    "untagged_status",
]


def __getattr__(name: str) -> Any:
    # The server pulls in the store and SQLAlchemy; load it only when asked for.
    if name in ("ImapServer", "start_imap"):
        from peerd.imap import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
