"""What the LMTP front hands its backend after DATA: one spooled message.

A module of its own so the front and the LMTP worker processes
(:mod:`peerd.services.lmtp.worker`) use it without importing the store's
side (:mod:`peerd.services.lmtp.backend`, SQLAlchemy): a worker starts in a
fraction of the time.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.spool import Staged

__all__ = ["Message"]


@dataclass(frozen=True, slots=True)
class Message:
    """A message the front has spooled (``staged``) for the given recipients."""

    recipients: tuple[str, ...]
    staged: Staged
    size: int
    message_id: str | None
    # The envelope sender (MAIL FROM; "" for the null path). None: the front
    # did not say; Sieve then reads the Return-Path header, if any.
    mail_from: str | None = None
    # The sending MTA's queue id (its Received header's "id"), for the mail log.
    queue_id: str | None = None
