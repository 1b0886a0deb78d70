"""RBAC: rules, wildcards, per-route requirements, the permission cache and its invalidation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import pytest
import redis
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from gateway_redis import RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis
from gateway_redis.invalidation import InvalidationBus
from middleware import (
    CallablePermissions,
    JWTAuthenticator,
    JWTMiddleware,
    JWTValidator,
    PermissionCache,
    RBACMiddleware,
    Rule,
    ServiceUnavailable,
    StaticRolePermissions,
    TokenClaims,
    get_permission_context,
    permission_granted,
    require_permissions,
)
from middleware.fastapi import RequirePermissions

HttpFactory = Callable[[ASGIApp], httpx.AsyncClient]
ROLES = {"admin": ["*"], "clerk": ["orders:*", "profile:read"], "user": ["profile:read"]}


class Database:
    """A stand-in for a permissions table shared by every gateway instance."""

    def __init__(self) -> None:
        self.grants: dict[str, set[str]] = {}
        self.calls = 0
        self.down = False

    async def lookup(self, subject: str) -> Iterable[str]:
        self.calls += 1
        if self.down:
            raise ConnectionError("database down")
        return set(self.grants.get(subject, ()))


async def ok(request: Request) -> JSONResponse:
    return JSONResponse(
        {"ok": True, "perms": sorted(await get_permission_context(request).permissions())}
    )


@require_permissions("reports:read")
async def report(request: Request) -> JSONResponse:
    return JSONResponse({"report": True})


def build(authenticator: JWTAuthenticator, cache: PermissionCache, **options: Any) -> Starlette:
    rules = options.pop(
        "rules",
        [
            Rule("/admin/**", "admin:read"),
            Rule("/orders/{id}", "orders:read", methods=["GET"]),
            Rule("/orders/{id}", "orders:write", methods=["POST", "DELETE"]),
            Rule("/open/special", "special:do"),
        ],
    )
    return Starlette(
        routes=[
            Route("/admin", ok),
            Route("/admin/users/{n}", ok),
            Route("/orders/{id}", ok, methods=["GET", "POST", "DELETE"]),
            Route("/profile", ok),
            Route("/report", report),
            Route("/open", ok),
            Route("/open/special", ok),
        ],
        middleware=[
            Middleware(JWTMiddleware, authenticator=authenticator, public_paths=["/open/*"]),
            Middleware(RBACMiddleware, permissions=cache, rules=rules, **options),
        ],
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("granted", "required", "expected"),
    [
        ({"orders:read"}, "orders:read", True),
        ({"orders:*"}, "orders:read", True),
        ({"orders:*"}, "orders:items:delete", True),
        ({"orders:items:*"}, "orders:items:delete", True),
        ({"orders:items:*"}, "orders:read", False),
        ({"*"}, "anything:at:all", True),
        ({"orders:*"}, "ordersx:read", False),
        ({"orders"}, "orders:read", False),
        (set(), "orders:read", False),
    ],
)
def test_wildcard_grants(granted: set[str], required: str, expected: bool) -> None:
    assert permission_granted(granted, required) is expected


async def test_rules_allow_and_deny_by_method_and_path(
    authenticator: JWTAuthenticator,
    bus: InvalidationBus,
    client: RedisClient,
    make_token: Any,
    http_client: HttpFactory,
) -> None:
    cache = PermissionCache(StaticRolePermissions(ROLES), client=client)
    clerk, user, admin = (make_token(roles=[r]) for r in ("clerk", "user", "admin"))
    async with http_client(build(authenticator, cache)) as http:
        for token, path, method, status in [
            (admin, "/admin", "GET", 200),
            (admin, "/admin/users/3", "GET", 200),
            (clerk, "/admin", "GET", 403),
            (clerk, "/orders/7", "GET", 200),
            (clerk, "/orders/7", "DELETE", 200),
            (user, "/orders/7", "GET", 403),
            (user, "/profile", "GET", 200),
            (user, "/admin/users/3", "GET", 403),
        ]:
            r = await http.request(method, path, headers=bearer(token))
            assert r.status_code == status, (path, method, r.text)
        r = await http.get("/admin", headers=bearer(user))
        assert r.json() == {
            "error": "forbidden",
            "detail": "You do not have permission to do this.",
        }
        # a public path with a rule still needs a principal: 401, not 403
        assert (await http.get("/open")).status_code == 200
        r = await http.get("/open/special")
        assert r.status_code == 401
        assert (await http.get("/open/special", headers=bearer(admin))).status_code == 200


async def test_deny_unmatched_forbids_paths_without_a_rule(
    authenticator: JWTAuthenticator,
    bus: InvalidationBus,
    client: RedisClient,
    make_token: Any,
    http_client: HttpFactory,
) -> None:
    cache = PermissionCache(StaticRolePermissions(ROLES), client=client)
    app = build(authenticator, cache, deny_unmatched=True)
    async with http_client(app) as http:
        assert (await http.get("/profile", headers=bearer(make_token()))).status_code == 403
        assert (
            await http.get("/orders/1", headers=bearer(make_token(roles=["clerk"])))
        ).status_code == 200


async def test_per_route_requirement_in_starlette_and_fastapi(
    authenticator: JWTAuthenticator,
    bus: InvalidationBus,
    client: RedisClient,
    make_token: Any,
    http_client: HttpFactory,
) -> None:
    cache = PermissionCache(
        StaticRolePermissions({"analyst": ["reports:*"], "user": []}), client=client
    )
    analyst, user = make_token(roles=["analyst"]), make_token(roles=["user"])
    async with http_client(build(authenticator, cache)) as http:
        assert (await http.get("/report", headers=bearer(analyst))).json() == {"report": True}
        r = await http.get("/report", headers=bearer(user))
        assert r.status_code == 403
        assert r.json()["error"] == "forbidden"

    api = FastAPI()

    @api.get("/report")
    async def fastapi_report(
        perms: frozenset[str] = Depends(RequirePermissions("reports:read")),
    ) -> Any:
        return {"perms": sorted(perms)}

    api.add_middleware(RBACMiddleware, permissions=cache)
    api.add_middleware(JWTMiddleware, authenticator=authenticator)
    async with http_client(api) as http:
        assert (await http.get("/report", headers=bearer(analyst))).json() == {
            "perms": ["reports:*"]
        }
        r = await http.get("/report", headers=bearer(user))
        assert r.status_code == 403
        assert "permission" in r.json()["detail"]


async def test_static_role_map_is_not_cached_in_redis(
    bus: InvalidationBus,
    client: RedisClient,
    make_token: Any,
    validator: JWTValidator,
    redis_admin: redis.Redis,
) -> None:
    cache = PermissionCache(StaticRolePermissions(ROLES), client=client)
    claims = await validator.validate(make_token(roles=["clerk", "unknown"]))
    assert await cache.permissions(claims) == {"orders:*", "profile:read"}
    assert redis_admin.keys("gw:rbac:*") == []


async def _claims(validator: JWTValidator, make_token: Any, sub: str) -> TokenClaims:
    return await validator.validate(make_token(sub))


async def test_callable_source_is_cached_in_l1_then_l2(
    bus: InvalidationBus,
    client: RedisClient,
    validator: JWTValidator,
    make_token: Any,
    redis_config: RedisConfig,
    redis_admin: redis.Redis,
) -> None:
    db = Database()
    db.grants["u1"] = {"orders:read"}
    cache = PermissionCache(CallablePermissions(db.lookup), client=client)
    claims = await _claims(validator, make_token, "u1")
    for _ in range(3):
        assert await cache.permissions(claims) == {"orders:read"}
    assert db.calls == 1
    [key] = redis_admin.keys("gw:rbac:*")
    assert 0 < redis_admin.pttl(key) <= 60_000
    async with RedisClient(redis_config) as c2:
        bus2 = c2.invalidation
        assert await bus2.wait_synced(5)
        other = PermissionCache(CallablePermissions(db.lookup), client=c2)
        assert await other.permissions(claims) == {"orders:read"}
        assert db.calls == 1  # served from L2
        redis_admin.set(key, b"not json")
        third = PermissionCache(CallablePermissions(db.lookup), client=c2)
        assert await third.permissions(claims) == {"orders:read"}  # corrupt L2 = miss
        assert db.calls == 2


async def test_hard_ttl_bounds_cached_permissions(
    bus: InvalidationBus, client: RedisClient, validator: JWTValidator, make_token: Any
) -> None:
    db = Database()
    db.grants["u1"] = {"a:b"}
    cache = PermissionCache(CallablePermissions(db.lookup), client=client, ttl=0.2)
    claims = await _claims(validator, make_token, "u1")
    await cache.permissions(claims)
    db.grants["u1"] = {"c:d"}  # changed without any invalidation (a lost message)
    assert await cache.permissions(claims) == {"a:b"}
    await asyncio.sleep(0.25)
    assert await cache.permissions(claims) == {"c:d"}


async def _second_instance_sees(
    change: Callable[[PermissionCache], Any],
    db: Database,
    authenticator: JWTAuthenticator,
    bus: InvalidationBus,
    client: RedisClient,
    validator: JWTValidator,
    redis_config: RedisConfig,
    make_token: Any,
    http_client: HttpFactory,
) -> float:
    db.grants["carol"] = {"admin:read"}
    token = make_token("carol")
    cache_a = PermissionCache(CallablePermissions(db.lookup), client=client)
    async with RedisClient(redis_config) as c2:
        bus2 = c2.invalidation
        assert await bus2.wait_synced(5)
        cache_b = PermissionCache(CallablePermissions(db.lookup), client=c2)
        auth_b = JWTAuthenticator(validator, client=c2)
        assert await bus.wait_synced(5)
        assert await bus2.wait_synced(5)
        async with http_client(build(auth_b, cache_b)) as http_b:
            for _ in range(2):
                assert (await http_b.get("/admin", headers=bearer(token))).status_code == 200
            calls = db.calls
            assert (await http_b.get("/admin", headers=bearer(token))).status_code == 200
            assert db.calls == calls  # warm: served from L1
            db.grants["carol"] = set()
            started = time.perf_counter()
            await change(cache_a)
            while (await http_b.get("/admin", headers=bearer(token))).status_code != 403:
                assert time.perf_counter() - started < 0.1, "change not seen within 100 ms"
                await asyncio.sleep(0.001)
            return time.perf_counter() - started


async def test_invalidate_subject_reaches_a_second_instance_within_100_ms(
    authenticator: JWTAuthenticator,
    bus: InvalidationBus,
    client: RedisClient,
    validator: JWTValidator,
    redis_config: RedisConfig,
    make_token: Any,
    http_client: HttpFactory,
) -> None:
    took = await _second_instance_sees(
        lambda c: c.invalidate("carol"), Database(), authenticator, bus, client, validator,
        redis_config, make_token, http_client,
    )  # fmt: skip
    print(f"invalidate(subject) seen by the second instance after {took * 1000:.2f} ms")


async def test_policy_version_bump_reaches_a_second_instance_within_100_ms(
    authenticator: JWTAuthenticator,
    bus: InvalidationBus,
    client: RedisClient,
    validator: JWTValidator,
    redis_config: RedisConfig,
    make_token: Any,
    http_client: HttpFactory,
    redis_admin: redis.Redis,
) -> None:
    took = await _second_instance_sees(
        lambda c: c.bump_policy_version(), Database(), authenticator, bus, client, validator,
        redis_config, make_token, http_client,
    )  # fmt: skip
    assert int(redis_admin.get("gw:rbac:policy-version") or 0) == 1
    assert redis_admin.pttl("gw:rbac:policy-version") > 0
    print(f"policy version bump seen by the second instance after {took * 1000:.2f} ms")


async def test_source_failure_is_503_never_403(
    authenticator: JWTAuthenticator,
    bus: InvalidationBus,
    client: RedisClient,
    make_token: Any,
    http_client: HttpFactory,
) -> None:
    db = Database()
    db.down = True
    cache = PermissionCache(CallablePermissions(db.lookup), client=client)
    async with http_client(build(authenticator, cache)) as http:
        r = await http.get("/admin", headers=bearer(make_token()))
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"


@pytest.mark.slow
async def test_redis_down_asks_the_source_directly(
    fault_server: EmbeddedRedis, validator: JWTValidator, make_token: Any, http_client: HttpFactory
) -> None:
    config = RedisConfig(url=fault_server.url, probe_interval=0.2, operation_timeout=0.5)
    db = Database()
    db.grants["dave"] = {"admin:read"}
    token = make_token("dave")
    async with RedisClient(config) as c:
        b = c.invalidation
        assert await b.wait_synced(5)
        cache = PermissionCache(CallablePermissions(db.lookup), client=c)
        app = build(JWTAuthenticator(validator, client=c), cache)
        async with http_client(app) as http:
            assert (await http.get("/admin", headers=bearer(token))).status_code == 200
            fault_server.kill()
            calls = db.calls
            for _ in range(3):
                assert (await http.get("/admin", headers=bearer(token))).status_code == 200
            assert db.calls == calls + 3  # no cache while Redis is down
            db.grants["dave"] = set()
            assert (await http.get("/admin", headers=bearer(token))).status_code == 403
            db.down = True
            assert (await http.get("/admin", headers=bearer(token))).status_code == 503
    with pytest.raises(ServiceUnavailable):
        await cache.permissions(await validator.validate(token))
