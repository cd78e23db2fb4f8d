"""LMTP replies (RFC 2033, RFC 5321 4.2, RFC 3463 enhanced codes), as named constants.

How this works: a reply is one line of text, ``"NNN X.Y.Z text"``, kept as a
``str`` so that a constant reads on the page as it goes on the wire. Every
2xx, 4xx and 5xx reply carries an enhanced status code after its number
(RFC 2034 section 4: all of them but the greeting and the LHLO reply, once
ENHANCEDSTATUSCODES is offered); 3xx replies carry none. A reply never
echoes what the client sent: client bytes on the wire could break the line
or lie about what was accepted.

The replies that say why a recipient or a message was refused by the store
(no such user, over quota, the account moved) are not here: they come from
the node's one mapping of errors to replies (``peerd.node.errormap``), and
the core only checks that each is a well-formed line (:func:`encode_reply`).
"""

from __future__ import annotations

import functools
import re
from typing import Final

__all__ = [
    "REPLY_LINE",
    "S214_HELP",
    "S220_READY_FOR_TLS",
    "S221_BYE",
    "S250_OK",
    "S250_RCPT_OK",
    "S250_SENDER_OK",
    "S252_CANNOT_VRFY",
    "S354_SEND_DATA",
    "S421_BUSY",
    "S421_IDLE",
    "S421_TOO_MANY_ERRORS",
    "S452_TOO_MANY_RCPTS",
    "S500_BAD_SYNTAX",
    "S500_LINE_TOO_LONG",
    "S500_UNKNOWN",
    "S500_USE_LHLO",
    "S501_BAD_ADDRESS",
    "S501_BAD_BODY",
    "S501_BAD_SENDER",
    "S501_BAD_SIZE",
    "S501_SYNTAX_DATA",
    "S501_SYNTAX_LHLO",
    "S501_SYNTAX_MAIL",
    "S501_SYNTAX_QUIT",
    "S501_SYNTAX_RCPT",
    "S501_SYNTAX_RSET",
    "S501_SYNTAX_STARTTLS",
    "S501_SYNTAX_VRFY",
    "S502_NOT_IMPLEMENTED",
    "S503_ALREADY_TLS",
    "S503_BAD_SEQUENCE",
    "S503_IN_TRANSACTION",
    "S503_NEED_LHLO",
    "S503_NEED_MAIL",
    "S503_NEED_RCPT",
    "S503_NESTED_MAIL",
    "S552_SIZE_EXCEEDED",
    "S552_TOO_BIG",
    "S554_NUL",
    "S555_MAIL_PARAMS",
    "S555_RCPT_PARAMS",
    "encode_reply",
    "greeting",
]

# RFC 5321 4.2: Reply-line = *( Reply-code "-" [ textstring ] CRLF )
#     Reply-code [ SP textstring ] CRLF; textstring = 1*(%d09 / %d32-126).
# Codes 2xx to 5xx only: a server never sends 1xx.
REPLY_LINE: Final = re.compile(rb"[2-5][0-9][0-9](?:[ -][\t\x20-\x7e]*)?\r\n")

# -- 2xx -----------------------------------------------------------------------

# RFC 5321 4.1.1.8: HELP answers 211 or 214.
S214_HELP: Final = "214 2.0.0 Commands: LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"
# RFC 3207 4: the go-ahead for the TLS handshake.
S220_READY_FOR_TLS: Final = "220 2.0.0 Ready to start TLS"
S221_BYE: Final = "221 2.0.0 Bye"
S250_OK: Final = "250 2.0.0 OK"
# RFC 3463 3.2: X.1.0 "other address status" for a sender, X.1.5 "destination
# address valid" for a recipient.
S250_SENDER_OK: Final = "250 2.1.0 Sender OK"
S250_RCPT_OK: Final = "250 2.1.5 Recipient OK"
# RFC 5321 3.5.3: a server that does not verify addresses answers VRFY 252,
# never 250 (7.3: it must not seem to have verified what it did not).
S252_CANNOT_VRFY: Final = "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"

# -- 3xx (no enhanced code: RFC 2034 section 4 covers 2xx, 4xx and 5xx) -------

S354_SEND_DATA: Final = "354 End data with <CR><LF>.<CR><LF>"

# -- 4xx -----------------------------------------------------------------------

# RFC 5321 3.8 and 4.2.2: 421 closes the channel; the client tries again later.
S421_IDLE: Final = "421 4.4.2 Idle too long; closing connection"
# RFC 3463 4.3.2: not accepting messages now (a connection cap is reached).
S421_BUSY: Final = "421 4.3.2 Too many connections; try again later"
S421_TOO_MANY_ERRORS: Final = "421 4.7.0 Too many errors; closing connection"
# RFC 5321 4.5.3.1.10: too many recipients is 452, and the client sends the
# rest in another transaction.
S452_TOO_MANY_RCPTS: Final = "452 4.5.3 Too many recipients"

# -- 5xx -----------------------------------------------------------------------

S500_UNKNOWN: Final = "500 5.5.1 Command not recognized"
S500_BAD_SYNTAX: Final = "500 5.5.2 Syntax error"
# RFC 5321 4.5.3.1.4 and 4.5.3.1.6: a command line over the limit is refused.
S500_LINE_TOO_LONG: Final = "500 5.5.2 Command line too long"
# RFC 2033 4.1: an LMTP server refuses HELO and EHLO.
S500_USE_LHLO: Final = "500 5.5.1 This is LMTP: use LHLO"
S501_SYNTAX_LHLO: Final = "501 5.5.4 Syntax: LHLO hostname"
S501_SYNTAX_MAIL: Final = "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"
S501_SYNTAX_RCPT: Final = "501 5.5.4 Syntax: RCPT TO:<address>"
S501_SYNTAX_DATA: Final = "501 5.5.4 Syntax: DATA"
S501_SYNTAX_RSET: Final = "501 5.5.4 Syntax: RSET"
S501_SYNTAX_QUIT: Final = "501 5.5.4 Syntax: QUIT"
S501_SYNTAX_VRFY: Final = "501 5.5.4 Syntax: VRFY <address>"
S501_SYNTAX_STARTTLS: Final = "501 5.5.4 Syntax: STARTTLS"
S501_BAD_SENDER: Final = "501 5.1.7 Bad sender address syntax"
S501_BAD_ADDRESS: Final = "501 5.1.3 Bad recipient address syntax"
# RFC 1870 3: SIZE=1*20DIGIT; RFC 6152 2: BODY=7BIT or BODY=8BITMIME.
S501_BAD_SIZE: Final = "501 5.5.4 SIZE takes a number"
S501_BAD_BODY: Final = "501 5.5.4 BODY must be 7BIT or 8BITMIME"
S502_NOT_IMPLEMENTED: Final = "502 5.5.1 Command not implemented"
S503_NEED_LHLO: Final = "503 5.5.1 Send LHLO first"
S503_NEED_MAIL: Final = "503 5.5.1 Need MAIL first"
S503_NESTED_MAIL: Final = "503 5.5.1 Sender already given"
# RFC 2033 4.2: DATA with no recipient accepted must fail with 503.
S503_NEED_RCPT: Final = "503 5.5.1 No valid recipients"
# RFC 3207 4: STARTTLS is for the start of a session, not inside a transaction.
S503_IN_TRANSACTION: Final = "503 5.5.1 Not inside a mail transaction"
S503_ALREADY_TLS: Final = "503 5.5.1 TLS already active"
S503_BAD_SEQUENCE: Final = "503 5.5.1 Bad sequence of commands"
# RFC 1870 6.1: a declared SIZE over the fixed limit is refused at MAIL.
S552_SIZE_EXCEEDED: Final = "552 5.3.4 Message size exceeds fixed maximum message size"
S552_TOO_BIG: Final = "552 5.3.4 Message too big for system"
# RFC 5322 2.3 forbids NUL in a message; Cyrus refuses such mail the same way.
S554_NUL: Final = "554 5.6.0 Message contains NUL characters"
# RFC 5321 4.1.1.11: parameters the server does not know are 555.
S555_MAIL_PARAMS: Final = "555 5.5.4 MAIL FROM parameters not recognized or not implemented"
S555_RCPT_PARAMS: Final = "555 5.5.4 RCPT TO parameters not recognized or not implemented"

_CODE: Final = re.compile(r"[2-5][0-9][0-9][ -]")
_NOT_TEXT: Final = re.compile(r"[^\t\x20-\x7e]")


@functools.lru_cache(maxsize=512)
def encode_reply(reply: str) -> bytes:
    """One reply line on the wire: ``reply`` and CRLF.

    The code must be a 2xx to 5xx number followed by a space (or a dash,
    for a line of a multi-line reply other than the last); ValueError
    otherwise (a server bug, never client input). Anything in the text that
    RFC 5321 4.2 does not allow there (control characters, non-ASCII: a
    node name from the configuration, say) becomes ``?``, so one line stays
    one line. Replies come from a few constants and the error mapping:
    the cache holds each one encoded once.
    """
    if not _CODE.match(reply):
        raise ValueError(f"not an LMTP reply line: {reply[:40]!r}")
    return _NOT_TEXT.sub("?", reply).encode("ascii") + b"\r\n"


def greeting(hostname: str) -> bytes:
    """RFC 5321 4.3.1 and 3.1: ``220`` and the server's name (no enhanced code,
    RFC 2034 section 4)."""
    return encode_reply(f"220 {hostname} peerd LMTP")
