"""THREAD (RFC 5256): ORDEREDSUBJECT and REFERENCES over sort records.

How this works: both algorithms read :class:`~peerd.protocols.imap.sort.SortItem`
(a message's number, internal date, size and stored
:class:`~peerd.protocols.imap.sort.SortRecord`), never the message, and give a
list of :class:`Thread` trees; :func:`render` writes them as the
``thread-list``s of the untagged response (RFC 5256 4):
``(2)(3 6 (4 23)(44 7 96))``. "Sent date" is RFC 5256 2.2's (the Date field
in UTC, else the internal date) with mailbox order breaking ties, and base
subjects compare under ``i;unicode-casemap`` (RFC 5256 7: "Subject
comparisons are case-insensitive").

ORDEREDSUBJECT: sort by base subject then sent date; each run of one subject
is a thread whose first message is the parent of all the others; threads are
ordered by their first message's sent date.

REFERENCES follows RFC 5256 section 3 step by step, on flat arrays (one
index per container: the messages first, in mailbox order, then a dummy for
each id referenced but not present and for each merge of step 5), with no
recursion, so a 10,000-message chain is walked as easily as a flat list:

1. Link each message under its references (References, else In-Reply-To's
   first id): a dummy for an unknown id; an existing parent link is kept; no
   link that would make a loop. The message then goes under its last
   reference, its old parent link broken first. A missing or duplicate
   Message-ID (after the first, lowest-numbered, holder) is a unique id.
2. Parentless containers become the root's children.
3. Prune dummies, children before parents: a childless dummy goes; a dummy
   with children gives them to its parent, except at the root when it has
   more than one.
4. Sort the root's children by sent date (a dummy by its earliest child).
5. Merge root threads with the same base subject (the subject table of 5.A
   to 5.C, with its dummy and reply/forward rules).
6. Sort every set of siblings by sent date, children before parents.

Pure: no I/O, nothing of the store.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from peerd.protocols.imap.responses import CommandError
from peerd.protocols.imap.sort import SortItem, collate, dates

__all__ = [
    "Algorithm",
    "Thread",
    "parse_algorithm",
    "render",
    "thread",
    "thread_orderedsubject",
    "thread_references",
    "thread_response",
]


class Algorithm(enum.Enum):
    ORDEREDSUBJECT = "ORDEREDSUBJECT"
    REFERENCES = "REFERENCES"


def parse_algorithm(word: str) -> Algorithm:
    """The THREAD command's algorithm atom; ``BAD`` for one not offered."""
    try:
        return Algorithm(word.upper())
    except ValueError:
        raise CommandError(f"unknown threading algorithm {word!r}") from None


@dataclass(frozen=True, slots=True)
class Thread:
    """A node of a thread tree: a message (``id``), or a dummy (``id`` None)
    that only holds its children together (RFC 5256 3)."""

    id: int | None
    children: tuple[Thread, ...] = ()


# -- containers ------------------------------------------------------------------------------

_NONE: Final = -1


class _Forest:
    """Containers as parallel lists: ``item[c]`` is the message's index in
    the request (-1 for a dummy), ``parent[c]`` its parent (-1 for none),
    ``children[c]`` its children (kept only for containers that have any).
    Messages are containers ``0 .. len(items) - 1``, dummies come after."""

    __slots__ = ("children", "item", "parent")

    def __init__(self, count: int) -> None:
        self.item: list[int] = list(range(count))
        self.parent: list[int] = [_NONE] * count
        self.children: dict[int, list[int]] = {}

    def dummy(self) -> int:
        self.item.append(_NONE)
        self.parent.append(_NONE)
        return len(self.item) - 1

    def link(self, parent: int, child: int) -> None:
        self.parent[child] = parent
        children = self.children.get(parent)
        if children is None:
            self.children[parent] = [child]
        else:
            children.append(child)

    def below(self, roots: list[int]) -> list[int]:
        """``roots`` and every container below them, each before its children."""
        order: list[int] = []
        stack = roots[::-1]
        children = self.children
        while stack:
            c = stack.pop()
            order.append(c)
            kids = children.get(c)
            if kids:
                stack.extend(reversed(kids))
        return order


def _ranks(items: Sequence[SortItem]) -> list[int]:
    """Each item's place in sent-date order, ties in mailbox order (RFC 5256
    2.2): one int to compare instead of a (date, number) pair."""
    keys = dates(items)
    rank = [0] * len(items)
    for place, i in enumerate(sorted(range(len(items)), key=keys.__getitem__)):
        rank[i] = place
    return rank


# -- ORDEREDSUBJECT -------------------------------------------------------------------------


def _orderedsubject(items: Sequence[SortItem]) -> tuple[_Forest, list[int]]:
    rank = _ranks(items)
    keys = [collate(item.record.subject) for item in items]
    # By base subject, then sent date (two stable passes: date first).
    order = sorted(range(len(items)), key=rank.__getitem__)
    order.sort(key=keys.__getitem__)
    forest = _Forest(len(items))
    roots: list[int] = []
    first = _NONE
    for i in order:
        if first != _NONE and keys[i] == keys[first]:
            forest.link(first, i)  # a child of the first of its subject
        else:
            first = i
            roots.append(i)
    roots.sort(key=rank.__getitem__)  # threads by their first message's date
    return forest, roots


# -- REFERENCES -----------------------------------------------------------------------------


def _link_references(items: Sequence[SortItem], forest: _Forest) -> None:
    """Step 1 (RFC 5256 3, REFERENCES 1.A and 1.B)."""
    by_id: dict[str, int] = {}
    for index, item in enumerate(items):
        mid = item.record.message_id
        # A missing id, or one an earlier message holds, is unique: not in the table.
        if mid is not None and mid not in by_id:
            by_id[mid] = index
    parent = forest.parent
    children = forest.children
    for index, item in enumerate(items):
        record = item.record
        refs = record.references
        if not refs and record.in_reply_to is not None:
            refs = (record.in_reply_to,)
        last = _NONE
        for ref in refs:
            c = by_id.get(ref)
            if c is None:
                c = by_id[ref] = forest.dummy()
            # 1.A: the previous reference becomes this one's parent, unless it
            # has a parent already or the link would make a loop (c is last
            # or above it).
            if last != _NONE and parent[c] == _NONE:
                up = last
                while up != _NONE and up != c:
                    up = parent[up]
                if up == _NONE:
                    forest.link(last, c)
            last = c
        # 1.B: the message goes under its last reference, its old link broken
        # first (so a message with no references ends with no parent).
        old = parent[index]
        if old != _NONE:
            children[old].remove(index)
            parent[index] = _NONE
        if last != _NONE:
            up = last
            while up != _NONE and up != index:
                up = parent[up]
            if up == _NONE:
                forest.link(last, index)


def _prune(forest: _Forest, roots: list[int]) -> list[int]:
    """Step 3: the root's children after pruning the dummies, children first.

    Below the root a dummy always goes: its children (pruned already, so no
    dummy among them) take its place, or it is deleted if it has none. At
    the root a dummy with one child gives way to it, one with none goes, one
    with several stays. Pruning children before their parent means a dummy's
    children are counted after their own pruning, so no childless dummy is
    left at the root (a References field naming the message itself can make
    a dummy whose only children are childless dummies).
    """
    item, parent, children = forest.item, forest.parent, forest.children
    for c in reversed(forest.below(roots)):  # every container after those below it
        kids = children.get(c)
        if not kids or all(item[k] != _NONE for k in kids):
            continue
        kept: list[int] = []
        for k in kids:
            if item[k] == _NONE:
                promoted = children.pop(k, [])
                for p in promoted:
                    parent[p] = c
                kept.extend(promoted)
            else:
                kept.append(k)
        children[c] = kept
    top: list[int] = []
    for c in roots:
        kids = children.get(c, [])
        if item[c] == _NONE and len(kids) <= 1:
            for k in kids:
                parent[k] = _NONE
            top.extend(kids)
            children.pop(c, None)
        else:
            top.append(c)
    return top


def _references(items: Sequence[SortItem]) -> tuple[_Forest, list[int]]:
    forest = _Forest(len(items))
    _link_references(items, forest)
    item, parent, children = forest.item, forest.parent, forest.children

    # Step 2: the parentless containers are the root's children.
    roots = _prune(forest, [c for c in range(len(item)) if parent[c] == _NONE])

    rank = _ranks(items)

    def key(c: int) -> int:
        # A message by its sent date; a dummy (only at the root) by its first child.
        i = item[c]
        return rank[i] if i != _NONE else rank[item[children[c][0]]]

    def by_date(c: int) -> int:
        return rank[item[c]]

    # Step 4: the root's children by sent date; a dummy by its earliest child.
    for c in roots:
        if item[c] == _NONE:
            children[c].sort(key=by_date)
    roots.sort(key=key)

    # Step 5: merge the threads whose base subjects are the same.
    records = [i.record for i in items]

    def head(c: int) -> int:
        return item[c] if item[c] != _NONE else item[children[c][0]]

    subjects = [collate(records[head(c)].subject) for c in roots]
    table: dict[str, int] = {}
    for c, subj in zip(roots, subjects, strict=True):
        if not subj:
            continue
        held = table.get(subj)
        # 5.B: the first thread of a subject, replaced (unless it is a dummy)
        # by a dummy, or by a non-reply where it is a reply.
        if held is None or (
            item[held] != _NONE
            and (item[c] == _NONE or (records[held].reply and not records[item[c]].reply))
        ):
            table[subj] = c
    gone: set[int] = set()  # dummies whose children went to another dummy
    added: list[int] = []  # dummies made by the last rule of 5.C
    for c, subj in zip(roots, subjects, strict=True):
        if parent[c] != _NONE:
            continue  # no longer a child of the root: merged below another
        held = table.get(subj) if subj else None
        if held is None or held == c:
            continue
        if item[held] == _NONE and item[c] == _NONE:
            for kid in children.pop(c):
                forest.link(held, kid)
            gone.add(c)
        elif item[held] == _NONE or (records[c].reply and not records[held].reply):
            forest.link(held, c)
        else:
            dummy = forest.dummy()
            forest.link(dummy, held)
            forest.link(dummy, c)
            table[subj] = dummy
            added.append(dummy)
    roots = [c for c in roots if parent[c] == _NONE and c not in gone] + added

    # Step 6: every set of siblings by sent date, children before parents.
    for c in reversed(forest.below(roots)):
        kids = children.get(c)
        if kids and len(kids) > 1:
            kids.sort(key=key)
    roots.sort(key=key)
    return forest, roots


# -- results ----------------------------------------------------------------------------------


def _trees(forest: _Forest, items: Sequence[SortItem], roots: list[int]) -> list[Thread]:
    """The containers as :class:`Thread` nodes, built bottom-up without recursion."""
    item, children = forest.item, forest.children
    built: dict[int, Thread] = {}
    for c in reversed(forest.below(roots)):
        i = item[c]
        kids = tuple(built.pop(k) for k in children.get(c, ()))
        built[c] = Thread(None if i == _NONE else items[i].id, kids)
    return [built[c] for c in roots]


_OPEN: Final = -2
_CLOSE: Final = -3


def _render(forest: _Forest, items: Sequence[SortItem], roots: list[int]) -> bytes:
    """Like :func:`render` of :func:`_trees`, straight from the containers."""
    item, children = forest.item, forest.children
    ids = [str(i.id) for i in items]
    out: list[str] = []
    append = out.append
    for top in roots:
        append("(")
        stack = [_CLOSE, top]
        while stack:
            c = stack.pop()
            if c == _CLOSE:
                append(")")
                continue
            if c == _OPEN:
                append("(")
                continue
            kids = children.get(c)
            if item[c] != _NONE:
                append(ids[item[c]])
                # A chain of only children is written in one loop: "1 2 3".
                while kids and len(kids) == 1:
                    c = kids[0]
                    append(" ")
                    append(ids[item[c]])
                    kids = children.get(c)
                if not kids:
                    continue
                append(" ")
            elif kids and len(kids) == 1:
                stack.append(kids[0])
                continue
            for kid in reversed(kids or ()):
                stack.extend((_CLOSE, kid, _OPEN))
    return "".join(out).encode("ascii")


def _forest(items: Sequence[SortItem], algorithm: Algorithm) -> tuple[_Forest, list[int]]:
    if algorithm is Algorithm.ORDEREDSUBJECT:
        return _orderedsubject(items)
    return _references(items)


def thread(items: Sequence[SortItem], algorithm: Algorithm) -> list[Thread]:
    """The threads of ``items`` (given in mailbox order) by ``algorithm``."""
    forest, roots = _forest(items, algorithm)
    return _trees(forest, items, roots)


def thread_orderedsubject(items: Sequence[SortItem]) -> list[Thread]:
    """THREAD=ORDEREDSUBJECT (RFC 5256 3)."""
    return thread(items, Algorithm.ORDEREDSUBJECT)


def thread_references(items: Sequence[SortItem]) -> list[Thread]:
    """THREAD=REFERENCES (RFC 5256 3)."""
    return thread(items, Algorithm.REFERENCES)


def thread_response(items: Sequence[SortItem], algorithm: Algorithm) -> bytes:
    """``render(thread(items, algorithm))`` without building the trees: what
    the server writes after ``* THREAD ``."""
    forest, roots = _forest(items, algorithm)
    return _render(forest, items, roots)


# -- the response (RFC 5256 4) ----------------------------------------------------------------


def render(threads: Sequence[Thread]) -> bytes:
    """The ``thread-list``s of a THREAD response: ``b"(2)(3 6 (4 23)(44 7 96))"``.

    A message with one child is followed by it (``3 6``); with several, each
    child's thread is parenthesized (``(4 23)(44 7 96)``); a dummy shows only
    its children. Written without recursion.
    """
    out: list[bytes] = []
    for top in threads:
        out.append(b"(")
        # The stack holds nodes to write as thread members, and bytes to emit.
        stack: list[Thread | bytes] = [b")", top]
        while stack:
            node = stack.pop()
            if isinstance(node, bytes):
                out.append(node)
                continue
            kids = node.children
            if node.id is not None:
                out.append(str(node.id).encode())
                if not kids:
                    continue
                out.append(b" ")
            if len(kids) == 1:
                stack.append(kids[0])
                continue
            for kid in reversed(kids):
                stack.extend((b")", kid, b"("))
    return b"".join(out)
