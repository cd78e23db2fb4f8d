"""Sieve for peerd (RFC 5228 and extensions): parse, validate, evaluate; no I/O.

Why peerd has its own: the maintained Sieve package on PyPI, ``sievelib``
(1.6.0), was judged first. It parses and generates scripts for a client (and
speaks ManageSieve as a client) but does not evaluate a script against a
message, which is what delivery needs; it keeps parser state in a module
global, ships no type information, knows neither ``ereject`` nor the
``string`` test, and has no caps on script size, nesting or work. Adding an
evaluator, limits and the missing extensions would have meant writing most
of this anyway, on top of a parser we could not bound.

The pieces, each a module:

- :mod:`.parser`: text to :mod:`.tree` (RFC 5228 section 8 grammar), capped
  by :class:`.limits.Limits`.
- :mod:`.validate`: tree to :class:`.program.Program`; the table of
  commands, tests and tags, and ``require`` checks. :data:`SUPPORTED`.
- :mod:`.interpreter`: :func:`evaluate` a program against a
  :class:`.message.Message`, giving a :class:`.actions.Result`.
- :mod:`.match`: comparators and match types, ``:matches`` without
  backtracking, the work :class:`~.match.Budget`.
- :mod:`.variables`, :mod:`.address`, :mod:`.vacation`: RFC 5229, address
  parts, RFC 5230 rules and the reply.
- :mod:`.errors`: the error tree.

How the delivery side uses it (the LMTP worker, later)::

    program = compile_script(script_bytes)            # cache by script hash
    message = Message.from_bytes(data, mail_from, rcpt_to)
    result = evaluate(program, message, Context(user_addresses=("bob@example.org",)))
    if result.rejected:  -> LMTP 550 for this recipient only, result.rejected.reason
    for action in result.actions: Keep / FileInto / Redirect / Vacation / Discard
    result.error is not None: the script failed; actions are the implicit keep, log it

and ManageSieve calls :func:`compile_script` on PUTSCRIPT and CHECKSCRIPT,
answering a :class:`ScriptError` with its text (it names the line).
"""

from __future__ import annotations

from .actions import Action, Discard, FileInto, Keep, Redirect, Reject, Result, Vacation
from .errors import (
    ActionConflict,
    ExtensionError,
    ScriptError,
    ScriptTooBig,
    SieveError,
    SieveRuntimeError,
    SieveSyntaxError,
    ValidationError,
    WorkLimitExceeded,
)
from .interpreter import Context, evaluate
from .limits import DEFAULT_LIMITS, Limits
from .message import BodyPart, Header, Message
from .parser import parse
from .program import Program
from .vacation import compose_reply, reply_key
from .validate import SUPPORTED, compile_script, validate

__all__ = [
    "DEFAULT_LIMITS",
    "SUPPORTED",
    "Action",
    "ActionConflict",
    "BodyPart",
    "Context",
    "Discard",
    "ExtensionError",
    "FileInto",
    "Header",
    "Keep",
    "Limits",
    "Message",
    "Program",
    "Redirect",
    "Reject",
    "Result",
    "ScriptError",
    "ScriptTooBig",
    "SieveError",
    "SieveRuntimeError",
    "SieveSyntaxError",
    "Vacation",
    "ValidationError",
    "WorkLimitExceeded",
    "compile_script",
    "compose_reply",
    "evaluate",
    "parse",
    "reply_key",
    "validate",
]
