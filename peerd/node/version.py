"""Which release this is: ``peerd --version`` and ``peerctl --version`` print it."""

from __future__ import annotations

from importlib import metadata

__all__ = ["DISTRIBUTION", "release"]

DISTRIBUTION = "peerd"


def release() -> str:
    """The installed distribution's version (a checkout run without
    ``pip install`` has none: ``unknown``)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"
