"""The example gateway: ``uvicorn examples.gateway:app``, configured only by environment.

Redis comes from ``RedisConfig.from_env()`` (``REDIS_URL``, ``REDIS_HOST``,
``REDIS_SENTINELS`` or ``REDIS_CLUSTER_NODES``...); with none of them set, an embedded
Redis-compatible server is started for the life of the app (``GATEWAY_REDIS_SERVER``: the
path of the binary to run, default: found on ``PATH``). ``GATEWAY_SESSION_KEY`` (at least 32
bytes, the same on every instance) keeps each user's sessions in one hash slot (keyed tags:
:mod:`gateway_redis.sessions.tags`; changing it logs everyone out); unset, session IDs
carry random tags. Either way an ID names no user and Redis stores no ID.

Tokens: ``GATEWAY_JWT_SECRET`` (HS256) or ``GATEWAY_JWT_PUBLIC_KEY`` (path to a PEM; RS256,
ES256...) verify them, with ``GATEWAY_JWT_ALGORITHMS`` (comma-separated),
``GATEWAY_JWT_ISSUER``, ``GATEWAY_JWT_AUDIENCE`` and ``GATEWAY_JWT_LEEWAY`` (seconds, 0-60,
default 0). ``/auth/login`` signs with the secret or ``GATEWAY_JWT_PRIVATE_KEY`` (path to a
PEM); with only a public key it answers 501. Login attempts are throttled per (username,
client address) and per username, the client address is taken from trusted proxies only,
and unsafe requests are checked against CSRF: :mod:`examples.guards` (``GATEWAY_LOGIN_*``,
``GATEWAY_TRUSTED_PROXIES``, ``GATEWAY_CSRF_ALLOWED_ORIGINS``). ``GATEWAY_JWT_TTL`` sets
the token lifetime (seconds, default 900). With no key at all a random secret is made up
for this process (a warning says so; tokens then die with it). Cookies are ``Secure``
unless ``GATEWAY_COOKIE_SECURE=0``. Run it with the uvicorn flags of ``scripts/gateway``
(header size, WebSocket message size, proxy headers: docs/production.md, "uvicorn flags");
request bodies of its routes are capped before parsing (:mod:`examples.bodies`).
``GATEWAY_CACHE_KEY`` (at least 32 bytes, the same on every instance, as secret as the JWT
secret) seals the verified tokens cached in Redis (L2, ``JWTSettings.cache_key``); without
it L2 is not used for tokens (a warning says so at startup). ``POST /auth/logout-all``
(with a token) logs its subject out everywhere: its sessions are deleted and every token
of it issued so far is refused on every instance (``revoke_subject``; its sockets close).
``GATEWAY_GC_THRESHOLDS`` sets Python's garbage collector for a process holding many
sockets (default ``10000,10,100``; ``off``: Python's own): :mod:`examples.collector`.

Everything is wired by one :class:`~middleware.Gateway` (``create_app``): its middleware
(one fused layer) runs, outermost first, sessions (cookie; during a Redis outage only
``/api/session`` and ``/auth/*`` answer 503, other routes carry on without a session), JWT
(public: health, readiness, login, logout, ``/api/session``, the docs, the demo page; ``/ws``
authenticates itself), RBAC (``/api/admin/**`` needs ``admin:read``; roles from the token's
``roles`` claim), CSRF (:mod:`middleware.csrf`). Token keys and the ``/auth`` routes:
:mod:`examples.auth`. Real-time messaging: :mod:`examples.realtime`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from examples.apikeys import api_key_settings, install_apikeys
from examples.auth import ROLES, GatewayKeys, error, install_auth
from examples.cached import cached_settings, install_cached
from examples.collector import collector_thresholds, tuned_collector
from examples.guards import LoginGuards
from examples.limited import install_limited, limited_settings
from examples.openapi import declare_responses
from examples.realtime import REALTIME_PUBLIC_PATHS, install_realtime, realtime_settings
from examples.telemetry import configure_logging, configure_telemetry, shutdown_telemetry
from gateway_redis import RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis, find_server_binary
from middleware import (
    Gateway,
    Rule,
    SessionCookie,
    SessionSettings,
    csrf_token,
)
from middleware.fastapi import Claims, RequirePermissions, SessionHandleDep

log = logging.getLogger("examples.gateway")

PUBLIC_PATHS = (
    "/health", "/ready", "/auth/login", "/auth/logout", "/api/session",
    "/docs", "/docs/*", "/openapi.json",
)  # fmt: skip


def _redis(env: Mapping[str, str]) -> tuple[RedisConfig, EmbeddedRedis | None]:
    configured = ("REDIS_URL", "REDIS_HOST", "REDIS_SENTINELS", "REDIS_CLUSTER_NODES")
    if any(env.get(name) for name in configured):
        return RedisConfig.from_env(env), None
    binary = find_server_binary(override=env.get("GATEWAY_REDIS_SERVER") or None)
    embedded = EmbeddedRedis(binary=binary)
    return RedisConfig.from_env({**env, "REDIS_URL": embedded.url}), embedded


def create_app(environ: Mapping[str, str] | None = None) -> FastAPI:
    """Build the gateway from ``environ`` (``os.environ`` by default). Each app runs one
    lifespan: its Redis client is opened at startup and closed at shutdown."""
    env = os.environ if environ is None else environ
    if environ is None:
        configure_logging(env)
    tracing = configure_telemetry(env)
    keys = GatewayKeys(env)
    config, embedded = _redis(env)
    secure = env.get("GATEWAY_COOKIE_SECURE", "1").strip().lower() not in ("0", "false", "no")
    gateway = Gateway(
        config,
        jwt=keys.settings,
        permissions=ROLES,
        sessions=SessionSettings(
            default_ttl=12 * 3600,
            idle_timeout=3600,
            tag_key=env.get("GATEWAY_SESSION_KEY") or None,
            cookie=SessionCookie(secure=secure),
            on_unavailable="anonymous",
            required_paths=("/api/session", "/auth/*"),
        ),
        websocket=realtime_settings(env, ROLES),
        response_cache=cached_settings(env),
        api_keys=api_key_settings(env, ROLES),  # GATEWAY_API_KEYS: examples.apikeys
    )
    guards = LoginGuards.from_env(env, gateway.client)
    thresholds = collector_thresholds(env)  # GATEWAY_GC_THRESHOLDS: examples.collector

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if embedded is not None:
            await embedded.astart()
            log.warning("no Redis configured: using an embedded server at %s", config.url)
        try:
            with tuned_collector(thresholds):
                async with gateway.lifespan(app):
                    yield
        finally:
            if embedded is not None:
                embedded.cleanup()
            if tracing:
                shutdown_telemetry()

    app = FastAPI(title="gateway-redis example", lifespan=lifespan)
    state = app.state
    state.gateway = gateway
    state.redis = gateway.client
    state.bus = gateway.bus
    state.authenticator = gateway.authenticator
    state.permissions = gateway.permissions
    state.sessions = gateway.sessions
    state.bridge = gateway.bridge
    state.keys = keys
    state.throttle = guards.throttle
    state.proxies = guards.proxies
    gateway.install(
        app,
        public_paths=PUBLIC_PATHS + REALTIME_PUBLIC_PATHS,
        rules=[Rule("/api/admin/**", "admin:read")],
        csrf=guards.csrf,
        rate_limits=limited_settings(env, guards.proxies),
    )  # and WS /ws
    if tracing:
        # Outermost, so the HTTP server span is the parent of the library's spans.
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        app.add_middleware(OpenTelemetryMiddleware)
    install_auth(app)  # POST /auth/login, /auth/logout, /auth/logout-all
    _routes(app)
    install_realtime(app, gateway)  # POST /api/channels/{channel}/publish, GET /, /static
    install_cached(app, gateway)  # GET /api/cached/{item}, POST .../invalidate
    install_apikeys(app, gateway)  # POST /api/admin/apikeys/{name}/revoke
    install_limited(app)  # GET /api/limited, /api/limited/strict (examples.limited)
    declare_responses(  # the middleware's answers (401, 403, 503) in the OpenAPI document
        app,
        public_paths=PUBLIC_PATHS + REALTIME_PUBLIC_PATHS,
        permission_paths=("/api/admin", "/api/admin/**"),
        session_paths=("/api/session", "/auth/*"),
    )
    return app


def _routes(app: FastAPI) -> None:
    state = app.state

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Always 200 while the process runs; says whether Redis is up."""
        return {"status": "ok", "redis": state.redis.health.value}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """200 only while Redis is available, else 503."""
        client: RedisClient = state.redis
        if client.available:
            return JSONResponse({"status": "ready", "redis": "up"})
        return JSONResponse(
            {"status": "unavailable", "redis": client.health.value},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.get("/api/me")
    async def me(claims: Claims) -> dict[str, Any]:
        """Who the token says you are."""
        return {"sub": claims.sub, "roles": list(claims.roles)}

    @app.get("/api/admin", dependencies=[Depends(RequirePermissions("admin:read"))])
    async def admin(claims: Claims) -> dict[str, Any]:
        """Needs ``admin:read`` (by rule in the RBAC middleware, and again per route)."""
        return {"sub": claims.sub, "admin": True}

    @app.get("/api/session", response_model=None)
    async def session_info(
        request: Request, handle: SessionHandleDep
    ) -> dict[str, Any] | JSONResponse:
        """The session's metadata and CSRF token (the cookie is enough); 401 without a
        session."""
        session = handle.session
        if session is None:
            return error(
                401, "unauthorized", "Authentication required.",
                **{"WWW-Authenticate": 'Cookie realm="session"'},
            )  # fmt: skip
        return {
            "user_id": session.user_id,
            "created_at": session.created_at.isoformat(),
            "last_accessed_at": session.last_accessed_at.isoformat(),
            "expires_at": session.expires_at.isoformat(),
            "metadata": dict(session.metadata),
            "csrf_token": csrf_token(request),
        }


def __getattr__(name: str) -> Any:
    # ``uvicorn examples.gateway:app`` builds the app on first access (PEP 562), so that
    # importing this module (tests, tools) starts nothing and reads no environment.
    if name == "app":
        app = create_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
