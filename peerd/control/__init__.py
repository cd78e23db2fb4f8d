"""The control API (HTTP/JSON under /v1), its OpenAPI document, routing lookups and /metrics."""
