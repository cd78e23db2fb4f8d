"""IMAP commands of any state and before login: CAPABILITY, NOOP, CHECK, LOGOUT,
ID, STARTTLS, LOGIN, AUTHENTICATE (RFC 3501 6.1, 6.2, 6.4.1; RFC 2971 ID).

How this works: each handler takes the session and its command and returns
the tagged :class:`~peerd.services.imap.session.Reply`; :data:`HANDLERS`
names them by command class. The server's side of login lives here: the
delay after a failed password, closing after too many, the referral to the
node that owns the account (RFC 2221), the per-account session cap, and the
STARTTLS handshake.
"""

from __future__ import annotations

import asyncio
from typing import Final

from peerd.node.maillog import peer_ip
from peerd.protocols.imap import commands as c
from peerd.protocols.imap.parser import decode_sasl_response, plain_credentials
from peerd.protocols.imap.responses import (
    CODE_AUTHENTICATIONFAILED,
    CODE_CAPABILITY,
    CODE_LIMIT,
    CODE_PRIVACYREQUIRED,
    CODE_REFERRAL,
    CODE_UNAVAILABLE,
    CommandError,
    Raw,
    continuation,
    response_code,
    tagged,
    untagged_status,
)
from peerd.protocols.imap.states import State
from peerd.services.imap.session import Closed, Handler, Reply, Session
from peerd.services.starttls import TlsFailed, injected, upgrade

__all__ = ["HANDLERS"]

# A SASL exchange gets this long per step.
_SASL_TIMEOUT: Final = 60.0


async def capability(session: Session, cmd: c.Capability) -> Reply:
    await session.send(b"* CAPABILITY " + session.capabilities().encode() + b"\r\n")
    return Reply("CAPABILITY completed")


async def noop(session: Session, cmd: c.Noop | c.Check) -> Reply:
    # RFC 3501 6.1.2 / 6.4.1: the moment to report changes, expunges included.
    await session.poll()
    await session.report(cmd)
    return Reply(f"{cmd.name} completed")


async def logout(session: Session, cmd: c.Logout) -> Reply:
    await session.send(untagged_status("BYE", "peerd logging out"))
    session.state = State.LOGOUT
    return Reply("LOGOUT completed")


async def identify(session: Session, cmd: c.Id) -> Reply:
    # RFC 2971 3.2: the server's own fields, whatever the client sent.
    await session.send(b'* ID ("name" "peerd" "vendor" "peerd")\r\n')
    return Reply("ID completed")


async def starttls(session: Session, cmd: c.StartTLS) -> Reply | None:
    context = session.server.tls
    if context is None or session.tls:
        raise CommandError("STARTTLS is not available (no certificate, or TLS is on already)")
    if injected(session.reader, session.core.buffered):
        # RFC 3501 6.2.1: nothing may follow STARTTLS before the handshake.
        raise CommandError("STARTTLS must be the last command sent before the handshake")
    await session.send(tagged(cmd.tag, "OK", "Begin TLS negotiation now"))
    try:
        await upgrade(
            session.reader,
            session.writer,
            context,
            core_buffered=session.core.buffered,
            service="imap",
        )
    except TlsFailed as exc:
        raise Closed from exc
    session.tls = True
    return None


async def login(session: Session, cmd: c.Login) -> Reply:
    return await _login(session, cmd.tag, cmd.user, cmd.password)


async def authenticate(session: Session, cmd: c.Authenticate) -> Reply:
    if cmd.mechanism != "PLAIN":
        # RFC 3501 6.2.2: NO for an unsupported mechanism.
        return Reply(f"unsupported mechanism {cmd.mechanism[:20]}; use PLAIN", None, "NO")
    response = cmd.initial_response
    if response is None:
        await session.send(continuation(b""))  # PLAIN has no challenge: "+ " (RFC 4616)
        response = decode_sasl_response(await session.next_line(_SASL_TIMEOUT))
        if response is None:
            return Reply("AUTHENTICATE cancelled", None, "BAD")  # RFC 3501 6.2.2
    user, password = plain_credentials(response)
    return await _login(session, cmd.tag, user, password)


async def _login(session: Session, tag: str, user: str, password: str) -> Reply:
    node = session.node
    if not session.may_login():
        # RFC 3501 6.2.3 (LOGINDISABLED), RFC 5530 3: not without TLS.
        text = "Plaintext authentication is disabled; use STARTTLS first"
        return Reply(text, CODE_PRIVACYREQUIRED, "NO")
    config = node.config.imap
    result = await node.authenticate(user, password, "imap", peer_ip(session.writer))
    if not result.ok:
        session.failures += 1
        await asyncio.sleep(config.login_failure_delay.total_seconds())
        failed = tagged(tag, "NO", "Authentication failed", CODE_AUTHENTICATIONFAILED)
        if session.failures >= config.max_login_failures:
            await session.send(failed + untagged_status("BYE", "too many failed logins"))
            raise Closed
        return Reply("Authentication failed", CODE_AUTHENTICATIONFAILED, "NO")
    if result.owner is not None and result.owner != node.partner:
        # RFC 5530 3: held while a switchover or a move between pairs cuts
        # over, or moved to another pair (the proxy's next lookup finds it).
        return Reply(f"{result.account} is not available here now", CODE_UNAVAILABLE, "NO")
    if result.owner is not None:
        where = node.config.routing.partner_imap
        host = str(where) if where else result.owner
        # RFC 2221 4.1: the URL names the server that has the account.
        code = CODE_REFERRAL + f" imap://{result.account}@{host}/".encode()
        return Reply(f"{result.account} is served by {result.owner}", code, "NO")
    if session.server.count(result.account) >= config.max_sessions_per_account:
        return Reply("too many sessions for this account", CODE_LIMIT, "NO")
    session.logged_in(result.account)
    code = response_code(CODE_CAPABILITY, Raw(session.capabilities().encode()))
    return Reply(f"LOGIN completed on {node.name}", code)


HANDLERS: Final[dict[type[c.Command], Handler]] = {
    c.Capability: capability,
    c.Noop: noop,
    c.Check: noop,
    c.Logout: logout,
    c.Id: identify,
    c.StartTLS: starttls,
    c.Login: login,
    c.Authenticate: authenticate,
}
