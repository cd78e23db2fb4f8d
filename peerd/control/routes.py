"""The control API's routes, each described once: the table.

How this works: one :class:`~peerd.control.call.Route` per method and path,
in the order ``docs/api.md`` lists them. :func:`peerd.control.app.build_app`
adds each to the aiohttp application (a ``partner`` route only when a partner
is configured) with its body and query checked against their classes, and
:func:`peerd.control.openapi.document` renders the same table as
``/v1/openapi.json``. A new route is one more entry here, nothing else.
"""

from __future__ import annotations

from aiohttp import web

from peerd.control import accounts, integrity, pairops, reports, routing, syncops, textindex
from peerd.control.call import Call, Route
from peerd.control.openapi import document

__all__ = ["ROUTES"]


async def openapi(call: Call[None, None]) -> web.Response:
    return web.json_response(document(ROUTES))


ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/v1/health",
        "Liveness: answers once the node serves",
        reports.health,
        public=True,
    ),
    Route(
        "GET",
        "/v1/openapi.json",
        "This document",
        openapi,
        public=True,
    ),
    Route(
        "GET",
        "/v1/status",
        "Node status: counters, sync log, partner (?account=: one account's)",
        reports.status,
        query=reports.AccountQuery,
        responses=(200, 404, 422),
    ),
    Route(
        "GET",
        "/v1/synclog",
        "Changes not yet replicated, per account (all, or one)",
        reports.list_synclog,
        query=reports.AccountQuery,
    ),
    Route(
        "GET",
        "/v1/accounts",
        "List accounts",
        accounts.list_accounts,
        query=accounts.AccountsQuery,
    ),
    Route(
        "POST",
        "/v1/accounts",
        "Create an account (and its INBOX)",
        accounts.create_account,
        body=accounts.NewAccount,
        responses=(201, 404, 409, 422),
    ),
    Route(
        "GET",
        "/v1/accounts/{name}",
        "One account",
        accounts.get_account,
        responses=(200, 404),
    ),
    Route(
        "DELETE",
        "/v1/accounts/{name}",
        "Delete an account",
        accounts.delete_account,
        responses=(200, 404, 409),
    ),
    Route(
        "PUT",
        "/v1/accounts/{name}/password",
        "Set an account's password",
        accounts.set_password,
        body=accounts.NewPassword,
        responses=(200, 404, 409, 422),
    ),
    Route(
        "PUT",
        "/v1/accounts/{name}/quota",
        "Set an account's quota in bytes (null: unlimited)",
        accounts.set_quota,
        body=accounts.NewQuota,
        responses=(200, 404, 409, 422),
    ),
    Route(
        "GET",
        "/v1/accounts/{name}/mailboxes",
        "An account's mailboxes",
        accounts.list_mailboxes,
        responses=(200, 404),
    ),
    Route(
        "GET",
        "/v1/accounts/{name}/mailboxes/{mailbox:.+}",
        "One mailbox with its records (uid, GUID, flags, modseq)",
        accounts.show_mailbox,
        query=accounts.MailboxQuery,
        responses=(200, 404),
    ),
    Route(
        "POST",
        "/v1/replicate",
        "Sync accounts to the partner now (sync_client -u / -m / -A)",
        syncops.replicate_route,
        body=syncops.ReplicateBody,
        responses=(200, 404, 422),
        partner=True,
    ),
    Route(
        "POST",
        "/v1/synclog",
        "Queue an account or mailboxes for rolling replication (cyr_synclog)",
        syncops.queue_route,
        body=syncops.QueueBody,
        responses=(200, 404, 422),
        partner=True,
    ),
    Route(
        "GET",
        "/v1/owner/{account}",
        "An account's ownership row",
        pairops.owner_route,
        responses=(200, 404),
        partner=True,
    ),
    Route(
        "POST",
        "/v1/failover",
        "Take every account the (dead) partner owns",
        pairops.failover_route,
        body=pairops.FailoverBody,
        responses=(200, 409, 422),
        partner=True,
    ),
    Route(
        "POST",
        "/v1/switchover",
        "Move accounts to the partner (planned, both up)",
        pairops.switchover_route,
        body=pairops.SwitchoverBody,
        responses=(200, 404, 409, 422, 503),
        partner=True,
    ),
    Route(
        "POST",
        "/v1/failback",
        "Bring home every account whose home is this node, once it has caught up",
        pairops.failback_route,
        responses=(200, 409, 503),
        partner=True,
    ),
    Route(
        "POST",
        "/v1/accounts/{name}/move",
        "Change an account's home",
        pairops.move_route,
        body=pairops.MoveBody,
        responses=(200, 404, 422),
        partner=True,
    ),
    Route(
        "GET",
        "/v1/route/nginx",
        "nginx mail auth_http: verify a login, name the owner's address (headers only)",
        routing.nginx_auth,
        public=True,
        answer="",
        headers_in=(
            ("Auth-User", "the login name (percent-encoded by nginx)"),
            ("Auth-Pass", "the password (percent-encoded by nginx)"),
            ("Auth-Protocol", "imap, pop3 or smtp"),
            ("Auth-Method", "plain or login (others are refused)"),
            ("Auth-Login-Attempt", "the attempt's number in this connection"),
            ("Client-IP", "the client's address"),
            ("X-Auth-Key", "[routing] auth_http_secret, when set (nginx auth_http_header)"),
        ),
        headers_out=(
            ("Auth-Status", "OK, or the error text shown to the client"),
            ("Auth-Server", "the owner's address for the protocol (on OK)"),
            ("Auth-Port", "the owner's port for the protocol (on OK)"),
            ("Auth-Wait", "seconds before the client may try again (on failure)"),
            ("Auth-Error-Code", "the SMTP error code (smtp only, on failure)"),
        ),
    ),
    Route(
        "GET",
        "/v1/route/{account}",
        "Where an account is served: owner, addresses, epoch",
        routing.route,
        responses=(200, 404),
    ),
    Route(
        "POST",
        "/v1/reconcile",
        "Run a full reconcile now (one account, or every owned account)",
        syncops.reconcile_route,
        body=syncops.ReconcileBody,
        responses=(200, 404, 422),
        partner=True,
    ),
    Route(
        "POST",
        "/v1/spool/sweep",
        "Run a spool sweep now: remove the files condemned a grace ago, condemn the newly unnamed",
        syncops.sweep_route,
        body=syncops.SweepBody,
        responses=(200, 422),
    ),
    Route(
        "POST",
        "/v1/index/rebuild",
        "Extract again the full-text index's text of one account's messages, or every account's",
        textindex.rebuild_route,
        body=textindex.RebuildBody,
        responses=(200, 404, 422),
    ),
    Route(
        "GET",
        "/v1/index",
        "How many of one account's (or the node's) messages the full-text index holds",
        textindex.index_route,
        query=textindex.IndexQuery,
        responses=(200, 404),
    ),
    Route(
        "POST",
        "/v1/scrub",
        "Read every message body (or one account's), repair damaged ones from the partner",
        integrity.scrub_route,
        body=integrity.ScrubBody,
        responses=(200, 202, 404, 422),
    ),
    Route(
        "POST",
        "/v1/check-db",
        "Run the database's own integrity check now (SQLite quick_check, PostgreSQL amcheck)",
        integrity.check_db_route,
        body=integrity.CheckDbBody,
        responses=(200, 422),
    ),
    Route(
        "GET",
        "/metrics",
        "Prometheus metrics (text exposition 0.0.4)",
        reports.prometheus,
        public=True,
        answer="text/plain",
    ),
)
