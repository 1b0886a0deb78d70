"""The public API of ``middleware``: exports, and configuration validated at construction."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

import middleware
from gateway_redis import RedisClient
from gateway_redis.invalidation import InvalidationBus
from middleware import (
    JWTAuthenticator,
    JWTMiddleware,
    PermissionCache,
    RBACMiddleware,
    Rule,
    SessionManager,
    SessionMiddleware,
    StaticRolePermissions,
)


async def inner(scope: Scope, receive: Receive, send: Send) -> None:
    scope["reached"] = True


def test_all_is_sorted_and_importable() -> None:
    assert middleware.__all__ == sorted(middleware.__all__)
    for name in middleware.__all__:
        assert getattr(middleware, name) is not None
    for name in ("InvalidToken", "JWTSettings", "JWTValidator", "TokenClaims", "TokenValidator"):
        assert name in middleware.__all__


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"public_paths": "/health"}, "sequence"),
        ({"public_paths": ["health"]}, "start with"),
        ({"public_paths": ["/a*b"]}, "only allowed"),
        ({"cookie_name": ""}, "cookie_name"),
        ({"on_error": 42}, "on_error"),
    ],
)
def test_jwt_middleware_rejects_bad_settings(
    authenticator: JWTAuthenticator, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        JWTMiddleware(inner, authenticator=authenticator, **kwargs)


def test_jwt_middleware_needs_an_authenticator() -> None:
    with pytest.raises(ValueError, match="JWTAuthenticator"):
        JWTMiddleware(inner, authenticator=object())  # type: ignore[arg-type]


def test_rules_and_rbac_settings_are_validated(bus: InvalidationBus, client: RedisClient) -> None:
    cache = PermissionCache(StaticRolePermissions({"a": ["x:y"]}), client=client)
    bad_rules: list[tuple[tuple[Any, ...], dict[str, Any], str]] = [
        (("/x",), {}, "at least one"),
        (("/x", "a b"), {}, "without spaces"),
        (("/x", "a:*"), {}, "wildcards"),
        (("x", "a"), {}, "start with"),
        (("/x/{a", "a"), {}, "bad segment"),
        (("/x", "a"), {"methods": "GET"}, "collection"),
    ]
    for args, kwargs, match in bad_rules:
        with pytest.raises(ValueError, match=match):
            Rule(*args, **kwargs)
    with pytest.raises(ValueError, match="Rule"):
        RBACMiddleware(inner, permissions=cache, rules=["/x"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="roles"):
        StaticRolePermissions({"admin": "*"})
    with pytest.raises(ValueError, match="ttl"):
        PermissionCache(StaticRolePermissions({}), client=client, ttl=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cookie": None}, "cookie"),
        ({"header_name": "bad header"}, "header_name"),
        ({"refresh_interval": 0}, "refresh_interval"),
        ({"on_unavailable": "ignore"}, "on_unavailable"),
        ({"retry_after": -1}, "retry_after"),
    ],
)
def test_session_middleware_rejects_bad_settings(
    client: Any, bus: InvalidationBus, kwargs: dict[str, Any], match: str
) -> None:
    sessions = SessionManager(client=client)
    with pytest.raises(ValueError, match=match):
        SessionMiddleware(inner, sessions=sessions, **kwargs)


async def test_other_scope_types_pass_through(
    authenticator: JWTAuthenticator, bus: InvalidationBus, client: Any
) -> None:
    cache = PermissionCache(StaticRolePermissions({}), client=client)
    sessions = SessionManager(client=client)
    app = SessionMiddleware(
        JWTMiddleware(RBACMiddleware(inner, permissions=cache), authenticator=authenticator),
        sessions=sessions,
    )
    scope: dict[str, Any] = {"type": "lifespan"}

    async def receive() -> Any:
        raise AssertionError

    async def send(message: Any) -> None:
        raise AssertionError

    await app(scope, receive, send)
    assert scope == {"type": "lifespan", "reached": True}


@pytest.mark.parametrize(
    ("error", "status", "header"),
    [
        (
            middleware.InvalidToken("expired"),
            401,
            ("www-authenticate", 'Bearer error="invalid_token"'),
        ),
        (middleware.ValidatorUnavailable("jwks down"), 503, ("retry-after", "1")),
    ],
)
def test_validator_errors_are_middleware_errors_answered_like_the_middleware_maps_them(
    error: middleware.MiddlewareError, status: int, header: tuple[str, str]
) -> None:
    assert isinstance(error, middleware.MiddlewareError)
    assert not isinstance(error, (middleware.NotAuthenticated, middleware.ServiceUnavailable))
    response: Any = middleware.default_error_response({"type": "http"}, error)
    assert response.status_code == status
    assert response.headers[header[0]] == header[1]
