"""The IMAP commands a client can send, one frozen dataclass each.

How this works: :class:`~peerd.protocols.imap.parser.CommandReader` builds these from
the wire; a server (or a test) may also build them directly. Each class
checks its values when built and raises
:class:`~peerd.protocols.imap.responses.CommandError` (answered ``BAD``) if they are not
something a client could legally have sent: a bad tag, an unknown STATUS
item, ``\\Recent`` in STORE, VANISHED without CHANGEDSINCE...

Values arrive decoded: mailbox names are Unicode (modified UTF-7 undone, and
any case of ``INBOX`` is ``"INBOX"``, RFC 3501 5.1), flags are ``str`` with
system flags in their canonical case (``\\Seen``), SEARCH criteria are a
:mod:`~peerd.protocols.imap.searchkey` AST, FETCH items are :mod:`~peerd.protocols.imap.fetchatt`
values, sequence sets are :class:`~peerd.protocols.imap.sequence.SequenceSet`.

Which commands each session state accepts is :mod:`peerd.protocols.imap.states`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal

from peerd.protocols.imap.fetchatt import FetchAtt
from peerd.protocols.imap.partial import PartialRange
from peerd.protocols.imap.responses import CommandError, decode_mailbox
from peerd.protocols.imap.searchkey import CHARSETS, MAX_MODSEQ, SearchKey
from peerd.protocols.imap.sequence import SequenceSet
from peerd.protocols.imap.sort import Criterion
from peerd.protocols.imap.thread import Algorithm

__all__ = [
    "LIST_RETURN_OPTIONS",
    "LIST_SELECT_OPTIONS",
    "SEARCH_RETURN_OPTIONS",
    "STATUS_ITEMS",
    "SYSTEM_FLAGS",
    "Append",
    "AppendMessage",
    "Authenticate",
    "Capability",
    "CatPart",
    "Check",
    "Close",
    "Command",
    "Copy",
    "Create",
    "Delete",
    "Enable",
    "Examine",
    "Expunge",
    "Fetch",
    "Id",
    "Idle",
    "List",
    "Login",
    "Logout",
    "Lsub",
    "Move",
    "Namespace",
    "Noop",
    "QResync",
    "Rename",
    "Search",
    "Select",
    "StartTLS",
    "Status",
    "Store",
    "Subscribe",
    "UidExpunge",
    "Unselect",
    "Unsubscribe",
    "is_inbox",
    "mailbox_name",
    "normalize_flag",
]

SYSTEM_FLAGS: Final = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_SYSTEM_BY_UPPER: Final = {flag.upper(): flag for flag in (*SYSTEM_FLAGS, "\\Recent")}
STATUS_ITEMS: Final = frozenset(
    # RFC 3501 6.3.10; HIGHESTMODSEQ RFC 7162 3.1.6; SIZE RFC 8438; DELETED RFC 9051
    {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE", "DELETED"}
)
LIST_SELECT_OPTIONS: Final = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
LIST_RETURN_OPTIONS: Final = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})
# RFC 4731, 5182; PARTIAL: RFC 9394 (with its range in the command's ``partial``).
SEARCH_RETURN_OPTIONS: Final = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE", "PARTIAL"})
# tag = 1*<any ASTRING-CHAR except "+"> (RFC 3501 9)
_TAG_BAD: Final = frozenset('(){%*"\\+ ')
# Longest names we accept for ID fields and values (RFC 2971 3.3).
_ID_MAX_PAIRS: Final = 30


def mailbox_name(raw: str | bytes) -> str:
    """A mailbox name from the wire: modified UTF-7 decoded, ``INBOX`` in any case
    normalised (RFC 3501 5.1: INBOX is case-insensitive, other names are not)."""
    name = decode_mailbox(raw)
    return "INBOX" if is_inbox(name) else name


def is_inbox(name: str) -> bool:
    """``name`` is INBOX in some case. RFC 3501 5.1 means ASCII case: Unicode
    case mapping would take "\u0131nbox" (dotless i), a name of its own, as INBOX."""
    return name.isascii() and name.upper() == "INBOX"


def normalize_flag(text: str) -> str:
    """A flag as sent (``\\seen``, ``$Junk``) in canonical form; BAD if it is not a flag.

    System flags get their canonical case (flags are case-insensitive, RFC 3501
    2.3.2); keywords keep theirs.
    """
    if text.startswith("\\"):
        system = _SYSTEM_BY_UPPER.get(text.upper())
        if system is not None:
            return system
        rest = text[1:]
    else:
        rest = text
    if not rest or not rest.isascii() or any(c in _TAG_BAD or c in "]\\" or c < "!" for c in rest):
        raise CommandError(f"bad flag {text[:40]!r}")
    return text


def _check_tag(tag: str) -> None:
    if not tag or not tag.isascii() or any(c in _TAG_BAD or not c.isprintable() for c in tag):
        raise CommandError(f"bad tag {tag[:40]!r}")


def _check_partial(options: tuple[str, ...] | None, partial: PartialRange | None) -> None:
    # RFC 9394 3.1 (and RFC 5267 4.4): PARTIAL once, with its range, and not with ALL.
    words = list(options or ())
    if ("PARTIAL" in words) != (partial is not None) or words.count("PARTIAL") > 1:
        raise CommandError("PARTIAL takes one range, once (RFC 9394 3.1)")
    if partial is not None and "ALL" in words:
        raise CommandError("PARTIAL and ALL exclude each other (RFC 9394 3.1)")


def _check_mailbox(name: str) -> None:
    # Names are decoded Unicode; control characters would let a name break a
    # response line (RFC 3501 5.1: names are printable in practice).
    if any(c < " " or c == "\x7f" for c in name):
        raise CommandError("mailbox names cannot hold control characters")


def _check_flags(flags: tuple[str, ...]) -> None:
    for flag in flags:
        if normalize_flag(flag) != flag:
            raise CommandError(f"flag {flag!r} is not in canonical form")
        if flag == "\\Recent":
            raise CommandError("\\Recent cannot be set by a client (RFC 3501 2.3.2)")


def _check_modseq(value: int | None, what: str) -> None:
    if value is not None and not 0 <= value <= MAX_MODSEQ:
        raise CommandError(f"{what} out of range (RFC 7162 7)")


@dataclass(frozen=True, slots=True)
class Command:
    """Every command carries the client's ``tag``; ``name`` is the IMAP verb."""

    tag: str
    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        _check_tag(self.tag)


# -- any state (RFC 3501 6.1) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capability(Command):
    name: ClassVar[str] = "CAPABILITY"


@dataclass(frozen=True, slots=True)
class Noop(Command):
    name: ClassVar[str] = "NOOP"


@dataclass(frozen=True, slots=True)
class Logout(Command):
    name: ClassVar[str] = "LOGOUT"


@dataclass(frozen=True, slots=True)
class Id(Command):
    """RFC 2971: the client's field/value pairs, or None for ``ID NIL``."""

    params: tuple[tuple[str, str | None], ...] | None
    name: ClassVar[str] = "ID"

    def __post_init__(self) -> None:
        _check_tag(self.tag)
        if self.params is None:
            return
        # RFC 2971 3.3: at most 30 pairs, fields up to 30 octets, values up to 1024.
        if len(self.params) > _ID_MAX_PAIRS:
            raise CommandError("ID takes at most 30 field/value pairs (RFC 2971 3.3)")
        for key, value in self.params:
            if len(key.encode()) > 30 or (value is not None and len(value.encode()) > 1024):
                raise CommandError("ID field or value too long (RFC 2971 3.3)")


# -- not authenticated (RFC 3501 6.2) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartTLS(Command):
    name: ClassVar[str] = "STARTTLS"


@dataclass(frozen=True, slots=True)
class Login(Command):
    user: str
    password: str = field(repr=False)  # never in logs
    name: ClassVar[str] = "LOGIN"


@dataclass(frozen=True, slots=True)
class Authenticate(Command):
    """SASL ``mechanism`` (upper case) and the decoded RFC 4959 initial response:
    None when absent, ``b""`` when sent as ``=``."""

    mechanism: str
    initial_response: bytes | None = field(default=None, repr=False)
    name: ClassVar[str] = "AUTHENTICATE"

    def __post_init__(self) -> None:
        _check_tag(self.tag)
        if not self.mechanism or self.mechanism != self.mechanism.upper():
            raise CommandError("SASL mechanism names are upper-case atoms")


# -- authenticated (RFC 3501 6.3) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enable(Command):
    """RFC 5161: capability names, upper case."""

    caps: tuple[str, ...]
    name: ClassVar[str] = "ENABLE"

    def __post_init__(self) -> None:
        _check_tag(self.tag)
        if not self.caps:
            raise CommandError("ENABLE needs at least one capability (RFC 5161 3.1)")


@dataclass(frozen=True, slots=True)
class Namespace(Command):
    name: ClassVar[str] = "NAMESPACE"


@dataclass(frozen=True, slots=True)
class QResync:
    """SELECT's QRESYNC parameters (RFC 7162 3.2.5)."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None  # (sequence numbers, UIDs)

    def __post_init__(self) -> None:
        if not 1 <= self.uidvalidity <= 0xFFFFFFFF:
            raise CommandError("QRESYNC uidvalidity must be a 32-bit nz-number")
        if not 1 <= self.modseq <= MAX_MODSEQ:
            raise CommandError("QRESYNC modseq must be a positive 63-bit number")
        sets = [self.known_uids, *(self.seq_match or ())]
        if any(x is not None and (x.saved or x.uses_star) for x in sets):
            # RFC 7162 7: known-uids and seq-match-data are plain sets.
            raise CommandError("QRESYNC sets take neither '*' nor '$' (RFC 7162 7)")


@dataclass(frozen=True, slots=True)
class _Open(Command):
    mailbox: str
    condstore: bool = False  # RFC 7162 3.1.8: SELECT (CONDSTORE) enables CONDSTORE
    qresync: QResync | None = None  # RFC 7162 3.2.5; implies CONDSTORE

    def __post_init__(self) -> None:
        _check_tag(self.tag)
        _check_mailbox(self.mailbox)


@dataclass(frozen=True, slots=True)
class Select(_Open):
    name: ClassVar[str] = "SELECT"


@dataclass(frozen=True, slots=True)
class Examine(_Open):
    """SELECT, read-only (RFC 3501 6.3.2)."""

    name: ClassVar[str] = "EXAMINE"


@dataclass(frozen=True, slots=True)
class Create(Command):
    mailbox: str
    special_use: tuple[str, ...] = ()  # RFC 6154 3: CREATE name (USE (\Sent))
    name: ClassVar[str] = "CREATE"

    def __post_init__(self) -> None:
        _check_tag(self.tag)
        _check_mailbox(self.mailbox)
        if any(not use.startswith("\\") for use in self.special_use):
            raise CommandError("special-use attributes start with '\\' (RFC 6154 2)")


@dataclass(frozen=True, slots=True)
class _OneMailbox(Command):
    mailbox: str

    def __post_init__(self) -> None:
        _check_tag(self.tag)
        _check_mailbox(self.mailbox)


@dataclass(frozen=True, slots=True)
class Delete(_OneMailbox):
    name: ClassVar[str] = "DELETE"


@dataclass(frozen=True, slots=True)
class Subscribe(_OneMailbox):
    name: ClassVar[str] = "SUBSCRIBE"


@dataclass(frozen=True, slots=True)
class Unsubscribe(_OneMailbox):
    name: ClassVar[str] = "UNSUBSCRIBE"


@dataclass(frozen=True, slots=True)
class Rename(Command):
    mailbox: str
    new_name: str
    name: ClassVar[str] = "RENAME"

    def __post_init__(self) -> None:
        _check_tag(self.tag)
        _check_mailbox(self.mailbox)
        _check_mailbox(self.new_name)


@dataclass(frozen=True, slots=True)
class List(Command):
    """LIST, with the RFC 5258 LIST-EXTENDED parts: selection options before the
    reference, several patterns, RETURN options (``status_items`` for RFC 5819
    ``RETURN (STATUS (...))``). ``reference`` and ``patterns`` are decoded
    (wildcards ``*`` and ``%`` kept)."""

    reference: str
    patterns: tuple[str, ...]
    select_options: tuple[str, ...] = ()
    return_options: tuple[str, ...] = ()
    status_items: tuple[str, ...] = ()
    name: ClassVar[str] = "LIST"

    def __post_init__(self) -> None:
        _check_tag(self.tag)
        if not self.patterns:
            raise CommandError("LIST needs a mailbox pattern")
        for name in (self.reference, *self.patterns):
            _check_mailbox(name)
        unknown = set(self.select_options) - LIST_SELECT_OPTIONS
        if unknown:
            raise CommandError(f"unknown LIST selection option {sorted(unknown)[0]} (RFC 5258 3)")
        # RFC 5258 3.1: RECURSIVEMATCH only together with another selection option.
        if "RECURSIVEMATCH" in self.select_options and not (
            set(self.select_options) - {"RECURSIVEMATCH", "REMOTE"}
        ):
            raise CommandError("RECURSIVEMATCH needs another selection option (RFC 5258 3.1)")
        unknown = set(self.return_options) - LIST_RETURN_OPTIONS
        if unknown:
            raise CommandError(f"unknown LIST return option {sorted(unknown)[0]} (RFC 5258 3.2)")
        if ("STATUS" in self.return_options) != bool(self.status_items):
            raise CommandError("RETURN (STATUS (items)) names at least one item (RFC 5819)")
        _check_status_items(self.status_items)


@dataclass(frozen=True, slots=True)
class Lsub(Command):
    reference: str
    pattern: str
    name: ClassVar[str] = "LSUB"

    def __post_init__(self) -> None:
        _check_tag(self.tag)
        _check_mailbox(self.reference)
        _check_mailbox(self.pattern)


def _check_status_items(items: tuple[str, ...]) -> None:
    for item in items:
        if item not in STATUS_ITEMS:
            raise CommandError(f"unknown STATUS item {item[:40]!r}")


@dataclass(frozen=True, slots=True)
class Status(Command):
    mailbox: str
    items: tuple[str, ...]  # upper case, from STATUS_ITEMS
    name: ClassVar[str] = "STATUS"

    def __post_init__(self) -> None:
        _check_tag(self.tag)
        _check_mailbox(self.mailbox)
        if not self.items:
            raise CommandError("STATUS needs at least one item")
        _check_status_items(self.items)


@dataclass(frozen=True, slots=True)
class CatPart:
    """One part of ``CATENATE (...)`` (RFC 4469 5): ``TEXT`` octets, or the
    ``URL`` of a message or section the server holds."""

    text: bytes | None = field(default=None, repr=False)
    url: str | None = None

    def __post_init__(self) -> None:
        if (self.text is None) == (self.url is None):
            raise CommandError("a CATENATE part is TEXT or URL")


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """One message of an APPEND; ``internaldate`` is tz-aware when given;
    ``binary``: sent as a literal8 (RFC 3516 4.4); ``catenate``: the parts
    that make the message (RFC 4469), ``message`` is then empty."""

    flags: tuple[str, ...]
    internaldate: dt.datetime | None
    message: bytes = field(repr=False)
    binary: bool = False
    catenate: tuple[CatPart, ...] = ()

    def __post_init__(self) -> None:
        _check_flags(self.flags)
        if self.internaldate is not None and self.internaldate.tzinfo is None:
            raise CommandError("APPEND date-time carries a zone (RFC 3501 9)")


@dataclass(frozen=True, slots=True)
class Append(Command):
    """APPEND (RFC 3501 6.3.11) of one message or, with MULTIAPPEND (RFC
    3502 6.3.11), several: all of them are added, or none."""

    mailbox: str
    messages: tuple[AppendMessage, ...]
    name: ClassVar[str] = "APPEND"

    def __post_init__(self) -> None:
        _check_tag(self.tag)
        _check_mailbox(self.mailbox)
        if not self.messages:
            raise CommandError("APPEND needs a message")


@dataclass(frozen=True, slots=True)
class Idle(Command):
    """RFC 2177: the server answers ``+ idling`` and reads raw lines until DONE."""

    name: ClassVar[str] = "IDLE"


# -- selected (RFC 3501 6.4) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check(Command):
    name: ClassVar[str] = "CHECK"


@dataclass(frozen=True, slots=True)
class Close(Command):
    name: ClassVar[str] = "CLOSE"


@dataclass(frozen=True, slots=True)
class Unselect(Command):
    name: ClassVar[str] = "UNSELECT"  # RFC 3691


@dataclass(frozen=True, slots=True)
class Expunge(Command):
    name: ClassVar[str] = "EXPUNGE"


@dataclass(frozen=True, slots=True)
class UidExpunge(Command):
    """UID EXPUNGE (RFC 4315 2.1): expunge only these UIDs."""

    seqset: SequenceSet
    name: ClassVar[str] = "UID EXPUNGE"


@dataclass(frozen=True, slots=True)
class Search(Command):
    """SEARCH/UID SEARCH. ``return_options`` is None for a plain ``* SEARCH``
    answer, else the RFC 4731 ESEARCH options (``()`` means ALL); ``partial``
    is the range of a PARTIAL option (RFC 9394)."""

    key: SearchKey
    uid: bool = False
    charset: str = "US-ASCII"
    return_options: tuple[str, ...] | None = None
    partial: PartialRange | None = None
    name: ClassVar[str] = "SEARCH"

    def __post_init__(self) -> None:
        _check_tag(self.tag)
        if self.charset not in CHARSETS:
            raise CommandError(f"charset {self.charset!r} is not supported")
        unknown = set(self.return_options or ()) - SEARCH_RETURN_OPTIONS
        if unknown:
            raise CommandError(f"unknown SEARCH return option {sorted(unknown)[0]} (RFC 4731)")
        _check_partial(self.return_options, self.partial)


@dataclass(frozen=True, slots=True)
class Sort(Command):
    """SORT/UID SORT (RFC 5256 3): the messages ``key`` finds, in ``criteria``
    order. ``return_options`` is None for a plain ``* SORT`` answer, else the
    ESORT options (RFC 5267 3; ``()`` means ALL) for an ``* ESEARCH`` one."""

    criteria: tuple[Criterion, ...]
    key: SearchKey
    uid: bool = False
    charset: str = "US-ASCII"
    return_options: tuple[str, ...] | None = None
    partial: PartialRange | None = None  # RFC 5267 4.4: positions in sort order
    name: ClassVar[str] = "SORT"

    def __post_init__(self) -> None:
        _check_tag(self.tag)
        if self.charset not in CHARSETS:
            raise CommandError(f"charset {self.charset!r} is not supported")
        unknown = set(self.return_options or ()) - SEARCH_RETURN_OPTIONS
        if unknown:
            raise CommandError(f"unknown SORT return option {sorted(unknown)[0]} (RFC 5267)")
        _check_partial(self.return_options, self.partial)


@dataclass(frozen=True, slots=True)
class Thread(Command):
    """THREAD/UID THREAD (RFC 5256 3): the messages ``key`` finds, as threads."""

    algorithm: Algorithm
    key: SearchKey
    uid: bool = False
    charset: str = "US-ASCII"
    name: ClassVar[str] = "THREAD"

    def __post_init__(self) -> None:
        _check_tag(self.tag)
        if self.charset not in CHARSETS:
            raise CommandError(f"charset {self.charset!r} is not supported")


@dataclass(frozen=True, slots=True)
class Fetch(Command):
    """FETCH/UID FETCH. The reader adds ``UID`` to ``items`` for UID FETCH
    (RFC 3501 6.4.8) and ``MODSEQ`` with CHANGEDSINCE (RFC 7162 3.3.1)."""

    seqset: SequenceSet
    items: tuple[FetchAtt, ...]
    uid: bool = False
    changedsince: int | None = None
    vanished: bool = False  # RFC 7162 3.2.6
    partial: PartialRange | None = None  # RFC 9394 3.2: only these positions
    name: ClassVar[str] = "FETCH"

    def __post_init__(self) -> None:
        _check_tag(self.tag)
        if not self.items:
            raise CommandError("FETCH needs at least one item")
        _check_modseq(self.changedsince, "CHANGEDSINCE")
        # RFC 7162 3.2.6: VANISHED only in UID FETCH, and only with CHANGEDSINCE.
        if self.vanished and not (self.uid and self.changedsince is not None):
            raise CommandError("VANISHED needs UID FETCH with CHANGEDSINCE (RFC 7162 3.2.6)")


@dataclass(frozen=True, slots=True)
class Store(Command):
    """STORE/UID STORE: ``mode`` ``+`` adds, ``-`` removes, ``""`` replaces."""

    seqset: SequenceSet
    mode: Literal["+", "-", ""]
    flags: tuple[str, ...]
    silent: bool = False
    uid: bool = False
    unchangedsince: int | None = None  # RFC 7162 3.1.3
    name: ClassVar[str] = "STORE"

    def __post_init__(self) -> None:
        _check_tag(self.tag)
        if self.mode not in ("+", "-", ""):
            raise CommandError("STORE mode is +FLAGS, -FLAGS or FLAGS")
        _check_flags(self.flags)
        _check_modseq(self.unchangedsince, "UNCHANGEDSINCE")


@dataclass(frozen=True, slots=True)
class _Transfer(Command):
    seqset: SequenceSet
    mailbox: str
    uid: bool = False

    def __post_init__(self) -> None:
        _check_tag(self.tag)
        _check_mailbox(self.mailbox)


@dataclass(frozen=True, slots=True)
class Copy(_Transfer):
    name: ClassVar[str] = "COPY"


@dataclass(frozen=True, slots=True)
class Move(_Transfer):
    name: ClassVar[str] = "MOVE"  # RFC 6851
