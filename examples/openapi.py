"""The example gateway's OpenAPI document: the answers FastAPI cannot see.

FastAPI documents what a route function returns. The gateway's middleware answers before
any route (401 without a valid token, 403 without a permission, 503 while the token or
permission check cannot be made or the session store is down), and several routes answer
errors themselves. :func:`declare_responses` adds those to every operation, with the
error body ``{"error": <code>, "detail": <sentence>}`` (:data:`ERROR_SCHEMA`), and declares
the request bodies of the two routes that read their body themselves (login, publish), so
that clients and schema-driven tools (Schemathesis, in the tests) see the real contract.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI

__all__ = ["ERROR_SCHEMA", "declare_responses"]

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    "required": ["error", "detail"],
}
"""The body of every error answer of the gateway and its middleware."""

_REASONS = {
    400: "Malformed request",
    401: "Missing, invalid, expired or revoked credentials",
    403: "Not permitted",
    413: "Body too large",
    429: "Too many failed logins (see Retry-After)",
    501: "Tokens come from the identity provider (no signing key)",
    503: "A dependency (Redis, the key set) is unavailable (see Retry-After)",
}
_READY_SCHEMA: dict[str, Any] = {
    "title": "Readiness",
    "type": "object",
    "properties": {"status": {"type": "string"}, "redis": {"type": "string"}},
    "required": ["status", "redis"],
}
_LOGIN_BODY: dict[str, Any] = {
    "title": "Login",
    "type": "object",
    "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
    "required": ["username", "password"],
}
# Answers a route gives itself, by (method, path); the middleware's are added by rule.
_ROUTE_ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/auth/login"): (400, 401, 413, 429, 501),
    ("get", "/api/session"): (401,),
    ("post", "/api/channels/{channel}/publish"): (400, 403, 413),
}
_REQUEST_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/auth/login"): {
        "required": True,
        "content": {
            "application/json": {"schema": _LOGIN_BODY},
            "application/x-www-form-urlencoded": {"schema": _LOGIN_BODY},
        },
    },
    ("post", "/api/channels/{channel}/publish"): {
        "required": True,
        "content": {"application/json": {"schema": {}}},
    },
}


def _matches(path: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if pattern.endswith(("/*", "/**")):
            prefix = pattern.rsplit("/", 1)[0]
            if path == prefix or path.startswith(prefix + "/"):
                return True
        elif path == pattern:
            return True
    return False


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": _REASONS[status],
        "content": {"application/json": {"schema": ERROR_SCHEMA}},
    }


def _patch(
    document: dict[str, Any],
    public_paths: Iterable[str],
    permission_paths: Iterable[str],
    session_paths: Iterable[str],
) -> None:
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            statuses = set(_ROUTE_ERRORS.get((method, path), ()))
            if not _matches(path, public_paths):
                statuses |= {401, 503}
            if _matches(path, permission_paths):
                statuses |= {401, 403, 503}
            if _matches(path, session_paths):
                statuses.add(503)
            responses = operation["responses"]
            for status in sorted(statuses):
                responses.setdefault(str(status), _error_response(status))
            body = _REQUEST_BODIES.get((method, path))
            if body is not None:
                operation.setdefault("requestBody", body)
    ready = document.get("paths", {}).get("/ready", {}).get("get")
    if ready is not None:
        for code, description in (("200", "Redis is available"), ("503", "Redis is not")):
            ready["responses"][code] = {
                "description": description,
                "content": {"application/json": {"schema": _READY_SCHEMA}},
            }


def declare_responses(
    app: FastAPI,
    *,
    public_paths: Iterable[str],
    permission_paths: Iterable[str],
    session_paths: Iterable[str],
) -> None:
    """Make ``app.openapi()`` declare the middleware's and the routes' own answers.

    ``public_paths`` need no token (others may answer 401 and 503); ``permission_paths``
    need a permission (403); ``session_paths`` answer 503 while the session store is down.
    Patterns as the middleware takes them: exact, ``/prefix/*`` or ``/prefix/**``.
    """
    build = app.openapi
    public, permission = tuple(public_paths), tuple(permission_paths)
    session = tuple(session_paths)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            _patch(document, public, permission, session)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
