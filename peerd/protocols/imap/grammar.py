"""The IMAP command grammar: tokens to typed commands (RFC 3501 6 and 9), without I/O.

How this works: :func:`parse_command` takes one framed command (its text split
where literals were announced, and the literals), reads the tag and the
command name, tokenizes the rest (:mod:`~peerd.protocols.imap.tokens`) and hands
the tokens to the builder the tables :data:`_PLAIN` and :data:`_UID` name for
the command. Each builder reads its arguments with an :class:`_Args` cursor
into a :mod:`~peerd.protocols.imap.commands` dataclass; FETCH items and SEARCH
criteria go to :mod:`~peerd.protocols.imap.fetchatt` and
:mod:`~peerd.protocols.imap.searchkey`. Anything wrong raises
:class:`~peerd.protocols.imap.responses.CommandError`, which the framing layer
(:mod:`~peerd.protocols.imap.parser`) turns into a tagged ``BAD``/``NO``.

A new command is one builder here, one entry in a table, and one dataclass in
:mod:`~peerd.protocols.imap.commands`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from typing import Final, Literal

from peerd.protocols.imap import acl, metadata, quota
from peerd.protocols.imap import commands as c
from peerd.protocols.imap.fetchatt import Item, parse_fetch_atts
from peerd.protocols.imap.listing import SEPARATOR
from peerd.protocols.imap.partial import PartialRange
from peerd.protocols.imap.responses import CommandError
from peerd.protocols.imap.sasl import decode_base64
from peerd.protocols.imap.searchkey import MAX_MODSEQ, check_charset, parse_search_key
from peerd.protocols.imap.sequence import MAX_NUMBER, SequenceSet
from peerd.protocols.imap.sort import parse_criteria
from peerd.protocols.imap.thread import parse_algorithm
from peerd.protocols.imap.tokens import MARK, TAG, Literal8Data, LiteralData, Token, tokenize
from peerd.protocols.imap.wildcard import MAX_PATTERNS, PatternLimit

__all__ = ["parse_command"]


class _Args:
    """A cursor over a command's argument tokens."""

    __slots__ = ("name", "pos", "tokens")

    def __init__(self, name: str, tokens: Sequence[Token]) -> None:
        self.name = name
        self.tokens = tokens
        self.pos = 0

    def more(self) -> bool:
        return self.pos < len(self.tokens)

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def next(self, what: str) -> Token:
        if self.pos >= len(self.tokens):
            raise CommandError(f"{self.name}: missing {what}")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def end(self) -> None:
        if self.pos < len(self.tokens):
            raise CommandError(f"{self.name}: unexpected extra arguments")

    def atom(self, what: str) -> str:
        token = self.next(what)
        if not isinstance(token, str):
            raise CommandError(f"{self.name}: {what} must be an atom")
        return token

    def astring(self, what: str) -> bytes:
        token = self.next(what)
        if isinstance(token, tuple):
            raise CommandError(f"{self.name}: {what} must be a string, not a list")
        if isinstance(token, Literal8Data):
            raise CommandError(f"{self.name}: a literal8 ~{{n}} is for APPEND only (RFC 3516 4.2)")
        return token.encode("ascii") if isinstance(token, str) else token

    def text(self, what: str) -> str:
        try:
            return self.astring(what).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CommandError(f"{self.name}: {what} is not UTF-8") from exc

    def mailbox(self, what: str = "mailbox name") -> str:
        return c.mailbox_name(self.astring(what))

    def list(self, what: str) -> tuple[Token, ...]:
        token = self.next(what)
        if not isinstance(token, tuple):
            raise CommandError(f"{self.name}: {what} must be a parenthesised list")
        return token

    def seqset(self) -> SequenceSet:
        return SequenceSet.parse(self.atom("sequence set"))

    def flags(self, tokens: Sequence[Token]) -> tuple[str, ...]:
        out = []
        for token in tokens:
            if not isinstance(token, str):
                raise CommandError(f"{self.name}: flags are atoms")
            out.append(c.normalize_flag(token))
        return tuple(dict.fromkeys(out))


def _number(token: Token, what: str, limit: int, low: int = 0) -> int:
    if not isinstance(token, str) or not (token.isascii() and token.isdigit()) or len(token) > 20:
        raise CommandError(f"{what} must be a number")
    value = int(token)
    if not low <= value <= limit:
        raise CommandError(f"{what} out of range")
    return value


def _options(tokens: Sequence[Token], what: str) -> tuple[str, ...]:
    out = []
    for token in tokens:
        if not isinstance(token, str):
            raise CommandError(f"{what} are atoms")
        out.append(token.upper())
    return tuple(out)


_MONTHS: Final = {
    month: i + 1
    for i, month in enumerate(b"JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())
}
_DATE_TIME: Final = re.compile(
    rb"([ \d]?\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"
)


def _date_time(raw: bytes) -> dt.datetime:
    """``"17-Jul-1996 02:44:25 -0700"`` (RFC 3501 9, ``date-time``), tz-aware."""
    match = _DATE_TIME.fullmatch(raw)
    month = _MONTHS.get(match.group(2).upper()) if match else None
    if match is None or month is None:
        raise CommandError('APPEND: bad date-time, want "dd-Mon-yyyy hh:mm:ss +zzzz"')
    day, _, year, hh, mm, ss, sign, zh, zm = match.groups()
    offset = dt.timedelta(hours=int(zh), minutes=int(zm)) * (-1 if sign == b"-" else 1)
    if int(zm) > 59:
        raise CommandError("APPEND: no such zone, its minutes run 00 to 59")
    try:
        when = dt.datetime(
            int(year), month, int(day), int(hh), int(mm), int(ss), tzinfo=dt.timezone(offset)
        )
        # The store keeps UTC: a time whose zone carries it past year 1 or
        # 9999 (" 1-Jan-0001 00:00:00 +0100") exists in no datetime.
        when.astimezone(dt.UTC)
    except (ValueError, OverflowError) as exc:
        raise CommandError("APPEND: no such date-time") from exc
    return when


def _no_args(cls: Callable[[str], c.Command]) -> Callable[[str, _Args], c.Command]:
    def build(tag: str, args: _Args) -> c.Command:
        args.end()
        return cls(tag)

    return build


def _login(tag: str, args: _Args) -> c.Command:
    user = args.text("user name")
    password = args.text("password")
    args.end()
    return c.Login(tag, user, password)


def _authenticate(tag: str, args: _Args) -> c.Command:
    mechanism = args.atom("SASL mechanism").upper()
    initial: bytes | None = None
    if args.more():
        # RFC 4959 SASL-IR: base64, or "=" for an empty initial response.
        initial = decode_base64(args.atom("initial response").encode("ascii"))
    args.end()
    return c.Authenticate(tag, mechanism, initial)


def _enable(tag: str, args: _Args) -> c.Command:
    caps = [args.atom("capability").upper()]
    while args.more():
        caps.append(args.atom("capability").upper())
    return c.Enable(tag, tuple(caps))


def _id(tag: str, args: _Args) -> c.Command:
    token = args.next("parameter list")
    args.end()
    if isinstance(token, str) and token.upper() == "NIL":
        return c.Id(tag, None)
    if not isinstance(token, tuple) or len(token) % 2:
        raise CommandError("ID: want NIL or a list of field/value pairs (RFC 2971 3.1)")
    pairs = _Args("ID", token)
    params: list[tuple[str, str | None]] = []
    while pairs.more():
        key = pairs.text("field")
        value_token = pairs.peek()
        if isinstance(value_token, str) and value_token.upper() == "NIL":
            pairs.next("value")
            params.append((key, None))
        else:
            params.append((key, pairs.text("value")))
    return c.Id(tag, tuple(params))


def _open(cls: type[c.Select] | type[c.Examine]) -> Callable[[str, _Args], c.Command]:
    def build(tag: str, args: _Args) -> c.Command:
        mailbox = args.mailbox()
        condstore = False
        qresync: c.QResync | None = None
        if args.more():
            params = _Args(cls.name, args.list("select parameters"))
            while params.more():
                word = params.atom("select parameter").upper()
                if word == "CONDSTORE":
                    condstore = True
                elif word == "QRESYNC":
                    qresync = _qresync(params.list("QRESYNC parameters"))
                else:
                    raise CommandError(f"{cls.name}: unknown parameter {word[:40]}")
        args.end()
        return cls(tag, mailbox, condstore, qresync)

    return build


def _qresync(tokens: tuple[Token, ...]) -> c.QResync:
    # QRESYNC (uidvalidity modseq [known-uids] [(known-seqs known-uids)]), RFC 7162 3.2.5
    params = _Args("QRESYNC", tokens)
    uidvalidity = _number(params.next("uidvalidity"), "UIDVALIDITY", MAX_NUMBER, 1)
    modseq = _number(params.next("modseq"), "MODSEQ", MAX_MODSEQ, 1)
    known: SequenceSet | None = None
    match: tuple[SequenceSet, SequenceSet] | None = None
    if isinstance(params.peek(), str):
        known = params.seqset()
    if params.more():
        pair = _Args("QRESYNC", params.list("sequence match data"))
        match = (pair.seqset(), pair.seqset())
        pair.end()
    params.end()
    return c.QResync(uidvalidity, modseq, known, match)


def _create(tag: str, args: _Args) -> c.Command:
    mailbox = args.mailbox()
    if len(mailbox) > 1 and mailbox.endswith(SEPARATOR):
        # RFC 3501 6.3.3: a trailing separator declares the name a parent to
        # be; the server MUST ignore it and create the name without it.
        mailbox = mailbox[: -len(SEPARATOR)]
    uses: tuple[str, ...] = ()
    if args.more():
        # RFC 6154 3: CREATE name (USE (\Drafts \Sent))
        params = _Args("CREATE", args.list("create parameters"))
        while params.more():
            word = params.atom("create parameter").upper()
            if word != "USE":
                raise CommandError(f"CREATE: unknown parameter {word[:40]}")
            uses += params.flags(params.list("USE attributes"))
    args.end()
    return c.Create(tag, mailbox, uses)


def _one_mailbox(
    cls: type[c.Delete] | type[c.Subscribe] | type[c.Unsubscribe],
) -> Callable[[str, _Args], c.Command]:
    def build(tag: str, args: _Args) -> c.Command:
        mailbox = args.mailbox()
        args.end()
        return cls(tag, mailbox)

    return build


def _rename(tag: str, args: _Args) -> c.Command:
    old = args.mailbox("old name")
    new = args.mailbox("new name")
    args.end()
    return c.Rename(tag, old, new)


def _list(tag: str, args: _Args) -> c.Command:
    select: tuple[str, ...] = ()
    if isinstance(args.peek(), tuple):
        select = _options(args.list("selection options"), "LIST selection options")
    reference = args.mailbox("reference")
    patterns: tuple[str, ...]
    if isinstance(args.peek(), tuple):  # RFC 5258: several patterns in a list
        group = _Args("LIST", args.list("patterns"))
        if len(group.tokens) > MAX_PATTERNS:
            raise PatternLimit(f"LIST takes at most {MAX_PATTERNS} patterns")
        patterns = tuple(dict.fromkeys(group.mailbox("pattern") for _ in group.tokens))
    else:
        patterns = (args.mailbox("pattern"),)
    returns: tuple[str, ...] = ()
    status_items: tuple[str, ...] = ()
    if args.more():
        if args.atom("RETURN").upper() != "RETURN":
            raise CommandError("LIST: expected RETURN (options) (RFC 5258)")
        options = _Args("LIST RETURN", args.list("return options"))
        found = []
        while options.more():
            word = options.atom("return option").upper()
            found.append(word)
            if word == "STATUS":  # RFC 5819
                status_items = _options(options.list("STATUS items"), "STATUS items")
        returns = tuple(found)
    args.end()
    return c.List(tag, reference, patterns, select, returns, status_items)


def _lsub(tag: str, args: _Args) -> c.Command:
    reference = args.mailbox("reference")
    pattern = args.mailbox("pattern")
    args.end()
    return c.Lsub(tag, reference, pattern)


def _status(tag: str, args: _Args) -> c.Command:
    mailbox = args.mailbox()
    items = _options(args.list("status items"), "STATUS items")
    args.end()
    return c.Status(tag, mailbox, items)


def _append(tag: str, args: _Args) -> c.Command:
    # RFC 3502 6.3.11 (MULTIAPPEND): append = "APPEND" SP mailbox 1*append-message,
    # append-message = SP [flag-list SP] [date-time SP] literal.
    mailbox = args.mailbox()
    messages: list[c.AppendMessage] = []
    while args.more() or not messages:
        flags: tuple[str, ...] = ()
        if isinstance(args.peek(), tuple):
            flags = args.flags(args.list("flags"))
        when: dt.datetime | None = None
        token = args.next("message literal")
        if _is_catenate(token):
            messages.append(c.AppendMessage(flags, when, b"", catenate=_catenate(args)))
            continue
        if not isinstance(token, LiteralData):
            # A quoted string here is the date-time; the message follows it.
            if isinstance(token, tuple):
                raise CommandError("APPEND: the message must be a literal")
            when = _date_time(token.encode("ascii") if isinstance(token, str) else token)
            token = args.next("message literal")
            if _is_catenate(token):
                messages.append(c.AppendMessage(flags, when, b"", catenate=_catenate(args)))
                continue
        if not isinstance(token, LiteralData):
            raise CommandError("APPEND: the message must be a literal")
        binary = isinstance(token, Literal8Data)
        messages.append(c.AppendMessage(flags, when, token, binary))
    return c.Append(tag, mailbox, tuple(messages))


def _is_catenate(token: Token) -> bool:
    return isinstance(token, str) and token.upper() == "CATENATE"


def _catenate(args: _Args) -> tuple[c.CatPart, ...]:
    # RFC 4469 5: "CATENATE" SP "(" cat-part *(SP cat-part) ")",
    # cat-part = "TEXT" SP literal / "URL" SP astring.
    items = args.list("CATENATE parts")
    if not items or len(items) % 2:
        raise CommandError("CATENATE takes pairs: TEXT literal or URL url")
    parts: list[c.CatPart] = []
    for kind, value in zip(items[::2], items[1::2], strict=True):
        word = kind.upper() if isinstance(kind, str) else ""
        if word == "TEXT" and isinstance(value, LiteralData):
            parts.append(c.CatPart(text=bytes(value)))
        elif word == "URL" and isinstance(value, str | bytes) and not isinstance(value, tuple):
            raw = value.encode("ascii") if isinstance(value, str) else bytes(value)
            try:
                parts.append(c.CatPart(url=raw.decode("ascii")))
            except UnicodeDecodeError as exc:
                raise CommandError("CATENATE: a URL is US-ASCII (RFC 5092)") from exc
        else:
            raise CommandError("CATENATE takes TEXT literal or URL url parts")
    return tuple(parts)


def _return_options(
    tokens: Sequence[Token], what: str
) -> tuple[tuple[str, ...], PartialRange | None]:
    """RFC 4731 search-return-opts: the option words, and the range that
    follows PARTIAL (RFC 9394 4: ``"PARTIAL" SP partial-range``)."""
    words: list[str] = []
    partial = None
    options = _Args(what, tokens)
    while options.more():
        word = options.atom("return option").upper()
        words.append(word)
        if word == "PARTIAL":
            if partial is not None:
                raise CommandError(f"{what}: PARTIAL twice (RFC 9394 3.1)")
            partial = PartialRange.parse(options.atom("PARTIAL range"))
    return tuple(words), partial


def _search(tag: str, args: _Args, uid: bool) -> c.Command:
    returns: tuple[str, ...] | None = None
    partial = None
    charset = "US-ASCII"
    first = args.peek()
    if isinstance(first, str) and first.upper() == "RETURN":  # RFC 4731 ESEARCH
        args.next("RETURN")
        returns, partial = _return_options(args.list("return options"), "SEARCH return options")
    first = args.peek()
    if isinstance(first, str) and first.upper() == "CHARSET":
        args.next("CHARSET")
        charset = check_charset(args.text("charset"))
    key = parse_search_key(args.tokens[args.pos :], charset=charset)
    return c.Search(tag, key, uid, charset, returns, partial)


def _sort(tag: str, args: _Args, uid: bool) -> c.Command:
    # RFC 5256 5: "SORT" SP sort-criteria SP search-criteria, where
    # search-criteria is charset 1*(SP search-key): the charset is required.
    # RFC 5267 3 (ESORT): [search-return-opts SP] before the criteria.
    returns: tuple[str, ...] | None = None
    partial = None
    first = args.peek()
    if isinstance(first, str) and first.upper() == "RETURN":
        args.next("RETURN")
        returns, partial = _return_options(args.list("return options"), "SORT return options")
    words = args.list("sort criteria")
    if not all(isinstance(word, str) for word in words):
        raise CommandError("SORT: the sort criteria are atoms")
    criteria = parse_criteria([str(word) for word in words])
    charset = check_charset(args.text("charset"))
    key = parse_search_key(args.tokens[args.pos :], charset=charset)
    return c.Sort(tag, criteria, key, uid, charset, returns, partial)


def _thread(tag: str, args: _Args, uid: bool) -> c.Command:
    # RFC 5256 5: "THREAD" SP thread-alg SP search-criteria.
    algorithm = parse_algorithm(args.atom("threading algorithm"))
    charset = check_charset(args.text("charset"))
    key = parse_search_key(args.tokens[args.pos :], charset=charset)
    return c.Thread(tag, algorithm, key, uid, charset)


def _fetch(tag: str, args: _Args, uid: bool) -> c.Command:
    seqset = args.seqset()
    items = parse_fetch_atts(args.next("items"))
    changedsince: int | None = None
    vanished = False
    partial = None
    if args.more():
        modifiers = _Args("FETCH", args.list("modifiers"))
        while modifiers.more():
            word = modifiers.atom("modifier").upper()
            if word == "CHANGEDSINCE":  # RFC 7162 3.1.4
                changedsince = _number(modifiers.next("mod-sequence"), "CHANGEDSINCE", MAX_MODSEQ)
            elif word == "VANISHED":  # RFC 7162 3.2.6
                vanished = True
            elif word == "PARTIAL" and partial is None:  # RFC 9394 3.2
                partial = PartialRange.parse(modifiers.atom("PARTIAL range"))
            else:
                raise CommandError(f"FETCH: unknown modifier {word[:40]}")
    args.end()
    # UID FETCH always answers with UIDs (RFC 3501 6.4.8); CHANGEDSINCE implies
    # MODSEQ (RFC 7162 3.3.1). Added here so no session can forget them.
    if uid and Item.UID not in items:
        items += (Item.UID,)
    if changedsince is not None and Item.MODSEQ not in items:
        items += (Item.MODSEQ,)
    return c.Fetch(tag, seqset, items, uid, changedsince, vanished, partial)


def _store(tag: str, args: _Args, uid: bool) -> c.Command:
    seqset = args.seqset()
    unchangedsince: int | None = None
    if isinstance(args.peek(), tuple):
        modifiers = _Args("STORE", args.list("modifiers"))
        while modifiers.more():
            word = modifiers.atom("modifier").upper()
            if word != "UNCHANGEDSINCE":  # RFC 7162 3.1.3
                raise CommandError(f"STORE: unknown modifier {word[:40]}")
            unchangedsince = _number(modifiers.next("mod-sequence"), "UNCHANGEDSINCE", MAX_MODSEQ)
    item = args.atom("FLAGS, +FLAGS or -FLAGS").upper()
    mode: Literal["+", "-", ""] = ""
    if item[:1] in ("+", "-"):
        mode = "+" if item[0] == "+" else "-"
        item = item[1:]
    silent = item == "FLAGS.SILENT"
    if item not in ("FLAGS", "FLAGS.SILENT"):
        raise CommandError("STORE: the item is FLAGS, +FLAGS or -FLAGS (with .SILENT)")
    if isinstance(args.peek(), tuple):
        flags = args.flags(args.list("flags"))
        args.end()
    else:
        # flag *(SP flag) without parentheses is allowed too (RFC 3501 9, store-att-flags)
        flags = args.flags(args.tokens[args.pos :])
        if not flags:
            raise CommandError("STORE: missing flags")
    return c.Store(tag, seqset, mode, flags, silent, uid, unchangedsince)


def _transfer(cls: type[c.Copy] | type[c.Move]) -> Callable[[str, _Args, bool], c.Command]:
    def build(tag: str, args: _Args, uid: bool) -> c.Command:
        seqset = args.seqset()
        mailbox = args.mailbox()
        args.end()
        return cls(tag, seqset, mailbox, uid)

    return build


def _uid_expunge(tag: str, args: _Args, uid: bool) -> c.Command:
    seqset = args.seqset()
    args.end()
    return c.UidExpunge(tag, seqset)


_PLAIN: Final[dict[str, Callable[[str, _Args], c.Command]]] = {
    "CAPABILITY": _no_args(c.Capability),
    "NOOP": _no_args(c.Noop),
    "LOGOUT": _no_args(c.Logout),
    "STARTTLS": _no_args(c.StartTLS),
    "NAMESPACE": _no_args(c.Namespace),
    "CHECK": _no_args(c.Check),
    "CLOSE": _no_args(c.Close),
    "UNSELECT": _no_args(c.Unselect),
    "EXPUNGE": _no_args(c.Expunge),
    "IDLE": _no_args(c.Idle),
    "LOGIN": _login,
    "AUTHENTICATE": _authenticate,
    "ENABLE": _enable,
    "ID": _id,
    "SELECT": _open(c.Select),
    "EXAMINE": _open(c.Examine),
    "CREATE": _create,
    "DELETE": _one_mailbox(c.Delete),
    "SUBSCRIBE": _one_mailbox(c.Subscribe),
    "UNSUBSCRIBE": _one_mailbox(c.Unsubscribe),
    "RENAME": _rename,
    "LIST": _list,
    "LSUB": _lsub,
    "STATUS": _status,
    "APPEND": _append,
    # ACL (RFC 4314), QUOTA (RFC 9208), METADATA (RFC 5464): their own modules.
    **acl.BUILDERS,
    **quota.BUILDERS,
    **metadata.BUILDERS,
}
# Commands that also come as "UID <command>" (RFC 3501 6.4.8; UID EXPUNGE RFC 4315).
_UID: Final[dict[str, Callable[[str, _Args, bool], c.Command]]] = {
    "SEARCH": _search,
    "SORT": _sort,
    "THREAD": _thread,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _transfer(c.Copy),
    "MOVE": _transfer(c.Move),
}


def parse_command(parts: Sequence[bytes], literals: Sequence[bytes] = ()) -> c.Command:
    """One framed command: its text split where the literals were announced
    (``parts`` has one more item than ``literals``), e.g.
    ``parse_command([b"a LOGIN ", b" ", b""], [b"alice", b"password"])``."""
    if any(b"\x00" in part for part in parts):
        raise CommandError("NUL is not allowed in commands (RFC 3501 9, CHAR)")
    head = parts[0]
    tag_bytes, space, rest = head.partition(b" ")
    if not TAG.fullmatch(tag_bytes):
        raise CommandError("missing or bad tag")
    tag = tag_bytes.decode("ascii")
    name_bytes, space, rest = rest.partition(b" ")
    if not space and len(parts) > 1:
        raise CommandError("expected a space before the literal")
    name = name_bytes.decode("ascii", "replace").upper()
    text = bytes([MARK]).join([rest, *parts[1:]])
    uid = name == "UID"
    if uid:
        sub, space, text = text.partition(b" ")
        name = sub.decode("ascii", "replace").upper()
    if not name:
        raise CommandError("missing command name")
    tokens = tokenize(text, literals)
    if uid:
        if name == "EXPUNGE":
            return _uid_expunge(tag, _Args("UID EXPUNGE", tokens), True)
        with_uid = _UID.get(name)
        if with_uid is None:
            raise CommandError(f"unknown command UID {name[:40]}")
        return with_uid(tag, _Args(f"UID {name}", tokens), True)
    plain = _PLAIN.get(name)
    if plain is not None:
        return plain(tag, _Args(name, tokens))
    selected = _UID.get(name)
    if selected is not None:
        return selected(tag, _Args(name, tokens), False)
    raise CommandError(f"unknown command {name[:40]}")
