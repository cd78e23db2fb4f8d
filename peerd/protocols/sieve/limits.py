"""Caps on what a script may be and what running one may cost.

How this works: one frozen :class:`Limits` value travels with parsing
(:func:`~.parser.parse`) and evaluation (:func:`~.interpreter.evaluate`).
Parse limits refuse a script with :class:`~.errors.ScriptTooBig` naming the
line; the evaluation budget (``max_work``) turns a hostile script into an
implicit keep (RFC 5228 section 2.10.6) instead of a busy CPU. Sieve has no
loops, so the work is the matching: every character a comparison scans and
every candidate position a ``:matches`` pattern tries is charged
(:class:`~.match.Budget`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_LIMITS", "Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    # The script as uploaded, in octets (ManageSieve's MAXSCRIPTSIZE-like cap).
    max_script_size: int = 256 * 1024
    # Blocks and tests nested in each other; also bounds the parser's recursion.
    max_depth: int = 32
    # Commands and tests in the whole script.
    max_commands: int = 5000
    # One string (quoted or text:), after escapes, in characters.
    max_string: int = 64 * 1024
    # Strings in one string list.
    max_list: int = 1024
    # RFC 5229 section 6: a variable's value may be truncated (on a character
    # boundary); this is the cap, in characters.
    max_variable: int = 4096
    # Distinct variables one run may set.
    max_variables: int = 256
    # Evaluation budget, in units of about one character compared; a Python
    # step (one :matches candidate, one command) costs MATCH_STEP_COST.
    max_work: int = 50_000_000
    # Redirects one run may make (RFC 5228 section 4.2 asks for a cap; the
    # ManageSieve capability MAXREDIRECTS announces it, RFC 5804 section 1.7).
    max_redirects: int = 5

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer")


DEFAULT_LIMITS: Final = Limits()
