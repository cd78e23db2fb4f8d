"""Ownership rows from the wire: read in one place, every field checked."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import SyncProtocolError
from ownership.models import STATES
from ownership.rows import OwnershipView, parse_row

names = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=64)


@given(
    account=names,
    owner=names,
    home=names,
    epoch=st.integers(0, 2**63 - 1),
    state=st.sampled_from(STATES),
)
def test_a_row_survives_the_wire(
    account: str, owner: str, home: str, epoch: int, state: str
) -> None:
    row = OwnershipView(account, owner, home, epoch, state)
    assert parse_row(row.to_json()) == row
    without = {k: v for k, v in row.to_json().items() if k != "account"}
    assert parse_row(without, account) == row


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        {"owner": "beta", "home": "beta", "epoch": 1},  # no account
        {"account": "ann", "home": "beta", "epoch": 1},  # no owner
        {"account": "ann", "owner": "", "home": "beta", "epoch": 1},
        {"account": "ann", "owner": "beta", "home": "beta", "epoch": -1},
        {"account": "ann", "owner": "beta", "home": "beta", "epoch": True},
        {"account": "ann", "owner": "beta", "home": "beta", "epoch": "2"},
        {"account": "ann", "owner": "beta", "home": "beta", "epoch": 2**63},
        {"account": "ann", "owner": "beta", "home": "beta", "epoch": 1, "state": "gone"},
        {"account": "ann", "owner": "b" * 65, "home": "beta", "epoch": 1},
    ],
)
def test_a_malformed_row_is_a_protocol_error(value: Any) -> None:
    with pytest.raises(SyncProtocolError):
        parse_row(value)
