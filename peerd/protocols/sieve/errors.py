"""The Sieve core's errors: one tree, each class with a stable ``code``.

How this works: everything the parser, the validator and the interpreter
refuse is a :class:`SieveError`; nothing else escapes them (a Hypothesis test
feeds arbitrary bytes to check that). Compile-time errors name the script
line, so ManageSieve can answer ``NO "line 3: ..."`` (RFC 5804 section 2.6)::

    SieveError                    code "sieve"
    ├── ScriptError               code "script"      the script is refused; .line
    │   ├── SieveSyntaxError      code "syntax"      not RFC 5228 section 8 grammar
    │   ├── ScriptTooBig          code "limit"       a parse limit was passed (Limits)
    │   └── ValidationError       code "invalid"     grammar fine, meaning not (section 2.7.1)
    │       └── ExtensionError    code "extension"   unknown capability, or used without require
    └── SieveRuntimeError         code "runtime"     evaluation failed (section 2.10.6)
        ├── WorkLimitExceeded     code "work-limit"  the evaluation budget ran out
        └── ActionConflict        code "conflict"    incompatible actions (reject with keep, ...)

A runtime error never reaches the caller of :func:`~.interpreter.evaluate`:
RFC 5228 section 2.10.6 says the message is then kept, so ``evaluate``
returns an implicit keep and carries the error in ``Result.error`` for the log.
"""

from __future__ import annotations

__all__ = [
    "ActionConflict",
    "ExtensionError",
    "ScriptError",
    "ScriptTooBig",
    "SieveError",
    "SieveRuntimeError",
    "SieveSyntaxError",
    "ValidationError",
    "WorkLimitExceeded",
]


class SieveError(Exception):
    code = "sieve"


class ScriptError(SieveError):
    """The script cannot be run; ``line`` is 1-based (0: the script as a whole)."""

    code = "script"

    def __init__(self, message: str, line: int = 0) -> None:
        self.message = message
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


class SieveSyntaxError(ScriptError):
    code = "syntax"


class ScriptTooBig(ScriptError):
    code = "limit"


class ValidationError(ScriptError):
    code = "invalid"


class ExtensionError(ValidationError):
    code = "extension"


class SieveRuntimeError(SieveError):
    code = "runtime"

    def __init__(self, message: str, line: int = 0) -> None:
        self.message = message
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


class WorkLimitExceeded(SieveRuntimeError):
    code = "work-limit"


class ActionConflict(SieveRuntimeError):
    code = "conflict"
