"""IMAP on the wire: LSUB and LIST-EXTENDED subscriptions (issue 10 item 11)
and the extensions MULTIAPPEND, SEARCHRES, ESORT, BINARY, CATENATE.

Every expected answer is built from the RFC named in the test against a
real node, through raw sockets (:class:`~tests.test_imap_compliance.Wire`)
or imaplib.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import LoneNode
from tests.test_imap_compliance import Wire

NodeFactory = Callable[..., LoneNode]


@pytest.fixture
def node(lone_node: NodeFactory) -> LoneNode:
    node = lone_node()
    node.add_account("user")
    return node


def ok(lines: list[bytes]) -> list[bytes]:
    assert lines[-1].split()[1] == b"OK", lines
    return lines[:-1]


# -- item 11: LSUB "%" and RECURSIVEMATCH's CHILDINFO --------------------------------


def test_lsub_percent_and_recursivematch_childinfo(node: LoneNode) -> None:
    wire = Wire(node)
    for name in ("Fruit/Apple", "Fruit/Banana", "Vegetable/Broccoli", "Tofu"):
        ok(wire.cmd(f"CREATE {name}"))
    for name in ("Fruit/Banana", "Vegetable", "Vegetable/Broccoli", "Tofu"):
        ok(wire.cmd(f"SUBSCRIBE {name}"))
    # RFC 3501 6.3.9: "%" stops at Fruit, which is not subscribed but has a
    # subscribed child: it is listed, flagged \Noselect.
    assert ok(wire.cmd('LSUB "" "%"')) == [
        b'* LSUB (\\Noselect \\HasChildren) "/" Fruit\r\n',
        b'* LSUB (\\HasNoChildren) "/" INBOX\r\n',
        b'* LSUB (\\HasNoChildren) "/" Tofu\r\n',
        b'* LSUB (\\HasChildren) "/" Vegetable\r\n',
    ]
    # With "*" the child itself is listed, and the parent is not.
    assert ok(wire.cmd('LSUB "" "*"')) == [
        b'* LSUB (\\HasNoChildren) "/" Fruit/Banana\r\n',
        b'* LSUB (\\HasNoChildren) "/" INBOX\r\n',
        b'* LSUB (\\HasNoChildren) "/" Tofu\r\n',
        b'* LSUB (\\HasChildren) "/" Vegetable\r\n',
        b'* LSUB (\\HasNoChildren) "/" Vegetable/Broccoli\r\n',
    ]
    # RFC 5258 3.5 and its example 5.8.A1: CHILDINFO for a parent the pattern
    # matches whose subscribed child it does not, subscribed or not itself.
    assert ok(wire.cmd('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')) == [
        b'* LIST (\\HasChildren) "/" Fruit ("CHILDINFO" ("SUBSCRIBED"))\r\n',
        b'* LIST (\\HasNoChildren \\Subscribed) "/" INBOX\r\n',
        b'* LIST (\\HasNoChildren \\Subscribed) "/" Tofu\r\n',
        b'* LIST (\\HasChildren \\Subscribed) "/" Vegetable ("CHILDINFO" ("SUBSCRIBED"))\r\n',
    ]
    # With "*" every subscribed child is listed itself: no CHILDINFO, and an
    # unsubscribed parent is not listed (it matches no selection criterion).
    assert ok(wire.cmd('LIST (SUBSCRIBED RECURSIVEMATCH) "" "*"')) == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" Fruit/Banana\r\n',
        b'* LIST (\\HasNoChildren \\Subscribed) "/" INBOX\r\n',
        b'* LIST (\\HasNoChildren \\Subscribed) "/" Tofu\r\n',
        b'* LIST (\\HasChildren \\Subscribed) "/" Vegetable\r\n',
        b'* LIST (\\HasNoChildren \\Subscribed) "/" Vegetable/Broccoli\r\n',
    ]
    wire.close()
