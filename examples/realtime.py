"""Real-time messaging for the example gateway: ``WS /ws``, HTTP publishing, a demo page.

::

    gateway = Gateway(config, ..., websocket=realtime_settings(env, ROLES))   # examples.gateway
    gateway.install(app, public_paths=[..., *REALTIME_PUBLIC_PATHS])          # WS /ws
    install_realtime(app, gateway)           # the demo page and the publish route

or: ``uvicorn examples.realtime:create_app --factory`` with the flags of ``scripts/gateway``
(``--ws-max-size 65536`` among them; docs/production.md, "uvicorn flags"): the same app
as ``examples.gateway``.

Channel policy: everyone may subscribe to ``system:broadcast``; a user to their own
``notifications:{sub}``; the ``channels:publish`` permission (role ``admin``) publishes to
``system:broadcast`` and to anyone's ``notifications:<user>``; everything else is denied.
Both keep history (1,000 messages, 5 minutes after the last one): their message frames
carry ``offset`` and ``epoch``, ``subscribed`` replies ``positions``, and a reconnecting
client sends ``recover`` to get what it missed (``docs/guides/websocket.md``). Both have
presence (``presence`` / ``presence_stats`` requests) and send ``join`` / ``leave`` frames.

* ``WS /ws``: the :class:`~middleware.websocket.WebSocketBridge` protocol. Browsers send
  their token as ``Sec-WebSocket-Protocol: bearer, <token>`` or rely on the session cookie.
* ``POST /api/channels/{channel}/publish``: needs ``channels:publish``; the JSON body is
  the message (at most 64 KiB); answers ``{"receivers": n}`` (Redis's count: subscribed
  gateway instances and other subscribers, not sockets), with ``"epoch"`` and ``"offset"``
  on the channels with history.
* ``POST /api/admin/sockets/{user}/disconnect``: needs ``admin:read``; closes every socket
  of the subject ``user`` on every instance (close code 4000, the bridge's server API);
  answers ``{"status": "disconnected"}``. It does not log the user out.
* ``GET /``: the demo page (``examples/static``; no external resources).

Environment: ``GATEWAY_WS_ORIGINS`` (comma-separated origins allowed besides the page's own),
``GATEWAY_WS_MAX_PER_USER`` (sockets per user and process, default 2048 so that load tests
with one demo account work; the library's default is 32), ``GATEWAY_WS_QUEUE_SIZE``
(default 100), ``GATEWAY_WS_OVERFLOW`` (``drop_oldest`` or ``close``),
``GATEWAY_WS_MAX_MESSAGE_BYTES`` (default 65536), ``GATEWAY_WS_RATE`` (frames per second,
default 30), ``GATEWAY_WS_PING_INTERVAL`` / ``GATEWAY_WS_IDLE_TIMEOUT`` (seconds, default
30 / 90; ``0`` disables), ``GATEWAY_WS_PRESENCE_TTL`` (seconds a dead instance's sockets
stay in presence, default 30), ``GATEWAY_WS_JOIN_LEAVE_LIMIT`` (connections up to which a
channel sends join/leave frames, default 100).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.staticfiles import StaticFiles

from examples.bodies import BodyTooLarge, read_body, too_large
from gateway_redis import RedisClient, RedisUnavailable, SerializationError, Session
from middleware import Gateway, PermissionCache, WebSocketSettings
from middleware.errors import ServiceUnavailable
from middleware.fastapi import Claims, RequirePermissions
from middleware.jwt import TokenClaims
from middleware.websocket import ChannelPolicy, ChannelRule, WebSocketBridge, WebSocketLimits

__all__ = [
    "REALTIME_PUBLIC_PATHS",
    "create_app",
    "install_realtime",
    "realtime_policy",
    "realtime_settings",
]

STATIC = Path(__file__).resolve().parent / "static"
REALTIME_PUBLIC_PATHS = ("/", "/static/*")
"""Paths the JWT middleware must not require a token for: the page and its script. (``/ws``
needs no listing: :meth:`Gateway.install` makes the bridge's path public, and the bridge
authenticates from the token *or* the session cookie.)"""
MAX_PUBLISH_BYTES = 64 * 1024
HISTORY_SIZE = 1000
"""Messages kept per channel with history (``system:broadcast``, ``notifications:*``)."""
HISTORY_TTL = 300.0
"""Seconds a channel's history is kept after its last message."""


def realtime_policy(join_leave_limit: int = 100) -> ChannelPolicy:
    """The example's channel policy (see the module docstring)."""
    return ChannelPolicy(
        [
            ChannelRule(
                "system:broadcast",
                subscribe=True,
                publish="channels:publish",
                history_size=HISTORY_SIZE,
                history_ttl=HISTORY_TTL,
                presence=True,
                join_leave=True,
                join_leave_limit=join_leave_limit,
            ),
            ChannelRule(
                "notifications:{sub}",
                subscribe=True,
                history_size=HISTORY_SIZE,
                history_ttl=HISTORY_TTL,
                presence=True,
                join_leave=True,
                join_leave_limit=join_leave_limit,
            ),
            ChannelRule("notifications:{user}", publish="channels:publish"),
        ]
    )


def realtime_settings(
    env: Mapping[str, str], roles: Mapping[str, Iterable[str]]
) -> WebSocketSettings:
    """The WebSocket endpoint's settings from ``env`` (see the module docstring); cookie
    sessions get the permissions of the ``roles`` stored in them at login."""
    origins = [o.strip() for o in env.get("GATEWAY_WS_ORIGINS", "").split(",") if o.strip()]
    return WebSocketSettings(
        policy=realtime_policy(int(env.get("GATEWAY_WS_JOIN_LEAVE_LIMIT") or 100)),
        limits=_limits(env),
        allowed_origins=tuple(origins),
        session_permissions=_session_permissions(roles),
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
        presence_ttl=float(env.get("GATEWAY_WS_PRESENCE_TTL") or 30.0),
    )


def install_realtime(app: FastAPI, gateway: Gateway) -> WebSocketBridge:
    """Add ``POST /api/channels/{channel}/publish``, ``GET /`` and ``/static`` to ``app``,
    on ``gateway``'s bridge, client and permissions (``WS /ws`` itself is installed by
    :meth:`Gateway.install`). Returns the bridge. Raises ``ValueError`` when ``gateway`` has
    no bridge or no permission source.
    """
    bridge, cache = gateway.bridge, gateway.permissions
    if bridge is None or cache is None:
        raise ValueError("the gateway needs a channel policy and a permission source")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _routes(app, bridge, gateway.client, cache)
    return bridge


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
        """Publish the JSON body on ``channel``; answers ``{"receivers": n}``, plus
        ``"epoch"`` and ``"offset"`` on a channel with history."""
        try:
            body = await read_body(request, MAX_PUBLISH_BYTES)
        except BodyTooLarge as exc:
            return too_large(exc.limit)
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
            receivers, position = await bridge.publish(channel, data)
        except (RedisUnavailable, ServiceUnavailable):
            response = _error(503, "unavailable", "Service temporarily unavailable.")
            response.headers["Retry-After"] = "1"
            return response
        except SerializationError:
            return _error(400, "bad_request", "The body must be JSON (no NaN or Infinity).")
        if position is None:
            return JSONResponse({"receivers": receivers})
        return JSONResponse(
            {"receivers": receivers, "epoch": position.epoch, "offset": position.offset}
        )

    @app.post(
        "/api/admin/sockets/{user}/disconnect",
        dependencies=[Depends(RequirePermissions("admin:read"))],
    )
    async def disconnect_sockets(user: str) -> JSONResponse:
        """Close every socket of ``user`` (a subject) on every instance, with 4000."""
        try:
            await bridge.sockets.disconnect(user, "disconnected by an administrator")
        except RedisUnavailable:  # applied on this instance only
            response = _error(503, "unavailable", "Service temporarily unavailable.")
            response.headers["Retry-After"] = "1"
            return response
        return JSONResponse({"status": "disconnected"})


def create_app(environ: Mapping[str, str] | None = None) -> FastAPI:
    """The example gateway, real-time messaging included (``uvicorn --factory``)."""
    from examples.gateway import create_app as create_gateway  # it imports this module

    return create_gateway(os.environ if environ is None else environ)
