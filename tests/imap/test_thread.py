"""THREAD (RFC 5256): REFERENCES against the RFC's algorithm written out plainly
here, ORDEREDSUBJECT, the response format and the RFC's examples."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.protocols.imap.responses import CommandError
from peerd.protocols.imap.sort import SortItem, SortRecord, build_record
from peerd.protocols.imap.thread import (
    Algorithm,
    Thread,
    parse_algorithm,
    render,
    thread,
    thread_orderedsubject,
    thread_references,
    thread_response,
)
from tests.example_counts import examples

# -- RFC 5256 section 3, REFERENCES, transcribed step by step -----------------------------


class Node:
    """A message (``index`` into the items) or a dummy (``index`` None)."""

    def __init__(self, index: int | None) -> None:
        self.index = index
        self.parent: Node | None = None
        self.children: list[Node] = []

    @property
    def dummy(self) -> bool:
        return self.index is None


def rfc_references(items: list[SortItem]) -> list[Thread]:
    def sent(node: Node) -> tuple[int, int]:
        # Section 2.2: the sent date, ties broken by mailbox order.
        assert node.index is not None
        return (items[node.index].date, node.index)

    def subject(node: Node) -> str:
        assert node.index is not None
        return items[node.index].record.subject.upper()  # test subjects are ASCII

    def is_reply(node: Node) -> bool:
        assert node.index is not None
        return items[node.index].record.reply

    def is_descendant(a: Node, b: Node) -> bool:
        node: Node | None = a
        while node is not None:
            if node is b:
                return True
            node = node.parent
        return False

    def make_child(parent: Node, child: Node) -> None:
        child.parent = parent
        parent.children.append(child)

    def break_parent(child: Node) -> None:
        if child.parent is not None:
            child.parent.children.remove(child)
            child.parent = None

    # (1) Link each message within a parent/child structure.
    messages = [Node(i) for i in range(len(items))]
    by_id: dict[str, Node] = {}
    for node, item in zip(messages, items, strict=True):
        # No Message-ID, or a duplicate of an earlier message's: a unique one.
        mid = item.record.message_id
        if mid is not None and mid not in by_id:
            by_id[mid] = node
    everyone = list(messages)
    for node, item in zip(messages, items, strict=True):
        record = item.record
        # References, or without one the first id of In-Reply-To.
        if record.references:
            references = list(record.references)
        elif record.in_reply_to is not None:
            references = [record.in_reply_to]
        else:
            references = []
        # (A) Link the references together, first the parent of the second...
        previous: Node | None = None
        for ref in references:
            if ref not in by_id:  # no message with this id: a dummy
                by_id[ref] = Node(None)
                everyone.append(by_id[ref])
            current = by_id[ref]
            # ...unless it already has a parent, or the link makes a loop.
            if (
                previous is not None
                and current.parent is None
                and not is_descendant(previous, current)
            ):
                make_child(previous, current)
            previous = current
        # (B) The message under its last reference; its current parent link
        # is broken first; no link that would make a loop.
        break_parent(node)
        if previous is not None and not is_descendant(previous, node):
            make_child(previous, node)

    # (2) The messages with no parent become children of a dummy root.
    root = Node(None)
    for node in everyone:
        if node.parent is None:
            make_child(root, node)

    # (3) Prune dummies: traverse each thread under the root; for each
    # message (its own children pruned first):
    def prune(parent: Node) -> None:
        kept: list[Node] = []
        for node in parent.children:
            prune(node)
            if node.dummy and not node.children:
                continue  # a dummy with no children is deleted
            if node.dummy and (parent is not root or len(node.children) == 1):
                # A dummy with children is deleted and its children promoted
                # (not to the root, unless there is only one).
                for child in node.children:
                    child.parent = parent
                kept.extend(node.children)
                continue
            kept.append(node)
        parent.children = kept

    prune(root)

    # (4) Sort the root's children by sent date; a dummy by its children's first.
    def top_date(node: Node) -> tuple[int, int]:
        if node.dummy:
            node.children.sort(key=sent)
            return sent(node.children[0])
        return sent(node)

    root.children.sort(key=top_date)

    # (5) Merge the threads under the root that have the same base subject.
    def thread_subject(node: Node) -> str:
        return subject(node.children[0] if node.dummy else node)

    table: dict[str, Node] = {}
    for node in root.children:  # (B) one message per subject
        subj = thread_subject(node)
        if subj == "":
            continue
        # (iv) No message with this subject yet: this one. Otherwise this one
        # replaces a held message that is not a dummy when this one is a
        # dummy, or when the held one is a reply or forward and this one not.
        if subj not in table:  # noqa: SIM114 (the RFC's two cases, kept apart)
            table[subj] = node
        elif not table[subj].dummy and (
            node.dummy or (is_reply(table[subj]) and not is_reply(node))
        ):
            table[subj] = node
    for node in list(root.children):  # (C) merge
        if node.parent is not root:
            continue  # moved below another message meanwhile
        subj = thread_subject(node)
        if subj == "":
            continue
        held = table[subj]
        if held is node:
            continue
        if held.dummy and node.dummy:
            for child in list(node.children):
                break_parent(child)
                make_child(held, child)
            break_parent(node)
        elif held.dummy or (is_reply(node) and not is_reply(held)):
            break_parent(node)
            make_child(held, node)
        else:
            dummy = Node(None)
            root.children[root.children.index(held)] = dummy
            dummy.parent = root
            held.parent = None
            make_child(dummy, held)
            break_parent(node)
            make_child(dummy, node)
            table[subj] = dummy

    # (6) Sort every set of siblings by sent date, grandchildren before children.
    def sort_siblings(node: Node) -> None:
        for child in node.children:
            sort_siblings(child)
        node.children.sort(key=lambda n: sent(n.children[0] if n.dummy else n))

    sort_siblings(root)

    def as_thread(node: Node) -> Thread:
        number = None if node.index is None else items[node.index].id
        return Thread(number, tuple(as_thread(c) for c in node.children))

    return [as_thread(node) for node in root.children]


# -- generated mailboxes --------------------------------------------------------------------

ids = st.sampled_from(["a", "b", "c", "d", "e", "f", "g"])
records = st.builds(
    SortRecord,
    sent=st.none() | st.integers(0, 5),
    subject=st.sampled_from(["", "x", "X", "y", "z"]),
    reply=st.booleans(),
    message_id=st.none() | ids,
    in_reply_to=st.none() | ids,
    references=st.lists(ids, max_size=4).map(tuple),
)
mailboxes = st.lists(st.tuples(st.integers(0, 5), records), max_size=14).map(
    lambda rows: [
        SortItem(10 + i, arrival, 100, record) for i, (arrival, record) in enumerate(rows)
    ]
)


def members(threads: list[Thread]) -> list[int]:
    out: list[int] = []
    stack = list(threads)
    while stack:
        node = stack.pop()
        if node.id is not None:
            out.append(node.id)
        stack.extend(node.children)
    return sorted(out)


@settings(max_examples=examples(2000), deadline=None)
@given(mailboxes)
def test_references_matches_rfc5256_written_plainly(items: list[SortItem]) -> None:
    expected = rfc_references(items)
    got = thread_references(items)
    assert got == expected
    assert render(got) == render(expected) == thread_response(items, Algorithm.REFERENCES)
    assert members(got) == sorted(item.id for item in items)  # each message once


# -- ORDEREDSUBJECT ---------------------------------------------------------------------------


def rfc_orderedsubject(items: list[SortItem]) -> list[Thread]:
    """RFC 5256 3: sort by base subject then sent date; split where the
    subject changes; the first of each is the parent of the rest; the
    threads by their first message's sent date."""
    ranked = sorted(
        range(len(items)),
        key=lambda i: (items[i].record.subject.upper(), items[i].date, i),
    )
    groups: list[list[int]] = []
    for i in ranked:
        if (
            groups
            and items[groups[-1][0]].record.subject.upper() == items[i].record.subject.upper()
        ):
            groups[-1].append(i)
        else:
            groups.append([i])
    groups.sort(key=lambda g: (items[g[0]].date, g[0]))
    return [Thread(items[g[0]].id, tuple(Thread(items[i].id) for i in g[1:])) for g in groups]


@settings(max_examples=examples(500), deadline=None)
@given(mailboxes)
def test_orderedsubject_matches_rfc5256(items: list[SortItem]) -> None:
    expected = rfc_orderedsubject(items)
    assert thread_orderedsubject(items) == expected
    assert thread(items, Algorithm.ORDEREDSUBJECT) == expected
    assert thread_response(items, Algorithm.ORDEREDSUBJECT) == render(expected)


# -- the RFC's examples and the response format ------------------------------------------------


def message(number: int, when: int, mid: str, refs: str = "", subject: str = "s") -> SortItem:
    header = f"Message-ID: <{mid}>\r\nSubject: {subject}\r\n"
    if refs:
        header += "References: " + " ".join(f"<{r}>" for r in refs.split()) + "\r\n"
    return SortItem(number, when, 1, build_record(header.encode() + b"\r\n"))


def test_rfc5256_section4_example_tree() -> None:
    # "(2)(3 6 (4 23)(44 7 96))": 3 -> 6 -> {4 -> 23, 44 -> 7 -> 96}; the
    # later messages are parents of earlier ones, "moved from some other
    # mailbox at different times" (RFC 5256 4).
    items = [
        message(2, 1, "m2", subject="other"),
        message(3, 2, "m3"),
        message(4, 4, "m4", "m3 m6"),
        message(6, 3, "m6", "m3"),
        message(7, 6, "m7", "m3 m6 m44"),
        message(23, 5, "m23", "m3 m6 m4"),
        message(44, 5, "m44", "m3 m6"),
        message(96, 7, "m96", "m3 m6 m44 m7"),
    ]
    threads = thread_references(items)
    assert render(threads) == b"(2)(3 6 (4 23)(44 7 96))"


def test_rfc5256_dummy_parent_example() -> None:
    # "((3)(5))": two messages whose common parent is not in the mailbox.
    items = [message(3, 1, "m3", "gone"), message(5, 2, "m5", "gone")]
    assert render(thread_references(items)) == b"((3)(5))"
    assert thread_references(items) == [Thread(None, (Thread(3), Thread(5)))]


def test_references_rules_in_isolation() -> None:
    # A missing parent with one child: the dummy goes, the child is at the top.
    assert render(thread_references([message(1, 1, "a", "gone")])) == b"(1)"
    # A duplicate Message-ID is unique for the later message: no self-threading.
    items = [message(1, 1, "same"), message(2, 2, "same", "same")]
    assert render(thread_references(items)) == b"(1 2)"
    # A reference loop is not followed: 1 goes under 2, then 2 cannot go under 1.
    items = [message(1, 1, "a", "b"), message(2, 2, "b", "a")]
    assert render(thread_references(items)) == b"(2 1)"
    # Subject merging: a reply with no references joins its original's thread.
    items = [
        message(1, 1, "a", subject="Plans"),
        message(2, 2, "b", subject="Re: plans"),
        message(3, 3, "c", subject="plans"),  # not a reply: a sibling under a dummy
    ]
    assert render(thread_references(items)) == b"((1 2)(3))"


def test_render_shapes() -> None:
    assert render([]) == b""
    assert render([Thread(1)]) == b"(1)"
    assert render([Thread(1, (Thread(2, (Thread(3),)),))]) == b"(1 2 3)"
    assert render([Thread(1, (Thread(2), Thread(3)))]) == b"(1 (2)(3))"
    assert render([Thread(None, (Thread(2, (Thread(4),)), Thread(3)))]) == b"((2 4)(3))"
    assert render([Thread(None, (Thread(7),))]) == b"(7)"  # a dummy with one child


def test_deep_chain_needs_no_recursion() -> None:
    count = 5000
    items = [message(1, 0, "m1")]
    for n in range(2, count + 1):
        items.append(
            message(n, n, f"m{n}")._replace(
                record=build_record(
                    f"Message-ID: <m{n}>\r\nIn-Reply-To: <m{n - 1}>\r\n\r\n".encode()
                ),
            )
        )
    chain = b"(" + b" ".join(str(n).encode() for n in range(1, count + 1)) + b")"
    assert render(thread_references(items)) == chain
    assert thread_response(items, Algorithm.REFERENCES) == chain


def test_parse_algorithm() -> None:
    assert parse_algorithm("references") is Algorithm.REFERENCES
    assert parse_algorithm("ORDEREDSUBJECT") is Algorithm.ORDEREDSUBJECT
    with pytest.raises(CommandError):
        parse_algorithm("REFS")
