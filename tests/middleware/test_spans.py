"""Spans, server-span attributes and cache metrics of the middleware, read back through the
in-memory SDK.

A lookup served from L1 starts no span: it sets ``gateway.<jwt|rbac|session>.cache.result``
on the current (server) span. Lookups that do I/O (L2, the validator, the permission source,
a session load or save) get their own child span with the tier and the degraded flag.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway_redis import RedisClient
from gateway_redis.invalidation import InvalidationBus
from middleware import (
    CallablePermissions,
    GatewayMiddleware,
    JWTMiddleware,
    PermissionCache,
    RBACMiddleware,
    Rule,
    SessionManager,
    SessionMiddleware,
    get_claims,
    get_session_handle,
)
from middleware.jwt import JWTValidator
from middleware.jwt.authenticator import JWTAuthenticator
from tests.conftest import Telemetry


async def _me(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.user.identity})


def served(app: ASGIApp) -> ASGIApp:
    """``app`` under a SERVER span, as the ASGI instrumentation would run it."""
    tracer = trace.get_tracer("tests.server")

    async def server(scope: Scope, receive: Receive, send: Send) -> None:
        with tracer.start_as_current_span("GET", kind=SpanKind.SERVER):
            await app(scope, receive, send)

    return server


def _lookups(telemetry: Telemetry) -> dict[str, float]:
    return {
        str(attrs.get("gateway.cache.result")): point.value  # type: ignore[attr-defined]
        for attrs, point in telemetry.points("gateway.cache.lookups")
        if attrs.get("gateway.cache.name") == "jwt"
    }


def _no_secrets(telemetry: Telemetry, *secrets: str) -> None:
    for span in telemetry.spans.get_finished_spans():
        for value in (span.attributes or {}).values():
            for secret in secrets:
                assert secret not in str(value)


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
    async with http_client(served(app)) as http:
        telemetry.spans.clear()
        for _ in range(3):
            response = await http.get("/me", headers={"authorization": f"Bearer {token}"})
            assert response.status_code == 200
        bad = await http.get("/me", headers={"authorization": "Bearer not.a.token"})
        assert bad.status_code == 401
    finished = telemetry.spans.get_finished_spans()
    servers = [s for s in finished if s.kind is SpanKind.SERVER]
    spans = [s for s in finished if s.name == "gateway.jwt authenticate"]
    assert len(servers) == 4
    # The miss (the validator ran, then Redis was asked) and the bad token: a child span
    # each, under its request's server span. The two L1 hits: no span, an attribute.
    assert len(spans) == 2
    assert spans[0].parent is not None
    assert spans[0].parent.span_id == servers[0].context.span_id
    assert spans[0].attributes.get("gateway.cache.result") == "miss"  # type: ignore[union-attr]
    assert spans[0].attributes.get("gateway.degraded") is False  # type: ignore[union-attr]
    assert spans[1].attributes.get("gateway.reason") == "malformed"  # type: ignore[union-attr]
    assert spans[1].parent is not None
    assert spans[1].parent.span_id == servers[3].context.span_id
    tiers = [s.attributes.get("gateway.jwt.cache.result") for s in servers]  # type: ignore[union-attr]
    assert tiers == [None, "l1", "l1", None]
    _no_secrets(telemetry, token, token.split(".")[2])
    after = _lookups(telemetry)
    assert after.get("miss", 0) - before.get("miss", 0) == 1
    assert after.get("l1", 0) - before.get("l1", 0) == 2
    assert after.get("invalid", 0) - before.get("invalid", 0) == 1


@pytest.mark.parametrize("kind", ["separate", "fused"])
async def test_warm_requests_annotate_the_server_span_and_start_no_spans(
    kind: str,
    telemetry: Telemetry,
    bus: InvalidationBus,
    authenticator: JWTAuthenticator,
    client: RedisClient,
    make_token: Callable[..., str],
    http_client: Callable[[ASGIApp], httpx.AsyncClient],
) -> None:
    async def lookup(subject: str) -> list[str]:
        return ["orders:read"]

    permissions = PermissionCache(CallablePermissions(lookup), client=client)
    sessions = SessionManager(client=client)
    assert await bus.wait_synced(5)

    async def login(request: Request) -> JSONResponse:
        await get_session_handle(request).create(get_claims(request).sub, {"n": 1})
        return JSONResponse({})

    rules = [Rule("/orders/**", "orders:read")]
    if kind == "fused":
        middleware = [
            Middleware(
                GatewayMiddleware,
                sessions=Middleware(SessionMiddleware, sessions=sessions),
                jwt=Middleware(JWTMiddleware, authenticator=authenticator),
                rbac=Middleware(RBACMiddleware, permissions=permissions, rules=rules),
            )
        ]
    else:
        middleware = [
            Middleware(SessionMiddleware, sessions=sessions),
            Middleware(JWTMiddleware, authenticator=authenticator),
            Middleware(RBACMiddleware, permissions=permissions, rules=rules),
        ]
    app = Starlette(
        routes=[Route("/login", login, methods=["POST"]), Route("/orders/{id}", _me)],
        middleware=middleware,
    )
    token = make_token("ivy")
    bearer = {"authorization": f"Bearer {token}"}
    async with http_client(served(app)) as http:
        await http.post("/login", headers=bearer)
        sid = http.cookies["__Host-session"]
        telemetry.spans.clear()
        assert (await http.get("/orders/1", headers=bearer)).status_code == 200  # RBAC miss
        cold = telemetry.spans.get_finished_spans()
        telemetry.spans.clear()
        for i in range(3):
            assert (await http.get(f"/orders/{i}", headers=bearer)).status_code == 200
        warm = telemetry.spans.get_finished_spans()
        sessions.forget(sid)  # the next request loads the session from Redis
        telemetry.spans.clear()
        assert (await http.get("/orders/9", headers=bearer)).status_code == 200
        reload = telemetry.spans.get_finished_spans()
    # The first request asked the permission source: a span with the tier.
    [authorize] = [s for s in cold if s.name == "gateway.rbac authorize"]
    assert authorize.parent is not None
    # Warm: one span per request (the server's), carrying what the three layers found.
    assert [s.kind for s in warm] == [SpanKind.SERVER] * 3
    for span in warm:
        assert {k: v for k, v in (span.attributes or {}).items() if k.startswith("gateway.")} == {
            "gateway.jwt.cache.result": "l1",
            "gateway.rbac.cache.result": "l1",
            "gateway.session.cache.result": "l1",
        }
    [load] = [s for s in reload if s.name == "gateway.session load"]
    [server] = [s for s in reload if s.kind is SpanKind.SERVER]
    assert load.parent is not None
    assert load.parent.span_id == server.context.span_id
    assert "gateway.session.cache.result" not in (server.attributes or {})
    _no_secrets(telemetry, token, sid)


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

    permissions = PermissionCache(CallablePermissions(lookup), client=client)
    assert await bus.wait_synced(5)
    claims = await validator.validate(make_token("carol"))
    rbac_before = counts("rbac")
    for _ in range(3):
        assert await permissions.permissions(claims) == {"orders:read"}
    rbac_after = counts("rbac")
    assert rbac_after.get("miss", 0) - rbac_before.get("miss", 0) == 1
    assert rbac_after.get("l1", 0) - rbac_before.get("l1", 0) == 2

    sessions = SessionManager(client=client)
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
    sessions = SessionManager(client=client)
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
        # Both requests were served from L1 (login cached the new session): no load span.
        assert names.count("gateway.session load") == 0
        assert names.count("gateway.session save") == 1
        sessions.forget(http.cookies["__Host-session"])
        telemetry.spans.clear()
        await http.get("/read")
    names = [s.name for s in telemetry.spans.get_finished_spans()]
    assert names.count("gateway.session load") == 1
    assert names.count("gateway.session save") == 0
