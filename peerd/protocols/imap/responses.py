"""What an IMAP server writes: values and responses as bytes, response codes, and
the one error a command can be refused with.

How this works: every function returns ready-to-send ``bytes`` and keeps no
state. Values follow one convention (:func:`render`): ``None`` is NIL, ``int``
is a number, ``str`` and ``bytes`` are *strings* (written quoted when that is
safe, else as a literal: RFC 3501 4.3), :class:`Atom` and :class:`Raw` are
written as they are, and a list or tuple is a parenthesised list.

Responses: :func:`tagged` (``a1 OK [CODE] text``), :func:`untagged_status`
(``* OK [CODE] text``), :func:`untagged` (``* 5 EXISTS``), :func:`continuation`
(``+ Ready``). Response codes (RFC 3501 7.1, RFC 5530, and the extensions') are
the ``CODE_*`` constants; :func:`response_code` adds arguments to one.

FETCH is the hot path (a server may write 10,000 lines for one command), so
:func:`fetch_response` only joins pre-rendered items, and string quoting is a
``bytes.translate`` check, not a regex.

Errors: :class:`CommandError` is what every part of the core raises when a
client's command cannot be run as sent. It knows the response it becomes
(``BAD`` for syntax; ``NO`` with a code such as ``BADCHARSET``);
:mod:`peerd.protocols.imap.parser` turns it into a :class:`~peerd.protocols.imap.parser.ProtocolError`
event at one boundary.

Mailbox names travel in modified UTF-7 (RFC 3501 5.1.3): :func:`encode_mailbox`
and :func:`decode_mailbox` are the codec, and :func:`mailbox` writes a name.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Final, Literal, TypeAlias

__all__ = [
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
    "CODE_PRIVACYREQUIRED",
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
    "CODE_UNKNOWN_CTE",
    "CODE_UNSEEN",
    "Atom",
    "CommandError",
    "Raw",
    "ResponseStatus",
    "Value",
    "astring",
    "continuation",
    "decode_mailbox",
    "encode_mailbox",
    "fetch_response",
    "flag_list",
    "internaldate",
    "literal",
    "mailbox",
    "nstring",
    "quoted",
    "render",
    "response_code",
    "string",
    "tagged",
    "untagged",
    "untagged_status",
]

# -- response codes ---------------------------------------------------------------
# RFC 3501 7.1 (base), RFC 5530 (the generic ones), and the extension RFCs named.

CODE_ALERT: Final = b"ALERT"
CODE_CAPABILITY: Final = b"CAPABILITY"
CODE_PARSE: Final = b"PARSE"
CODE_PERMANENTFLAGS: Final = b"PERMANENTFLAGS"
CODE_READ_ONLY: Final = b"READ-ONLY"
CODE_READ_WRITE: Final = b"READ-WRITE"
CODE_TRYCREATE: Final = b"TRYCREATE"
CODE_UIDNEXT: Final = b"UIDNEXT"
CODE_UIDVALIDITY: Final = b"UIDVALIDITY"
CODE_UNSEEN: Final = b"UNSEEN"
CODE_BADCHARSET: Final = b"BADCHARSET"
CODE_REFERRAL: Final = b"REFERRAL"  # RFC 2221 LOGIN-REFERRALS
CODE_APPENDUID: Final = b"APPENDUID"  # RFC 4315 UIDPLUS
CODE_COPYUID: Final = b"COPYUID"  # RFC 4315
CODE_UIDNOTSTICKY: Final = b"UIDNOTSTICKY"  # RFC 4315
CODE_HIGHESTMODSEQ: Final = b"HIGHESTMODSEQ"  # RFC 7162 CONDSTORE
CODE_NOMODSEQ: Final = b"NOMODSEQ"  # RFC 7162
CODE_MODIFIED: Final = b"MODIFIED"  # RFC 7162
CODE_CLOSED: Final = b"CLOSED"  # RFC 7162 QRESYNC
CODE_UNAVAILABLE: Final = b"UNAVAILABLE"  # RFC 5530 ...
CODE_AUTHENTICATIONFAILED: Final = b"AUTHENTICATIONFAILED"
CODE_PRIVACYREQUIRED: Final = b"PRIVACYREQUIRED"  # RFC 5530 3
CODE_ALREADYEXISTS: Final = b"ALREADYEXISTS"
CODE_NONEXISTENT: Final = b"NONEXISTENT"
CODE_LIMIT: Final = b"LIMIT"
CODE_CLIENTBUG: Final = b"CLIENTBUG"
CODE_SERVERBUG: Final = b"SERVERBUG"
CODE_CANNOT: Final = b"CANNOT"
CODE_OVERQUOTA: Final = b"OVERQUOTA"
CODE_TOOBIG: Final = b"TOOBIG"  # RFC 4469 / RFC 7888 section 4
CODE_UNKNOWN_CTE: Final = b"UNKNOWN-CTE"  # RFC 3516 4.3 BINARY
CODE_BADURL: Final = b"BADURL"  # RFC 4469 5.1 CATENATE
CODE_EXPUNGEISSUED: Final = b"EXPUNGEISSUED"  # RFC 5530 3

ResponseStatus: TypeAlias = Literal["OK", "NO", "BAD", "PREAUTH", "BYE"]


class CommandError(ValueError):
    """The client's command cannot be run as sent.

    ``status`` is the tagged response it becomes: ``BAD`` for anything the
    grammar refuses (RFC 3501 7.1.3), ``NO`` for a well-formed request the
    server will not do (``NO [BADCHARSET ...]``, RFC 3501 6.4.4). ``code`` is
    the response code, with its arguments, e.g. ``b"BADCHARSET (UTF-8)"``.
    """

    def __init__(
        self, text: str, *, code: bytes | None = None, status: Literal["BAD", "NO"] = "BAD"
    ) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.status: Literal["BAD", "NO"] = status


# -- values ---------------------------------------------------------------------------


class Atom(str):
    """A ``str`` written as it is: flags, keywords, item names (``\\Seen``, ``MESSAGES``)."""

    __slots__ = ()


class Raw(bytes):
    """``bytes`` already rendered (a sequence set, a nested FETCH item): written as they are."""

    __slots__ = ()


Value: TypeAlias = "int | str | bytes | Sequence[Value] | None"

# Bytes that may stand in a quoted string as they are. RFC 3501 9 allows escaped
# '"' and '\\' too, but some clients mishandle escapes, so those go as literals.
_QUOTED_SAFE: Final = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')
# ASTRING-CHAR (RFC 3501 9): ATOM-CHAR plus "]"; no atom-specials, no 8-bit.
_ASTRING_SAFE: Final = bytes(c for c in range(0x21, 0x7F) if c not in b'(){%*"\\')
# Longer strings are written as literals: quoted strings are meant to be short,
# and some clients cap their line length.
_QUOTED_MAX: Final = 1024


def quoted(data: bytes) -> bytes:
    """``data`` as a quoted string; the caller has checked it is safe (see :func:`string`)."""
    return b'"' + data + b'"'


def literal(data: bytes) -> bytes:
    """``data`` as a literal (RFC 3501 4.3): ``{n}`` CRLF then the octets."""
    return b"{%d}\r\n%b" % (len(data), data)


def string(value: str | bytes) -> bytes:
    """A string, quoted when every byte is printable US-ASCII other than ``"``/``\\``
    and it is short; otherwise a literal (8-bit, CR, LF, quotes, long values)."""
    data = value.encode() if isinstance(value, str) else value
    # translate() deletes the safe bytes in C; anything left over needs a literal.
    if len(data) <= _QUOTED_MAX and not data.translate(None, _QUOTED_SAFE):
        return b'"' + data + b'"'
    return literal(data)


def nstring(value: str | bytes | None) -> bytes:
    """NIL or a string (RFC 3501 9, ``nstring``)."""
    return b"NIL" if value is None else string(value)


def astring(value: str | bytes) -> bytes:
    """An atom when the value is one (and not ``NIL``, which would read as NIL), else a string."""
    data = value.encode() if isinstance(value, str) else value
    if (
        data
        and len(data) <= _QUOTED_MAX
        and not data.translate(None, _ASTRING_SAFE)
        and data.upper() != b"NIL"
    ):
        return data
    return string(data)


def mailbox(name: str) -> bytes:
    """A mailbox name: modified UTF-7 (RFC 3501 5.1.3) written as an astring."""
    return astring(encode_mailbox(name))


def render(value: Value) -> bytes:
    """Any :data:`Value` as bytes (see the module docstring for the convention)."""
    if value is None:
        return b"NIL"
    if isinstance(value, Raw):
        return bytes(value)
    if isinstance(value, Atom):
        return value.encode("ascii")
    if isinstance(value, str | bytes):
        return string(value)
    if isinstance(value, bool):
        raise TypeError("IMAP has no booleans")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("IMAP numbers are unsigned")
        return b"%d" % value
    return b"(" + b" ".join(render(item) for item in value) + b")"


def flag_list(flags: Iterable[str]) -> bytes:
    """``(\\Seen $Junk)``: flags are atoms the server already validated, so just joined."""
    return b"(" + " ".join(flags).encode("ascii") + b")"


def internaldate(when: dt.datetime) -> bytes:
    """``"17-Jul-1996 02:44:25 -0700"`` (RFC 3501 9, ``date-time``); a naive time is UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    offset = when.utcoffset() or dt.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    text = "%2d-%s-%04d %02d:%02d:%02d %s%02d%02d" % (  # noqa: UP031 - fixed-width fields
        when.day,
        _MONTHS[when.month - 1],
        when.year,
        when.hour,
        when.minute,
        when.second,
        sign,
        minutes // 60,
        minutes % 60,
    )
    return b'"' + text.encode("ascii") + b'"'


_MONTHS: Final = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)

# -- responses ----------------------------------------------------------------------


def response_code(name: bytes, *args: Value) -> bytes:
    """A response code with arguments: ``response_code(CODE_APPENDUID, 38505, 3955)``
    gives ``b"APPENDUID 38505 3955"``; pass pre-rendered sets as :class:`Raw`."""
    if not args:
        return name
    return name + b" " + b" ".join(render(arg) for arg in args)


def _text(text: str) -> bytes:
    # resp-text is 1*TEXT-CHAR (RFC 3501 9): never CR or LF, which would let a
    # value echoed in an error message inject a response line; and TEXT-CHAR
    # is a 7-bit CHAR (no UTF8=ACCEPT here, RFC 6855), so a name or value
    # echoed with letters beyond ASCII (or a surrogate from a bad byte) is
    # written as its escape: "\xe9", never 8-bit octets.
    # NUL is no CHAR either (%x01-7F).
    data = text.encode("ascii", "backslashreplace").translate(_TEXT_BREAKS)
    return data or b"done"


_TEXT_BREAKS: Final = bytes.maketrans(b"\r\n\x00", b"   ")


def _status_line(tag: str, status: str, text: str, code: bytes | None) -> bytes:
    head = tag.encode("ascii") + b" " + status.encode("ascii") + b" "
    if code is not None:
        head += b"[" + code + b"] "
    return head + _text(text) + b"\r\n"


def tagged(
    tag: str, status: Literal["OK", "NO", "BAD"], text: str, code: bytes | None = None
) -> bytes:
    """``a1 OK [CODE] text`` CRLF (RFC 3501 7.1)."""
    return _status_line(tag, status, text, code)


def untagged_status(status: ResponseStatus, text: str, code: bytes | None = None) -> bytes:
    """``* OK [UIDNEXT 5] Predicted next UID`` CRLF; also ``* BYE``, ``* PREAUTH``."""
    return _status_line("*", status, text, code)


def untagged(*values: Value) -> bytes:
    """``* `` then the values (see :func:`render`) CRLF: ``untagged(3, Atom("EXISTS"))``."""
    return b"* " + b" ".join(render(value) for value in values) + b"\r\n"


def continuation(text: str | bytes = "Ready for literal data") -> bytes:
    """``+ text`` CRLF (RFC 3501 7.5); pass bytes for a base64 SASL challenge."""
    data = text if isinstance(text, bytes) else _text(text)
    return b"+ " + data + b"\r\n"


def fetch_response(seq: int, items: Iterable[bytes]) -> bytes:
    """``* seq FETCH (item item ...)`` CRLF from pre-rendered items such as
    ``b"UID 7"``, ``b"FLAGS (\\\\Seen)"`` or ``name + b" " + literal(data)``."""
    return b"* %d FETCH (%b)\r\n" % (seq, b" ".join(items))


# -- mailbox names: modified UTF-7 (RFC 3501 5.1.3) -----------------------------------


def _b64(chars: list[str]) -> str:
    raw = "".join(chars).encode("utf-16-be")
    return "&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-"


def encode_mailbox(name: str) -> str:
    """Modified UTF-7: printable ASCII as itself, ``&`` as ``&-``, runs of anything
    else as ``&`` + base64 of UTF-16BE with ``,`` for ``/`` + ``-``."""
    if name.isascii() and name.isprintable() and "&" not in name:
        return name  # the common case, no work
    out: list[str] = []
    pending: list[str] = []
    for ch in name:
        if " " <= ch <= "~":
            if pending:
                out.append(_b64(pending))
                pending = []
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    if pending:
        out.append(_b64(pending))
    return "".join(out)


def _not_utf7(text: str) -> CommandError:
    return CommandError(text, status="NO")


def decode_mailbox(name: str | bytes) -> str:
    """The Unicode name for a modified UTF-7 one; :class:`CommandError` if it is not
    modified UTF-7 in its one canonical form (RFC 3501 5.1.3 forbids others, and
    accepting them would let two spellings name one mailbox).

    A name that is a valid astring but not modified UTF-7 (``&Jjo``, 8-bit
    bytes in a literal) is a well-formed command naming no mailbox: ``NO``.
    Control characters are refused by the grammar: ``BAD``."""
    text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
    if not text.isascii():
        raise _not_utf7("mailbox name must be modified UTF-7 (RFC 3501 5.1.3)")
    if not text.isprintable():
        raise CommandError("mailbox names cannot hold control characters")
    if "&" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        amp = text.find("&", i)
        if amp < 0:
            out.append(text[i:])
            break
        out.append(text[i:amp])
        end = text.find("-", amp)
        if end < 0:
            raise _not_utf7("mailbox name has '&' without a closing '-' (RFC 3501 5.1.3)")
        chunk = text[amp + 1 : end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            try:
                raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
                out.append(raw.decode("utf-16-be"))
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise _not_utf7("mailbox name is not valid modified UTF-7") from exc
        i = end + 1
    decoded = "".join(out)
    # Control characters (C0, DEL, C1) would let a name break a response line.
    if any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in decoded):
        raise CommandError("mailbox names cannot hold control characters")
    if encode_mailbox(decoded) != text:
        raise _not_utf7("mailbox name is not in canonical modified UTF-7 (RFC 3501 5.1.3)")
    return decoded
