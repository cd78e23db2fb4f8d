"""LIST and LSUB mailbox patterns (RFC 3501 6.3.8), matched in linear time.

How this works: :func:`compile_pattern` joins the reference and the pattern
(RFC 3501 6.3.8: with no break-out characters the canonical form is the
reference with the pattern appended), refuses patterns over the limits with
:class:`PatternLimit` (``NO [LIMIT]``, RFC 5530), collapses runs of wildcards
(``**``, ``*%`` and ``%*`` are ``*``; ``%%`` is ``%``) and builds a
bit-parallel automaton: bit ``i`` of the state means "the first ``i`` pattern
tokens match the name read so far". Each character of a name costs a few
integer operations on that state (one bit per pattern token), so a match is
O(len(name) x len(pattern) / word size) at worst, with no backtracking: the
pattern ``*a*a*a*b`` against a 999-character name takes microseconds where a
backtracking regex took minutes.

Matching rules:

- ``*`` matches zero or more characters; ``%`` matches zero or more
  characters other than the hierarchy delimiter ``/`` (RFC 3501 6.3.8).
- Everything else matches itself, case-sensitively, except the ``INBOX``
  level: a name whose first level is ``INBOX`` (RFC 3501 5.1: the name is
  case-insensitive) has those five characters matched without case, so
  ``inbox``, ``In%`` and ``*x`` all match ``INBOX``, and ``inbox/%`` matches
  ``INBOX/Sent``; other levels keep their case (``inbox/sent`` does not).

:meth:`Pattern.matches_below` answers "could any mailbox below this name
match?" (RFC 5258 RECURSIVEMATCH, LSUB's ``\\Noselect`` parents, or pruning a
walk of a deep hierarchy): it runs the same automaton over ``name + "/"`` and
says whether any state survives.

Pure: no I/O, nothing of the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from peerd.protocols.imap.responses import CODE_LIMIT, CommandError

__all__ = [
    "DELIMITER",
    "MAX_PATTERN",
    "MAX_PATTERNS",
    "MAX_WILDCARDS",
    "Pattern",
    "PatternLimit",
    "compile_pattern",
    "join",
    "matches",
]

DELIMITER: Final = "/"
# Mailbox names are at most 1000 characters (engine.limits.MAX_MAILBOX_NAME); a
# pattern is the reference and the pattern joined, with room for wildcards.
MAX_PATTERN: Final = 1024
MAX_WILDCARDS: Final = 64
# Patterns in one LIST (RFC 5258 3: a list of them). Each is matched against
# every name: without a cap, one 64 KiB command of 6,500 patterns over 400
# deep names kept a core busy for minutes, after the client had gone.
MAX_PATTERNS: Final = 16

_INBOX: Final = "INBOX"


class PatternLimit(CommandError):
    """A pattern over :data:`MAX_PATTERN` characters or :data:`MAX_WILDCARDS`
    wildcards: the command gets ``NO [LIMIT]`` (RFC 5530 3)."""

    def __init__(self, text: str) -> None:
        super().__init__(text, code=CODE_LIMIT, status="NO")


def join(reference: str, pattern: str) -> str:
    """The canonical form of ``reference`` and ``pattern`` (RFC 3501 6.3.8).

    peerd has no break-out characters and one namespace with the prefix
    ``""``, so this is the reference with the pattern appended ("the
    canonical form is normally the reference name appended with the mailbox
    name"). An empty pattern asks for the delimiter and is the caller's to
    answer before matching.
    """
    return reference + pattern


def _tokens(text: str) -> str:
    """``text`` with each run of wildcards collapsed to one: ``*`` if the run
    holds a ``*``, else ``%``. After this no two wildcards are adjacent, so
    one shift closes the automaton's state under the empty moves."""
    out: list[str] = []
    run = ""
    for ch in text:
        if ch in "*%":
            run = "*" if ch == "*" or run == "*" else "%"
            continue
        if run:
            out.append(run)
            run = ""
        out.append(ch)
    if run:
        out.append(run)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Pattern:
    """A compiled pattern; build it with :func:`compile_pattern`."""

    text: str  # the joined pattern as the client sent it
    tokens: str  # wildcard runs collapsed
    _literal: dict[str, int] = field(repr=False, compare=False)  # char -> token positions
    _star: int = field(repr=False, compare=False)
    _percent: int = field(repr=False, compare=False)
    _accept: int = field(repr=False, compare=False)
    _prefix: str = field(repr=False, compare=False)  # literal text before the first wildcard
    _suffix: str = field(repr=False, compare=False)  # literal text after the last wildcard

    def matches(self, name: str) -> bool:
        """Whether ``name`` matches the pattern (RFC 3501 6.3.8)."""
        tokens = self.tokens
        if tokens == "*":
            return True
        if tokens == "%":
            return DELIMITER not in name
        if not _first_level_is_inbox(name):
            # Cheap refusals first: the literal ends must match as they are.
            if not name.startswith(self._prefix) or not name.endswith(self._suffix):
                return False
            if len(self._prefix) == len(tokens):  # no wildcard at all
                return name == tokens
        return bool(self._step_all(name) & self._accept)

    def matches_below(self, name: str) -> bool:
        """False when no mailbox below ``name`` can match; True when one may.

        Runs the automaton over ``name`` and the delimiter: any surviving
        state can still reach the end of the pattern with some suffix, so a
        False answer is exact and lets a caller skip a whole subtree.
        """
        return bool(self._step_all(name + DELIMITER))

    def _step_all(self, name: str) -> int:
        literal = self._literal
        star = self._star
        wild = star | self._percent
        state = 1 | ((1 & wild) << 1)
        inbox_end = len(_INBOX) if _first_level_is_inbox(name) else 0
        for ch in name[:inbox_end]:
            hits = literal.get(ch.upper(), 0) | literal.get(ch.lower(), 0)
            state = ((state & hits) << 1) | (state & wild)
            state |= (state & wild) << 1
        get = literal.get
        for ch in name[inbox_end:] if inbox_end else name:
            if ch == DELIMITER:
                state = ((state & get(ch, 0)) << 1) | (state & star)
            else:
                state = ((state & get(ch, 0)) << 1) | (state & wild)
            if not state:
                return 0
            state |= (state & wild) << 1
        return state


def _first_level_is_inbox(name: str) -> bool:
    # ASCII case only: "\u0131nbox".upper() is "INBOX" too (see commands.is_inbox).
    first, after = name[: len(_INBOX)], name[len(_INBOX) : len(_INBOX) + 1]
    return first.isascii() and first.upper() == _INBOX and after in ("", DELIMITER)


def compile_pattern(reference: str, pattern: str) -> Pattern:
    """The pattern ``reference`` + ``pattern``, checked against the limits.

    Raises :class:`PatternLimit` for a pattern over :data:`MAX_PATTERN`
    characters or with more than :data:`MAX_WILDCARDS` wildcards.
    """
    text = join(reference, pattern)
    if len(text) > MAX_PATTERN:
        raise PatternLimit(f"mailbox pattern longer than {MAX_PATTERN} characters")
    if text.count("*") + text.count("%") > MAX_WILDCARDS:
        raise PatternLimit(f"mailbox pattern with more than {MAX_WILDCARDS} wildcards")
    tokens = _tokens(text)
    literal: dict[str, int] = {}
    star = percent = 0
    for at, ch in enumerate(tokens):
        bit = 1 << at
        if ch == "*":
            star |= bit
        elif ch == "%":
            percent |= bit
        else:
            literal[ch] = literal.get(ch, 0) | bit
    first = min((tokens.find(w) for w in "*%" if w in tokens), default=len(tokens))
    last = max(tokens.rfind("*"), tokens.rfind("%"))
    return Pattern(
        text=text,
        tokens=tokens,
        _literal=literal,
        _star=star,
        _percent=percent,
        _accept=1 << len(tokens),
        _prefix=tokens[:first],
        _suffix=tokens[last + 1 :] if last >= 0 else "",
    )


def matches(reference: str, pattern: str, name: str) -> bool:
    """Whether ``name`` matches ``pattern`` under ``reference`` (one-off use;
    compile once with :func:`compile_pattern` to test many names)."""
    return compile_pattern(reference, pattern).matches(name)
