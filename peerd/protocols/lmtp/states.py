"""The LMTP session states, which commands each accepts, and where each step leads.

How this works: three tables. :data:`ALLOWED` maps each :class:`State` to
the commands valid in it; :data:`REFUSALS` gives the ``503`` (bad sequence,
RFC 5321 4.2.4) for a known command given at the wrong time; and
:data:`NEXT` maps a state and a :class:`Step` (a command accepted, or the
server's answer to one) to the next state. :func:`advance` is the only way
the connection changes state, so a move the table does not hold is a bug
that raises, never a silent jump::

    GREETED --LHLO--> READY --MAIL--> SENDER --RCPT ok--> RECIPIENTS
       ^                ^  \\                                  |  ^ RCPT ok
       |                |   STARTTLS                          DATA
       |   TLS_STARTED  |     v                                v
       +--------------- | TLS_HANDSHAKE                      DATA (the message)
                        |                                      | end of data
                        +------- ANSWERED ------------- DELIVERING

    LHLO and RSET from READY, SENDER or RECIPIENTS go to READY (RFC 5321
    4.1.4: LHLO, like EHLO, resets the transaction); QUIT and a fatal error
    go to CLOSED from anywhere.

In DATA, DELIVERING, TLS_HANDSHAKE and CLOSED no command line is read: in
DATA the bytes are the message; in DELIVERING and TLS_HANDSHAKE the server
owes the next step; after TLS_HANDSHAKE the session starts over from
GREETED (RFC 3207 4.2: all knowledge from before TLS is discarded).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from .commands import Command, Data, Help, Lhlo, Mail, Noop, Quit, Rcpt, Rset, StartTls, Vrfy
from .replies import (
    S503_BAD_SEQUENCE,
    S503_IN_TRANSACTION,
    S503_NEED_LHLO,
    S503_NEED_MAIL,
    S503_NEED_RCPT,
    S503_NESTED_MAIL,
)

__all__ = ["ALLOWED", "NEXT", "REFUSALS", "State", "Step", "advance", "refusal"]


class State(enum.Enum):
    GREETED = "greeted"  # connected, or TLS just started: LHLO first
    READY = "ready"  # LHLO given; no transaction
    SENDER = "sender"  # MAIL accepted
    RECIPIENTS = "recipients"  # one RCPT or more accepted
    DATA = "data"  # reading the message, after 354
    DELIVERING = "delivering"  # the message is read; the server owes a reply per recipient
    TLS_HANDSHAKE = "tls handshake"  # 220 sent; the server owes the handshake
    CLOSED = "closed"  # the last reply is queued; nothing more is read


class Step(enum.Enum):
    LHLO = "lhlo"
    RSET = "rset"
    MAIL = "mail"
    RCPT_ACCEPTED = "rcpt accepted"
    DATA = "data"
    END_OF_DATA = "end of data"
    ANSWERED = "answered"  # every recipient has its reply for the message
    STARTTLS = "starttls"
    TLS_STARTED = "tls started"
    CLOSE = "close"


# The commands any state that reads commands accepts (RFC 5321 4.1.4: RSET,
# NOOP, QUIT, VRFY and HELP "may be issued at any time").
_ANYTIME: Final = frozenset({Lhlo, Rset, Noop, Quit, Vrfy, Help})

ALLOWED: Final[Mapping[State, frozenset[type[Command]]]] = MappingProxyType(
    {
        State.GREETED: _ANYTIME,
        # RFC 3207 4: STARTTLS after LHLO, before a transaction.
        State.READY: _ANYTIME | {Mail, StartTls},
        State.SENDER: _ANYTIME | {Rcpt},
        # RFC 2033 4.2: DATA only once a recipient was accepted.
        State.RECIPIENTS: _ANYTIME | {Rcpt, Data},
        State.DATA: frozenset(),
        State.DELIVERING: frozenset(),
        State.TLS_HANDSHAKE: frozenset(),
        State.CLOSED: frozenset(),
    }
)

REFUSALS: Final[Mapping[State, Mapping[type[Command], str]]] = MappingProxyType(
    {
        State.GREETED: {
            Mail: S503_NEED_LHLO,
            Rcpt: S503_NEED_LHLO,
            Data: S503_NEED_LHLO,
            StartTls: S503_NEED_LHLO,
        },
        State.READY: {Rcpt: S503_NEED_MAIL, Data: S503_NEED_MAIL},
        State.SENDER: {Mail: S503_NESTED_MAIL, Data: S503_NEED_RCPT, StartTls: S503_IN_TRANSACTION},
        State.RECIPIENTS: {Mail: S503_NESTED_MAIL, StartTls: S503_IN_TRANSACTION},
    }
)

_RESETTABLE: Final = (State.READY, State.SENDER, State.RECIPIENTS)

NEXT: Final[Mapping[tuple[State, Step], State]] = MappingProxyType(
    {
        (State.GREETED, Step.LHLO): State.READY,
        (State.GREETED, Step.RSET): State.GREETED,
        **{(state, Step.LHLO): State.READY for state in _RESETTABLE},
        **{(state, Step.RSET): State.READY for state in _RESETTABLE},
        (State.READY, Step.MAIL): State.SENDER,
        (State.SENDER, Step.RCPT_ACCEPTED): State.RECIPIENTS,
        (State.RECIPIENTS, Step.RCPT_ACCEPTED): State.RECIPIENTS,
        (State.RECIPIENTS, Step.DATA): State.DATA,
        (State.DATA, Step.END_OF_DATA): State.DELIVERING,
        (State.DELIVERING, Step.ANSWERED): State.READY,
        (State.READY, Step.STARTTLS): State.TLS_HANDSHAKE,
        (State.TLS_HANDSHAKE, Step.TLS_STARTED): State.GREETED,
        **{(state, Step.CLOSE): State.CLOSED for state in State},
    }
)


def advance(state: State, step: Step) -> State:
    """The state after ``step``; RuntimeError for a move the table does not hold."""
    try:
        return NEXT[state, step]
    except KeyError:
        raise RuntimeError(f"no LMTP step {step.value!r} from state {state.value!r}") from None


def refusal(state: State, command: Command) -> str | None:
    """None if ``command`` may run in ``state``, else the reply that refuses it."""
    kind = type(command)
    if kind in ALLOWED[state]:
        return None
    return REFUSALS.get(state, {}).get(kind, S503_BAD_SEQUENCE)
