"""The hot path: with warm caches, JWT + RBAC + sessions make no Redis round trip at all."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from gateway_redis import RedisClient
from gateway_redis.invalidation import InvalidationBus
from middleware import (
    CallablePermissions,
    JWTAuthenticator,
    JWTMiddleware,
    PermissionCache,
    RBACMiddleware,
    Rule,
    SessionManager,
    SessionMiddleware,
    get_claims,
    get_session_handle,
)

HttpFactory = Callable[[ASGIApp], httpx.AsyncClient]
# Commands that are not the middleware's: our own INFO, the pub/sub liveness check
# (PUBLISH every 0.5 s when idle), health probes (PING), subscriptions.
BACKGROUND = {"info", "publish", "ping", "subscribe", "unsubscribe", "client", "hello"}


def data_commands(admin: redis.Redis) -> dict[str, int]:
    stats: Any = admin.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name.removeprefix("cmdstat_").split("|")[0] not in BACKGROUND
    }


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


async def test_warm_request_through_all_three_middleware_makes_no_redis_call(
    client: RedisClient,
    bus: InvalidationBus,
    authenticator: JWTAuthenticator,
    make_token: Any,
    http_client: HttpFactory,
    redis_admin: redis.Redis,
) -> None:
    async def lookup(subject: str) -> Iterable[str]:
        return ["orders:*"]

    permissions = PermissionCache(CallablePermissions(lookup), client=client)
    sessions = SessionManager(client=client)
    assert await bus.wait_synced(5)  # the new components' mirrors are loaded

    async def login(request: Request) -> JSONResponse:
        await get_session_handle(request).create(get_claims(request).sub, {"cart": []})
        return JSONResponse({})

    async def order(request: Request) -> JSONResponse:
        return JSONResponse({"sub": request.user.identity, "cart": request.session["cart"]})

    app = Starlette(
        routes=[Route("/login", login, methods=["POST"]), Route("/orders/{id}", order)],
        middleware=[
            Middleware(SessionMiddleware, sessions=sessions),
            Middleware(JWTMiddleware, authenticator=authenticator),
            Middleware(
                RBACMiddleware, permissions=permissions, rules=[Rule("/orders/**", "orders:read")]
            ),
        ],
    )
    headers = {"Authorization": f"Bearer {make_token('hot')}"}
    async with http_client(app) as http:
        await http.post("/login", headers=headers)
        for _ in range(3):  # warm L1 for the token, the permissions and the session
            assert (await http.get("/orders/1", headers=headers)).status_code == 200
        before = data_commands(redis_admin)
        n = 500
        started = time.perf_counter()
        for i in range(n):
            r = await http.get(f"/orders/{i}", headers=headers)
            assert r.status_code == 200
        elapsed = time.perf_counter() - started
        after = data_commands(redis_admin)
    assert delta(before, after) == {}, "warm requests went to Redis"
    print(
        f"{n} warm requests: 0 Redis commands, {elapsed / n * 1e6:.0f} us each (httpx in process)"
    )


async def test_cold_request_uses_redis_then_stops(
    bus: InvalidationBus,
    authenticator: JWTAuthenticator,
    make_token: Any,
    http_client: HttpFactory,
    redis_admin: redis.Redis,
) -> None:
    # The counter must see the cold path, or the zero above would prove nothing.
    async def me(request: Request) -> JSONResponse:
        return JSONResponse({"sub": request.user.identity})

    app = Starlette(
        routes=[Route("/me", me)],
        middleware=[Middleware(JWTMiddleware, authenticator=authenticator)],
    )
    headers = {"Authorization": f"Bearer {make_token()}"}
    async with http_client(app) as http:
        before = data_commands(redis_admin)
        await http.get("/me", headers=headers)
        cold = delta(before, data_commands(redis_admin))
        before = data_commands(redis_admin)
        await http.get("/me", headers=headers)
        warm = delta(before, data_commands(redis_admin))
    assert cold.get("get") == 1
    assert cold.get("set") == 1
    assert cold.get("exists") == 1
    assert warm == {}
