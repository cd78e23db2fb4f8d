"""Syntax tree to :class:`~.program.Program`: arguments, tag groups and ``require`` checked.

How this works: :data:`_COMMANDS` and :data:`_TESTS` are the table of what
peerd runs: for each name, the capability it needs, the tags it takes (each
in a group, so ``:is :contains`` together is refused), its positional
arguments and whether it takes tests. :func:`validate` walks the tree once,
binds every node's arguments against its row, checks each use of an
extension against the script's ``require`` (RFC 5228 section 3.2: using an
extension that was not required is an error), and builds the program.
Every refusal is a :class:`~.errors.ValidationError` (or its
:class:`~.errors.ExtensionError`) naming the line.

:data:`SUPPORTED` lists the capabilities; the ManageSieve core announces
them in its ``SIEVE`` capability (RFC 5804 section 1.7).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from . import program as p
from . import tree as t
from .errors import ExtensionError, ValidationError
from .limits import DEFAULT_LIMITS, Limits
from .match import ASCII_CASEMAP, ASCII_NUMERIC, COMPARATORS, OCTET, RELATIONS
from .parser import parse

__all__ = ["SUPPORTED", "compile_script", "validate"]

# RFC 5228 section 6 and the extensions' RFCs, in the order announced.
SUPPORTED: Final = (
    "fileinto",  # RFC 5228 section 4.1
    "envelope",  # RFC 5228 section 5.4
    "encoded-character",  # RFC 5228 section 2.4.2.4
    "reject",  # RFC 5429
    "ereject",  # RFC 5429
    "vacation",  # RFC 5230
    "imap4flags",  # RFC 5232
    "copy",  # RFC 3894
    "mailbox",  # RFC 5490 section 3 (fileinto :create, mailboxexists)
    "body",  # RFC 5173
    "variables",  # RFC 5229
    "relational",  # RFC 5231
    "subaddress",  # RFC 5233
    "comparator-i;ascii-numeric",  # RFC 4790 section 9.1
    "comparator-i;octet",  # always on (RFC 5228 section 2.7.3); accepted in require
    "comparator-i;ascii-casemap",
)

_STRING: Final = "string"
_STRINGS: Final = "string-list"
_NUMBER: Final = "number"

_VARIABLE_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# RFC 5228 section 2.4.2.4; each is one character class run: no backtracking.
_ENCODED: Final = re.compile(r"\$\{(hex|unicode):([ \t\r\n0-9A-Fa-f]*)\}", re.IGNORECASE)
_DETAIL_SEPARATOR: Final = "+"


@dataclass(frozen=True, slots=True)
class _TagRule:
    group: str
    argument: str | None = None  # None, _STRING, _STRINGS or _NUMBER
    extension: str | None = None


@dataclass(frozen=True, slots=True)
class _Rule:
    extension: str | None = None
    tags: Mapping[str, _TagRule] = field(default_factory=dict)
    positional: tuple[str, ...] = ()
    # A first positional argument that may be left out (imap4flags' variable).
    optional_first: str | None = None
    optional_extension: str | None = None
    tests: str = "none"  # none, one, list
    required_groups: tuple[str, ...] = ()


_MATCH_TAGS: Final = {
    "is": _TagRule("match"),
    "contains": _TagRule("match"),
    "matches": _TagRule("match"),
    "count": _TagRule("match", _STRING, "relational"),
    "value": _TagRule("match", _STRING, "relational"),
    "comparator": _TagRule("comparator", _STRING),
}
_ADDRESS_TAGS: Final = {
    **_MATCH_TAGS,
    "all": _TagRule("address-part"),
    "localpart": _TagRule("address-part"),
    "domain": _TagRule("address-part"),
    "user": _TagRule("address-part", None, "subaddress"),
    "detail": _TagRule("address-part", None, "subaddress"),
}

_COMMANDS: Final[Mapping[str, _Rule]] = {
    "stop": _Rule(),
    "keep": _Rule(tags={"flags": _TagRule("flags", _STRINGS, "imap4flags")}),
    "discard": _Rule(),
    "fileinto": _Rule(
        "fileinto",
        {
            "copy": _TagRule("copy", None, "copy"),
            "flags": _TagRule("flags", _STRINGS, "imap4flags"),
            "create": _TagRule("create", None, "mailbox"),
        },
        (_STRING,),
    ),
    "redirect": _Rule(tags={"copy": _TagRule("copy", None, "copy")}, positional=(_STRING,)),
    "reject": _Rule("reject", positional=(_STRING,)),
    "ereject": _Rule("ereject", positional=(_STRING,)),
    "vacation": _Rule(
        "vacation",
        {
            "days": _TagRule("days", _NUMBER),
            "subject": _TagRule("subject", _STRING),
            "from": _TagRule("from", _STRING),
            "addresses": _TagRule("addresses", _STRINGS),
            "mime": _TagRule("mime"),
            "handle": _TagRule("handle", _STRING),
        },
        (_STRING,),
    ),
    "setflag": _Rule(
        "imap4flags", positional=(_STRINGS,), optional_first=_STRING, optional_extension="variables"
    ),
    "addflag": _Rule(
        "imap4flags", positional=(_STRINGS,), optional_first=_STRING, optional_extension="variables"
    ),
    "removeflag": _Rule(
        "imap4flags", positional=(_STRINGS,), optional_first=_STRING, optional_extension="variables"
    ),
    "set": _Rule(
        "variables",
        {
            # RFC 5229 section 4.1: one modifier per precedence level.
            "lower": _TagRule("precedence-40"),
            "upper": _TagRule("precedence-40"),
            "lowerfirst": _TagRule("precedence-30"),
            "upperfirst": _TagRule("precedence-30"),
            "quotewildcard": _TagRule("precedence-20"),
            "length": _TagRule("precedence-10"),
        },
        (_STRING, _STRING),
    ),
}

_TESTS: Final[Mapping[str, _Rule]] = {
    "true": _Rule(),
    "false": _Rule(),
    "not": _Rule(tests="one"),
    "allof": _Rule(tests="list"),
    "anyof": _Rule(tests="list"),
    "address": _Rule(tags=_ADDRESS_TAGS, positional=(_STRINGS, _STRINGS)),
    "envelope": _Rule("envelope", _ADDRESS_TAGS, (_STRINGS, _STRINGS)),
    "header": _Rule(tags=_MATCH_TAGS, positional=(_STRINGS, _STRINGS)),
    "exists": _Rule(positional=(_STRINGS,)),
    "size": _Rule(
        tags={"over": _TagRule("size", _NUMBER), "under": _TagRule("size", _NUMBER)},
        required_groups=("size",),
    ),
    "body": _Rule(
        "body",
        {
            **_MATCH_TAGS,
            "raw": _TagRule("transform"),
            "text": _TagRule("transform"),
            "content": _TagRule("transform", _STRINGS),
        },
        (_STRINGS,),
    ),
    "string": _Rule("variables", _MATCH_TAGS, (_STRINGS, _STRINGS)),
    "mailboxexists": _Rule("mailbox", positional=(_STRINGS,)),
    "hasflag": _Rule(
        "imap4flags",
        _MATCH_TAGS,
        (_STRINGS,),
        optional_first=_STRINGS,
        optional_extension="variables",
    ),
}

_ENVELOPE_PARTS: Final = frozenset({"from", "to"})


@dataclass(slots=True)
class _Bound:
    tags: dict[str, tuple[str, t.Argument | None]]  # group -> (tag name, its argument)
    positional: list[t.Argument]


def _kind_ok(argument: t.Argument, kind: str) -> bool:
    if kind == _STRING:
        return isinstance(argument, t.String)
    if kind == _STRINGS:
        return isinstance(argument, (t.String, t.StringList))
    return isinstance(argument, t.Number)


def _describe(argument: t.Argument) -> str:
    if isinstance(argument, t.Tag):
        return f"tag :{argument.name}"
    if isinstance(argument, t.Number):
        return "a number"
    if isinstance(argument, t.StringList):
        return "a string list"
    return "a string"


class _Validator:
    def __init__(self, extensions: Iterable[str], limits: Limits) -> None:
        self.available = frozenset(name.lower() for name in extensions)
        self.required: set[str] = set()
        self.limits = limits

    # -- extensions -----------------------------------------------------

    def _need(self, extension: str | None, what: str, line: int) -> None:
        if extension is not None and extension not in self.required:
            raise ExtensionError(f'{what} needs require "{extension}"', line)

    def _require(self, command: t.Command) -> None:
        if (
            len(command.arguments) != 1
            or command.tests
            or command.block is not None
            or not isinstance(command.arguments[0], (t.String, t.StringList))
        ):
            raise ValidationError("require takes one string list of capabilities", command.line)
        argument = command.arguments[0]
        names = (argument.value,) if isinstance(argument, t.String) else argument.values
        for name in names:
            if name.lower() not in self.available:
                raise ExtensionError(f"unsupported extension {name!r}", command.line)
            self.required.add(name.lower())

    # -- strings ----------------------------------------------------------

    def _text(self, value: str, line: int) -> str:
        if "encoded-character" not in self.required or "${" not in value:
            return value
        return _ENCODED.sub(lambda m: _decode_encoded(m, line), value)

    def _string(self, argument: t.Argument | None) -> str:
        assert isinstance(argument, t.String)
        return self._text(argument.value, argument.line)

    def _strings(self, argument: t.Argument | None) -> tuple[str, ...]:
        if isinstance(argument, t.String):
            return (self._text(argument.value, argument.line),)
        assert isinstance(argument, t.StringList)
        return tuple(self._text(value, argument.line) for value in argument.values)

    # -- binding ----------------------------------------------------------

    def _bind(self, name: str, rule: _Rule, node: t.Command | t.Test) -> _Bound:
        self._need(rule.extension, name, node.line)
        tags: dict[str, tuple[str, t.Argument | None]] = {}
        positional: list[t.Argument] = []
        arguments = node.arguments
        index = 0
        while index < len(arguments):
            argument = arguments[index]
            index += 1
            if not isinstance(argument, t.Tag):
                positional.append(argument)
                continue
            if positional:
                # RFC 5228 section 2.6.2: tagged arguments come before positional ones.
                raise ValidationError(
                    f"{name}: tag :{argument.name} after a positional argument", argument.line
                )
            tag_rule = rule.tags.get(argument.name)
            if tag_rule is None:
                raise ValidationError(f"{name} has no tag :{argument.name}", argument.line)
            self._need(tag_rule.extension, f":{argument.name}", argument.line)
            if tag_rule.group in tags:
                other = tags[tag_rule.group][0]
                raise ValidationError(
                    f"{name}: :{argument.name} cannot be used with :{other}"
                    if other != argument.name
                    else f"{name}: :{argument.name} given twice",
                    argument.line,
                )
            value: t.Argument | None = None
            if tag_rule.argument is not None:
                if index >= len(arguments) or not _kind_ok(arguments[index], tag_rule.argument):
                    raise ValidationError(
                        f"{name}: :{argument.name} needs {tag_rule.argument}", argument.line
                    )
                value = arguments[index]
                index += 1
            tags[tag_rule.group] = (argument.name, value)
        for group in rule.required_groups:
            if group not in tags:
                wanted = " or ".join(f":{tag}" for tag, r in rule.tags.items() if r.group == group)
                raise ValidationError(f"{name} needs {wanted}", node.line)
        kinds = rule.positional
        if rule.optional_first is not None and len(positional) == len(kinds) + 1:
            self._need(rule.optional_extension, f"{name} with a variable", node.line)
            kinds = (rule.optional_first, *kinds)
        if len(positional) != len(kinds):
            raise ValidationError(
                f"{name} takes {len(kinds)} positional argument{'s' if len(kinds) != 1 else ''},"
                f" not {len(positional)}",
                node.line,
            )
        for argument, kind in zip(positional, kinds, strict=True):
            if not _kind_ok(argument, kind):
                raise ValidationError(
                    f"{name}: expected {kind}, found {_describe(argument)}", argument.line
                )
        tests = node.tests
        if rule.tests == "none" and tests:
            raise ValidationError(f"{name} takes no test", node.line)
        if rule.tests == "one" and (len(tests) != 1 or node.test_list):
            raise ValidationError(f"{name} takes one test", node.line)
        if rule.tests == "list" and not node.test_list:
            raise ValidationError(f"{name} takes a test list in parentheses", node.line)
        return _Bound(tags, positional)

    def _match(self, name: str, bound: _Bound, line: int) -> p.Match:
        match_type, relation = "is", None
        if "match" in bound.tags:
            match_type, argument = bound.tags["match"]
            if argument is not None:
                relation = self._string(argument).lower()
                if relation not in RELATIONS:
                    raise ValidationError(
                        f"{name}: relation must be one of {', '.join(sorted(RELATIONS))}", line
                    )
        comparator = ASCII_CASEMAP
        if "comparator" in bound.tags:
            comparator = self._string(bound.tags["comparator"][1]).lower()
            if comparator not in COMPARATORS:
                raise ExtensionError(f"unknown comparator {comparator!r}", line)
            if comparator not in (OCTET, ASCII_CASEMAP):
                self._need(f"comparator-{comparator}", f"comparator {comparator}", line)
        if comparator == ASCII_NUMERIC and match_type in ("contains", "matches"):
            # RFC 4790 section 9.1: i;ascii-numeric has no substring operation.
            raise ValidationError(f"{name}: :{match_type} cannot use i;ascii-numeric", line)
        return p.Match(match_type, comparator, relation)

    # -- commands ---------------------------------------------------------

    def commands(self, commands: tuple[t.Command, ...], top: bool) -> tuple[p.CommandNode, ...]:
        out: list[p.CommandNode] = []
        seen_other = False
        index = 0
        while index < len(commands):
            command = commands[index]
            index += 1
            if command.name == "require":
                # RFC 5228 section 3.2: only at the start of the script.
                if not top or seen_other:
                    raise ValidationError(
                        "require must come before any other command", command.line
                    )
                self._require(command)
                continue
            seen_other = True
            if command.name in ("elsif", "else"):
                raise ValidationError(f"{command.name} without a preceding if", command.line)
            if command.name == "if":
                branches = [self._branch(command)]
                otherwise: tuple[p.CommandNode, ...] = ()
                while index < len(commands) and commands[index].name == "elsif":
                    branches.append(self._branch(commands[index]))
                    index += 1
                if index < len(commands) and commands[index].name == "else":
                    other = commands[index]
                    index += 1
                    if other.arguments or other.tests or other.block is None:
                        raise ValidationError("else takes only a block", other.line)
                    otherwise = self.commands(other.block, False)
                out.append(p.If(tuple(branches), otherwise, command.line))
                continue
            if command.block is not None:
                raise ValidationError(f"{command.name} takes no block", command.line)
            out.append(self.command(command))
        return tuple(out)

    def _branch(self, command: t.Command) -> tuple[p.TestNode, tuple[p.CommandNode, ...]]:
        if command.arguments or len(command.tests) != 1 or command.test_list:
            raise ValidationError(f"{command.name} takes one test", command.line)
        if command.block is None:
            raise ValidationError(f"{command.name} needs a block", command.line)
        return self.test(command.tests[0]), self.commands(command.block, False)

    def command(self, command: t.Command) -> p.CommandNode:
        name, line = command.name, command.line
        rule = _COMMANDS.get(name)
        if rule is None:
            raise ValidationError(f"unknown command {name!r}", line)
        bound = self._bind(name, rule, command)
        tags, args = bound.tags, bound.positional
        flags = self._flags(tags["flags"][1]) if "flags" in tags else None
        if name == "stop":
            return p.Stop(line)
        if name == "keep":
            return p.Keep(flags, line)
        if name == "discard":
            return p.Discard(line)
        if name == "fileinto":
            return p.FileInto(
                self._string(args[0]), "copy" in tags, flags, line, create="create" in tags
            )
        if name == "redirect":
            return p.Redirect(self._string(args[0]), "copy" in tags, line)
        if name in ("reject", "ereject"):
            return p.Reject(self._string(args[0]), name == "ereject", line)
        if name == "vacation":
            days = tags.get("days", ("", None))[1]
            return p.Vacation(
                reason=self._string(args[0]),
                days=days.value if isinstance(days, t.Number) else None,
                subject=self._string(tags["subject"][1]) if "subject" in tags else None,
                from_=self._string(tags["from"][1]) if "from" in tags else None,
                addresses=self._strings(tags["addresses"][1]) if "addresses" in tags else (),
                mime="mime" in tags,
                handle=self._string(tags["handle"][1]) if "handle" in tags else None,
                line=line,
            )
        if name in ("setflag", "addflag", "removeflag"):
            variable = self._variable_name(self._string(args[0]), line) if len(args) == 2 else None
            return p.FlagAction(name[:-4], variable, self._strings(args[-1]), line)
        assert name == "set"
        modifiers = tuple(
            tags[group][0]
            for group in ("precedence-40", "precedence-30", "precedence-20", "precedence-10")
            if group in tags
        )
        return p.Set(
            self._variable_name(self._string(args[0]), line), self._string(args[1]), modifiers, line
        )

    def _flags(self, argument: t.Argument | None) -> tuple[str, ...]:
        return self._strings(argument)

    @staticmethod
    def _variable_name(name: str, line: int) -> str:
        # RFC 5229 section 3: identifiers only; match variables (digits)
        # cannot be set, and peerd has no variable namespaces.
        if not _VARIABLE_NAME.fullmatch(name):
            raise ValidationError(f"invalid variable name {name!r}", line)
        return name.lower()

    # -- tests ------------------------------------------------------------

    def test(self, test: t.Test) -> p.TestNode:
        name, line = test.name, test.line
        rule = _TESTS.get(name)
        if rule is None:
            raise ValidationError(f"unknown test {name!r}", line)
        bound = self._bind(name, rule, test)
        tags, args = bound.tags, bound.positional
        builder = self._builders.get(name)
        if builder is not None:
            return builder(self, test, bound)
        match = self._match(name, bound, line)
        if name in ("address", "envelope"):
            part = tags.get("address-part", ("all", None))[0]
            if name == "address":
                return p.AddressTest(
                    match, part, self._strings(args[0]), self._strings(args[1]), line
                )
            parts = tuple(part_name.lower() for part_name in self._strings(args[0]))
            for part_name in parts:
                if "${" not in part_name and part_name not in _ENVELOPE_PARTS:
                    raise ValidationError(f"envelope part {part_name!r} is not supported", line)
            return p.EnvelopeTest(match, part, parts, self._strings(args[1]), line)
        if name == "header":
            return p.HeaderTest(match, self._strings(args[0]), self._strings(args[1]), line)
        if name == "body":
            transform, content = tags.get("transform", ("text", None))
            types = self._strings(content) if content is not None else ()
            return p.BodyTest(match, transform, types, self._strings(args[0]), line)
        if name == "string":
            return p.StringTest(match, self._strings(args[0]), self._strings(args[1]), line)
        assert name == "hasflag"
        variables = (
            tuple(self._variable_name(v, line) for v in self._strings(args[0]))
            if len(args) == 2
            else ()
        )
        return p.HasFlag(match, variables, self._strings(args[-1]), line)

    def _constant(self, test: t.Test, bound: _Bound) -> p.TestNode:
        return p.Constant(test.name == "true", test.line)

    def _not(self, test: t.Test, bound: _Bound) -> p.TestNode:
        return p.Not(self.test(test.tests[0]), test.line)

    def _all_any(self, test: t.Test, bound: _Bound) -> p.TestNode:
        tests = tuple(self.test(inner) for inner in test.tests)
        return p.AllOf(tests, test.line) if test.name == "allof" else p.AnyOf(tests, test.line)

    def _exists(self, test: t.Test, bound: _Bound) -> p.TestNode:
        return p.Exists(self._strings(bound.positional[0]), test.line)

    def _mailboxexists(self, test: t.Test, bound: _Bound) -> p.TestNode:
        return p.MailboxExists(self._strings(bound.positional[0]), test.line)

    def _size(self, test: t.Test, bound: _Bound) -> p.TestNode:
        tag, number = bound.tags["size"]
        assert isinstance(number, t.Number)
        return p.Size(tag == "over", number.value, test.line)

    _builders: Final[Mapping[str, Callable[[_Validator, t.Test, _Bound], p.TestNode]]] = {
        "true": _constant,
        "false": _constant,
        "not": _not,
        "allof": _all_any,
        "anyof": _all_any,
        "exists": _exists,
        "size": _size,
        "mailboxexists": _mailboxexists,
    }


def _decode_encoded(match: re.Match[str], line: int) -> str:
    kind, digits = match.group(1).lower(), match.group(2).split()
    if kind == "hex":
        # hex-pair = 1*2HEXDIG; anything else, or bytes that are not UTF-8,
        # and the text is left as it was written.
        if any(len(pair) > 2 for pair in digits):
            return match.group(0)
        try:
            return bytes(int(pair, 16) for pair in digits).decode("utf-8")
        except UnicodeDecodeError:
            return match.group(0)
    out: list[str] = []
    for code in digits:
        value = int(code, 16) if len(code) <= 8 else -1
        # RFC 5228 section 2.4.2.4: a code point past U+10FFFF or a
        # surrogate is an error.
        if not 0 <= value <= 0x10FFFF or 0xD800 <= value <= 0xDFFF:
            raise ValidationError("invalid code point in ${unicode:...}", line)
        out.append(chr(value))
    return "".join(out)


def validate(
    script: t.Script, extensions: Iterable[str] = SUPPORTED, limits: Limits = DEFAULT_LIMITS
) -> p.Program:
    """Check a parsed script against the table; ``extensions`` are those it may require."""
    checker = _Validator(extensions, limits)
    commands = checker.commands(script.commands, True)
    return p.Program(commands, frozenset(checker.required))


def compile_script(
    text: str | bytes, extensions: Iterable[str] = SUPPORTED, limits: Limits = DEFAULT_LIMITS
) -> p.Program:
    """Parse and validate: what PUTSCRIPT, CHECKSCRIPT and delivery call."""
    return validate(parse(text, limits), extensions, limits)
