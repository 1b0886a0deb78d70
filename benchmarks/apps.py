"""The ASGI apps the benchmarks serve with uvicorn: ``uvicorn benchmarks.apps:create --factory``.

Configured only by environment (the harness sets it):

``BENCH_VARIANT``
    ``bare``: Starlette, one JSON endpoint, nothing in front of it.
    ``probe``: three pure-ASGI middleware doing one in-process dict lookup each (the
    ceiling for any middleware stack).
    ``pyjwt-hs256`` / ``pyjwt-rs256``: one pure-ASGI middleware verifying the bearer token
    with PyJWT on every request (no cache).
    ``naive``: three pure-ASGI middleware (JWT, RBAC, session), each doing one redis-py
    ``GET`` of a JSON value per request: what a cache kept only in Redis costs.
    ``naive1``: one such middleware (JWT claims by one ``GET``): the cheapest stack that
    asks Redis once per request, the yardstick of a rate limiter's one round trip.
    ``ours``: our ``SessionMiddleware`` + ``JWTMiddleware`` + ``RBACMiddleware`` with a
    cacheable permission source (grants read from Redis, cached per subject).
``BENCH_L1=off``
    (``ours``) never start the invalidation bus, so every L1 cache stays bypassed and each
    request reads Redis (L2): JWT claims + denylist, policy version + permissions, session.
``BENCH_OTEL=1``
    Wrap the app in OpenTelemetry's ASGI middleware, with the SDK recording every span into a
    ``BatchSpanProcessor`` whose exporter discards them.
``BENCH_OUR_SPANS=0``
    (with ``BENCH_OTEL``) keep the SDK but skip our own spans (the library checks
    ``telemetry.tracing_enabled()``; it is patched here, in the benchmark process only).
``BENCH_FUSED=1``
    (``ours``) the same three as one :class:`~middleware.gateway.GatewayMiddleware` layer.
``BENCH_CACHE=1``
    (``ours``) a per-caller response cache rule on ``/api/data``
    (:class:`~middleware.CacheRule`, ttl one hour): warm requests are L1 hits.
``BENCH_RATELIMIT``
    (``ours``) a rate limit on ``/api/data`` (``Gateway.install(rate_limits=...)``), such as
    ``1000000000/h``: every request is admitted and costs one script in Redis.
``BENCH_ONLY``
    (``ours``) a comma-separated subset of ``session,jwt,rbac`` (profiling only).
``REDIS_URL``, ``BENCH_SECRET``, ``BENCH_PUBLIC_KEY`` (PEM path), ``BENCH_ISSUER``,
``BENCH_AUDIENCE``, ``BENCH_CACHE_KEY`` (the L2 seal, ``JWTSettings.cache_key``; a fixed
default: L2 is used as in a configured deployment).

Every variant answers ``GET /api/data`` with the same JSON body. ``ours`` also serves
``/api/me`` (token only), ``/api/session`` (session cookie only; 401 without a session) and
``/health``, used by the invalidation benchmark.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request, cookie_parser
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

BODY = {"ok": True, "service": "bench"}
GRANTS_KEY = "bench:grants:"  # + subject (+ key prefix): a Redis set, the "permission database"
NAIVE_PREFIX = "naive:"
COOKIE = "__Host-session"
PERMISSION = "data:read"


async def data(request: Request) -> Response:
    return JSONResponse(BODY)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return None


async def _deny(scope: Scope, receive: Receive, send: Send, status: int) -> None:
    await JSONResponse({"error": "denied"}, status_code=status)(scope, receive, send)


# -- probe: three in-process lookups -------------------------------------------------------


class _Probe:
    def __init__(self, app: ASGIApp, *, table: dict[str, Any], field: str) -> None:
        self.app, self.table, self.field = app, table, field

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[self.field] = self.table.get(_bearer(scope) or "")
        await self.app(scope, receive, send)


# -- local PyJWT verification ----------------------------------------------------------------


class _PyJWT:
    def __init__(self, app: ASGIApp, *, key: Any, algorithm: str, issuer: str, audience: str):
        self.app, self.key, self.algorithms = app, key, [algorithm]
        self.issuer, self.audience = issuer, audience

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        try:
            claims = jwt.decode(
                token or "",
                self.key,
                algorithms=self.algorithms,
                issuer=self.issuer,
                audience=self.audience,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.InvalidTokenError:
            await _deny(scope, receive, send, 401)
            return
        scope["claims"] = claims
        await self.app(scope, receive, send)


# -- naive: one redis-py GET per middleware --------------------------------------------------


class _NaiveJWT:
    def __init__(self, app: ASGIApp, *, redis: Any) -> None:
        self.app, self.redis = app, redis

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _bearer(scope) or ""
        digest = hashlib.sha256(token.encode()).hexdigest()
        raw = await self.redis.get(f"{NAIVE_PREFIX}jwt:{digest}")
        if raw is None:
            await _deny(scope, receive, send, 401)
            return
        scope["claims"] = json.loads(raw)
        await self.app(scope, receive, send)


class _NaiveRBAC:
    def __init__(self, app: ASGIApp, *, redis: Any) -> None:
        self.app, self.redis = app, redis

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = await self.redis.get(f"{NAIVE_PREFIX}rbac:{scope['claims']['sub']}")
        if raw is None or PERMISSION not in json.loads(raw):
            await _deny(scope, receive, send, 403)
            return
        await self.app(scope, receive, send)


class _NaiveSession:
    def __init__(self, app: ASGIApp, *, redis: Any) -> None:
        self.app, self.redis = app, redis

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        session: Any = None
        for name, value in scope["headers"]:
            if name == b"cookie":
                sid = cookie_parser(value.decode("latin-1")).get(COOKIE)
                if sid:
                    raw = await self.redis.get(f"{NAIVE_PREFIX}session:{sid}")
                    session = json.loads(raw) if raw is not None else None
        scope["session"] = session or {}
        await self.app(scope, receive, send)


# -- factory ---------------------------------------------------------------------------------


def _tracing(app: ASGIApp, our_spans: bool) -> ASGIApp:
    from opentelemetry import trace
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Discard(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    trace.set_tracer_provider(provider)
    if not our_spans:
        from gateway_redis import telemetry

        telemetry.tracing_enabled = lambda: False
    return OpenTelemetryMiddleware(app)


def _ours(env: dict[str, str]) -> Starlette:
    from gateway_redis import RedisClient, RedisConfig
    from middleware import (
        CacheRule,
        CallablePermissions,
        Gateway,
        JWTMiddleware,
        JWTSettings,
        RateLimitRule,
        RBACMiddleware,
        ResponseCacheSettings,
        Rule,
        SessionMiddleware,
        SessionSettings,
        get_claims,
        get_session,
    )

    client = RedisClient(RedisConfig(url=env["REDIS_URL"], pool_size=20, min_idle_conns=4))
    settings = JWTSettings(
        algorithms=("HS256",),
        key=env["BENCH_SECRET"],
        issuer=env["BENCH_ISSUER"],
        audience=env["BENCH_AUDIENCE"],
        cache_key=env.get("BENCH_CACHE_KEY") or "bench-l2-seal-Xr7kQ2mV9pT4wN1zB6cJ3hL8",
    )

    async def grants(subject: str) -> Collection[str]:
        key = client.key(GRANTS_KEY + subject)
        members: Any = await client.execute("bench.grants", lambda r: r.smembers(key))
        return [m.decode() if isinstance(m, bytes) else m for m in members]

    # Cookie __Host-session (Secure: the server reads it anyway).
    cached = (
        ResponseCacheSettings([CacheRule("/api/data", ttl=3600)])
        if env.get("BENCH_CACHE") == "1"
        else None
    )
    gateway = Gateway(
        client,
        jwt=settings,
        permissions=CallablePermissions(grants),
        sessions=SessionSettings(),
        response_cache=cached,
    )
    use_l1 = env.get("BENCH_L1", "on") != "off"

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not use_l1:
            await gateway.bus.aclose()  # never started: every L1 cache stays bypassed
        # ours: the Gateway leaves a client it was given open
        async with client, gateway.lifespan(app):
            if use_l1:
                await gateway.bus.wait_synced(5.0)
            yield

    async def me(request: Request) -> Response:
        return JSONResponse({"sub": get_claims(request).sub})

    async def session(request: Request) -> Response:
        found = get_session(request)
        if found is None:
            return JSONResponse({"error": "no session"}, status_code=401)
        return JSONResponse({"user_id": found.user_id})

    async def health(request: Request) -> Response:
        return JSONResponse({"redis": client.health.value, "bus": gateway.bus.healthy})

    routes = [
        Route("/api/data", data),
        Route("/api/me", me),
        Route("/api/session", session),
        Route("/health", health),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    public_paths = ["/health", "/api/session"]
    rules = [Rule("/api/data", PERMISSION)]
    only = env.get("BENCH_ONLY")
    if only is None:
        limit = env.get("BENCH_RATELIMIT")
        limits = [RateLimitRule("/api/data", limit, on_unavailable="open")] if limit else []
        # BENCH_FUSED=1: the three as one layer (GatewayMiddleware).
        gateway.install(
            app,
            public_paths=public_paths,
            rules=rules,
            fused=env.get("BENCH_FUSED") == "1",
            rate_limits=limits,
        )
        return app
    # Profiling: a subset of the separate layers, on the Gateway's components.
    stack = {
        "session": Middleware(SessionMiddleware, sessions=gateway.sessions),  # type: ignore[arg-type]
        "jwt": Middleware(
            JWTMiddleware,  # type: ignore[arg-type]
            authenticator=gateway.authenticator,
            public_paths=public_paths,
        ),
        "rbac": Middleware(RBACMiddleware, permissions=gateway.permissions, rules=rules),  # type: ignore[arg-type]
    }
    app.user_middleware[:0] = [m for name, m in stack.items() if name in only.split(",")]
    return app


def create() -> ASGIApp:
    """The app for ``BENCH_VARIANT`` (see the module docstring)."""
    env = dict(os.environ)
    variant = env.get("BENCH_VARIANT", "bare")
    routes = [Route("/api/data", data), Route("/health", data)]
    app: ASGIApp
    if variant == "bare":
        app = Starlette(routes=routes)
    elif variant == "probe":
        tables = [{"x": 1}, {"y": 2}, {"z": 3}]
        app = Starlette(
            routes=routes,
            middleware=[
                Middleware(_Probe, table=t, field=f)  # type: ignore[arg-type]
                for t, f in zip(tables, ("a", "b", "c"), strict=True)
            ],
        )
    elif variant in ("pyjwt-hs256", "pyjwt-rs256"):
        if variant == "pyjwt-hs256":
            key: Any = env["BENCH_SECRET"]
        else:
            with open(env["BENCH_PUBLIC_KEY"], "rb") as f:
                key = f.read()
        app = Starlette(
            routes=routes,
            middleware=[
                Middleware(
                    _PyJWT,  # type: ignore[arg-type]
                    key=key,
                    algorithm=variant[-5:].upper(),
                    issuer=env["BENCH_ISSUER"],
                    audience=env["BENCH_AUDIENCE"],
                )
            ],
        )
    elif variant in ("naive", "naive1"):
        import redis.asyncio as aioredis

        pool = aioredis.BlockingConnectionPool.from_url(
            env["REDIS_URL"], max_connections=20, timeout=2
        )
        redis = aioredis.Redis(connection_pool=pool)

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            await redis.aclose()
            await pool.disconnect()

        app = Starlette(
            routes=routes,
            middleware=[
                Middleware(cls, redis=redis)  # type: ignore[arg-type]
                for cls in (
                    (_NaiveSession, _NaiveJWT, _NaiveRBAC) if variant == "naive" else (_NaiveJWT,)
                )
            ],
            lifespan=lifespan,
        )
    elif variant == "ours":
        app = _ours(env)
    else:
        raise ValueError(f"unknown BENCH_VARIANT {variant!r}")
    if env.get("BENCH_OTEL") == "1":
        app = _tracing(app, our_spans=env.get("BENCH_OUR_SPANS", "1") != "0")
    return app
