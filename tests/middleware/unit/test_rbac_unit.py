"""RBACMiddleware and PermissionCache(client=None) on the permission-source twin: no Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from middleware import (
    JWTAuthenticator,
    JWTMiddleware,
    PermissionCache,
    RBACMiddleware,
    Rule,
    get_permission_context,
)
from tests.twins import MemoryPermissions, MemoryValidator

HttpFactory = Callable[[ASGIApp], httpx.AsyncClient]
RULES = [
    Rule("/orders/**", "orders:read", methods=("GET",)),
    Rule("/orders/**", "orders:write", methods=("POST", "DELETE")),
    Rule("/admin/**", "admin:read"),
    Rule("/reports/{name}", "reports:read", methods=("GET",)),
]


async def echo(request: Request) -> JSONResponse:
    granted = await get_permission_context(request).permissions()
    return JSONResponse({"path": request.url.path, "granted": sorted(granted)})


def build(
    authenticator: JWTAuthenticator, permissions: PermissionCache, **options: Any
) -> Starlette:
    paths = ["/orders/{id}", "/admin/panel", "/reports/{name}", "/open"]
    return Starlette(
        routes=[Route(p, echo, methods=["GET", "POST", "DELETE"]) for p in paths],
        middleware=[
            Middleware(JWTMiddleware, authenticator=authenticator, public_paths=["/open"]),
            Middleware(RBACMiddleware, permissions=permissions, rules=RULES, **options),
        ],
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_forbidden(response: httpx.Response) -> None:
    assert response.status_code == 403
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {
        "error": "forbidden",
        "detail": "You do not have permission to do this.",
    }


@pytest.mark.parametrize(
    ("roles", "method", "path", "status"),
    [
        (["user"], "GET", "/orders/1", 200),
        (["user"], "POST", "/orders/1", 403),
        (["clerk"], "POST", "/orders/1", 200),
        (["clerk"], "DELETE", "/orders/1", 200),
        (["user"], "GET", "/admin/panel", 403),
        (["admin"], "POST", "/admin/panel", 200),
        (["clerk"], "GET", "/reports/q3", 200),
        (["user"], "GET", "/reports/q3", 403),
        ([], "GET", "/orders/1", 403),
        (["user", "clerk"], "POST", "/orders/1", 200),
    ],
)
async def test_rules_grant_by_method_and_path_with_wildcard_permissions(
    authenticator: JWTAuthenticator,
    permissions: PermissionCache,
    tokens: MemoryValidator,
    http_client: HttpFactory,
    roles: list[str],
    method: str,
    path: str,
    status: int,
) -> None:
    token = tokens.issue("alice", roles=roles)
    async with http_client(build(authenticator, permissions)) as http:
        r = await http.request(method, path, headers=bearer(token))
    assert r.status_code == status
    if status == 403:
        assert_forbidden(r)


async def test_a_head_request_is_held_to_the_get_rules(
    authenticator: JWTAuthenticator,
    permissions: PermissionCache,
    tokens: MemoryValidator,
    http_client: HttpFactory,
) -> None:
    outsider = tokens.issue("eve", roles=[])
    reader = tokens.issue("alice", roles=["user"])
    async with http_client(build(authenticator, permissions)) as http:
        assert (await http.head("/orders/1", headers=bearer(outsider))).status_code == 403
        assert (await http.head("/reports/q3", headers=bearer(reader))).status_code == 403
        assert (await http.head("/orders/1", headers=bearer(reader))).status_code == 200
    assert "HEAD" in Rule("/x", "x:read", methods=("GET",)).methods
    assert "HEAD" not in Rule("/x", "x:write", methods=("POST",)).methods


async def test_a_request_matching_a_rule_without_a_token_gets_401_on_a_public_path(
    authenticator: JWTAuthenticator, permissions: PermissionCache, http_client: HttpFactory
) -> None:
    app = Starlette(
        routes=[Route("/open/orders", echo)],
        middleware=[
            Middleware(JWTMiddleware, authenticator=authenticator, public_paths=["/open/*"]),
            Middleware(
                RBACMiddleware, permissions=permissions, rules=[Rule("/open/**", "orders:read")]
            ),
        ],
    )
    async with http_client(app) as http:
        r = await http.get("/open/orders")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


async def test_unmatched_paths_pass_unless_deny_unmatched(
    authenticator: JWTAuthenticator,
    permissions: PermissionCache,
    tokens: MemoryValidator,
    http_client: HttpFactory,
) -> None:
    token = tokens.issue("alice", roles=["user"])
    async with http_client(build(authenticator, permissions)) as http:
        assert (await http.get("/open", headers=bearer(token))).status_code == 200
    strict = build(authenticator, permissions, deny_unmatched=True)
    async with http_client(strict) as http:
        assert_forbidden(await http.get("/open", headers=bearer(token)))


async def test_permissions_are_asked_once_per_subject_then_served_from_l1(
    authenticator: JWTAuthenticator,
    permissions: PermissionCache,
    source: MemoryPermissions,
    tokens: MemoryValidator,
    http_client: HttpFactory,
) -> None:
    token = tokens.issue("alice", roles=["clerk"])
    async with http_client(build(authenticator, permissions)) as http:
        for _ in range(4):
            r = await http.get("/orders/1", headers=bearer(token))
            assert r.json()["granted"] == ["orders:*", "reports:read"]
    assert source.calls == 1
    assert permissions.cached(tokens.claims(token)) == frozenset({"orders:*", "reports:read"})


async def test_invalidating_a_subject_makes_the_next_request_ask_the_source(
    authenticator: JWTAuthenticator,
    permissions: PermissionCache,
    source: MemoryPermissions,
    tokens: MemoryValidator,
    http_client: HttpFactory,
) -> None:
    token = tokens.issue("alice", roles=["clerk"])
    async with http_client(build(authenticator, permissions)) as http:
        assert (await http.post("/orders/1", headers=bearer(token))).status_code == 200
        source.roles["clerk"] = frozenset({"orders:read"})  # write permission withdrawn
        await permissions.invalidate("alice")
        assert_forbidden(await http.post("/orders/1", headers=bearer(token)))
    assert source.calls == 2


async def test_a_policy_version_bump_drops_every_cached_permission_set(
    authenticator: JWTAuthenticator,
    permissions: PermissionCache,
    source: MemoryPermissions,
    tokens: MemoryValidator,
    http_client: HttpFactory,
) -> None:
    alice = tokens.issue("alice", roles=["admin"])
    bob = tokens.issue("bob", roles=["admin"])
    async with http_client(build(authenticator, permissions)) as http:
        for token in (alice, bob):
            assert (await http.get("/admin/panel", headers=bearer(token))).status_code == 200
        source.roles["admin"] = frozenset({"orders:read"})
        assert permissions.policy_version == 0
        assert await permissions.bump_policy_version() == 1
        for token in (alice, bob):
            assert_forbidden(await http.get("/admin/panel", headers=bearer(token)))
    assert source.calls == 4


async def test_a_failing_source_answers_503_never_403(
    authenticator: JWTAuthenticator,
    permissions: PermissionCache,
    source: MemoryPermissions,
    tokens: MemoryValidator,
    http_client: HttpFactory,
) -> None:
    source.failing = True
    token = tokens.issue("alice", roles=["admin"])
    async with http_client(build(authenticator, permissions)) as http:
        r = await http.get("/admin/panel", headers=bearer(token))
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"


def test_the_client_argument_must_be_given_explicitly(source: MemoryPermissions) -> None:
    with pytest.raises(TypeError):
        PermissionCache(source)  # type: ignore[call-arg]
    assert PermissionCache(source, client=None).client is None
