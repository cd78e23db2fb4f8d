"""``/metrics``: Prometheus text exposition (version 0.0.4), written by hand.

How this works: :func:`render` turns the node's status
(:class:`~peerd.control.status.NodeStatus`, the same object ``/v1/status``
renders as JSON) into text at scrape time. Counters the node keeps become
``peerd_<name>_total``; gauges are the sync-log depth, replication lag,
accounts owned per node, the last reconcile's figures, each proxy hook's
state and the input budget's use. No client library: the format is a few lines of text.
"""

from __future__ import annotations

from peerd.control.status import NodeStatus

__all__ = ["render"]

_HELP = {
    "lmtp_delivered": "Recipients delivered over LMTP",
    "lmtp_refused": "Recipients refused after DATA",
    "lmtp_rcpt_refused": "Recipients refused at RCPT",
    "lmtp_temp_failures": "Recipients given a temporary failure",
    "lmtp_worker_restarts": "LMTP worker processes started again after they exited",
    "syncs": "Account syncs to the partner",
    "sync_failures": "Failed syncs",
    "sync_fenced": "Syncs refused by the ownership fence",
    "sync_deltas": "Rolling syncs sent as one delta request (the fast path)",
    "sync_delta_fallbacks": "Deltas the replica refused (not in the marked state): synced in full",
    "sync_auth_failures": "Sync requests with wrong credentials",
    "sync_bytes_sent": "Bytes sent on the sync channel",
    "sync_bytes_received": "Bytes received on the sync channel",
    "sync_applied": "Pushes applied from the partner",
    "conflicts_repaired": "Messages kept or renumbered by the no-loss rule",
    "proxy_hook_failures": "Proxy hook calls that failed",
    "reconciles": "Full reconcile runs",
    "failovers": "Failovers run here",
    "switchovers": "Switchovers run here",
    "auth_failures": "Failed logins (wrong password, unknown user or throttled)",
    "auth_throttled": "Logins refused unchecked by the failed-login throttle",
    "bodies_damaged": "Message bodies found damaged here (missing, cut short, not matching the GUID)",
    "bodies_repaired": "Damaged bodies replaced with the partner's whole copy",
    "bodies_unrepairable": "Damaged bodies the partner had no whole copy of either",
    "scrubs": "Spool scrubs run",
    "sieve_rejected": "Recipients refused by a Sieve reject or ereject",
    "sieve_redirected": "Messages a Sieve redirect sent through the relay",
    "sieve_vacation_replies": "Sieve vacation replies sent",
    "input_memory_waits": "Commands and requests that waited for room in the input budget",
    "input_memory_refusals": "Commands and requests refused: no room in the input budget in time",
    "lmtp_input_memory_waits": "LMTP messages that waited for room in an LMTP process's budget",
    "lmtp_input_memory_refusals": "LMTP messages refused (452 4.3.1): no room in time",
}


def _line(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return f"peerd_{name}{{{inner}}} {value}"
    return f"peerd_{name} {value}"


def _gauge(name: str, text: str) -> list[str]:
    return [f"# HELP peerd_{name} {text}", f"# TYPE peerd_{name} gauge"]


def render(status: NodeStatus) -> str:
    lines: list[str] = []
    counters = status.counters
    for name in sorted(set(_HELP) | set(counters)):
        lines.append(f"# HELP peerd_{name}_total {_HELP.get(name, name)}")
        lines.append(f"# TYPE peerd_{name}_total counter")
        lines.append(_line(f"{name}_total", counters.get(name, 0)))
    lines += _gauge("sync_log_depth", "Changes not yet replicated")
    lines.append(_line("sync_log_depth", status.sync_log_depth))
    lines += _gauge("accounts_owned", "Accounts owned, per node")
    for owner, count in sorted(status.owned.items()):
        lines.append(_line("accounts_owned", count, {"node": owner}))
    replication = status.replication
    if replication is not None:
        lines += _gauge("replication_lag_seconds", "Age of the oldest unreplicated change")
        lines.append(_line("replication_lag_seconds", replication.lag_seconds))
        lines += _gauge("partner_reachable", "1 if the last request to the partner was answered")
        lines.append(_line("partner_reachable", 1 if replication.reachable else 0))
        lines += _gauge(
            "sync_refused_accounts", "Accounts whose data the partner refuses (see status)"
        )
        lines.append(_line("sync_refused_accounts", len(replication.refused_accounts)))
        lines += _gauge("rolling_stopped", "1 if sync_shutdown_file stopped rolling replication")
        lines.append(_line("rolling_stopped", 0 if replication.rolling == "running" else 1))
    if status.channels:
        lines += _gauge("channel_lag_seconds", "Age of the oldest change not yet on the channel")
        for name, channel in sorted(status.channels.items()):
            lines.append(_line("channel_lag_seconds", channel.lag_seconds, {"channel": name}))
        lines += _gauge("channel_sync_log_depth", "Changes not yet replicated to the channel")
        for name, channel in sorted(status.channels.items()):
            lines.append(_line("channel_sync_log_depth", channel.sync_log_depth, {"channel": name}))
        lines += _gauge("channel_reachable", "1 if the last request to the channel was answered")
        for name, channel in sorted(status.channels.items()):
            lines.append(
                _line("channel_reachable", 1 if channel.reachable else 0, {"channel": name})
            )
    last = status.reconcile.last if status.reconcile is not None else None
    if last is not None:
        lines += _gauge("reconcile_last", "Results of the last full reconcile")
        figures = {
            "accounts_checked": last.accounts_checked,
            "mailboxes_repaired": last.mailboxes_repaired,
            "messages_copied_back": last.messages_copied_back,
            "seconds": last.seconds,
        }
        for key, value in figures.items():
            lines.append(_line("reconcile_last", value, {"figure": key}))
    if status.proxy_hooks is not None:
        lines += _gauge("proxy_hook_ok", "1 if the hook's last call was acknowledged")
        for name, state in status.proxy_hooks.items():
            lines.append(_line("proxy_hook_ok", 1 if state.ok else 0, {"hook": name}))
    integrity = status.integrity
    if integrity is not None:
        lines += _gauge("damaged_bodies", "Bodies known damaged here now, not yet repaired")
        lines.append(_line("damaged_bodies", integrity.damaged))
        lines += _gauge("unrepairable_bodies", "Damaged bodies no node has a whole copy of")
        lines.append(_line("unrepairable_bodies", integrity.unrepairable))
        if integrity.last is not None:
            lines += _gauge("scrub_last", "Results of the last scrub")
            scrub = integrity.last
            figures = {
                "files": scrub.files,
                "bytes": scrub.bytes,
                "seconds": scrub.seconds,
                "damaged": len(scrub.damaged),
                "repaired": len(scrub.repaired),
                "unrepairable": len(scrub.unrepairable),
            }
            for key, value in figures.items():
                lines.append(_line("scrub_last", value, {"figure": key}))
    if status.database is not None and status.database.checked:
        lines += _gauge("database_ok", "1 if the last database integrity check found no damage")
        lines.append(_line("database_ok", 1 if status.database.ok else 0))
    lines += _gauge("inflight_deliveries", "LMTP deliveries in progress")
    lines.append(_line("inflight_deliveries", status.inflight_deliveries))
    budget = status.input_memory
    if budget is not None:
        lines += _gauge("input_memory_bytes", "Client input the daemon holds in memory now")
        lines.append(_line("input_memory_bytes", budget.used))
        lines += _gauge("input_memory_limit_bytes", "The daemon's input budget ([limits])")
        lines.append(_line("input_memory_limit_bytes", budget.limit))
        lines += _gauge("input_memory_waiting", "Commands and requests waiting for room now")
        lines.append(_line("input_memory_waiting", budget.waiting))
    return "\n".join(lines) + "\n"
