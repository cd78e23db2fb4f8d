"""The ownership table: which node is master for each account, and since when.

One row per account, on both nodes. ``epoch`` grows by one at every change of
owner and never goes down; when the two nodes disagree, the higher epoch wins.
``state`` is ``normal``, ``failed_over`` (the owner took the account while its
home was down) or ``moving`` (a switchover is draining it).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from engine.db import Base, utcnow

__all__ = ["STATES", "Ownership"]

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
