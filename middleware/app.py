"""The composition root: :class:`Gateway` wires JWT, RBAC, sessions and the WebSocket bridge
on one Redis client, gives the application its lifespan and installs the middleware.

::

    gateway = Gateway(
        RedisConfig.from_env(),
        jwt=JWTSettings(algorithms=("RS256",), key=pem, issuer=ISS, audience=AUD),
        permissions={"admin": ["*"], "user": ["profile:read"]},
        sessions=SessionSettings(idle_timeout=3600),
        websocket=ChannelPolicy([ChannelRule("notifications:{sub}", subscribe=True)]),
    )
    app = FastAPI(lifespan=gateway.lifespan)
    gateway.install(app, public_paths=["/health"], rules=[Rule("/admin/**", "admin:read")])

What it builds, once, in :meth:`Gateway.__init__`: the :class:`JWTAuthenticator`, the
:class:`PermissionCache` (if a permission source is given), the :class:`SessionManager` on
the client's one session store, configured with the session settings' lifetimes (if
session settings are given) and the :class:`WebSocketBridge` (if a channel policy is
given), all on the same client, whose invalidation bus keeps their L1 caches coherent.
They are exposed (:attr:`Gateway.authenticator`...) for routes and FastAPI dependencies.

Lifecycle (:meth:`Gateway.lifespan`, one per Gateway): start the client (which starts its
invalidation bus) and the pub/sub hub's liveness check; on the way out close the bridge
(1001 to every socket) while Redis is still there, then the client if the Gateway created
it (which closes the bus). A client passed in is the caller's to close (STYLE rule 4).
Under uvicorn, whose shutdown closes open WebSockets with 1012 before the lifespan ends,
the lifespan also chains a SIGTERM/SIGINT handler in front of uvicorn's that closes the
bridge (1001) first and then hands the signal over (:mod:`middleware._signals`).

The Gateway is optional: every component it builds keeps its public constructor, for
applications that need another arrangement.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

from gateway_redis import RedisClient, RedisConfig
from gateway_redis.invalidation import InvalidationBus
from middleware._handoff import HandoffPoint, HandoffTail, WebSocketHandoff
from middleware._layers import Components, add_layers, source_of, validator_of
from middleware._signals import SignalDrain
from middleware.apikeys.authenticator import APIKeyAuthenticator
from middleware.apikeys.settings import APIKeySettings
from middleware.appsettings import SessionSettings, WebSocketSettings, path_patterns
from middleware.csrf import CSRFSettings
from middleware.errors import ErrorHandler, default_error_response
from middleware.jwt.authenticator import JWTAuthenticator
from middleware.jwt.settings import JWTSettings
from middleware.jwt.validator import TokenValidator
from middleware.ratelimit.rules import RateLimitRule
from middleware.ratelimit.settings import RateLimitSettings
from middleware.rbac.middleware import Rule
from middleware.rbac.permissions import PermissionCache
from middleware.rbac.sources import PermissionSource
from middleware.responsecache import ResponseCache, ResponseCacheSettings
from middleware.sessions.manager import SessionManager
from middleware.websocket.bridge import WebSocketBridge
from middleware.websocket.channels import ChannelPolicy

__all__ = ["Gateway"]

DEFAULT_CSRF = CSRFSettings()  # frozen: one shared default is safe


class Gateway:
    """JWT + RBAC + sessions + the WebSocket bridge on one Redis client; see the module
    docstring.

    ``redis`` is a :class:`RedisClient` (not owned: :meth:`lifespan` connects it, the
    caller closes it) or a :class:`RedisConfig` (the Gateway creates the client and closes
    it at the end of its lifespan). ``jwt`` is :class:`JWTSettings` or any
    :class:`TokenValidator` (its ``cache_key`` seals the verdicts cached in Redis, and its
    ``max_token_lifetime`` bounds subject cut-offs; a validator other than
    :class:`JWTValidator` gets no cache key: L2 is then not used for tokens).
    ``permissions`` is a :class:`PermissionSource` or a role -> permissions mapping
    (:class:`StaticRolePermissions` over the ``roles`` claim); None: no RBAC layer.
    ``sessions`` is :class:`SessionSettings` (None: no sessions); ``websocket`` is
    :class:`WebSocketSettings` or just a :class:`ChannelPolicy` (None: no WebSocket
    endpoint); ``response_cache`` is :class:`ResponseCacheSettings` (None: no response
    cache; :attr:`response_cache` invalidates by tag); ``api_keys``
    (:class:`~middleware.apikeys.APIKeySettings`; None: off) also accepts API keys, in a
    layer run before the JWT one. Nothing is opened here: the components are built and
    :meth:`lifespan` starts them. Raises ``ValueError`` for bad arguments.
    """

    def __init__(
        self,
        redis: RedisClient | RedisConfig,
        *,
        jwt: JWTSettings | TokenValidator,
        permissions: PermissionSource | Mapping[str, Iterable[str]] | None = None,
        sessions: SessionSettings | None = None,
        websocket: WebSocketSettings | ChannelPolicy | None = None,
        response_cache: ResponseCacheSettings | None = None,
        api_keys: APIKeySettings | None = None,
    ) -> None:
        if api_keys is not None and not isinstance(api_keys, APIKeySettings):
            raise ValueError("api_keys must be APIKeySettings or None")
        validator = validator_of(jwt)
        source = source_of(permissions)
        if sessions is not None and not isinstance(sessions, SessionSettings):
            raise ValueError("sessions must be SessionSettings or None")
        if isinstance(websocket, ChannelPolicy):
            websocket = WebSocketSettings(policy=websocket)
        elif websocket is not None and not isinstance(websocket, WebSocketSettings):
            raise ValueError("websocket must be WebSocketSettings, a ChannelPolicy or None")
        # Arguments are checked first; a client created here and then left by a failing
        # component below was never connected, so it holds no connection.
        if isinstance(redis, RedisClient):
            self._client, self._owns_client = redis, False
        elif isinstance(redis, RedisConfig):
            self._client, self._owns_client = RedisClient(redis), True
        else:
            raise ValueError("redis must be a RedisClient or a RedisConfig")
        self._session_settings = sessions
        self._authenticator = self._build_authenticator(validator)
        self._permissions = self._build_permissions(source) if source is not None else None
        self._sessions = self._build_sessions(sessions) if sessions is not None else None
        self._bridge = self._build_bridge(websocket) if websocket is not None else None
        # Response cache (issue 16): keyed by subject and this Gateway's policy version,
        # installed innermost (after JWT and RBAC let the request through).
        if response_cache is not None and not isinstance(response_cache, ResponseCacheSettings):
            raise ValueError("response_cache must be ResponseCacheSettings or None")
        self._response_cache = (
            ResponseCache(self._client, response_cache, permissions=self._permissions)
            if response_cache is not None
            else None
        )
        # API keys: their own authenticator on the same client (namespace "apikey").
        self._api_keys = (
            APIKeyAuthenticator(api_keys, client=self._client) if api_keys is not None else None
        )
        self._lifespan_used = False
        self._installed = False

    # -- the components (one private builder each: the one place they are wired) -----------

    def _build_authenticator(self, validator: TokenValidator) -> JWTAuthenticator:
        return JWTAuthenticator(validator, client=self._client)

    def _build_permissions(self, source: PermissionSource) -> PermissionCache:
        return PermissionCache(source, client=self._client)

    def _build_sessions(self, settings: SessionSettings) -> SessionManager:
        # The client's one store, with these settings (ConfigurationError when the client's
        # store was already set up with others).
        self._client.configure_sessions(
            default_ttl=settings.default_ttl,
            idle_timeout=settings.idle_timeout,
            max_per_user=settings.max_per_user,
            tag_key=settings.tag_key,
        )
        return SessionManager(client=self._client)

    def _build_bridge(self, settings: WebSocketSettings) -> WebSocketBridge:
        return WebSocketBridge(
            client=self._client,
            policy=settings.policy,
            authenticator=self._authenticator,
            permissions=self._permissions,
            session_permissions=settings.session_permissions,
            sessions=self._sessions,
            allowed_origins=settings.allowed_origins,
            origin_check=settings.origin_check,
            limits=settings.limits,
        )

    @property
    def client(self) -> RedisClient:
        """The Redis client every component uses."""
        return self._client

    @property
    def bus(self) -> InvalidationBus:
        """The client's invalidation bus, which keeps the components' L1 caches coherent
        (started by the client's ``connect()``, closed with the client)."""
        return self._client.invalidation

    @property
    def authenticator(self) -> JWTAuthenticator:
        """The JWT authenticator (``await gateway.authenticator.revoke(claims)``)."""
        return self._authenticator

    @property
    def api_keys(self) -> APIKeyAuthenticator | None:
        """The API-key authenticator (``await gateway.api_keys.revoke(key_id)``), or None."""
        return self._api_keys

    @property
    def permissions(self) -> PermissionCache | None:
        """The permission cache, or None without a permission source."""
        return self._permissions

    @property
    def sessions(self) -> SessionManager | None:
        """The session manager, or None without session settings."""
        return self._sessions

    @property
    def response_cache(self) -> ResponseCache | None:
        """The response cache (``await gateway.response_cache.invalidate_tags(...)``), or
        None without ``response_cache`` settings."""
        return self._response_cache

    @property
    def bridge(self) -> WebSocketBridge | None:
        """The WebSocket bridge, or None without a channel policy."""
        return self._bridge

    # -- lifecycle ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Run everything for the life of the application: ``FastAPI(lifespan=
        gateway.lifespan)``, or ``async with gateway.lifespan(app):`` inside the
        application's own lifespan.

        Starts the client (an unreachable Redis does not fail it: the gateway starts
        degraded), the pub/sub hub's liveness check (readiness follows a lost or frozen
        server within about 2 s); the client starts its invalidation bus. Under uvicorn
        (its signal handlers in place, main thread) SIGTERM/SIGINT first close the bridge's
        sockets with 1001 (at most ``close_timeout`` + 1 s), then reach uvicorn, whose
        graceful shutdown follows; with other servers nothing is installed. On exit, even
        after a failed start: the bridge (open sockets get 1001), then the client if the
        Gateway created it. Raises ``RuntimeError`` when entered a second time (the components do
        not restart), and what :meth:`RedisClient.connect` raises (``ConfigurationError``
        for rejected credentials).
        """
        if self._lifespan_used:
            raise RuntimeError("a Gateway runs one lifespan")
        self._lifespan_used = True
        drain: SignalDrain | None = None
        try:
            await self._client.connect()
            self._client.pubsub.start()
            if self._bridge is not None:
                # Under uvicorn: 1001 to every socket before uvicorn closes them with 1012.
                timeout = self._bridge.limits.close_timeout + 1.0
                drain = SignalDrain(self._bridge.aclose, timeout=timeout)
                drain.install()
            yield
        finally:
            if drain is not None:
                drain.uninstall()
                await drain.wait()
            await self._stop()

    async def _stop(self) -> None:
        # Sockets first, while Redis still answers; the client last (and only if ours).
        try:
            if self._bridge is not None:
                await self._bridge.aclose()
        finally:
            if self._owns_client:
                await self._client.aclose()

    # -- installation ------------------------------------------------------------------------

    def install(
        self,
        app: Starlette,
        *,
        public_paths: Iterable[str] = (),
        rules: Sequence[Rule] = (),
        deny_unmatched: bool = False,
        fail_closed_paths: Iterable[str] = (),
        token_cookie: str | None = None,
        on_error: ErrorHandler = default_error_response,
        fused: bool = True,
        websocket_path: str | None = "/ws",
        csrf: CSRFSettings | None = DEFAULT_CSRF,
        rate_limits: RateLimitSettings | Sequence[RateLimitRule] = (),
    ) -> None:
        """Add the middleware and the WebSocket endpoint to ``app`` (Starlette or FastAPI).

        The middleware is :class:`GatewayMiddleware` (``fused=True``) or the separate
        :class:`SessionMiddleware`, :class:`JWTMiddleware` and :class:`RBACMiddleware`
        (outermost first), each layer present when the Gateway has its component; it wraps
        what is already installed, so middleware added afterwards runs before it.
        ``public_paths`` (exact or ``/prefix/*``) need no token; ``rules``,
        ``deny_unmatched`` configure RBAC (rules need a permission source);
        ``fail_closed_paths`` answer 503 while revocation cannot be checked;
        ``token_cookie`` also accepts the token from that cookie; ``on_error`` builds every
        layer's error responses. With a bridge, its endpoint is served at
        ``websocket_path`` (None: not routed, mount :attr:`bridge` yourself), public to the
        JWT layer without being listed: the bridge authenticates its handshakes itself
        (token or session cookie; none is a 1008 close). Its handshakes pass every layer as
        before; then the socket is handed over to the bridge, so that the layers' coroutines
        do not stay suspended for its whole life (:mod:`middleware._handoff`; exceptions
        the bridge raises skip Starlette's exception handlers). ``csrf`` (on by default; None:
        off) adds :class:`CSRFMiddleware` innermost whenever a cookie carries credentials
        (session cookie, ``token_cookie``): unsafe requests from other sites get 403, and
        those with the session cookie need the session's token (:func:`csrf_token`);
        requests with a bearer ``Authorization`` header are exempt (see
        :mod:`middleware.csrf`). With ``api_keys``, :class:`APIKeyMiddleware` runs first
        (same ``public_paths``, ``fail_closed_paths``, ``on_error``): a request with an API
        key is authenticated there and passes the JWT layer untouched. ``rate_limits``
        (:class:`RateLimitSettings` or just the rules) adds
        :class:`~middleware.ratelimit.RateLimitMiddleware` on the client, inside
        authentication, RBAC and CSRF (it keys on the subject, and requests refused by those
        cost no budget) and outside the response cache (a cached answer is counted too).
        A FastAPI ``app`` also gets :class:`~middleware.ratelimit.RateLimitFieldsMiddleware`
        (just outside the response cache): the ``RateLimit`` dependency's fields reach
        responses that endpoints return as ``Response`` objects.

        Raises ``ValueError`` for bad arguments and ``RuntimeError`` when called twice or
        after the app started serving.
        """
        if self._installed:
            raise RuntimeError("Gateway.install() was already called")
        if not isinstance(app, Starlette):
            raise ValueError("app must be a Starlette or FastAPI application")
        if app.middleware_stack is not None:
            raise RuntimeError("Gateway.install() must run before the app serves requests")
        public = path_patterns("public_paths", public_paths)
        fail_closed = path_patterns("fail_closed_paths", fail_closed_paths)
        if rules and self._permissions is None:
            raise ValueError("rules need a permission source (Gateway(permissions=...))")
        if websocket_path is not None and (
            not isinstance(websocket_path, str) or not websocket_path.startswith("/")
        ):
            raise ValueError(f"websocket_path must start with '/', got {websocket_path!r}")
        if csrf is not None and not isinstance(csrf, CSRFSettings):
            raise ValueError("csrf must be CSRFSettings or None")
        route = websocket_path if self._bridge is not None else None
        if route is not None and route not in public:
            public = (*public, route)
        bridge = self._bridge
        point: HandoffPoint | None = None
        if route is not None and bridge is not None:
            # The layers check a handshake, then hand the socket over (middleware._handoff):
            # the bridge runs without their frames. Straight to the bridge when no middleware
            # was installed before ours (nothing but Starlette's layers before the router).
            websocket_route = WebSocketRoute(route, bridge, name="gateway-websocket")
            point = HandoffPoint(app.router, websocket_route, bridge, not app.user_middleware)
            app.add_middleware(HandoffTail, point=point)  # innermost of our layers
        add_layers(
            app,
            Components(
                self._client,
                self._authenticator,
                self._permissions,
                self._sessions,
                self._session_settings,
                self._response_cache,
                self._api_keys,
            ),
            public=public,
            fail_closed=fail_closed,
            rules=tuple(rules),
            deny_unmatched=deny_unmatched,
            token_cookie=token_cookie,
            on_error=on_error,
            fused=fused,
            csrf=csrf,
            rate_limits=rate_limits,
        )
        if point is not None:
            app.add_middleware(WebSocketHandoff, point=point)  # outermost of our layers
            app.router.routes.append(point.route)
        self._installed = True

    def __repr__(self) -> str:
        parts = ["jwt"]
        parts += ["rbac"] if self._permissions is not None else []
        parts += ["sessions"] if self._sessions is not None else []
        parts += ["websocket"] if self._bridge is not None else []
        parts += ["apikeys"] if self._api_keys is not None else []
        return f"<Gateway {'+'.join(parts)} client={self._client!r}>"
