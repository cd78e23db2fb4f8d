"""RFC 5230 vacation: whether to reply, the reply-once key, and the reply itself.

How this works: the interpreter calls :func:`decide` with the script's
vacation arguments (variables already expanded), the message and the
account's addresses. It answers either a :class:`~.actions.Vacation` or the
reason no reply is due. Whether a reply went to this sender within ``days``
is state the core does not hold: the service looks up the reply-once record
named by ``Vacation.key`` in the store, sends only when it is absent or older
than ``days``, and then writes it (replicated, so a failover does not send a
second reply). :func:`compose_reply` builds the reply's octets; the caller
gives the Date and Message-ID (the core reads no clock).

No reply is sent (RFC 5230 sections 4.5 and 4.6, RFC 3834 section 2):

- to the null return path, or to ``MAILER-DAEMON``, ``LISTSERV``,
  ``majordomo``, ``owner-*`` or ``*-request``;
- to one of the user's own addresses;
- for a message with ``Auto-Submitted`` other than ``no``, with
  ``Precedence: bulk``, ``list`` or ``junk``, or with any ``List-*`` header
  (RFC 2369, RFC 2919);
- when none of the user's addresses (the account's plus ``:addresses``) is
  in To, Cc, Bcc, Resent-To, Resent-Cc or Resent-Bcc (section 4.5: the
  message was not sent to the user directly).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from email.header import Header as EncodedHeader
from typing import Final

from .actions import Vacation
from .address import addresses
from .message import Message

__all__ = [
    "DEFAULT_DAYS",
    "compose_reply",
    "decide",
    "reply_key",
]

# RFC 5230 section 4.1: 7 days when the script gives none; sites clamp.
DEFAULT_DAYS: Final = 7
_RECIPIENT_HEADERS: Final = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")
_NEVER_LOCALPARTS: Final = frozenset({"mailer-daemon", "listserv", "majordomo"})
_BULK: Final = frozenset({"bulk", "list", "junk"})


def _handle(reason: str, subject: str | None, from_: str | None, mime: bool) -> str:
    # RFC 5230 section 4.2: without :handle, two vacation actions are "the
    # same" when their reason, :subject, :from and :mime agree.
    digest = hashlib.sha256()
    for piece in (reason, subject or "", from_ or "", "mime" if mime else ""):
        digest.update(piece.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return "auto:" + digest.hexdigest()[:32]


def reply_key(handle: str, sender: str) -> str:
    """The reply-once record's name: one per (handle, sender)."""
    data = f"{handle}\0{sender.lower()}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


def _skip_sender(sender: str) -> str | None:
    if not sender:
        return "the return path is empty"
    local = sender.rpartition("@")[0] or sender
    lowered = local.lower()
    if lowered in _NEVER_LOCALPARTS or lowered.startswith("owner-") or lowered.endswith("-request"):
        return f"the sender {sender} is a robot or a list"
    return None


def _skip_headers(message: Message) -> str | None:
    for value in message.values("auto-submitted"):
        if value.split(";")[0].strip().lower() != "no":
            return "the message is Auto-Submitted"
    for value in message.values("precedence"):
        if value.strip().lower() in _BULK:
            return f"the message has Precedence: {value.strip()}"
    for header in message.headers:
        if header.name.lower().startswith("list-"):
            return f"the message came from a mailing list ({header.name})"
    return None


def decide(
    message: Message,
    *,
    reason: str,
    days: int | None,
    subject: str | None,
    from_: str | None,
    extra_addresses: Iterable[str],
    mime: bool,
    handle: str | None,
    user_addresses: Iterable[str],
    min_days: int,
    max_days: int,
) -> Vacation | str:
    """A :class:`Vacation` to carry out, or the reason (a sentence) not to reply."""
    sender = message.envelope_from
    own = {address.lower() for address in user_addresses}
    own.update(address.lower() for address in extra_addresses)
    why = _skip_sender(sender)
    if why is None and sender.lower() in own:
        why = "the sender is the user"
    why = why or _skip_headers(message)
    if why is not None:
        return why
    matched = None
    for name in _RECIPIENT_HEADERS:
        for raw in message.raw_values(name):
            for address in addresses(raw):
                if address.lower() in own:
                    matched = address
                    break
            if matched:
                break
        if matched:
            break
    if matched is None:
        return "none of the user's addresses is in To, Cc or Bcc"
    wanted = DEFAULT_DAYS if days is None else days
    clamped = min(max(wanted, min_days, 1), max(max_days, min_days, 1))
    used_handle = handle if handle is not None else _handle(reason, subject, from_, mime)
    original_subject = (message.values("subject") or [""])[0]
    message_ids = message.values("message-id")
    references = " ".join([*message.values("references")[:1], *message_ids[:1]]).strip()
    return Vacation(
        recipient=sender,
        from_=from_ or matched,
        # RFC 5230 section 4.3: "Auto: " and the original subject by default.
        subject=subject if subject is not None else f"Auto: {original_subject}".rstrip(),
        reason=reason,
        mime=mime,
        days=clamped,
        handle=used_handle,
        key=reply_key(used_handle, sender),
        in_reply_to=message_ids[0] if message_ids else None,
        references=references or None,
    )


def _encode(value: str) -> str:
    # RFC 2047 for anything not plain ASCII; a CR or LF never reaches a header.
    value = " ".join(value.split())
    if value.isascii():
        return value
    return EncodedHeader(value, "utf-8").encode()


def compose_reply(action: Vacation, *, date: str, message_id: str) -> bytes:
    """The reply's octets (RFC 5230 section 5), to send with MAIL FROM:<>.

    ``date`` is an RFC 5322 date-time and ``message_id`` a ``<...>`` id,
    both from the caller. With ``:mime`` the reason is a MIME entity (its
    own headers, a blank line, its body, section 4.4); otherwise it is
    plain text, sent as UTF-8.
    """
    lines = [
        f"From: {_encode(action.from_)}",
        f"To: <{action.recipient}>",
        f"Subject: {_encode(action.subject)}",
        f"Date: {date}",
        f"Message-ID: {message_id}",
    ]
    if action.in_reply_to:
        lines.append(f"In-Reply-To: {_encode(action.in_reply_to)}")
    if action.references:
        lines.append(f"References: {_encode(action.references)}")
    # RFC 3834 section 5 and RFC 5230 section 5: mark the reply.
    lines.append("Auto-Submitted: auto-replied (vacation)")
    lines.append("MIME-Version: 1.0")
    reason = action.reason.replace("\r\n", "\n").replace("\n", "\r\n")
    if action.mime:
        head = "\r\n".join(lines) + "\r\n"
        if not reason.endswith("\r\n"):
            reason += "\r\n"
        return (head + reason).encode("utf-8", "surrogateescape")
    lines.append("Content-Type: text/plain; charset=utf-8")
    lines.append("Content-Transfer-Encoding: 8bit")
    if not reason.endswith("\r\n"):
        reason += "\r\n"
    return ("\r\n".join(lines) + "\r\n\r\n" + reason).encode("utf-8", "surrogateescape")
