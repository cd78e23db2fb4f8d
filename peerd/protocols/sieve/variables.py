"""RFC 5229 variables: ``${name}`` and ``${N}`` in strings, ``set`` modifiers.

How this works: :class:`Variables` holds one run's variables and the match
variables of the last successful ``:matches`` (section 3.2). :meth:`expand`
replaces each ``${...}`` with one regular expression whose body is a single
character class, so it is linear; a reference that is not a valid name is
left as written (section 3: "${" not followed by a valid name is not a
reference). Unknown names expand to "" (section 3). Values are cut at
``Limits.max_variable`` characters and expanded strings at
``Limits.max_string`` (section 6 allows truncation; a cut never splits a
character since these are Python strings).
"""

from __future__ import annotations

import re
from typing import Final

from .errors import SieveRuntimeError
from .limits import Limits
from .match import Budget

__all__ = ["MODIFIERS", "Variables", "apply_modifiers", "quote_wildcards"]

_REFERENCE: Final = re.compile(r"\$\{([A-Za-z0-9_.]*)\}")
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WILDCARD: Final = re.compile(r"([*?\\])")

MODIFIERS: Final = ("lower", "upper", "lowerfirst", "upperfirst", "quotewildcard", "length")


def quote_wildcards(value: str) -> str:
    """RFC 5229 section 4.1.2 ``:quotewildcard``: a backslash before ``*``, ``?`` and ``\\``."""
    return _WILDCARD.sub(r"\\\1", value)


def apply_modifiers(value: str, modifiers: tuple[str, ...]) -> str:
    """Apply ``set`` modifiers, already in precedence order (section 4.1)."""
    for modifier in modifiers:
        if modifier == "lower":
            value = value.lower()
        elif modifier == "upper":
            value = value.upper()
        elif modifier == "lowerfirst":
            value = value[:1].lower() + value[1:]
        elif modifier == "upperfirst":
            value = value[:1].upper() + value[1:]
        elif modifier == "quotewildcard":
            value = quote_wildcards(value)
        elif modifier == "length":
            value = str(len(value))
    return value


class Variables:
    def __init__(self, limits: Limits, budget: Budget) -> None:
        self.values: dict[str, str] = {}
        self.matches: list[str] = []
        self.limits = limits
        self.budget = budget

    def set(self, name: str, value: str, line: int = 0) -> None:
        name = name.lower()
        if name not in self.values and len(self.values) >= self.limits.max_variables:
            raise SieveRuntimeError(f"more than {self.limits.max_variables} variables", line)
        self.values[name] = value[: self.limits.max_variable]

    def get(self, name: str) -> str:
        return self.values.get(name.lower(), "")

    def set_matches(self, groups: list[str]) -> None:
        self.matches = [group[: self.limits.max_variable] for group in groups]

    def expand(self, text: str) -> str:
        if "${" not in text:
            return text
        self.budget.charge(len(text))

        cap = self.limits.max_string
        out: list[str] = []
        size = 0
        position = 0
        for match in _REFERENCE.finditer(text):
            name = match.group(1)
            if name.isascii() and name.isdigit():
                index = int(name) if len(name) < 6 else len(self.matches)
                value = self.matches[index] if index < len(self.matches) else ""
            elif _NAME.fullmatch(name):
                value = self.values.get(name.lower(), "")
            else:
                continue  # a namespace or not a name: left as written
            out.append(text[position : match.start()])
            out.append(value)
            size += match.start() - position + len(value)
            position = match.end()
            if size >= cap:
                break
        out.append(text[position:])
        result = "".join(out)[:cap]
        self.budget.charge(len(result))
        return result
