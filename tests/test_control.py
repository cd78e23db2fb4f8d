"""The control API's one route table: the OpenAPI document and the request checks
come from the same description, and a real pair of daemons answers by it."""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from engine.errors import InvalidArgument
from peerd.control import pairops, syncops
from peerd.control.accounts import NewAccount, NewQuota
from peerd.control.openapi import document, openapi_path
from peerd.control.routes import ROUTES
from peerd.control.schema import json_schema, parse
from tests.harness.daemons import TOKEN


def test_every_route_is_described_once_and_documented_from_its_classes() -> None:
    keys = [(r.method, openapi_path(r.path)) for r in ROUTES]
    assert len(keys) == len(set(keys))
    paths = document(ROUTES)["paths"]
    for route in ROUTES:
        operation = paths[openapi_path(route.path)][route.method.lower()]
        assert operation["summary"] == route.summary
        if route.body is None:
            assert "requestBody" not in operation
        else:
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            assert schema == json_schema(route.body)
            names = {f.name for f in dataclasses.fields(route.body)}
            assert set(schema["properties"]) == names
        if route.query is not None:
            query = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
            assert query == {f.name for f in dataclasses.fields(route.query)}
        assert ("security" in operation) == route.public


def test_bodies_are_checked_against_the_classes_the_document_shows() -> None:
    assert parse(NewQuota, {"quota_limit": None}) == NewQuota(None)
    assert parse(NewQuota, {}) == NewQuota(None)
    assert parse(NewQuota, {"quota_limit": "10M"}) == NewQuota(10 << 20)
    good = parse(NewAccount, {"name": "amy", "password": "pw", "quota_limit": 10})
    assert (good.name, good.password, good.quota_limit, good.owner) == ("amy", "pw", 10, None)
    body = parse(pairops.SwitchoverBody, {"accounts": ["a", "b"], "to": "beta"})
    assert body.accounts == ("a", "b") and body.all_from is None
    cases: list[tuple[type, dict[str, Any], str]] = [
        (NewAccount, {"name": "amy"}, "exactly one of password and password_hash"),
        (NewAccount, {"name": "amy", "password": "x", "password_hash": "h"}, "exactly one"),
        (NewAccount, {"name": "bad name", "password": "x"}, "name is not valid"),
        (NewAccount, {"password": "x"}, "name is required"),
        (NewAccount, {"name": "amy", "password": "x", "quota_limit": True}, "quota_limit"),
        (NewAccount, {"name": "amy", "password": "x", "quota_limit": 2**63}, "quota_limit"),
        (NewAccount, {"name": "amy", "password": ""}, "password must be a non-empty"),
        (NewQuota, {"quota_limit": "10 parsecs"}, "quota_limit must be a size"),
        (NewQuota, {"quota_limit": -1}, "quota_limit must be a size"),
        (pairops.FailoverBody, {"force": "yes"}, "force must be true or false"),
        (pairops.SwitchoverBody, {"accounts": ["a"], "all_from": "beta"}, "not both"),
        (pairops.SwitchoverBody, {}, "give accounts (a list) or all_from"),
        (pairops.SwitchoverBody, {"accounts": "a"}, "accounts must be a list"),
        (pairops.SwitchoverBody, {"accounts": [""]}, "each of accounts"),
        (syncops.SweepBody, {"grace": 0}, "unknown option(s): grace"),
        (syncops.QueueBody, {"account": "a" * 256}, "at most 255"),
    ]
    for cls, data, why in cases:
        with pytest.raises(InvalidArgument) as refused:
            parse(cls, data)
        assert why in refused.value.message, (data, refused.value.message)


def call(api: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(api + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {TOKEN}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_a_pair_answers_by_the_table(pair: Any) -> None:
    alpha, _beta = pair
    # Moving the home of an account that does not exist: 404, not a 500.
    status, body = call(alpha.api, "POST", "/v1/accounts/nobody/move", {"to": "beta"})
    assert (status, body["code"]) == (404, "no_such_account"), body
    status, body = call(alpha.api, "POST", "/v1/switchover", {"accounts": ["a"], "all_from": "x"})
    assert (status, body["code"]) == (422, "invalid_argument") and "not both" in body["detail"]
    status, body = call(alpha.api, "POST", "/v1/failover", {"force": True, "now": 1})
    assert (status, body["detail"]) == (422, "unknown option(s): now")
    # The same status object renders as JSON and as metrics.
    status, body = call(alpha.api, "GET", "/v1/status")
    assert status == 200
    assert {"replication", "proxy_hooks", "reconcile", "sync_server", "spool_sweep"} <= set(body)
    with urllib.request.urlopen(f"{alpha.api}/metrics", timeout=30) as response:
        metrics = response.read().decode()
    reachable = 1 if body["replication"]["reachable"] else 0
    assert f"peerd_partner_reachable {reachable}" in metrics
    assert f"peerd_sync_log_depth {body['sync_log_depth']}" in metrics
