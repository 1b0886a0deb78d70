"""Sessions, JWT and RBAC in one ASGI layer: :class:`GatewayMiddleware`.

::

    app.add_middleware(
        GatewayMiddleware,
        sessions=Middleware(SessionMiddleware, sessions=manager),
        jwt=Middleware(JWTMiddleware, authenticator=authn, public_paths=["/health", "/login"]),
        rbac=Middleware(RBACMiddleware, permissions=perms, rules=[Rule("/admin/**", "admin:read")]),
    )

The same as adding the three (Starlette ``Middleware`` values: the class and its arguments)
in that order (sessions outermost, RBAC innermost), and it behaves exactly like them: it
builds that very chain and hands it every request it cannot finish alone. What it does
alone is the warm HTTP request: one bearer token, at most one ``Cookie`` header holding the
session cookie, the token, the permissions and the session (if any, with no touch due) all
in L1, and rules that allow it. That request is served in one layer, reading the headers
once and awaiting nothing before the app. Everything else (no token, a public path, a
refusal, an L1 miss, WebSocket handshakes) goes through the chain, so its answers, spans
and metrics are the separate middleware's.

A warm request is served from a *ticket* remembered by its exact ``Authorization`` and
``Cookie`` header values (bounded in entries and bytes, in process memory only): the pins of
the verified claims (:meth:`JWTAuthenticator.pin`), the permissions
(:meth:`PermissionCache.pin`) and the session (:meth:`SessionManager.pin`). A ticket is used
only while each component says its pin is current (its L1 entry is still the live one and in
date: any revocation, policy change, invalidation, eviction or flush ends it, and the bus
flushes L1 whenever it is out of sync; ``exp``/``nbf``, the session's expiry and next
touch), checked on every request; else it is rebuilt from L1 or the request goes to the
chain. A ticket's hits do not move its entries up in their caches' LRU order (entries expire
within their TTL anyway, 30-60 s by default).

It serves a warm request with less CPU than the three separate layers; for the measured
ratio see the hot-path benchmark (``benchmarks/results/report.md``, "1. Gateway hot path";
``python -m benchmarks.profile_hotpath`` for the in-process breakdown).

``rbac`` and ``sessions`` are optional: without them that layer is left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.authentication import AuthCredentials
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway_redis import telemetry
from middleware._memo import Memo
from middleware.csrf import SAFE_METHODS, CSRFMiddleware
from middleware.errors import ServiceUnavailable
from middleware.jwt.authenticator import AuthenticationPin
from middleware.jwt.middleware import GatewayUser, JWTMiddleware
from middleware.rbac.middleware import PermissionContext, RBACMiddleware, granted_all
from middleware.rbac.permissions import PermissionCache, PermissionPin
from middleware.scope import CLAIMS_KEY, PERMISSIONS_KEY, SESSION_KEY
from middleware.sessions.handle import SessionHandle
from middleware.sessions.manager import SessionManager, SessionPin
from middleware.sessions.middleware import SessionMiddleware
from middleware.sessions.responder import SessionResponder
from middleware.telemetry import ATTR_JWT_RESULT, ATTR_RBAC_RESULT, ATTR_SESSION_RESULT

__all__ = ["GatewayMiddleware"]

_Layer = TypeVar("_Layer", JWTMiddleware, RBACMiddleware, SessionMiddleware)

_JWT_L1 = telemetry.lookup_tally("jwt", "l1")
_RBAC_L1 = telemetry.lookup_tally("rbac", "l1")
_SESSION_L1 = telemetry.lookup_tally("session", "l1")


def _span_attributes(rbac: str | None, session: bool) -> dict[str, Any]:
    attributes: dict[str, Any] = {ATTR_JWT_RESULT: "l1"}
    if rbac is not None:
        attributes[ATTR_RBAC_RESULT] = rbac
    if session:
        attributes[ATTR_SESSION_RESULT] = "l1"
    return attributes


# What a warm request sets on the server span: (RBAC result or None, session served from L1).
_SPAN_ATTRIBUTES = {
    (rbac, session): _span_attributes(rbac, session)
    for rbac in (None, "l1", "uncached")
    for session in (False, True)
}


class GatewayMiddleware:
    """:class:`SessionMiddleware` + :class:`JWTMiddleware` + :class:`RBACMiddleware` in one
    layer; see the module docstring.

    ``jwt``, ``rbac`` and ``sessions`` are Starlette ``Middleware`` values of those classes
    (or subclasses), configured exactly as they would be on their own; each builds its layer
    once, here. Raises ``ValueError`` for a value of another class, and whatever the layers
    raise for their arguments.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        jwt: Middleware,
        rbac: Middleware | None = None,
        sessions: Middleware | None = None,
    ) -> None:
        self.app = app
        # CSRF protection, when it is the next layer, has nothing to do for a safe method:
        # a warm safe request skips its frame (the chain's requests still go through it).
        self._app_when_safe = app.app if type(app) is CSRFMiddleware else app
        inner: ASGIApp = app
        self._rbac: RBACMiddleware | None = None
        self._permissions: PermissionCache | None = None
        # Only called for a ticket holding a pin of that layer, so never without it.
        self._rbac_current: Callable[[PermissionPin], bool] = _never
        self._deny_unmatched = False
        if rbac is not None:
            self._rbac = _build(rbac, RBACMiddleware, inner, "rbac")
            self._permissions = self._rbac.permissions
            self._rbac_current = self._permissions.is_current
            self._deny_unmatched = self._rbac.deny_unmatched
            inner = self._rbac
        self._jwt = _build(jwt, JWTMiddleware, inner, "jwt")
        self._authenticator = self._jwt.authenticator
        self._jwt_current = self._authenticator.is_current
        inner = self._jwt
        self._sessions: SessionMiddleware | None = None
        self._manager: SessionManager | None = None
        self._session_current: Callable[[SessionPin], bool] = _never
        self._session_cookie: bytes | None = None
        self._session_header: bytes | None = None
        self._refresh = math.inf
        if sessions is not None:
            self._sessions = _build(sessions, SessionMiddleware, inner, "sessions")
            self._manager = self._sessions.manager
            self._session_current = self._manager.is_current
            self._session_cookie = self._sessions.cookie_marker
            self._session_header = self._sessions.header_key
            self._refresh = self._sessions.refresh_interval
            inner = self._sessions
        self._chain = inner
        # A session header named like one the fast path reads itself: leave it to the chain.
        self._fast = self._session_header not in (b"authorization", b"cookie")
        # (Authorization, Cookie) header values -> _Ticket; bounded like the parse memos (a
        # ticket is only ever built for a verified token); the hot path reads the dict.
        self._ticket_memo: Memo[tuple[bytes, bytes | None], _Ticket] = Memo(budget=_TICKET_BUDGET)
        self._tickets = self._ticket_memo.entries

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._fast:
            await self._chain(scope, receive, send)
            return
        # One pass over the headers for the token and the session cookie.
        authorization: bytes | None = None
        cookie: bytes | None = None
        simple = True
        session_marker = self._session_cookie
        session_header = self._session_header
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is not None:
                    simple = False  # two: the chain refuses it
                authorization = value
            elif name == b"cookie":
                if session_marker is not None and session_marker in value:
                    if cookie is not None:
                        simple = False  # our cookie in two headers: the chain decides
                    cookie = value
            elif name == session_header:
                simple = False  # the header wins over cookies: the chain reads it
        if not simple or authorization is None:
            await self._chain(scope, receive, send)
            return
        key = (authorization, cookie)
        ticket = self._tickets.get(key)
        # Every pin behind the ticket still current (bound methods: the per-request cost).
        if ticket is None or not (
            self._jwt_current(ticket.jwt)
            and (ticket.rbac is None or self._rbac_current(ticket.rbac))
            and (ticket.session is None or self._session_current(ticket.session))
        ):
            ticket = self._issue(scope, authorization, cookie)
            if ticket is None:  # not all in L1 (or not a bearer token): the chain
                self._tickets.pop(key, None)
                await self._chain(scope, receive, send)
                return
            size = len(authorization) + len(cookie or b"")
            self._ticket_memo.remember(key, ticket, size, _TICKET_SIZE)
        claims = ticket.result.claims

        rbac = self._rbac
        context = ticket.context
        rbac_result: str | None = None
        if rbac is not None:
            required = rbac.required_for(scope)
            if context is None:  # a source that is not cached: asked (in process) every time
                cache = rbac.permissions
                granted = cache.cached(claims)
                if granted is None:
                    await self._chain(scope, receive, send)
                    return
                context = PermissionContext(cache, claims, granted=granted)
                rbac_result = "uncached" if required else None
            else:
                granted = ticket.granted
                rbac_result = "l1" if required else None
            if required:
                if not granted_all(granted, required):
                    await self._chain(scope, receive, send)  # the 403, as the chain words it
                    return
            elif self._deny_unmatched:
                await self._chain(scope, receive, send)
                return

        # Served here: count and record what the three layers would have.
        _JWT_L1.value += 1
        if rbac_result == "l1":
            _RBAC_L1.value += 1
        session_pin = ticket.session
        if session_pin is not None:
            _SESSION_L1.value += 1
        if telemetry.tracing_enabled():
            telemetry.annotate_current_span(_SPAN_ATTRIBUTES[rbac_result, session_pin is not None])
        scope["user"] = ticket.user
        scope["auth"] = AuthCredentials(ticket.scopes)
        scope[CLAIMS_KEY] = claims
        if context is not None:
            scope[PERMISSIONS_KEY] = context
        app = self._app_when_safe if scope["method"] in SAFE_METHODS else self.app
        sessions = self._sessions
        if sessions is None:
            await app(scope, receive, send)
            return
        manager: Any = self._manager  # set whenever sessions is
        if session_pin is None:
            handle = SessionHandle(manager, None, True)
        else:
            entry = session_pin.entry
            handle = SessionHandle.warm(manager, entry.session, entry.flat)
        scope["session"] = handle.data
        scope[SESSION_KEY] = handle
        responder = SessionResponder(sessions, scope, receive, send, handle)
        try:
            await app(scope, receive, responder.wrapped_send)
        except ServiceUnavailable as error:
            if responder.started:
                raise
            await responder.fail(error)

    def _issue(self, scope: Scope, authorization: bytes, cookie: bytes | None) -> _Ticket | None:
        """A ticket for these credentials when the token, the permissions (of a cached
        source) and the session (if any, with no touch due) are all in L1; else None."""
        token = self._jwt.bearer(authorization)
        if token is None:  # not a bearer token, or an empty one: the chain answers
            return None
        jwt_pin = self._authenticator.pin(token)
        if jwt_pin is None:
            return None
        ticket = _Ticket(jwt_pin)
        claims = jwt_pin.result.claims

        cache = self._permissions
        if cache is not None:
            if cache.cacheable:
                rbac_pin = cache.pin(claims)
                if rbac_pin is None:
                    return None
                ticket.rbac = rbac_pin
                ticket.granted = rbac_pin.granted
                # Pre-resolved: the same answer for every request served from this ticket.
                ticket.context = PermissionContext(cache, claims, granted=rbac_pin.granted)
            elif cache.cached(claims) is None:
                return None

        sessions = self._sessions
        manager = self._manager
        if sessions is not None and manager is not None and cookie is not None:
            session_id = sessions.session_id(scope, cookie)
            if session_id is not None:
                session_pin = manager.pin(session_id, self._refresh)
                if session_pin is None:
                    return None
                ticket.session = session_pin
        return ticket


# About what a ticket's own objects take (its pins' entries belong to the caches), and how
# many bytes of tickets (keys included) are kept at most.
_TICKET_SIZE = 512
_TICKET_BUDGET = 2 << 20


def _never(pin: object) -> bool:
    return False


def _build(spec: Middleware, cls: type[_Layer], app: ASGIApp, name: str) -> _Layer:
    """The layer ``spec`` configures, around ``app``; ``ValueError`` unless it is a ``cls``."""
    if not isinstance(spec, Middleware):
        raise ValueError(f"{name} must be Middleware({cls.__name__}, ...)")
    factory: Any = spec.cls
    if not (isinstance(factory, type) and issubclass(factory, cls)):
        raise ValueError(f"{name} must be Middleware({cls.__name__}, ...)")
    args: Any = spec.args
    kwargs: Any = spec.kwargs
    layer: _Layer = factory(app, *args, **kwargs)
    return layer


class _Ticket:
    """What a warm request with these exact credentials is served from: the components'
    pins, valid while each component says so (checked on every request), and
    what is built once from them. Holds no per-request state."""

    __slots__ = ("context", "granted", "jwt", "rbac", "result", "scopes", "session", "user")

    def __init__(self, jwt: AuthenticationPin) -> None:
        result = jwt.result
        claims = result.claims
        self.jwt = jwt
        self.result = result
        self.user = GatewayUser(claims)  # immutable: shared by the ticket's requests
        self.scopes = ("authenticated", *claims.scopes)
        self.rbac: PermissionPin | None = None
        self.granted: frozenset[str] = frozenset()
        self.context: PermissionContext | None = None
        self.session: SessionPin | None = None
