"""The OpenAPI 3.1 document of the control API, served at ``/v1/openapi.json``.

How this works: :func:`document` renders the route table
(:data:`peerd.control.routes.ROUTES`): each route's path and query
parameters, its body schema (:func:`peerd.control.schema.json_schema` of the
same class the application checks requests against) and its answers.
schemathesis fuzzes the API from this document, so it tests exactly what the
handlers accept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from peerd.control.call import Route
from peerd.control.schema import json_schema, query_parameters

__all__ = ["document", "openapi_path"]

_PARAM = re.compile(r"\{(\w+)(:[^}]*)?\}")


def openapi_path(path: str) -> str:
    """``/v1/accounts/{name}/mailboxes/{mailbox:.+}`` as OpenAPI writes it."""
    return _PARAM.sub(r"{\1}", path)


def _operation(route: Route) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name, _ in _PARAM.findall(route.path)
    ]
    if route.query is not None:
        params += query_parameters(route.query)
    params += [
        {"name": name, "in": "header", "description": text, "schema": {"type": "string"}}
        for name, text in route.headers_in
    ]
    responses: dict[str, Any] = {}
    for status in route.responses:
        content_type = route.answer if status < 400 else "application/problem+json"
        answer: dict[str, Any] = {"description": "OK" if status < 400 else "problem"}
        if content_type:
            schema = {"type": "object"} if content_type.endswith("json") else {"type": "string"}
            answer["content"] = {content_type: {"schema": schema}}
        if status < 400 and route.headers_out:
            answer["headers"] = {
                name: {"description": text, "schema": {"type": "string"}}
                for name, text in route.headers_out
            }
        responses[str(status)] = answer
    if route.partner and "409" not in responses:
        responses["409"] = {
            "description": "problem (no_partner: this node has no partner configured)",
            "content": {"application/problem+json": {"schema": {"type": "object"}}},
        }
    if not route.public:
        responses["401"] = {
            "description": "missing or wrong bearer token",
            "content": {"application/problem+json": {"schema": {"type": "object"}}},
        }
    body: dict[str, Any] = {"summary": route.summary, "parameters": params, "responses": responses}
    if route.public:
        body["security"] = []
    if route.body is not None:
        body["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": json_schema(route.body)}},
        }
    return body


def document(routes: Iterable[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(openapi_path(route.path), {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "peerd control API", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }
