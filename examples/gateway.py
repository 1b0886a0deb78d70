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
unless ``GATEWAY_COOKIE_SECURE=0``. Run it with the uvicorn flags of ``scripts/gateway`` (header
size, WebSocket message size, proxy headers: README, "Production notes"); request bodies
of its routes are capped before parsing (:mod:`examples.bodies`).
``GATEWAY_CACHE_KEY`` (at least 32 bytes, the same on every instance, as secret as the JWT
secret) seals the verified tokens cached in Redis (L2, ``JWTSettings.cache_key``); without
it L2 is not used for tokens (a warning says so at startup). ``POST /auth/logout-all``
(with a token) logs its subject out everywhere: its sessions are deleted and every token
of it issued so far is refused on every instance (``revoke_subject``; its sockets close).

Everything is wired by one :class:`~middleware.Gateway` (``create_app``): its middleware
(one fused layer) runs, outermost first, sessions (cookie; during a Redis outage only
``/api/session`` and ``/auth/*`` answer 503, other routes carry on without a session), JWT
(public: health, readiness, login, logout, ``/api/session``, the docs, the demo page; ``/ws``
authenticates itself), RBAC (``/api/admin/**`` needs ``admin:read``; roles from the token's
``roles`` claim), CSRF (:mod:`middleware.csrf`). Real-time messaging: :mod:`examples.realtime`.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from examples.bodies import BodyTooLarge, form_or_json, too_large
from examples.guards import LoginGuards
from examples.limited import install_limited, limited_settings
from examples.realtime import REALTIME_PUBLIC_PATHS, install_realtime, realtime_settings
from examples.telemetry import configure_logging, configure_telemetry, shutdown_telemetry
from examples.throttle import LoginThrottle
from gateway_redis import RedisClient, RedisConfig, RedisUnavailable
from gateway_redis.embedded import EmbeddedRedis, find_server_binary
from middleware import (
    Gateway,
    JWTAuthenticator,
    JWTSettings,
    Rule,
    ServiceUnavailable,
    SessionCookie,
    SessionSettings,
    csrf_fields,
    csrf_token,
    get_claims_or_none,
)
from middleware.fastapi import Claims, RequirePermissions, SessionHandleDep

log = logging.getLogger("examples.gateway")

ROLES = {
    "admin": ("admin:read", "channels:publish", "profile:read"),
    "user": ("profile:read",),
}
# Demo only: (password, roles). A real gateway asks its identity provider.
DEMO_USERS = {
    "alice": ("alice-password", ("admin",)),
    "bob": ("bob-password", ("user",)),
}
# A login body is a username and a password: anything longer is refused before parsing.
MAX_LOGIN_BYTES = 16 * 1024
PUBLIC_PATHS = (
    "/health", "/ready", "/auth/login", "/auth/logout", "/api/session",
    "/docs", "/docs/*", "/openapi.json",
)  # fmt: skip


class GatewayKeys:
    """Verification settings plus the signing key (None when only a public key is known)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        secret = env.get("GATEWAY_JWT_SECRET") or None
        public_path = env.get("GATEWAY_JWT_PUBLIC_KEY") or None
        private_path = env.get("GATEWAY_JWT_PRIVATE_KEY") or None
        if secret and (public_path or private_path):
            raise ValueError("set GATEWAY_JWT_SECRET or a key pair, not both")
        signing: Any = None
        if secret:
            verify: str | bytes = secret
            default_algs = ["HS256"]
            signing = secret
        elif public_path or private_path:
            if private_path:
                with open(private_path, "rb") as f:
                    signing = serialization.load_pem_private_key(f.read(), password=None)
            if public_path:
                with open(public_path, "rb") as f:
                    verify = f.read()
            else:
                verify = signing.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            assert isinstance(verify, bytes)
            default_algs = [_default_algorithm(serialization.load_pem_public_key(verify))]
        else:
            log.warning("no GATEWAY_JWT_SECRET or key set: using a random secret for this process")
            signing = verify = secrets.token_urlsafe(48)
            default_algs = ["HS256"]
        algs = env.get("GATEWAY_JWT_ALGORITHMS") or ",".join(default_algs)
        self.settings = JWTSettings(
            algorithms=tuple(a.strip() for a in algs.split(",") if a.strip()),
            key=verify,
            issuer=env.get("GATEWAY_JWT_ISSUER") or "https://gateway.example",
            audience=env.get("GATEWAY_JWT_AUDIENCE") or "gateway-api",
            leeway=float(env.get("GATEWAY_JWT_LEEWAY") or 0),
            cache_key=env.get("GATEWAY_CACHE_KEY") or None,
        )
        self.signing_key = signing
        self.algorithm = self.settings.algorithms[0]
        self.ttl = int(env.get("GATEWAY_JWT_TTL") or 900)
        if not 10 <= self.ttl <= 86400:
            raise ValueError("GATEWAY_JWT_TTL must be 10..86400 seconds")

    def issue(self, subject: str, roles: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
        """A signed token for ``subject`` and its claims."""
        now = int(time.time())
        audience = self.settings.audience
        claims: dict[str, Any] = {
            "sub": subject,
            "roles": list(roles),
            "iat": now,
            "exp": now + self.ttl,
            "jti": uuid.uuid4().hex,
            "iss": self.settings.issuer,
            "aud": audience if isinstance(audience, str) else audience[0],
        }
        return jwt.encode(claims, self.signing_key, algorithm=self.algorithm), claims


def _default_algorithm(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp384r1": "ES384", "secp521r1": "ES512"}.get(key.curve.name, "ES256")
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError("unsupported public key type")


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
    )
    guards = LoginGuards.from_env(env, gateway.client)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if embedded is not None:
            await embedded.astart()
            log.warning("no Redis configured: using an embedded server at %s", config.url)
        try:
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
    _routes(app)
    install_realtime(app, gateway)  # POST /api/channels/{channel}/publish, GET /, /static
    install_limited(app)  # GET /api/limited, /api/limited/strict (examples.limited)
    return app


def _error(status: int, code: str, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


async def _credentials(request: Request) -> tuple[str, str] | None:
    """The username and password of a login body (JSON or form), None when absent or
    malformed. Raises :class:`BodyTooLarge` past :data:`MAX_LOGIN_BYTES`."""
    try:
        data = await form_or_json(request, MAX_LOGIN_BYTES)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, Mapping):
        return None
    username, password = data.get("username"), data.get("password")
    if isinstance(username, str) and isinstance(password, str):
        return username, password
    return None


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

    @app.post("/auth/login")
    async def login(request: Request, handle: SessionHandleDep) -> JSONResponse:
        """Demo login: a token in the body and a new session cookie."""
        keys: GatewayKeys = state.keys
        if keys.signing_key is None:
            return _error(501, "not_implemented", "Tokens come from the identity provider.")
        try:
            credentials = await _credentials(request)
        except BodyTooLarge as exc:
            return too_large(exc.limit)
        if credentials is None:
            return _error(400, "bad_request", "Send username and password.")
        username, password = credentials
        throttle: LoginThrottle = state.throttle
        address = state.proxies.client_address(request) or "unknown"
        try:  # counted before the password is checked: concurrent guesses each count
            wait = await throttle.attempt(username, address)
        except RedisUnavailable:
            raise ServiceUnavailable("login_throttle_unavailable") from None
        if wait is not None:
            return _error(
                429, "too_many_attempts", "Too many login attempts; try later.",
                **{"Retry-After": str(wait)},
            )  # fmt: skip
        user = DEMO_USERS.get(username)
        expected = user[0] if user is not None else secrets.token_hex(16)
        if not hmac.compare_digest(password.encode(), expected.encode()) or user is None:
            return _error(
                401,
                "invalid_credentials",
                "Wrong username or password.",
                **{"WWW-Authenticate": "Bearer"},
            )
        with contextlib.suppress(RedisUnavailable):
            await throttle.succeeded(username, address)
        token, claims = keys.issue(username, user[1])
        metadata = {"username": username, "roles": list(user[1]), "jti": claims["jti"],
                    "token_exp": claims["exp"], "login_at": claims["iat"],
                    **csrf_fields()}  # fmt: skip
        await handle.create(username, metadata)
        body = {"access_token": token, "token_type": "bearer", "expires_in": keys.ttl,
                "csrf_token": csrf_token(request)}  # fmt: skip
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    @app.post("/auth/logout")
    async def logout(request: Request, handle: SessionHandleDep) -> dict[str, str]:
        """Revoke the presented token and the session's token; delete the session."""
        authenticator: JWTAuthenticator = state.authenticator
        claims = get_claims_or_none(request)
        session = handle.session
        try:
            if claims is not None and claims.jti is not None:
                await authenticator.revoke(claims)
            if session is not None:
                jti, exp = session.metadata.get("jti"), session.metadata.get("token_exp")
                if isinstance(jti, str) and isinstance(exp, int) and jti != (claims and claims.jti):
                    issuer = state.keys.settings.issuer
                    await authenticator.revoke((issuer, jti), expires_at=exp)
        except RedisUnavailable:
            # Revoked on this instance already; the client should retry to reach the others.
            raise ServiceUnavailable("revocation_unavailable") from None
        await handle.delete()  # raises ServiceUnavailable (-> 503) during an outage
        return {"status": "logged_out"}

    @app.post("/auth/logout-all")
    async def logout_all(claims: Claims) -> dict[str, Any]:
        """Log out everywhere: every session of the token's subject is deleted and every
        token of it issued up to now is refused on every instance (its sockets close)."""
        authenticator: JWTAuthenticator = state.authenticator
        try:
            await authenticator.revoke_subject(claims.sub)
            ended = await state.sessions.delete_user_sessions(claims.sub)
        except RedisUnavailable:
            # Cut off on this instance already; the client should retry to reach the others.
            raise ServiceUnavailable("revocation_unavailable") from None
        return {"status": "logged_out_everywhere", "sessions": ended}

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
            return _error(
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
