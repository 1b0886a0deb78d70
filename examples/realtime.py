"""Real-time messaging for the example gateway: ``WS /ws``, HTTP publishing, a demo page.

::

    app = create_app(env)                    # examples.gateway
    install_realtime(app, env=env)           # collaborators from app.state

or, standalone: ``uvicorn examples.realtime:create_app --factory --ws-max-size 65536``.

Channel policy: everyone may subscribe to ``system:broadcast``; a user to their own
``notifications:{sub}``; the ``channels:publish`` permission (role ``admin``) publishes to
``system:broadcast`` and to anyone's ``notifications:<user>``; everything else is denied.

* ``WS /ws``: the :class:`~middleware.websocket.WebSocketBridge` protocol. Browsers send
  their token as ``Sec-WebSocket-Protocol: bearer, <token>`` or rely on the session cookie.
* ``POST /api/channels/{channel}/publish``: needs ``channels:publish``; the JSON body is
  the message (at most 64 KiB); answers ``{"receivers": n}`` (Redis's count: subscribed
  gateway instances and other subscribers, not sockets).
* ``GET /``: the demo page (``examples/static``; no external resources).

Environment: ``GATEWAY_WS_ORIGINS`` (comma-separated origins allowed besides the page's own),
``GATEWAY_WS_MAX_PER_USER`` (sockets per user and process, default 2048 so that load tests
with one demo account work; the library's default is 32), ``GATEWAY_WS_QUEUE_SIZE``
(default 100), ``GATEWAY_WS_OVERFLOW`` (``drop_oldest`` or ``close``),
``GATEWAY_WS_MAX_MESSAGE_BYTES`` (default 65536), ``GATEWAY_WS_RATE`` (frames per second,
default 30), ``GATEWAY_WS_PING_INTERVAL`` / ``GATEWAY_WS_IDLE_TIMEOUT`` (seconds, default
30 / 90; ``0`` disables).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.routing import WebSocketRoute
from starlette.staticfiles import StaticFiles

from gateway_redis import RedisClient, RedisUnavailable, SerializationError, Session
from middleware import JWTAuthenticator, JWTMiddleware, PermissionCache, SessionManager
from middleware.errors import ServiceUnavailable
from middleware.fastapi import Claims, RequirePermissions
from middleware.jwt import TokenClaims
from middleware.websocket import ChannelPolicy, ChannelRule, WebSocketBridge, WebSocketLimits

__all__ = ["REALTIME_PUBLIC_PATHS", "create_app", "install_realtime", "realtime_policy"]

STATIC = Path(__file__).resolve().parent / "static"
REALTIME_PUBLIC_PATHS = ("/", "/static/*", "/ws")
"""Paths the JWT middleware must not require a token for (the bridge authenticates itself
from the token *or* the session cookie; the page and its script are public)."""
MAX_PUBLISH_BYTES = 64 * 1024


def realtime_policy() -> ChannelPolicy:
    """The example's channel policy (see the module docstring)."""
    return ChannelPolicy(
        [
            ChannelRule("system:broadcast", subscribe=True, publish="channels:publish"),
            ChannelRule("notifications:{sub}", subscribe=True),
            ChannelRule("notifications:{user}", publish="channels:publish"),
        ]
    )


class _ClaimsPrincipal:
    """A token's principal for the HTTP publish route."""

    def __init__(self, claims: TokenClaims, cache: PermissionCache) -> None:
        self.subject = claims.sub
        self._claims = claims
        self._cache = cache

    async def permissions(self) -> Collection[str]:
        return await self._cache.permissions(self._claims)


def _session_permissions(
    roles: Mapping[str, Iterable[str]],
) -> Callable[[Session], Any]:
    """Cookie-session principals: the roles stored in the session at login."""
    table = {role: frozenset(granted) for role, granted in roles.items()}

    async def resolve(session: Session) -> frozenset[str]:
        found = session.metadata.get("roles")
        granted: set[str] = set()
        for role in found if isinstance(found, list) else ():
            if isinstance(role, str):
                granted |= table.get(role, frozenset())
        return frozenset(granted)

    return resolve


def _number(env: Mapping[str, str], name: str, default: float) -> float | None:
    raw = env.get(name, "").strip()
    value = float(raw) if raw else default
    return None if value == 0 else value


def _limits(env: Mapping[str, str]) -> WebSocketLimits:
    overflow = env.get("GATEWAY_WS_OVERFLOW", "").strip() or "drop_oldest"
    if overflow not in ("drop_oldest", "close"):
        raise ValueError("GATEWAY_WS_OVERFLOW must be drop_oldest or close")
    return WebSocketLimits(
        max_message_bytes=int(env.get("GATEWAY_WS_MAX_MESSAGE_BYTES") or 65536),
        queue_size=int(env.get("GATEWAY_WS_QUEUE_SIZE") or 100),
        overflow="close" if overflow == "close" else "drop_oldest",
        rate=float(env.get("GATEWAY_WS_RATE") or 30.0),
        burst=max(1, int(2 * float(env.get("GATEWAY_WS_RATE") or 30.0))),
        max_connections_per_user=int(env.get("GATEWAY_WS_MAX_PER_USER") or 2048),
        ping_interval=_number(env, "GATEWAY_WS_PING_INTERVAL", 30.0),
        idle_timeout=_number(env, "GATEWAY_WS_IDLE_TIMEOUT", 90.0),
    )


def install_realtime(
    app: FastAPI,
    *,
    client: RedisClient | None = None,
    authenticator: JWTAuthenticator | None = None,
    permissions: PermissionCache | None = None,
    sessions: SessionManager | None = None,
    roles: Mapping[str, Iterable[str]] | None = None,
    env: Mapping[str, str] | None = None,
) -> WebSocketBridge:
    """Add ``WS /ws``, ``POST /api/channels/{channel}/publish`` and ``GET /`` to ``app``.

    Collaborators default to ``app.state.redis``, ``.authenticator``,
    ``.permissions`` and ``.sessions`` (as :func:`examples.gateway.create_app` sets them);
    ``roles`` to the gateway's ``ROLES``; ``env`` to ``os.environ``. Call it before the app
    serves its first request: it adds :data:`REALTIME_PUBLIC_PATHS` to the JWT middleware's
    public paths and wraps the lifespan so the bridge closes (1001) before the client.
    Idempotent: returns the installed bridge on a second call.
    """
    existing = getattr(app.state, "bridge", None)
    if isinstance(existing, WebSocketBridge):
        return existing
    if app.middleware_stack is not None:
        raise RuntimeError("install_realtime() must run before the app serves requests")
    env = os.environ if env is None else env
    state = app.state
    client = client or state.redis
    if roles is None:
        from examples.gateway import ROLES  # late: examples.gateway may import this module

        roles = ROLES
    cache: PermissionCache = permissions or state.permissions
    origins = [o.strip() for o in env.get("GATEWAY_WS_ORIGINS", "").split(",") if o.strip()]
    bridge = WebSocketBridge(
        client=client,
        policy=realtime_policy(),
        authenticator=authenticator or state.authenticator,
        permissions=cache,
        session_permissions=_session_permissions(roles),
        sessions=sessions or state.sessions,
        allowed_origins=origins,
        limits=_limits(env),
    )
    state.bridge = bridge
    _open_paths(app)
    _close_with_lifespan(app, bridge)
    app.router.routes.append(WebSocketRoute("/ws", bridge, name="realtime"))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _routes(app, bridge, client, cache)
    return bridge


def _open_paths(app: FastAPI) -> None:
    for middleware in app.user_middleware:
        if middleware.cls is JWTMiddleware:  # type: ignore[comparison-overlap]
            paths: tuple[str, ...] = tuple(middleware.kwargs.get("public_paths", ()))  # type: ignore[arg-type]
            extra = tuple(p for p in REALTIME_PUBLIC_PATHS if p not in paths)
            middleware.kwargs["public_paths"] = paths + extra


def _close_with_lifespan(app: FastAPI, bridge: WebSocketBridge) -> None:
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with inner(app_) as value:
            try:
                yield value
            finally:
                await bridge.aclose()  # sockets first, then the client they depend on

    app.router.lifespan_context = lifespan


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def _routes(
    app: FastAPI, bridge: WebSocketBridge, client: RedisClient, cache: PermissionCache
) -> None:
    @app.get("/", include_in_schema=False)
    async def demo_page() -> FileResponse:
        """The demo page."""
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.post(
        "/api/channels/{channel}/publish",
        dependencies=[Depends(RequirePermissions("channels:publish"))],
    )
    async def publish(channel: str, request: Request, claims: Claims) -> JSONResponse:
        """Publish the JSON body on ``channel``; answers ``{"receivers": n}``."""
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_PUBLISH_BYTES:
                return _error(413, "too_large", f"The body exceeds {MAX_PUBLISH_BYTES} bytes.")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return _error(400, "bad_request", "The body must be JSON.")
        policy = bridge.policy
        if not policy.valid_name(channel):
            return _error(400, "bad_request", "Invalid channel name.")
        try:
            allowed = await policy.allows(_ClaimsPrincipal(claims, cache), "publish", channel)
            if not allowed:
                return _error(403, "forbidden", "You do not have permission to do this.")
            receivers = await client.publish(channel, data)
        except (RedisUnavailable, ServiceUnavailable):
            response = _error(503, "unavailable", "Service temporarily unavailable.")
            response.headers["Retry-After"] = "1"
            return response
        except SerializationError:
            return _error(400, "bad_request", "The body must be JSON (no NaN or Infinity).")
        return JSONResponse({"receivers": receivers})


def create_app(environ: Mapping[str, str] | None = None) -> FastAPI:
    """The example gateway with real-time messaging (``uvicorn --factory``)."""
    from examples.gateway import create_app as create_gateway

    env = os.environ if environ is None else environ
    app = create_gateway(env)
    install_realtime(app, env=env)
    return app
