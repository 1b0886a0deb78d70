"""The WebSocket bridge: Redis pub/sub channels to browsers, authenticated and bounded.

::

    bridge = WebSocketBridge(client=client, policy=policy, authenticator=authenticator,
                             permissions=permissions, sessions=sessions)
    app.router.routes.append(WebSocketRoute("/ws", bridge))
    ...
    await bridge.aclose()          # in the lifespan's shutdown, before client.aclose()

A pure ASGI endpoint. Install it behind :class:`~middleware.jwt.JWTMiddleware` (with the
path in its ``public_paths`` if cookie sessions should work too) and/or
:class:`~middleware.sessions.SessionMiddleware`: it authenticates with what they put in
the scope, before accepting.

Protocol (JSON text frames; every reply and error echoes the client's ``id``)::

    client: {"type": "subscribe", "channels": ["a", "b"], "id": 1}
            {"type": "unsubscribe", "channels": ["a"], "id": 2}
            {"type": "publish", "channel": "a", "data": {...}, "id": 3}
            {"type": "ping", "id": 4}          {"type": "pong"} (answers a server ping)
            {"type": "refresh", "token": "<jwt>", "id": 5}   token sockets only
            {"type": "presence" | "presence_stats", "channel": "a", "id": 6}   may subscribe
    server: {"type": "subscribed", "channels": [...], "id": 1}
            {"type": "unsubscribed", "channels": [...], "id": 2}
            {"type": "unsubscribed", "channels": [...], "reason": "forbidden"}
                                               unasked: permissions were withdrawn
                                               ("server": bridge.sockets.unsubscribe)
            {"type": "subscribed", "channels": [...]}   unasked: bridge.sockets.subscribe
            {"type": "refresh_required"}       10 s before exp: send a "refresh"
            {"type": "refreshed", "id": 5}
            {"type": "published", "id": 3}     {"type": "pong", "id": 4}
            {"type": "presence", "channel": "a", "clients": [{"user", "conn"}, ...], "id": 6}
            {"type": "presence_stats", "channel": "a", "connections": n, "users": n, "id": 6}
            {"type": "join" | "leave", "channel": "a", "user": "<sub>", "conn": "<id>"}
            {"type": "message", "channel": "a", "data": ...}
            {"type": "resync", "channels": [...]}   messages may have been missed
            {"type": "batch", "messages": [<frame>, ...]}   several frames at once
            {"type": "ping"}                   answer with any frame, e.g. {"type": "pong"}
            {"type": "error", "code": ..., "message": ..., "id": n}

Channels with history (a rule's ``history_size``/``history_ttl``; see
:mod:`~middleware.websocket.channels` and ``docs/guides/websocket.md``): ``message`` frames
carry ``"offset": <int>`` and ``"epoch": "<text>"``, ``published`` replies the message's
``epoch`` and ``offset``, ``subscribed`` replies ``"positions": {channel: {"epoch",
"offset"}}``. ``subscribe`` may carry ``"recover": {channel: {"epoch": ..., "offset":
...}}``; the reply then says ``"recovered": {channel: true | false}`` and, on true, the
missed messages follow it in order, each once, before any newer one. Presence: ``_presence``.

Error codes: ``bad_request`` (bad JSON, unknown type, wrong field types, binary frames,
invalid channel names), ``forbidden`` (the policy says no; nothing more is said),
``rate_limited``, ``limit_exceeded`` (too many channels on one socket), ``unavailable``
(Redis or the permission source is down: retry later), ``invalid_token`` (a ``refresh``
refused: bad, expired or revoked token, or another subject's), ``internal``.

Close codes: :class:`CloseCode`. Token refresh: ``_refresh``; server API: ``server_api``.
Permissions are re-checked while sockets live (after :meth:`PermissionCache.invalidate
<middleware.PermissionCache.invalidate>`, a policy version bump, a bus resync, or a cookie
session's data change, on any instance): channels no longer allowed are unsubscribed with
an unasked ``unsubscribed`` frame (``"reason": "forbidden"``; unknown reasons alike); while
the permission source is down subscriptions are kept and checked again every second.

A refused handshake is a ``websocket.close`` before ``websocket.accept`` (servers answer
HTTP 403). Token revocation, session deletion and "log out everywhere" arrive through the
:class:`~gateway_redis.invalidation.InvalidationBus` and close the affected sockets on every
instance at once; token (``exp`` + leeway) and session expiry are checked twice a second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry import trace
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from gateway_redis import telemetry
from gateway_redis.support import cancel_and_wait, log_fields
from middleware.scope import PERMISSIONS_KEY
from middleware.telemetry import websocket_instruments
from middleware.websocket import _auth as auth
from middleware.websocket._auth import Identity, SessionPermissions
from middleware.websocket._connection import Connection
from middleware.websocket._fanout import Fanout
from middleware.websocket._presence import Presences
from middleware.websocket._protocol import CloseCode
from middleware.websocket._reauthorize import Reauthorizer
from middleware.websocket._recovery import Histories
from middleware.websocket._refresh import Refresher
from middleware.websocket._registry import Registry
from middleware.websocket._requests import handle_request
from middleware.websocket.channels import ChannelPolicy, Principal
from middleware.websocket.limits import WebSocketLimits, WebSocketStats
from middleware.websocket.server_api import SocketControl

if TYPE_CHECKING:
    from gateway_redis import Position
    from gateway_redis.client import RedisClient
    from middleware.jwt.authenticator import JWTAuthenticator
    from middleware.rbac.permissions import PermissionCache
    from middleware.sessions.manager import SessionManager

__all__ = [
    "CloseCode",
    "SessionPermissions",
    "WebSocketBridge",
    "WebSocketLimits",
    "WebSocketStats",
]

_log = logging.getLogger(__name__)
_COMPONENT = "websocket"


class WebSocketBridge:
    """A pure ASGI WebSocket endpoint bridging Redis pub/sub channels to clients.

    ``client`` is the shared Redis client (its hub carries every subscription; not owned).
    ``policy`` authorizes channels. ``authenticator`` (the one the JWT middleware uses)
    delivers revocations made on any instance (the token's sockets close at once), lets
    the bridge re-check tokens after the client's invalidation bus resyncs and verifies
    ``refresh`` tokens (without it, token sockets cannot refresh and close at ``exp``). ``sessions``
    (the :class:`~middleware.sessions.SessionManager` on the same client) delivers session
    ends the same way; sessions are re-checked in ``client.sessions``. Without them only
    expiry closes sockets. ``permissions`` resolves token principals' permissions (else
    the RBAC middleware's context, else none) and, through its ``on_change``, makes live
    subscriptions follow permission changes (without it, those of the handshake's RBAC
    context stay as they were at the handshake); ``session_permissions`` those of
    cookie-session principals (else none). ``allowed_origins`` are other origins allowed
    to connect; ``origin_check`` ``"always"`` checks every browser handshake, ``"cookie"``
    only cookie-authenticated ones (a bearer token cannot be ridden cross-site).
    ``limits`` bounds everything. Raises ``ValueError`` for bad arguments (including a
    ``sessions`` manager or an ``authenticator`` on another client, or in process only).
    Call :meth:`aclose` at shutdown.
    """

    def __init__(
        self,
        *,
        client: RedisClient,
        policy: ChannelPolicy,
        authenticator: JWTAuthenticator | None = None,
        permissions: PermissionCache | None = None,
        session_permissions: SessionPermissions | None = None,
        sessions: SessionManager | None = None,
        allowed_origins: Iterable[str] = (),
        origin_check: Literal["always", "cookie"] = "always",
        limits: WebSocketLimits | None = None,
    ) -> None:
        if not isinstance(policy, ChannelPolicy):
            raise ValueError("policy must be a ChannelPolicy")
        if origin_check not in ("always", "cookie"):
            raise ValueError("origin_check must be 'always' or 'cookie'")
        if session_permissions is not None and not callable(session_permissions):
            raise ValueError("session_permissions must be an async callable")
        limits = WebSocketLimits() if limits is None else limits
        if not isinstance(limits, WebSocketLimits):
            raise ValueError("limits must be WebSocketLimits")
        if sessions is not None and sessions.store is not client.sessions:
            raise ValueError("sessions must be a SessionManager on the same client")
        if authenticator is not None and authenticator.client is not client:
            raise ValueError("authenticator must be a JWTAuthenticator on the same client")
        bus = client.invalidation
        reserved = [client.config.key_prefix] if client.config.key_prefix else []
        reserved.append(bus.channel)
        self.policy = policy.with_reserved(*reserved)  # library channels are never exposed
        self.limits = limits
        self.client = client
        self._permissions = permissions
        self._session_permissions = session_permissions
        self._origins = auth.normalize_origins(allowed_origins)
        self._origin_always = origin_check == "always"
        self._histories = Histories(client, self.policy)
        self._fanout = Fanout(client.pubsub, self._histories.of, hold=limits.queue_size)
        self._registry = registry = Registry(
            limits=limits, store=client.sessions, authenticator=authenticator
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._dropped_closed = 0
        self._metrics = websocket_instruments()
        self._metrics.observe_queued(self, lambda b: b._queued())
        # Removed in aclose: a closed bridge must not keep reacting to events.
        self._removers: list[Callable[[], None]] = []
        if authenticator is not None:
            self._removers.append(authenticator.on_revoked(registry.on_revoked))
            self._removers.append(authenticator.on_subject_revoked(registry.on_subject_revoked))
        if sessions is not None:
            self._removers.append(sessions.on_change(registry.on_session_change))
        if authenticator is not None or sessions is not None:
            self._removers.append(bus.on_resync(registry.on_bus_resync))
        # Permissions taken away (on any instance) end the subscriptions they allowed.
        self._reauth = reauth = Reauthorizer(
            policy=self.policy,
            conns=lambda: registry.conns,
            of_user=registry.of_user,
            unsubscribe=self._unsubscribe,
        )
        registry.on_session_data = self._session_data_changed
        if permissions is not None:
            self._removers.append(permissions.on_change(reauth.subject_changed))
        if permissions is not None or session_permissions is not None:
            self._removers.append(bus.on_resync(reauth.on_resync))
        # Live token refresh (_refresh) and the server API (server_api), on every instance.
        self._refresher = Refresher(
            authenticator=authenticator, registry=registry, requeue=reauth.queue
        )
        self._presence = Presences(
            client, self.policy, limits.presence_ttl, registry.conns, self._fanout.sockets
        )
        self._control = SocketControl(
            bus=bus,
            policy=self.policy,
            limits=limits,
            fanout=self._fanout,
            of_user=registry.of_user,
            presence=self._presence,
        )

    # -- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one WebSocket (an HTTP request gets 426; other scopes are ignored)."""
        if scope["type"] != "websocket":
            if scope["type"] == "http":
                response = PlainTextResponse("WebSocket endpoint.", 426, {"Upgrade": "websocket"})
                await response(scope, receive, send)
            return
        if (await receive())["type"] != "websocket.connect":
            return
        conn = await self._handshake(scope, send, receive)
        if conn is None:
            return
        try:
            await conn.run()
        finally:
            await self._forget(conn)

    async def _handshake(self, scope: Scope, send: Send, receive: Receive) -> Connection | None:
        with telemetry.tracer.start_as_current_span("gateway.ws connect") as span:
            try:
                if self._closed:
                    raise auth.Rejection("shutting_down", CloseCode.GOING_AWAY)
                identity = auth.identify(scope)
                checked = self._origin_always or identity.cookie
                if checked and not auth.origin_allowed(scope, self._origins):
                    raise auth.Rejection("origin_not_allowed")
                per_user = self.limits.max_connections_per_user
                if self._registry.count(identity.user) >= per_user:
                    raise auth.Rejection("too_many_connections")
            except auth.Rejection as rejection:
                _log.debug(
                    "websocket handshake refused: %s",
                    rejection.reason,
                    extra=log_fields(_COMPONENT, "websocket_refused", rejection.reason),
                )
                if span.is_recording():
                    span.set_attributes(
                        {"gateway.ws.outcome": "refused", "gateway.ws.reason": rejection.reason}
                    )
                    span.set_status(trace.StatusCode.ERROR, rejection.reason)
                await auth.send_close_before_accept(send, int(rejection.code))
                return None
            conn = Connection(
                send=send,
                receive=receive,
                identity=identity,
                principal=self._principal(identity, scope),
                limits=self.limits,
                handle=self._handle,
            )
            self._registry.add(conn)  # before any await: the per-user count stays exact
            self._refresher.arm(conn)  # token sockets: expiry at exp + leeway, refresh notice
            subprotocol = "bearer" if "bearer" in auth.offered_subprotocols(scope) else None
            try:
                await send({"type": "websocket.accept", "subprotocol": subprotocol})
            except (OSError, RuntimeError):
                await self._forget(conn, accepted=False)
                return None
            scope["headers"] = []  # read: the server keeps the scope for the socket's life
            self._ensure_tasks()
            self._metrics.ws_connections.add(1)
            if span.is_recording():
                span.set_attributes(
                    {"gateway.ws.outcome": "accepted", "gateway.ws.auth": identity.method}
                )
            return conn

    def _principal(self, identity: Identity, scope: Scope) -> Principal:
        if identity.claims is not None:
            context = scope.get(PERMISSIONS_KEY)
            return auth.TokenPrincipal(identity.claims, self._permissions, context)
        assert identity.session is not None
        return auth.SessionPrincipal(identity.session, self._session_permissions)

    def _session_data_changed(self, conn: Connection) -> None:
        session = conn.identity.session
        if session is not None and conn.identity.claims is None:
            conn.principal = auth.SessionPrincipal(session, self._session_permissions)
            if self._session_permissions is not None:
                self._reauth.queue(conn)

    async def _handle(self, conn: Connection, text: str) -> None:
        await handle_request(self, conn, text)

    @property
    def sockets(self) -> SocketControl:
        """The server API: disconnect, unsubscribe and subscribe a user's sockets on every
        instance (:class:`~middleware.websocket.server_api.SocketControl`)."""
        return self._control

    async def publish(self, channel: str, data: Any) -> tuple[int, Position | None]:
        """Publish ``data`` (JSON) on ``channel`` as a socket's ``publish`` would, with
        history when the policy keeps some for it: ``(receivers, Position or None)``. No
        authorization here (the caller's job). Raises
        :class:`~gateway_redis.RedisUnavailable`,
        :class:`~gateway_redis.SerializationError`, :class:`ValueError` (a bad name)."""
        return await self._histories.publish(channel, data)

    # -- bookkeeping ------------------------------------------------------------------------

    async def _forget(self, conn: Connection, *, accepted: bool = True) -> None:
        if not self._registry.remove(conn):
            return
        self._reauth.forget(conn)
        self._dropped_closed += conn.dropped
        if accepted:
            self._metrics.ws_connections.add(-1)
        self._presence.forget(conn)  # queued: written by the presence task
        await self._fanout.release_all(conn)

    async def _unsubscribe(self, conn: Connection, names: list[str]) -> None:
        await self._fanout.unsubscribe(conn, names)
        self._presence.leave(conn, names)

    def _queued(self) -> int:
        return sum(conn.queued for conn in self._registry.conns)

    def stats(self) -> WebSocketStats:
        """Counts for metrics and tests."""
        return WebSocketStats(
            connections=len(self._registry.conns),
            channels=self._fanout.channels,
            queued=self._queued(),
            dropped=self._dropped_closed + sum(c.dropped for c in self._registry.conns),
        )

    def _ensure_tasks(self) -> None:
        if not self._tasks and not self._closed:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(
                    self._registry.housekeeping(self._fanout.check), name="gateway-ws-housekeeping"
                ),
                loop.create_task(
                    self._registry.recheck_sessions(), name="gateway-ws-session-check"
                ),
                loop.create_task(self._reauth.run(), name="gateway-ws-permission-check"),
                loop.create_task(self._presence.run(), name="gateway-ws-presence"),
            ]

    # -- lifecycle --------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close every socket with 1001, stop the tasks, drop the subscriptions.

        Idempotent; waits at most ``close_timeout`` (+ a little) for sockets to close.
        Later handshakes are refused.
        """
        if self._closed:
            return
        self._closed = True
        for remove in self._removers:
            remove()
        await self._control.aclose()
        for conn in (conns := list(self._registry.conns)):
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
        if conns:
            waits = [c.finished for c in conns]
            await asyncio.wait(waits, timeout=self.limits.close_timeout + 0.5)
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)
        for task in tasks:  # retrieved (not raised), as gather(return_exceptions=True) did
            if not task.cancelled():
                task.exception()
        await self._presence.aclose()
        await self._fanout.aclose()

    async def __aenter__(self) -> WebSocketBridge:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<WebSocketBridge {state} connections={len(self._registry.conns)}>"
