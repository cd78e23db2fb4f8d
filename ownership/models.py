"""The ownership table: which node is master for each account, and since when.

One row per account, on both nodes. ``epoch`` grows by one at every change of
owner and never goes down; when the two nodes disagree, the higher epoch wins.
``state`` is ``normal``, ``failed_over`` (the owner took the account while its
home was down) or ``moving`` (a switchover is draining it).

``account_renames`` holds the renames the partner has not taken yet (old
name -> new name, the epoch it was renamed at). The owner sends each one
before it syncs the new name (``rename`` on the sync channel), and deletes it
once the partner acknowledged; while it is there the old name is not
adopted back from the partner's rows, not created again and not taken as a
new name, so a partner that was down during the rename converges on the new
name and cannot bring the old one back.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from engine.db import Base, utcnow

__all__ = ["STATES", "Ownership", "Rename"]

STATES = ("normal", "failed_over", "moving")


class Ownership(Base):
    __tablename__ = "ownership"

    account: Mapped[str] = mapped_column(String(255), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    home: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int] = mapped_column(BigInteger, default=1)
    state: Mapped[str] = mapped_column(String(16), default="normal")
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    reason: Mapped[str] = mapped_column(String(255), default="")


class Rename(Base):
    """An account rename the partner has not acknowledged yet."""

    __tablename__ = "account_renames"

    old: Mapped[str] = mapped_column(String(255), primary_key=True)
    new: Mapped[str] = mapped_column(String(255), index=True)
    epoch: Mapped[int] = mapped_column(BigInteger)
    renamed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
