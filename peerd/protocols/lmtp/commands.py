"""LMTP command lines (RFC 2033, RFC 5321 4.1, RFC 1870, RFC 6152, RFC 6531), parsed.

How this works: :func:`parse_command` takes one command line without its
line ending and returns a frozen dataclass per command, or :class:`Invalid`
carrying the reply that refuses the line and whether the line counts as a
bad command (an unknown keyword or a line that is no command at all, which
only a confused or hostile client sends; see the connection's limit). It
knows nothing of the session: whether a command may be given now is the
state table's business (:mod:`.states`), whether a declared SIZE is too big
the connection's.

Keywords are case-insensitive (RFC 5321 2.4). Paths follow RFC 5321 4.1.2
with RFC 6531's UTF-8 (SMTPUTF8 is offered): a dot-string or quoted local
part, a domain or an address literal, a source route that is read and
dropped (RFC 5321 C), and ``<>`` as a reverse-path. Two leniencies that MTAs
in the wild need: a path without angle brackets, and a local part with no
domain (RFC 5321 4.5.1 requires ``RCPT TO:<Postmaster>``). The regular
expressions use possessive quantifiers only, so no line makes them
backtrack.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeAlias

from .replies import (
    S500_BAD_SYNTAX,
    S500_UNKNOWN,
    S500_USE_LHLO,
    S501_BAD_ADDRESS,
    S501_BAD_BODY,
    S501_BAD_SENDER,
    S501_BAD_SIZE,
    S501_SYNTAX_DATA,
    S501_SYNTAX_LHLO,
    S501_SYNTAX_MAIL,
    S501_SYNTAX_QUIT,
    S501_SYNTAX_RCPT,
    S501_SYNTAX_RSET,
    S501_SYNTAX_STARTTLS,
    S501_SYNTAX_VRFY,
    S502_NOT_IMPLEMENTED,
    S555_MAIL_PARAMS,
    S555_RCPT_PARAMS,
)

__all__ = [
    "Command",
    "Data",
    "Help",
    "Invalid",
    "Lhlo",
    "Mail",
    "Noop",
    "Quit",
    "Rcpt",
    "Rset",
    "StartTls",
    "Vrfy",
    "parse_command",
]


def _one_line(value: str, what: str) -> None:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"{what} holds CR, LF or NUL")


@dataclass(frozen=True, slots=True)
class Lhlo:
    """RFC 2033 4.1: LHLO, the client's name (not checked: it is only logged)."""

    host: str

    def __post_init__(self) -> None:
        _one_line(self.host, "LHLO host")
        if not self.host:
            raise ValueError("LHLO needs a host name")


@dataclass(frozen=True, slots=True)
class Mail:
    """RFC 5321 4.1.1.2: MAIL FROM. ``sender`` is ``""`` for the null
    reverse-path ``<>`` (bounces); ``size`` the RFC 1870 SIZE declared, if
    any; ``eight_bit`` whether RFC 6152 BODY=8BITMIME was given; ``utf8``
    whether RFC 6531 SMTPUTF8 was."""

    sender: str
    size: int | None = None
    eight_bit: bool = False
    utf8: bool = False

    def __post_init__(self) -> None:
        _one_line(self.sender, "sender")
        if self.size is not None and (isinstance(self.size, bool) or self.size < 0):
            raise ValueError("SIZE must be a number >= 0")


@dataclass(frozen=True, slots=True)
class Rcpt:
    """RFC 5321 4.1.1.3: RCPT TO, the mailbox without brackets or route."""

    address: str

    def __post_init__(self) -> None:
        _one_line(self.address, "recipient")
        if not self.address:
            raise ValueError("RCPT needs an address")


@dataclass(frozen=True, slots=True)
class Data:
    """RFC 5321 4.1.1.4."""


@dataclass(frozen=True, slots=True)
class Rset:
    """RFC 5321 4.1.1.5."""


@dataclass(frozen=True, slots=True)
class Noop:
    """RFC 5321 4.1.1.9 (any argument is ignored)."""


@dataclass(frozen=True, slots=True)
class Quit:
    """RFC 5321 4.1.1.10."""


@dataclass(frozen=True, slots=True)
class Vrfy:
    """RFC 5321 4.1.1.6; answered 252, never checked."""


@dataclass(frozen=True, slots=True)
class Help:
    """RFC 5321 4.1.1.8 (any argument is ignored)."""


@dataclass(frozen=True, slots=True)
class StartTls:
    """RFC 3207 4."""


@dataclass(frozen=True, slots=True)
class Invalid:
    """A line that is not a command to run: answer ``reply`` and go on.

    ``bad`` is true for an unknown keyword or a line that is not a command
    at all; those count toward the connection's limit. A known command with
    a wrong argument does not.
    """

    reply: str
    bad: bool = False


Command: TypeAlias = Lhlo | Mail | Rcpt | Data | Rset | Noop | Quit | Vrfy | Help | StartTls
_Parser: TypeAlias = Callable[[str], "Command | Invalid"]

# -- paths (RFC 5321 4.1.2, RFC 6531 3.3) ------------------------------------------

# Each class is written as what it excludes: the same set as the ASCII it
# allows plus \u0080-\U0010ffff, but a range up to U+10FFFF costs re about
# 12 ms to compile, and every LMTP worker process compiles these at start.
# atext (RFC 5322 3.2.3) and, with SMTPUTF8, any non-ASCII character.
_ATEXT: Final = r'[^\x00-\x20"(),.:;<>@\[\\\]\x7f]'
_DOT_STRING: Final = rf"{_ATEXT}++(?:\.{_ATEXT}++)*+"
# qtextSMTP / quoted-pairSMTP.
_QUOTED: Final = r'"(?:[^\x00-\x1f"\\\x7f]|\\[\x20-\x7e])*+"'
# Let-dig and "-" (RFC 5321 4.1.2), and with SMTPUTF8 any non-ASCII character.
_LABEL: Final = r"[^\x00-\x2c./:-@\[-`{-\x7f]"
_DOMAIN: Final = rf"{_LABEL}++(?:\.{_LABEL}++)*+"
# address-literal: "[" then dcontent, what every form of it is made of.
_LITERAL: Final = r"\[[\x21-\x5a\x5e-\x7e]++\]"
_MAILBOX: Final = rf"(?:{_DOT_STRING}|{_QUOTED})(?:@(?:{_DOMAIN}|{_LITERAL}))?+"
# A-d-l, the source route: read and dropped (RFC 5321 4.1.2 and appendix C).
_ROUTE: Final = rf"@{_DOMAIN}(?:,@{_DOMAIN})*+:"
_PATH: Final = re.compile(rf"<(?:{_ROUTE})?+({_MAILBOX})>|({_MAILBOX})(?= |\Z)")
# esmtp-param (RFC 5321 4.1.2), the value: printable ASCII but "=", and with
# RFC 6531's UTF-8 any non-ASCII character.
_PARAM: Final = re.compile(r"([A-Za-z0-9][A-Za-z0-9\-]*+)(?:=([^\x00-\x20=\x7f]++))?")
_SIZE: Final = re.compile(r"[0-9]{1,20}")


def _path(text: str) -> tuple[str, str] | None:
    """(mailbox, the rest of the line) for a path at the start of ``text``."""
    match = _PATH.match(text)
    if match is None:
        return None
    return match.group(1) or match.group(2), text[match.end() :]


def _params(rest: str) -> dict[str, str] | None:
    """``KEY[=VALUE]`` words, keys upper-cased; None for a malformed or repeated one."""
    params: dict[str, str] = {}
    for word in rest.split(" "):
        if not word:
            continue
        match = _PARAM.fullmatch(word)
        if match is None:
            return None
        key = match.group(1).upper()
        if key in params:
            return None
        params[key] = match.group(2) or ""
    return params


def _argument(rest: str, keyword: str) -> str | None:
    """What follows ``FROM:``/``TO:`` (any case, spaces allowed after the colon)."""
    if rest[: len(keyword)].upper() != keyword:
        return None
    return rest[len(keyword) :].lstrip(" ")


def _lhlo(rest: str) -> Command | Invalid:
    host = rest.strip(" ")
    if not host:
        return Invalid(S501_SYNTAX_LHLO)
    return Lhlo(host)


def _mail(rest: str) -> Command | Invalid:
    argument = _argument(rest, "FROM:")
    if argument is None:
        return Invalid(S501_SYNTAX_MAIL)
    if argument.startswith("<>"):
        sender, tail = "", argument[2:]
    else:
        found = _path(argument)
        if found is None:
            return Invalid(S501_BAD_SENDER)
        sender, tail = found
    if tail and not tail.startswith(" "):
        return Invalid(S501_SYNTAX_MAIL)
    params = _params(tail)
    if params is None:
        return Invalid(S501_SYNTAX_MAIL)
    size: int | None = None
    if "SIZE" in params:
        value = params.pop("SIZE")
        if not _SIZE.fullmatch(value):
            return Invalid(S501_BAD_SIZE)
        size = int(value)
    eight_bit = False
    if "BODY" in params:
        body = params.pop("BODY").upper()
        if body not in ("7BIT", "8BITMIME"):
            return Invalid(S501_BAD_BODY)
        eight_bit = body == "8BITMIME"
    utf8 = "SMTPUTF8" in params
    if utf8 and params.pop("SMTPUTF8"):
        return Invalid(S501_SYNTAX_MAIL)  # RFC 6531 3.4: SMTPUTF8 takes no value
    if params:
        return Invalid(S555_MAIL_PARAMS)
    return Mail(sender, size, eight_bit, utf8)


def _rcpt(rest: str) -> Command | Invalid:
    argument = _argument(rest, "TO:")
    if argument is None:
        return Invalid(S501_SYNTAX_RCPT)
    found = _path(argument)
    if found is None:
        return Invalid(S501_BAD_ADDRESS)
    address, tail = found
    if tail and not tail.startswith(" "):
        return Invalid(S501_SYNTAX_RCPT)
    params = _params(tail)
    if params is None:
        return Invalid(S501_SYNTAX_RCPT)
    if params:
        # No RCPT parameter is offered (no DSN): RFC 5321 4.1.1.11.
        return Invalid(S555_RCPT_PARAMS)
    return Rcpt(address)


def _bare(command: Command, syntax: str) -> _Parser:
    def parse(rest: str) -> Command | Invalid:
        return Invalid(syntax) if rest.strip(" ") else command

    return parse


def _vrfy(rest: str) -> Command | Invalid:
    return Vrfy() if rest.strip(" ") else Invalid(S501_SYNTAX_VRFY)


_PARSERS: Final[dict[str, _Parser]] = {
    "LHLO": _lhlo,
    "MAIL": _mail,
    "RCPT": _rcpt,
    "DATA": _bare(Data(), S501_SYNTAX_DATA),
    "RSET": _bare(Rset(), S501_SYNTAX_RSET),
    "QUIT": _bare(Quit(), S501_SYNTAX_QUIT),
    "STARTTLS": _bare(StartTls(), S501_SYNTAX_STARTTLS),
    "NOOP": lambda rest: Noop(),
    "HELP": lambda rest: Help(),
    "VRFY": _vrfy,
}

# Known, and refused whatever their arguments.
_REFUSED: Final[dict[str, Invalid]] = {
    # RFC 2033 4.1: LMTP has no HELO or EHLO.
    "HELO": Invalid(S500_USE_LHLO),
    "EHLO": Invalid(S500_USE_LHLO),
    # RFC 5321 3.5.2: EXPN may be left out (502).
    "EXPN": Invalid(S502_NOT_IMPLEMENTED),
}


def parse_command(line: bytes) -> Command | Invalid:
    """One command line, without its CRLF, to a command or the reply refusing it."""
    keyword_bytes, _, rest_bytes = line.partition(b" ")
    keyword = keyword_bytes.upper()
    if not keyword.isalpha():  # bytes.isalpha: ASCII letters only
        # Empty lines, NUL, control characters, 8-bit bytes in the keyword.
        return Invalid(S500_BAD_SYNTAX, bad=True)
    name = keyword.decode("ascii")
    parser = _PARSERS.get(name)
    if parser is None:
        return _REFUSED.get(name) or Invalid(S500_UNKNOWN, bad=True)
    if b"\0" in rest_bytes or b"\r" in rest_bytes:
        return Invalid(S500_BAD_SYNTAX, bad=True)
    try:
        rest = rest_bytes.decode("utf-8")
    except UnicodeDecodeError:
        return Invalid(S500_BAD_SYNTAX, bad=True)
    return parser(rest)
