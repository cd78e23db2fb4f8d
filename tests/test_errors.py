"""The error trees and their one mapping to the wire (peerd.node.errormap)."""

from __future__ import annotations

import inspect
from types import ModuleType

import pytest

import engine.errors
import ownership.errors
from engine.errors import (
    EngineError,
    NoSuchAccount,
    NoSuchMailbox,
    NotFound,
    PartnerDown,
    SyncError,
    SyncRefused,
)
from ownership.errors import NotOwner, OwnershipError, SyncFenced
from ownership.rows import OwnershipView
from peerd.node.errormap import (
    S451_LOCAL_ERROR,
    S550_NO_SUCH_USER,
    http_status,
    imap_code,
    lmtp_reply,
    problem_title,
)


def tree(module: ModuleType) -> list[type[EngineError | OwnershipError]]:
    return [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, (EngineError, OwnershipError)) and cls.__module__ == module.__name__
    ]


@pytest.mark.parametrize("module", [engine.errors, ownership.errors])
def test_every_error_is_drawn_in_its_tree_with_a_code_of_its_own(module: ModuleType) -> None:
    doc = inspect.getdoc(module) or ""
    for cls in tree(module):
        assert cls.__name__ in doc, f"{cls.__name__} is not in {module}'s tree"
        if cls is not SyncFenced:  # on the wire it is the refusal it extends
            assert "code" in vars(cls), cls
    codes = [c.code for c in tree(engine.errors) + tree(ownership.errors) if "code" in vars(c)]
    assert len(codes) == len(set(codes))


def test_the_partner_being_down_is_a_sync_error_the_api_answers_with_503() -> None:
    down = PartnerDown("partner 127.0.0.1:2005 unreachable")
    assert isinstance(down, SyncError) and down.code == "partner_down"
    assert http_status(down) == 503
    assert lmtp_reply(down) == S451_LOCAL_ERROR


def test_a_fenced_sync_keeps_the_refusals_code_title_and_status() -> None:
    fenced = SyncFenced("beta owns it", OwnershipView("ann", "beta", "beta", 3, "normal"))
    assert isinstance(fenced, SyncRefused) and fenced.code == "sync_refused"
    assert http_status(fenced) == 409
    assert problem_title(fenced) == "SyncRefused"
    assert problem_title(NoSuchAccount("x")) == "NoSuchAccount"


def test_the_nearest_class_decides_whatever_the_order_of_the_tables() -> None:
    class NoSuchAlias(NoSuchAccount):  # a subclass nobody mapped
        pass

    assert http_status(NoSuchAlias("x")) == 404
    assert lmtp_reply(NoSuchAlias("x")) == S550_NO_SUCH_USER
    # NotFound's own entry does not shadow NoSuchAccount's (LMTP 550 is only
    # for a missing account; a missing mailbox is a temporary failure).
    assert lmtp_reply(NoSuchMailbox("x")) == S451_LOCAL_ERROR
    assert imap_code(NoSuchMailbox("x")) == imap_code(NotFound("x")) == ("NO", "NONEXISTENT")
    assert lmtp_reply(NotOwner("ann", "beta", 2)).startswith("451 4.3.0 Account is served by beta")
    # Held for a switchover or a move: the owner is still this node, so the
    # reply does not name it as the place to go.
    held = lmtp_reply(NotOwner("ann", "alpha", 2, moving=True))
    assert held == "451 4.3.0 Account is being handed over to another node; try again"
    assert http_status(EngineError("x")) == 500
