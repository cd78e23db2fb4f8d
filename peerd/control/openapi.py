"""The OpenAPI 3.1 document of the control API, served at ``/v1/openapi.json``.

How this works: each route is one :class:`Operation` in :data:`OPERATIONS`
(later parts append theirs); :func:`document` renders them. Keeping the
request schemas here, next to nothing else, lets schemathesis fuzz exactly
what the handlers accept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["OPERATIONS", "Operation", "document"]


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    summary: str
    body: dict[str, Any] | None = None
    query: tuple[tuple[str, str], ...] = ()
    public: bool = False
    responses: tuple[int, ...] = (200,)
    tags: tuple[str, ...] = field(default=())


_ACCOUNT_NAME = {"type": "string", "pattern": r"^[A-Za-z0-9._%+\-=]{1,64}(@[A-Za-z0-9.\-]{1,64})?$"}

OPERATIONS: list[Operation] = [
    Operation("get", "/v1/health", "Liveness: answers once the node serves", public=True),
    Operation(
        "get",
        "/v1/status",
        "Node status: counters, sync log, partner (?account=: one account's)",
        query=(("account", "string"),),
        responses=(200, 404, 422),
    ),
    Operation("get", "/v1/accounts", "List accounts", query=(("owner", "string"),)),
    Operation(
        "post",
        "/v1/accounts",
        "Create an account (and its INBOX)",
        body={
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": _ACCOUNT_NAME,
                "password": {"type": "string", "minLength": 1, "maxLength": 1024},
                "password_hash": {"type": "string", "minLength": 1, "maxLength": 255},
                "quota_limit": {
                    "type": ["integer", "null"],
                    "minimum": 0,
                    "maximum": 9223372036854775807,
                },
                "owner": {"type": "string", "minLength": 1, "maxLength": 64},
            },
            "additionalProperties": False,
        },
        responses=(201, 404, 409, 422),
    ),
    Operation("get", "/v1/accounts/{name}", "One account", responses=(200, 404)),
    Operation("delete", "/v1/accounts/{name}", "Delete an account", responses=(200, 404, 409)),
    Operation(
        "put",
        "/v1/accounts/{name}/password",
        "Set an account's password",
        body={
            "type": "object",
            "required": ["password"],
            "properties": {"password": {"type": "string", "minLength": 1, "maxLength": 1024}},
            "additionalProperties": False,
        },
        responses=(200, 404, 409, 422),
    ),
    Operation(
        "put",
        "/v1/accounts/{name}/quota",
        "Set an account's quota in bytes (null: unlimited)",
        body={
            "type": "object",
            "properties": {
                "quota_limit": {
                    "type": ["integer", "null"],
                    "minimum": 0,
                    "maximum": 9223372036854775807,
                }
            },
            "additionalProperties": False,
        },
        responses=(200, 404, 409, 422),
    ),
    Operation(
        "get", "/v1/accounts/{name}/mailboxes", "An account's mailboxes", responses=(200, 404)
    ),
    Operation(
        "get",
        "/v1/accounts/{name}/mailboxes/{mailbox}",
        "One mailbox with its records (uid, GUID, flags, modseq)",
        query=(("expunged", "string"),),
        responses=(200, 404),
    ),
]


def _operation(op: Operation) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    for part in op.path.split("/"):
        if part.startswith("{"):
            params.append(
                {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            )
    for name, kind in op.query:
        params.append({"name": name, "in": "query", "required": False, "schema": {"type": kind}})
    responses: dict[str, Any] = {}
    for status in op.responses:
        content_type = "application/json" if status < 400 else "application/problem+json"
        responses[str(status)] = {
            "description": "OK" if status < 400 else "problem",
            "content": {content_type: {"schema": {"type": "object"}}},
        }
    if not op.public:
        responses["401"] = {
            "description": "missing or wrong bearer token",
            "content": {"application/problem+json": {"schema": {"type": "object"}}},
        }
    body: dict[str, Any] = {"summary": op.summary, "parameters": params, "responses": responses}
    if op.tags:
        body["tags"] = list(op.tags)
    if op.public:
        body["security"] = []
    if op.body is not None:
        body["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": op.body}},
        }
    return body


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "peerd control API", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }
