"""What a script decided for one message: frozen values the delivery side carries out.

How this works: :func:`~.interpreter.evaluate` returns a :class:`Result`
whose ``actions`` are already final: duplicates collapsed (RFC 5228 section
2.10.3), incompatible ones refused, and the implicit keep (section 2.10.2)
present as a :class:`Keep` with ``implicit=True`` when nothing cancelled it.
The delivery side walks the tuple in order:

- :class:`Keep`: store in INBOX with ``flags``.
- :class:`FileInto`: store in ``mailbox`` with ``flags`` (a missing mailbox
  is the service's choice: RFC 5228 section 4.1 lets it fall back to INBOX).
- :class:`Redirect`: send the message, unchanged, to ``address`` through the
  relay (the envelope sender stays the original one, RFC 5228 section 4.2).
- :class:`Reject`: refuse this recipient; for LMTP a ``550`` for this
  recipient only, with ``reason`` (RFC 5429 section 2.1 prefers a protocol
  level refusal for both ``reject`` and ``ereject``).
- :class:`Vacation`: unless the reply-once record for ``key`` is younger
  than ``days``, send the reply (:func:`~.vacation.compose_reply`) with
  the null return path and store the record (RFC 5230 section 4.2).
- :class:`Discard`: nothing; it only cancelled the implicit keep.

A :class:`Reject` never comes with a Keep, FileInto, Redirect or Vacation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from .errors import SieveError

__all__ = ["Action", "Discard", "FileInto", "Keep", "Redirect", "Reject", "Result", "Vacation"]

INBOX = "INBOX"


@dataclass(frozen=True, slots=True)
class Keep:
    """Deliver to INBOX; ``implicit`` when no action cancelled the implicit keep."""

    flags: tuple[str, ...] = ()
    implicit: bool = False


@dataclass(frozen=True, slots=True)
class FileInto:
    mailbox: str
    flags: tuple[str, ...] = ()
    copy: bool = False
    # RFC 5490 section 3.2: create the mailbox first if it is missing.
    create: bool = False

    def __post_init__(self) -> None:
        if not self.mailbox:
            raise ValueError("fileinto needs a mailbox name")


@dataclass(frozen=True, slots=True)
class Discard:
    pass


@dataclass(frozen=True, slots=True)
class Redirect:
    address: str
    copy: bool = False

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("redirect needs an address")


@dataclass(frozen=True, slots=True)
class Reject:
    """RFC 5429: ``extended`` for ereject; the service answers LMTP 550 with ``reason``."""

    reason: str
    extended: bool = False


@dataclass(frozen=True, slots=True)
class Vacation:
    """RFC 5230: a reply to ``recipient`` at most once per ``days`` per ``key``.

    ``key`` is the reply-once record's name: a hash of ``handle`` (the
    script's ``:handle``, or a hash of reason, subject, from and mime when
    it gave none, section 4.2) and the sender. ``from_`` is the reply's
    From (the script's ``:from`` or the user's address the message came to).
    """

    recipient: str
    from_: str
    subject: str
    reason: str
    mime: bool
    days: int
    handle: str
    key: str
    in_reply_to: str | None = None
    references: str | None = None

    def __post_init__(self) -> None:
        if self.days < 1:
            raise ValueError("vacation days must be at least 1")


Action: TypeAlias = Keep | FileInto | Discard | Redirect | Reject | Vacation


@dataclass(frozen=True, slots=True)
class Result:
    actions: tuple[Action, ...]
    # A runtime error (RFC 5228 section 2.10.6): the actions are then only
    # the implicit keep, and this says why, for the log.
    error: SieveError | None = None
    # Why a vacation action sent nothing (RFC 5230 sections 4.5, 4.6), for the log.
    vacation_skipped: str | None = None

    @property
    def rejected(self) -> Reject | None:
        return next((a for a in self.actions if isinstance(a, Reject)), None)

    @property
    def implicit_keep(self) -> bool:
        return any(isinstance(a, Keep) and a.implicit for a in self.actions)
