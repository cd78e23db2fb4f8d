"""``/metrics``: Prometheus text exposition (version 0.0.4), written by hand.

How this works: counters the node keeps (``node.counters``) become
``peerd_<name>_total``; gauges are read at scrape time from the store and the
status providers (sync-log depth, replication lag, accounts owned per node,
reconcile results, proxy hook state). No client library: the format is a
few lines of text.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session

from engine import synclog
from ownership import table as ownership_table
from peerd.control.api import NODE_KEY

__all__ = ["metrics_route"]

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
    "auth_failures": "Failed logins",
}


def _line(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return f"peerd_{name}{{{inner}}} {value}"
    return f"peerd_{name} {value}"


async def metrics_route(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    lines: list[str] = []
    counters = dict(node.counters.values)
    for name in sorted(set(_HELP) | set(counters)):
        lines.append(f"# HELP peerd_{name}_total {_HELP.get(name, name)}")
        lines.append(f"# TYPE peerd_{name}_total counter")
        lines.append(_line(f"{name}_total", counters.get(name, 0)))

    def read(session: Session) -> dict[str, Any]:
        return {"depth": synclog.depth(session), "owned": ownership_table.count_by_owner(session)}

    info = await node.store.read(read)
    lines += [
        "# HELP peerd_sync_log_depth Changes not yet replicated",
        "# TYPE peerd_sync_log_depth gauge",
    ]
    lines.append(_line("sync_log_depth", info["depth"]))
    lines += [
        "# HELP peerd_accounts_owned Accounts owned, per node",
        "# TYPE peerd_accounts_owned gauge",
    ]
    for owner, count in sorted(info["owned"].items()):
        lines.append(_line("accounts_owned", count, {"node": owner}))
    replication = node.extra_status.get("replication")
    if replication is not None:
        status = await replication()
        lines += [
            "# HELP peerd_replication_lag_seconds Age of the oldest unreplicated change",
            "# TYPE peerd_replication_lag_seconds gauge",
        ]
        lines.append(_line("replication_lag_seconds", status["lag_seconds"]))
        lines += [
            "# HELP peerd_partner_reachable 1 if the last sync reached the partner",
            "# TYPE peerd_partner_reachable gauge",
        ]
        lines.append(_line("partner_reachable", 1 if status["reachable"] else 0))
    reconcile = node.extra_status.get("reconcile")
    if reconcile is not None:
        last = (await reconcile()).get("last")
        if last:
            lines += [
                "# HELP peerd_reconcile_last Results of the last full reconcile",
                "# TYPE peerd_reconcile_last gauge",
            ]
            for key in (
                "accounts_checked",
                "mailboxes_repaired",
                "messages_copied_back",
                "seconds",
            ):
                lines.append(_line("reconcile_last", last[key], {"figure": key}))
    hooks = node.extra_status.get("proxy_hooks")
    if hooks is not None:
        lines += [
            "# HELP peerd_proxy_hook_ok 1 if the hook's last call was acknowledged",
            "# TYPE peerd_proxy_hook_ok gauge",
        ]
        for name, state in (await hooks()).items():
            lines.append(_line("proxy_hook_ok", 1 if state["ok"] else 0, {"hook": name}))
    lines += [
        "# HELP peerd_inflight_deliveries LMTP deliveries in progress",
        "# TYPE peerd_inflight_deliveries gauge",
    ]
    lines.append(_line("inflight_deliveries", node.inflight))
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8")
