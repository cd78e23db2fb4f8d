"""A ManageSieve server session (RFC 5804), sans-I/O: bytes in, events out, answers in.

How this works: the service (an asyncio listener, later) owns the socket,
TLS, timeouts, the login rules and the store. It drives a :class:`Session`:

    session = Session(Config(...))
    write(session.greeting())
    on data: session.receive_data(data)       (b"" at end of input)
    loop:    event = session.next_event()
      NEED_DATA          -> read more
      Send(data)         -> write data
      StartTlsNow()      -> stop reading in the clear, handshake,
                            then write(session.tls_started())
      Close()            -> close the connection
      RoomNeeded(size)   -> (with Config.ask_room) find room for a literal
                            of size octets, reading nothing meanwhile, then
                            ask again, or session.refuse_literal(text)
      a request          -> do it, then write(session.answer(reply))

The requests are the only things the core cannot do itself, each a frozen
dataclass: :class:`Login` (check the password: the same rules as IMAP),
and :class:`~.commands.HaveSpace`, :class:`~.commands.PutScript`,
:class:`~.commands.ListScripts`, :class:`~.commands.SetActive`,
:class:`~.commands.GetScript`, :class:`~.commands.DeleteScript` and
:class:`~.commands.RenameScript` for ``session.user``'s scripts. The answer
is a :class:`Done`, a :class:`Refused` (with a response code such as
``NONEXISTENT``, ``ACTIVE``, ``ALREADYEXISTS``, ``QUOTA/MAXSCRIPTS`` or
``TRYLATER`` from :mod:`.responses`), :class:`Scripts` for LISTSCRIPTS and
:class:`ScriptContent` for GETSCRIPT. Until a request is answered,
:meth:`Session.next_event` refuses to go on (responses keep command order).

What the service owes each request (RFC 5804 sections 2.5-2.11): PutScript
stores or replaces the script (it was already compiled); HaveSpace checks
the account's script count (the size was checked here); SetActive with
name "" leaves no script active, an unknown name is NONEXISTENT;
DeleteScript of the active script is ACTIVE; RenameScript onto an existing
name is ALREADYEXISTS and keeps the active mark with the script. A store
that cannot write now (the account moved, the database is busy) answers
``Refused(text, TRYLATER)``.

What the core does on its own: CAPABILITY, NOOP, LOGOUT, STARTTLS (bytes
pipelined behind it are thrown away: they came in the clear, section 2.2),
UNAUTHENTICATE, the SASL PLAIN exchange (initial response or a ``""``
challenge, ``"*"`` to cancel; section 2.1), CHECKSCRIPT, and the checks
before PUTSCRIPT and HAVESPACE: the size cap (``NO (QUOTA/MAXSIZE)``) and
the script compiled by :func:`peerd.protocols.sieve.compile_script` (a
refused script is ``NO`` with the error's text, which names the line), so
the store only ever sees valid scripts. Which commands each state allows is
:mod:`.states`' table.
"""

from __future__ import annotations

import binascii
from collections import deque
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from ..sieve import SUPPORTED, Limits, ScriptError, compile_script
from . import commands as c
from . import responses as r
from .states import State, allowed
from .wire import NEED_DATA, Bad, Closed, Line, NeedData, Reader, RoomNeeded, Str

__all__ = [
    "NEED_DATA",
    "Close",
    "Config",
    "Done",
    "Event",
    "Login",
    "Refused",
    "Reply",
    "Request",
    "RoomNeeded",
    "ScriptContent",
    "Scripts",
    "Send",
    "Session",
    "StartTlsNow",
    "plain_credentials",
]

TEXT_AUTH_FAILED: Final = "Authentication failed"
TEXT_NOT_NOW: Final = "command not allowed now"


@dataclass(frozen=True, slots=True)
class Config:
    implementation: str = "peerd"
    # STARTTLS offered (a certificate is configured).
    tls_available: bool = True
    # The connection is TLS from the start (a TLS-only listener).
    tls_active: bool = False
    # PLAIN only over TLS (RFC 5804 section 2.1 and RFC 4616 section 6): before
    # STARTTLS the SASL capability is empty and AUTHENTICATE gets ENCRYPT-NEEDED.
    plain_needs_tls: bool = True
    max_line: int = 8192
    # Before login only AUTHENTICATE takes strings: a few KiB is plenty.
    max_literal_before_login: int = 4096
    limits: Limits = field(default_factory=Limits)
    extensions: tuple[str, ...] = SUPPORTED
    # Announce each literal (RoomNeeded) before its octets are kept.
    ask_room: bool = False


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class StartTlsNow:
    """The OK went out (in the Send before this): start the TLS handshake."""


@dataclass(frozen=True, slots=True)
class Close:
    pass


@dataclass(frozen=True, slots=True)
class Login:
    """Check ``user``/``password``; ``authzid`` is always "" or ``user``."""

    user: str
    password: str
    authzid: str = ""

    def __repr__(self) -> str:
        return f"Login(user={self.user!r}, password=***)"


Request: TypeAlias = (
    Login
    | c.HaveSpace
    | c.PutScript
    | c.ListScripts
    | c.SetActive
    | c.GetScript
    | c.DeleteScript
    | c.RenameScript
)
Event: TypeAlias = Send | StartTlsNow | Close | Request | NeedData | RoomNeeded


@dataclass(frozen=True, slots=True)
class Done:
    text: str = ""


@dataclass(frozen=True, slots=True)
class Refused:
    text: str
    code: str | None = None


@dataclass(frozen=True, slots=True)
class Scripts:
    """LISTSCRIPTS: (name, active) pairs; at most one active."""

    entries: tuple[tuple[str, bool], ...]

    def __post_init__(self) -> None:
        if sum(active for _, active in self.entries) > 1:
            raise ValueError("at most one script is active")


@dataclass(frozen=True, slots=True)
class ScriptContent:
    content: str


Reply: TypeAlias = Done | Refused | Scripts | ScriptContent


def plain_credentials(data: bytes) -> tuple[str, str, str]:
    """``(authzid, user, password)`` from a SASL PLAIN message (RFC 4616 section 2)."""
    parts = data.split(b"\0")
    if len(parts) != 3:
        raise ValueError("bad PLAIN response")
    try:
        authzid, user, password = (part.decode("utf-8") for part in parts)
    except UnicodeDecodeError:
        raise ValueError("bad PLAIN response") from None
    # Acting for another identity is not offered.
    if not user or not password or authzid not in ("", user):
        raise ValueError("bad PLAIN response")
    return authzid, user, password


class Session:
    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.state = State.NON_AUTHENTICATED
        self.user: str | None = None
        self.tls = self.config.tls_active
        self._reader = Reader(self.config.max_line, self.config.max_literal_before_login)
        self._reader.ask_room = self.config.ask_room
        self._events: deque[Event] = deque()
        self._pending: Request | None = None
        self._sasl = False  # the "" challenge went out; the next line is the response

    # -- what the service calls ------------------------------------------

    def greeting(self) -> bytes:
        """RFC 5804 section 1.8: the capabilities, then OK."""
        return self._capabilities() + r.Response(r.OK, "peerd ManageSieve ready").encode()

    def receive_data(self, data: bytes) -> None:
        self._reader.receive_data(data)

    def tls_started(self) -> bytes:
        """The handshake succeeded: section 2.2 wants the capabilities again."""
        self.tls = True
        return self._capabilities() + r.Response(r.OK, "TLS negotiation successful").encode()

    def next_event(self) -> Event:
        if self._pending is not None:
            raise RuntimeError(f"answer {type(self._pending).__name__} first")
        while not self._events:
            if self.state is State.CLOSED:
                return NEED_DATA
            event = self._reader.next_event()
            if isinstance(event, NeedData):
                return NEED_DATA
            if isinstance(event, RoomNeeded):
                return event
            self._handle(event)
        out = self._events.popleft()
        if not isinstance(out, (Send, StartTlsNow, Close, NeedData, RoomNeeded)):
            self._pending = out  # every other event is a request
        return out

    def refuse_literal(self, text: str) -> None:
        """No room for the literal of the last :class:`RoomNeeded`: the
        command is answered ``NO (TRYLATER) text`` once its octets are dropped."""
        self._reader.refuse_literal(text)

    def answer(self, reply: Reply) -> bytes:
        request = self._pending
        if request is None:
            raise RuntimeError("no request is waiting for an answer")
        self._pending = None
        if isinstance(reply, Refused):
            return r.Response(r.NO, reply.text, reply.code).encode()
        if isinstance(request, Login):
            if not isinstance(reply, Done):
                raise TypeError("a Login takes Done or Refused")
            self.state = State.AUTHENTICATED
            self.user = request.user
            self._reader.max_literal = self.config.limits.max_script_size
            self._reader.skip_oversized = True
            return r.Response(r.OK, reply.text or "Logged in").encode()
        if isinstance(request, c.ListScripts):
            if not isinstance(reply, Scripts):
                raise TypeError("LISTSCRIPTS takes Scripts or Refused")
            return r.listing(reply.entries) + r.Response(r.OK, "Listscripts completed").encode()
        if isinstance(request, c.GetScript):
            if not isinstance(reply, ScriptContent):
                raise TypeError("GETSCRIPT takes ScriptContent or Refused")
            return r.script_body(reply.content) + r.Response(r.OK, "Getscript completed").encode()
        if not isinstance(reply, Done):
            raise TypeError(f"{type(request).__name__} takes Done or Refused")
        return r.Response(r.OK, reply.text or "Completed").encode()

    # -- inside ----------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._events.append(Send(data))

    def _reply(self, status: str, text: str, code: str | None = None) -> None:
        self._send(r.Response(status, text, code).encode())

    def _bye(self, text: str) -> None:
        self._reply(r.BYE, text)
        self._close()

    def _close(self) -> None:
        self.state = State.CLOSED
        self._events.append(Close())

    def _capabilities(self) -> bytes:
        # RFC 5804 section 1.7.
        plain = self.tls or not self.config.plain_needs_tls
        items: list[tuple[str, str | None]] = [
            ("IMPLEMENTATION", self.config.implementation),
            ("SASL", "PLAIN" if plain else ""),
            ("SIEVE", " ".join(self.config.extensions)),
        ]
        if self.config.tls_available and not self.tls:
            items.append(("STARTTLS", None))
        items.append(("MAXREDIRECTS", str(self.config.limits.max_redirects)))
        if self.user is not None:
            items.append(("OWNER", self.user))
        items.append(("UNAUTHENTICATE", None))
        items.append(("VERSION", "1.0"))
        return r.capability_lines(items)

    def _handle(self, event: Line | Bad | Closed) -> None:
        if isinstance(event, Closed):
            self._close()
            return
        if self._sasl:
            self._sasl = False
            self._sasl_response(event)
            return
        if isinstance(event, Bad):
            self._bad(event)
            return
        try:
            command = c.parse_command(event)
        except c.CommandSyntaxError as exc:
            self._reply(r.NO, str(exc))
            return
        if not allowed(self.state, command):
            text = "authenticate first" if self.state is State.NON_AUTHENTICATED else TEXT_NOT_NOW
            self._reply(r.NO, text)
            return
        self._command(command)

    def _bad(self, bad: Bad) -> None:
        if bad.fatal:
            self._bye(bad.text)
        elif bad.too_big and self.state is State.NON_AUTHENTICATED:
            # Only AUTHENTICATE takes strings before login: a big literal is hostile.
            self._bye(bad.text)
        elif bad.too_big:
            self._reply(r.NO, bad.text, r.QUOTA_MAXSIZE)
        elif bad.busy:
            self._reply(r.NO, bad.text, r.TRYLATER)
        else:
            self._reply(r.NO, bad.text)

    def _command(self, command: c.Command) -> None:
        if isinstance(command, c.Capability):
            self._send(self._capabilities() + r.Response(r.OK, "Capability completed").encode())
        elif isinstance(command, c.Noop):
            # Section 2.13: the tag comes back in a TAG response code.
            if command.tag is None:
                self._reply(r.OK, "Done")
            else:
                self._send(r.Response(r.OK, "Done", r.TAG, command.tag).encode())
        elif isinstance(command, c.Logout):
            self._reply(r.OK, "Logout completed")
            self._close()
        elif isinstance(command, c.StartTls):
            if not self.config.tls_available or self.tls:
                self._reply(r.NO, "TLS is not available" if not self.tls else "TLS is active")
                return
            # Section 2.2: whatever the client sent after STARTTLS came in
            # the clear; it must not be taken as sent over TLS.
            self._reader.clear()
            self._reply(r.OK, "Begin TLS negotiation now")
            self._events.append(StartTlsNow())
        elif isinstance(command, c.Unauthenticate):
            self.state = State.NON_AUTHENTICATED
            self.user = None
            self._reader.max_literal = self.config.max_literal_before_login
            self._reader.skip_oversized = False
            self._reply(r.OK, "Unauthenticate completed")
        elif isinstance(command, c.Authenticate):
            self._authenticate(command)
        elif isinstance(command, c.CheckScript):
            error = self._check(command.content)
            if error is None:
                self._reply(r.OK, "Script is valid")
        elif isinstance(command, c.PutScript):
            if self._check(command.content) is None:
                self._events.append(command)
        elif isinstance(command, c.HaveSpace):
            if command.size > self.config.limits.max_script_size:
                self._reply(
                    r.NO,
                    f"scripts are limited to {self.config.limits.max_script_size} octets",
                    r.QUOTA_MAXSIZE,
                )
            else:
                self._events.append(command)
        else:
            self._events.append(command)

    def _check(self, content: str) -> str | None:
        """Compile a script; on failure, queue the NO and return its text."""
        size = len(content.encode("utf-8", "surrogatepass"))
        if size > self.config.limits.max_script_size:
            text = f"scripts are limited to {self.config.limits.max_script_size} octets"
            self._reply(r.NO, text, r.QUOTA_MAXSIZE)
            return text
        try:
            compile_script(content, self.config.extensions, self.config.limits)
        except ScriptError as exc:
            self._reply(r.NO, str(exc))
            return str(exc)
        return None

    def _authenticate(self, command: c.Authenticate) -> None:
        if command.mechanism != "PLAIN":
            self._reply(r.NO, f"mechanism {command.mechanism[:20]} is not supported")
            return
        if self.config.plain_needs_tls and not self.tls:
            self._reply(r.NO, "use STARTTLS first", r.ENCRYPT_NEEDED)
            return
        if command.initial is None:
            # Section 2.1: the server's challenge is a string; PLAIN's is empty.
            self._send(b'""\r\n')
            self._sasl = True
            return
        self._login(command.initial)

    def _sasl_response(self, event: Line | Bad) -> None:
        if isinstance(event, Bad):
            self._bad(event)
            return
        words = event.words
        if len(words) != 1 or not isinstance(words[0], Str):
            self._reply(r.NO, "expected a SASL response string")
            return
        if words[0].value == "*":
            self._reply(r.NO, "Authentication cancelled")
            return
        self._login(words[0].value)

    def _login(self, encoded: str) -> None:
        try:
            data = binascii.a2b_base64(encoded.encode("ascii"), strict_mode=True)
            authzid, user, password = plain_credentials(data)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            self._reply(r.NO, TEXT_AUTH_FAILED)
            return
        self._events.append(Login(user, password, authzid))
