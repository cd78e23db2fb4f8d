"""Which release this is: ``peerd --version`` and ``peerctl --version`` print it."""

from __future__ import annotations

__all__ = ["DISTRIBUTION", "release"]

DISTRIBUTION = "peerd"


def release() -> str:
    """The installed distribution's version (a checkout run without
    ``pip install`` has none: ``unknown``)."""
    # Imported here: importlib.metadata is a tenth of what an LMTP worker
    # process would import at start, and only --version and backups ask.
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"
