"""The directory's errors.

::

    engine.errors.TemporaryFailure
     └── DirectoryUnavailable     the directory database did not answer

A subclass of the engine's ``TemporaryFailure``, so the one error map
(:mod:`peerd.node.errormap`) already gives it its replies: HTTP 503, a
socketmap ``TEMP`` (Postfix defers, never bounces), a temporary failure to
nginx.
"""

from __future__ import annotations

from engine.errors import TemporaryFailure

__all__ = ["DirectoryUnavailable"]


class DirectoryUnavailable(TemporaryFailure):
    code = "directory_unavailable"
