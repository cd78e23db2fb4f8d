"""Cyrus's sync options that have no meaning here, and what to use instead.

How this works: an admin coming from Cyrus types ``imapd.conf`` names into
``[sync]``. The ones peerd implements are keys of
:class:`~peerd.node.config.SyncConfig` (``sync_host``, ``sync_port``,
``sync_authname``, ``sync_password``, ``sync_compress``, ``sync_log``,
``sync_repeat_interval``, ``sync_reconnect_maxwait``, ``sync_timeout``,
``sync_batchsize``, ``sync_shutdown_file``, ``sync_log_chain``). The ones below
are refused at load (``peerd check-config`` exits 2) with the reason and what
to use: one table, so the message an admin reads and the one the tests check
are the same text. ``docs/configuration.md`` shows the same table.
"""

from __future__ import annotations

from typing import Final

__all__ = ["REFUSED_SYNC_OPTIONS", "refusal"]

REFUSED_SYNC_OPTIONS: Final[dict[str, str]] = {
    "sync_realm": (
        "the sync channel authenticates with HTTP Basic (sync_authname/sync_password)"
        " over TLS, not SASL: there is no realm; put the whole user name in sync_authname"
    ),
    "sync_log_channels": (
        "a channel here is a table naming its node: write [sync.channels.NAME] with"
        " sync_host, sync_port, sync_authname, sync_password, sync_tls (the partner"
        " needs no channel: it is [sync] itself)"
    ),
    "sync_rightnow_channel": (
        'peerd has no separate "right now" log: sync_mode = "synchronous" makes LMTP'
        " wait for the partner before its 250"
    ),
    "sync_try_imap": (
        "peerd never replicates over IMAP: the sync listener ([listen] sync) is the only"
        " channel; a partner without one is an error, not a fallback"
    ),
    "sync_log_unsuppressable_mailboxes": (
        "peerd never suppresses sync-log rows (every change is logged in the same"
        " transaction), so there is nothing to exempt"
    ),
    "sync_cache_db": (
        "peerd keeps no sync cache database: replication compares each mailbox's"
        " state with the replica's (the sync log says only which mailboxes changed)"
    ),
    "sync_cache_db_path": (
        "peerd keeps no sync cache database: replication compares each mailbox's"
        " state with the replica's (the sync log says only which mailboxes changed)"
    ),
}


def refusal(table: str, key: str) -> str | None:
    """The message for a refused Cyrus option at ``[table] key``, or None."""
    why = REFUSED_SYNC_OPTIONS.get(key)
    if why is None:
        return None
    return f"[{table}] {key} is a Cyrus option with no meaning in peerd: {why}"
