"""Run a :class:`~.program.Program` against a :class:`~.message.Message`.

How this works: :func:`evaluate` walks the program's commands in order
(RFC 5228 section 2.10), keeping the run's state in one :class:`_Run`: the
actions so far, whether the implicit keep still stands, the variables and
match variables (RFC 5229), the imap4flags internal variable (RFC 5232
section 3) and the work :class:`~.match.Budget`. ``stop`` ends the walk;
``allof``/``anyof`` stop at the first test that settles them (section
5.2/5.3), which also decides which ``:matches`` sets the match variables.

At the end the actions are settled (:func:`_settle`): the implicit keep is
added unless ``fileinto``, ``redirect``, ``discard``, ``reject`` or an
explicit ``keep`` cancelled it (``:copy`` does not cancel, RFC 3894);
deliveries to the same mailbox (``keep`` is INBOX) and redirects to the
same address collapse into one, their flags merged (section 2.10.3); a
second vacation is dropped; ``reject``/``ereject`` with any delivery or a
vacation, or twice, is a runtime error (RFC 5429 section 2.1, RFC 5230
section 4.7). Any runtime error, the budget included, means the message is
kept and nothing else (RFC 5228 section 2.10.6): ``Result.error`` says why.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from . import actions as a
from . import program as p
from .address import addresses, part
from .errors import ActionConflict, SieveRuntimeError
from .limits import DEFAULT_LIMITS, Limits
from .match import MATCH_STEP_COST, Budget, compare, fold
from .message import BodyPart, Message, body_parts, raw_body
from .vacation import decide
from .variables import Variables, apply_modifiers

__all__ = ["Context", "evaluate"]

# RFC 5228 section 5.1: the address test is limited to header fields that
# hold addresses; the RFC's list plus the others RFC 5322 defines.
ADDRESS_HEADERS: Final = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "sender",
        "reply-to",
        "resent-from",
        "resent-to",
        "resent-cc",
        "resent-bcc",
        "resent-sender",
        "return-path",
        "delivered-to",
        "envelope-to",
        "x-original-to",
    }
)
# RFC 5173 section 5.2: text/html turned to text by dropping its tags.
_HTML_TAG_COST: Final = 1


@dataclass(frozen=True, slots=True)
class Context:
    """What the delivery side knows about the account the message is for."""

    # The account's own addresses (vacation: whom mail must be sent to, and
    # whom never to answer).
    user_addresses: tuple[str, ...] = ()
    limits: Limits = DEFAULT_LIMITS
    # RFC 5230 section 4.1: the site's bounds on :days.
    vacation_min_days: int = 1
    vacation_max_days: int = 30
    # The account's mailbox names (RFC 5490 mailboxexists); the delivery
    # side fills it only for scripts that require "mailbox".
    mailboxes: frozenset[str] = frozenset()


class _Stop(Exception):
    pass


def _split_flags(values: Iterable[str]) -> list[str]:
    # RFC 5232 section 3: a flag list is space-separated; duplicates, compared
    # case-insensitively, appear once.
    out: list[str] = []
    seen: set[str] = set()
    for value in values:
        for flag in value.split():
            if flag.lower() not in seen:
                seen.add(flag.lower())
                out.append(flag)
    return out


def _strip_html(text: str) -> str:
    # Tags become a space, then runs of white space one space: HTML white
    # space carries no meaning, and "<p>a</p><p>b</p>" must not read "ab".
    out: list[str] = []
    position = 0
    while True:
        start = text.find("<", position)
        if start < 0:
            out.append(text[position:])
            return " ".join("".join(out).split())
        out.append(text[position:start])
        end = text.find(">", start)
        if end < 0:
            return " ".join("".join(out).split())
        out.append(" ")
        position = end + 1


class _Run:
    def __init__(self, program: p.Program, message: Message, context: Context) -> None:
        self.program = program
        self.message = message
        self.context = context
        self.limits = context.limits
        self.budget = Budget(self.limits.max_work)
        self.variables = Variables(self.limits, self.budget)
        self.flags: list[str] = []  # the internal variable, RFC 5232 section 3
        self.actions: list[a.Action] = []
        self.keep_cancelled = False
        self.vacation_skipped: str | None = None
        self._parts: list[BodyPart] | None = None
        self._raw_body: str | None = None

    # -- strings ----------------------------------------------------------

    def text(self, value: str) -> str:
        return self.variables.expand(value) if self.program.variables else value

    def texts(self, values: tuple[str, ...]) -> list[str]:
        return [self.text(value) for value in values]

    # -- commands ---------------------------------------------------------

    def run(self, commands: tuple[p.CommandNode, ...]) -> None:
        for command in commands:
            self.budget.charge(MATCH_STEP_COST)
            self.command(command)

    def command(self, node: p.CommandNode) -> None:
        if isinstance(node, p.If):
            for test, block in node.branches:
                if self.test(test):
                    self.run(block)
                    return
            self.run(node.otherwise)
        elif isinstance(node, p.Stop):
            raise _Stop
        elif isinstance(node, p.Keep):
            flags = self.flags if node.flags is None else _split_flags(self.texts(node.flags))
            self.actions.append(a.Keep(tuple(flags)))
            self.keep_cancelled = True
        elif isinstance(node, p.Discard):
            self.actions.append(a.Discard())
            self.keep_cancelled = True
        elif isinstance(node, p.FileInto):
            mailbox = self.text(node.mailbox)
            if not mailbox:
                raise SieveRuntimeError("fileinto to an empty mailbox name", node.line)
            flags = self.flags if node.flags is None else _split_flags(self.texts(node.flags))
            self.actions.append(a.FileInto(mailbox, tuple(flags), node.copy, node.create))
            self.keep_cancelled |= not node.copy
        elif isinstance(node, p.Redirect):
            self._redirect(node)
        elif isinstance(node, p.Reject):
            self.actions.append(a.Reject(self.text(node.reason), node.extended))
            self.keep_cancelled = True
        elif isinstance(node, p.Vacation):
            self._vacation(node)
        elif isinstance(node, p.FlagAction):
            self._flag_action(node)
        else:
            assert isinstance(node, p.Set)
            value = apply_modifiers(self.text(node.value), node.modifiers)
            self.variables.set(node.name, value, node.line)

    def _redirect(self, node: p.Redirect) -> None:
        address = self.text(node.address).strip()
        # RFC 5228 section 4.2: the address must be a valid mailbox; a
        # variable may have made it anything, so check here.
        found = addresses(address)
        if len(found) != 1 or "@" not in found[0] or any(c in found[0] for c in "\r\n<>,"):
            raise SieveRuntimeError(f"redirect to an invalid address {address!r}", node.line)
        redirects = sum(isinstance(action, a.Redirect) for action in self.actions)
        if redirects >= self.limits.max_redirects:
            raise SieveRuntimeError(f"more than {self.limits.max_redirects} redirects", node.line)
        self.actions.append(a.Redirect(found[0], node.copy))
        self.keep_cancelled |= not node.copy

    def _vacation(self, node: p.Vacation) -> None:
        outcome = decide(
            self.message,
            reason=self.text(node.reason),
            days=node.days,
            subject=self.text(node.subject) if node.subject is not None else None,
            from_=self.text(node.from_) if node.from_ is not None else None,
            extra_addresses=self.texts(node.addresses),
            mime=node.mime,
            handle=self.text(node.handle) if node.handle is not None else None,
            user_addresses=self.context.user_addresses,
            min_days=self.context.vacation_min_days,
            max_days=self.context.vacation_max_days,
        )
        if isinstance(outcome, str):
            self.vacation_skipped = outcome
        else:
            self.actions.append(outcome)

    def _flag_action(self, node: p.FlagAction) -> None:
        given = _split_flags(self.texts(node.flags))
        current = (
            self.flags
            if node.variable is None
            else _split_flags([self.variables.get(node.variable)])
        )
        if node.operation == "set":
            result = given
        elif node.operation == "add":
            result = _split_flags([*current, *given])
        else:
            removed = {flag.lower() for flag in given}
            result = [flag for flag in current if flag.lower() not in removed]
        if node.variable is None:
            self.flags = result
        else:
            self.variables.set(node.variable, " ".join(result), node.line)

    # -- tests ------------------------------------------------------------

    def test(self, node: p.TestNode) -> bool:
        self.budget.charge(MATCH_STEP_COST)
        if isinstance(node, p.Constant):
            return node.value
        if isinstance(node, p.Not):
            return not self.test(node.test)
        if isinstance(node, p.AllOf):
            return all(self.test(test) for test in node.tests)
        if isinstance(node, p.AnyOf):
            return any(self.test(test) for test in node.tests)
        if isinstance(node, p.Size):
            # RFC 5228 section 5.9: strictly over or under.
            size = self.message.size
            return size > node.limit if node.over else size < node.limit
        if isinstance(node, p.Exists):
            return all(self.message.has(name) for name in self.texts(node.headers))
        if isinstance(node, p.MailboxExists):
            # RFC 3501 section 5.1: INBOX is case-insensitive, other names are not.
            known = self.context.mailboxes
            return all(
                (name.upper() == "INBOX" and "INBOX" in known) or name in known
                for name in self.texts(node.mailboxes)
            )
        if isinstance(node, p.HeaderTest):
            values = [v for name in self.texts(node.headers) for v in self.message.values(name)]
            return self.matches(node.match, values, node.keys)
        if isinstance(node, p.AddressTest):
            found: list[str] = []
            for name in self.texts(node.headers):
                if name.lower() not in ADDRESS_HEADERS:
                    continue
                for raw in self.message.raw_values(name):
                    self.budget.charge(len(raw) * 4)
                    found.extend(addresses(raw))
            return self.matches(node.match, self._parts_of(found, node.part), node.keys)
        if isinstance(node, p.EnvelopeTest):
            envelope = {"from": self.message.envelope_from, "to": self.message.envelope_to}
            values = [
                envelope[n] for n in (x.lower() for x in self.texts(node.parts)) if n in envelope
            ]
            return self.matches(node.match, self._parts_of(values, node.part), node.keys)
        if isinstance(node, p.BodyTest):
            return self.matches(node.match, self._body(node), node.keys)
        if isinstance(node, p.StringTest):
            sources = self.texts(node.sources)
            if node.match.match_type == "count":
                # RFC 5229 section 5: empty strings are not counted.
                sources = [source for source in sources if source]
            return self.matches(node.match, sources, node.keys)
        assert isinstance(node, p.HasFlag)
        if node.variables:
            flags = _split_flags(self.variables.get(name) for name in node.variables)
        else:
            flags = list(self.flags)
        keys = tuple(_split_flags(self.texts(node.keys)))
        return self.matches(node.match, flags, keys, expand=False)

    @staticmethod
    def _parts_of(values: list[str], which: str) -> list[str]:
        out: list[str] = []
        for value in values:
            piece = part(value, which)
            if piece is not None:
                out.append(piece)
        return out

    def _body(self, node: p.BodyTest) -> list[str]:
        if node.transform == "raw":
            if self._raw_body is None:
                data = raw_body(self.message.raw)
                self.budget.charge(len(data))
                self._raw_body = data.decode("utf-8", "replace")
            return [self._raw_body]
        if self._parts is None:
            self.budget.charge(len(self.message.raw) * 2)
            self._parts = body_parts(self.message.raw)
        if node.transform == "text":
            out = []
            for body_part in self._parts:
                if body_part.content_type == "text/html":
                    self.budget.charge(len(body_part.text) * _HTML_TAG_COST)
                    out.append(_strip_html(body_part.text))
                elif body_part.content_type.startswith("text/"):
                    out.append(body_part.text)
            return out
        # RFC 5173 section 5.2: "type" matches every subtype, "type/sub"
        # exactly, "" every part.
        wanted = [fold(t) for t in self.texts(node.content_types)]
        out = []
        for body_part in self._parts:
            main = body_part.content_type.partition("/")[0]
            if any(w in ("", main, body_part.content_type) for w in wanted):
                out.append(body_part.text)
        return out

    def matches(
        self, match: p.Match, values: list[str], keys: tuple[str, ...], *, expand: bool = True
    ) -> bool:
        key_list = self.texts(keys) if expand else list(keys)
        if match.match_type == "count":
            # RFC 5231 section 4.1: the number of values against each key.
            count = str(len(values))
            return any(
                compare(count, key, "value", match.comparator, self.budget, match.relation)
                is not None
                for key in key_list
            )
        for value in values:
            for key in key_list:
                groups = compare(
                    value, key, match.match_type, match.comparator, self.budget, match.relation
                )
                if groups is not None:
                    if match.match_type == "matches" and self.program.variables:
                        self.variables.set_matches(groups)
                    return True
        return False


def _settle(run: _Run) -> list[a.Action]:
    rejects = [action for action in run.actions if isinstance(action, a.Reject)]
    if len(rejects) > 1:
        raise ActionConflict("reject or ereject more than once")
    if rejects and any(
        isinstance(action, (a.Keep, a.FileInto, a.Redirect, a.Vacation)) for action in run.actions
    ):
        raise ActionConflict("reject cannot be combined with keep, fileinto, redirect or vacation")
    out: list[a.Action] = []
    deliveries: dict[str, int] = {}  # mailbox key -> index in out
    redirected: set[str] = set()
    vacation = discard = False
    actions = list(run.actions)
    if not run.keep_cancelled:
        actions.append(a.Keep(tuple(run.flags), implicit=True))
    for action in actions:
        if isinstance(action, (a.Keep, a.FileInto)):
            mailbox = a.INBOX if isinstance(action, a.Keep) else action.mailbox
            # RFC 3501 section 5.1: INBOX is case-insensitive, other names are not.
            key = a.INBOX if mailbox.upper() == a.INBOX else mailbox
            if key in deliveries:
                index = deliveries[key]
                earlier = out[index]
                assert isinstance(earlier, (a.Keep, a.FileInto))
                merged = tuple(_split_flags([*earlier.flags, *action.flags]))
                if isinstance(earlier, a.Keep):
                    out[index] = a.Keep(merged, earlier.implicit)
                else:
                    out[index] = a.FileInto(
                        earlier.mailbox,
                        merged,
                        earlier.copy,
                        earlier.create or (isinstance(action, a.FileInto) and action.create),
                    )
                continue
            deliveries[key] = len(out)
            out.append(action)
        elif isinstance(action, a.Redirect):
            if action.address.lower() not in redirected:
                redirected.add(action.address.lower())
                out.append(action)
        elif isinstance(action, a.Vacation):
            # RFC 5230 leaves a second vacation open; the first one stands.
            if not vacation:
                vacation = True
                out.append(action)
        elif isinstance(action, a.Discard):
            if not discard:
                discard = True
                out.append(action)
        else:
            out.append(action)
    return out


def evaluate(program: p.Program, message: Message, context: Context | None = None) -> a.Result:
    """Run the script; never raises for what the script or the message holds."""
    run = _Run(program, message, context or Context())
    try:
        try:
            run.run(program.commands)
        except _Stop:
            pass
        settled = _settle(run)
    except SieveRuntimeError as exc:
        return a.Result((a.Keep((), implicit=True),), error=exc)
    except (ArithmeticError, LookupError, RecursionError, UnicodeError, ValueError) as exc:
        # What the standard library raises on a message or a value it cannot
        # take (int() past 4,300 digits, a parser's recursion on deep MIME):
        # a runtime error of this run, never a failed delivery.
        error = SieveRuntimeError(f"the message could not be evaluated: {type(exc).__name__}")
        return a.Result((a.Keep((), implicit=True),), error=error)
    return a.Result(tuple(settled), vacation_skipped=run.vacation_skipped)
