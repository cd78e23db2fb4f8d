"""``peerctl``: the admin CLI, a client of the control API."""

from peerd.cli.peerctl import main

__all__ = ["main"]
