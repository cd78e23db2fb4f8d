"""An ownership row as it travels between the nodes, and the one reader of it.

How this works: a row crosses the wire as a JSON object ``{account, owner,
home, epoch, state}`` (the sync listener's ``ownership`` request and answer,
the ``ownership`` member of every fenced sync request, a fence's 409 body,
a switchover's answer). :class:`OwnershipView` is that row as a value;
:func:`parse_row` is the only place one is read from the wire: every field
is checked (types, lengths, the state one of :data:`~ownership.models.STATES`)
and anything else is a :class:`~engine.errors.SyncProtocolError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import SyncProtocolError, shown
from ownership.models import STATES, Ownership

__all__ = ["OwnershipView", "parse_row", "row_view"]

# Column widths of ownership.models.Ownership.
_ACCOUNT_MAX, _NODE_MAX = 255, 64


@dataclass(frozen=True, slots=True)
class OwnershipView:
    account: str
    owner: str
    home: str
    epoch: int
    state: str

    def to_json(self) -> dict[str, object]:
        return {
            "account": self.account,
            "owner": self.owner,
            "home": self.home,
            "epoch": self.epoch,
            "state": self.state,
        }


def row_view(row: Ownership) -> OwnershipView:
    return OwnershipView(row.account, row.owner, row.home, row.epoch, row.state)


def _text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise SyncProtocolError(f"{what} must be a string of 1 to {limit} characters")
    return value


def parse_row(value: Any, account: str | None = None) -> OwnershipView:
    """A row from the wire; ``account`` when the object does not carry it
    (a fenced request names the account beside its ``ownership`` object)."""
    if not isinstance(value, dict):
        raise SyncProtocolError("ownership must be an object with owner, home, epoch, state")
    name = _text(account if account is not None else value.get("account"), "account", _ACCOUNT_MAX)
    epoch = value.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < 2**63:
        raise SyncProtocolError("epoch must be an integer from 0 to 2**63-1")
    state = value.get("state", "normal")
    if state not in STATES:
        raise SyncProtocolError(f"unknown ownership state {shown(state)}")
    return OwnershipView(
        name,
        _text(value.get("owner"), "owner", _NODE_MAX),
        _text(value.get("home"), "home", _NODE_MAX),
        epoch,
        str(state),
    )
