"""The directory's errors.

::

    engine.errors.TemporaryFailure
     └── DirectoryUnavailable     the directory database did not answer
    engine.errors.InvalidArgument
     └── TransferRefused          a move between pairs that cannot start (422)
    engine.errors.SyncRefused
     ├── TransferStuck            a move whose account changed hands meanwhile (409)
     └── TransferCommitted        an abort asked after the cut-over committed (409)

A subclass of the engine's ``TemporaryFailure``, so the one error map
(:mod:`peerd.node.errormap`) already gives it its replies: HTTP 503, a
socketmap ``TEMP`` (Postfix defers, never bounces), a temporary failure to
nginx.
"""

from __future__ import annotations

from engine.errors import InvalidArgument, SyncRefused, TemporaryFailure

__all__ = ["DirectoryUnavailable", "TransferCommitted", "TransferRefused", "TransferStuck"]


class DirectoryUnavailable(TemporaryFailure):
    code = "directory_unavailable"


class TransferRefused(InvalidArgument):
    """No such pair, the account's own pair, no node of it up, another move
    of the account under way, or the account not owned by this node."""

    code = "transfer_refused"


class TransferStuck(SyncRefused):
    """The account is owned by neither this node nor the move's target: a
    failover or switchover moved it while the move was under way."""

    code = "transfer_stuck"


class TransferCommitted(SyncRefused):
    """``account move --abort`` after the cut-over committed: the target
    pair serves the account (or is about to), so the move goes on; move the
    account back instead."""

    code = "transfer_committed"
