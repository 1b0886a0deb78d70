"""Spans and cache metrics of the JWT middleware, read back through the in-memory SDK."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from gateway_redis import RedisClient, SessionStore
from gateway_redis.invalidation import InvalidationBus
from middleware import (
    CallablePermissions,
    JWTMiddleware,
    PermissionCache,
    SessionManager,
    SessionMiddleware,
    get_session_handle,
)
from middleware.tokencache import JWTAuthenticator
from middleware.tokens import JWTValidator
from tests.conftest import Telemetry


async def _me(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.user.identity})


def _lookups(telemetry: Telemetry) -> dict[str, float]:
    return {
        str(attrs.get("gateway.cache.result")): point.value  # type: ignore[attr-defined]
        for attrs, point in telemetry.points("gateway.cache.lookups")
        if attrs.get("gateway.cache.name") == "jwt"
    }


async def test_jwt_span_reports_tier_and_never_the_token(
    telemetry: Telemetry,
    authenticator: JWTAuthenticator,
    make_token: Callable[..., str],
    http_client: Callable[[ASGIApp], httpx.AsyncClient],
) -> None:
    app = Starlette(
        routes=[Route("/me", _me)],
        middleware=[Middleware(JWTMiddleware, authenticator=authenticator)],
    )
    token = make_token("alice")
    before = _lookups(telemetry)
    async with http_client(app) as http:
        telemetry.spans.clear()
        for _ in range(3):
            response = await http.get("/me", headers={"authorization": f"Bearer {token}"})
            assert response.status_code == 200
        bad = await http.get("/me", headers={"authorization": "Bearer not.a.token"})
        assert bad.status_code == 401
    spans = [
        s for s in telemetry.spans.get_finished_spans() if s.name == "gateway.jwt authenticate"
    ]
    assert [s.attributes.get("gateway.cache.result") for s in spans[:3]] == ["miss", "l1", "l1"]  # type: ignore[union-attr]
    assert spans[0].attributes.get("gateway.degraded") is False  # type: ignore[union-attr]
    assert spans[3].attributes.get("gateway.reason") == "malformed"  # type: ignore[union-attr]
    for span in telemetry.spans.get_finished_spans():
        for value in (span.attributes or {}).values():
            assert token not in str(value)
            assert token.split(".")[2] not in str(value)
    after = _lookups(telemetry)
    assert after.get("miss", 0) - before.get("miss", 0) == 1
    assert after.get("l1", 0) - before.get("l1", 0) == 2
    assert after.get("invalid", 0) - before.get("invalid", 0) == 1


async def test_rbac_and_session_cache_tiers_are_counted(
    telemetry: Telemetry,
    bus: InvalidationBus,
    validator: JWTValidator,
    make_token: Callable[..., str],
    client: RedisClient,
) -> None:
    def counts(cache: str) -> dict[str, float]:
        return {
            str(a.get("gateway.cache.result")): p.value  # type: ignore[attr-defined]
            for a, p in telemetry.points("gateway.cache.lookups")
            if a.get("gateway.cache.name") == cache
        }

    async def lookup(subject: str) -> list[str]:
        return ["orders:read"]

    permissions = PermissionCache(CallablePermissions(lookup), bus=bus)
    assert await bus.wait_synced(5)
    claims = await validator.validate(make_token("carol"))
    rbac_before = counts("rbac")
    for _ in range(3):
        assert await permissions.permissions(claims) == {"orders:read"}
    rbac_after = counts("rbac")
    assert rbac_after.get("miss", 0) - rbac_before.get("miss", 0) == 1
    assert rbac_after.get("l1", 0) - rbac_before.get("l1", 0) == 2

    sessions = SessionManager(SessionStore(client), bus=bus)
    assert await bus.wait_synced(5)
    created = await sessions.create("carol", {"theme": "dark"})
    await sessions.update(created.id, {"theme": "light"})
    sessions.forget(created.id)  # drop the local copy: the next read goes to Redis
    session_before = counts("session")
    for _ in range(3):
        assert (await sessions.get(created.id)).metadata["theme"] == "light"
    session_after = counts("session")
    assert session_after.get("l2", 0) - session_before.get("l2", 0) == 1
    assert session_after.get("l1", 0) - session_before.get("l1", 0) == 2


async def test_session_save_span_only_when_something_changed(
    telemetry: Telemetry,
    bus: InvalidationBus,
    client: RedisClient,
    http_client: Callable[[ASGIApp], httpx.AsyncClient],
) -> None:
    sessions = SessionManager(SessionStore(client), bus=bus)
    assert await bus.wait_synced(5)

    async def login(request: Request) -> JSONResponse:
        await get_session_handle(request).create("dave", {})
        return JSONResponse({})

    async def write(request: Request) -> JSONResponse:
        request.session["n"] = request.session.get("n", 0) + 1
        return JSONResponse({})

    async def read(request: Request) -> JSONResponse:
        return JSONResponse(dict(request.session))

    app = Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Route("/write", write, methods=["POST"]),
            Route("/read", read),
        ],
        middleware=[Middleware(SessionMiddleware, sessions=sessions)],
    )
    async with http_client(app) as http:
        await http.post("/login")
        telemetry.spans.clear()
        await http.get("/read")
        await http.post("/write")
    names = [s.name for s in telemetry.spans.get_finished_spans()]
    assert names.count("gateway.session load") == 2
    assert names.count("gateway.session save") == 1
