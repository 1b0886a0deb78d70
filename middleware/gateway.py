"""Sessions, JWT and RBAC in one ASGI layer: :class:`GatewayMiddleware`.

::

    app.add_middleware(
        GatewayMiddleware,
        authenticator=authn, public_paths=["/health", "/login"],      # JWTMiddleware's
        permissions=perms, rules=[Rule("/admin/**", "admin:read")],   # RBACMiddleware's
        sessions=sessions,                                            # SessionMiddleware's
    )

The same as adding :class:`~middleware.sessions.SessionMiddleware`,
:class:`~middleware.jwt.JWTMiddleware` and :class:`~middleware.rbac.RBACMiddleware` in that
order (sessions outermost, RBAC innermost), with the same arguments under the same names
(``on_error`` is shared), and behaves exactly like them: it builds that very chain and hands
it every request it cannot finish alone. What it does alone is the warm HTTP request: one
bearer token, at most one ``Cookie`` header holding the session cookie, the token, the
permissions and the session (if any, with no touch due) all in L1, and rules that allow it.
That request is served in one layer, reading the headers once and awaiting nothing before
the app. Everything else (no token, a public path, a refusal, an L1 miss, WebSocket
handshakes) goes through the chain, so its answers, spans and metrics are the separate
middleware's.

A warm request is served from a *ticket* remembered by its exact ``Authorization`` and
``Cookie`` header values (bounded, in process memory only): the verified claims, the
permissions and the session, and the very L1 entries they came from. A ticket is used only
while each of those entries is still the live one in its cache (any revocation, policy
change, invalidation, eviction or flush removes it, and the bus flushes L1 whenever it is
out of sync) and in date (``exp``/``nbf``, the session's absolute and idle expiry and its
next touch, each cache's TTL), all checked on every request; else it is rebuilt from L1 or
the request goes to the chain. A ticket's hits do not move its entries up in their caches'
LRU order (entries expire within their TTL anyway, 30-60 s by default).

Measured (``python -m benchmarks.profile_hotpath``, and wrk in
``benchmarks/results/report.md``): a warm request adds about 35-40% less CPU than through
the three separate layers.

``permissions`` and ``sessions`` are optional: without them the RBAC or the session layer
is left out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from starlette.authentication import AuthCredentials
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway_redis import telemetry
from middleware import _memo
from middleware._memo import remember
from middleware.errors import ErrorHandler, ServiceUnavailable, default_error_response
from middleware.jwt.authenticator import Authentication, JWTAuthenticator, _Verified
from middleware.jwt.middleware import GatewayUser, JWTMiddleware, bearer_token
from middleware.rbac.middleware import PermissionContext, RBACMiddleware, Rule, granted_all
from middleware.rbac.permissions import PermissionCache
from middleware.scope import CLAIMS_KEY, PERMISSIONS_KEY, SESSION_KEY
from middleware.sessions.cookie import SessionCookie
from middleware.sessions.handle import SessionHandle
from middleware.sessions.manager import SessionManager
from middleware.sessions.middleware import _DEFAULT_COOKIE, SessionMiddleware, _Responder

__all__ = ["GatewayMiddleware"]

_JWT_L1 = telemetry.lookup_tally("jwt", "l1")
_RBAC_L1 = telemetry.lookup_tally("rbac", "l1")
_SESSION_L1 = telemetry.lookup_tally("session", "l1")


def _span_attributes(rbac: str | None, session: bool) -> dict[str, Any]:
    attributes: dict[str, Any] = {telemetry.ATTR_JWT_RESULT: "l1"}
    if rbac is not None:
        attributes[telemetry.ATTR_RBAC_RESULT] = rbac
    if session:
        attributes[telemetry.ATTR_SESSION_RESULT] = "l1"
    return attributes


# What a warm request sets on the server span: (RBAC result or None, session served from L1).
_SPAN_ATTRIBUTES = {
    (rbac, session): _span_attributes(rbac, session)
    for rbac in (None, "l1", "uncached")
    for session in (False, True)
}


class GatewayMiddleware:
    """:class:`SessionMiddleware` + :class:`JWTMiddleware` + :class:`RBACMiddleware` in one
    layer; see the module docstring. Arguments are those of the three classes."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: JWTAuthenticator,
        public_paths: Iterable[str] = (),
        cookie_name: str | None = None,
        websocket_subprotocol: bool = True,
        fail_closed_paths: Iterable[str] = (),
        permissions: PermissionCache | None = None,
        rules: Sequence[Rule] = (),
        deny_unmatched: bool = False,
        sessions: SessionManager | None = None,
        cookie: SessionCookie | None = _DEFAULT_COOKIE,
        header_name: str | None = None,
        refresh_interval: float = 60.0,
        on_unavailable: Literal["error", "anonymous"] = "error",
        required_paths: Iterable[str] = (),
        optional_paths: Iterable[str] = (),
        retry_after: int = 1,
        on_error: ErrorHandler = default_error_response,
    ) -> None:
        if permissions is None and (rules or deny_unmatched):
            raise ValueError("rules and deny_unmatched need permissions (a PermissionCache)")
        self.app = app
        inner: ASGIApp = app
        self._rbac: RBACMiddleware | None = None
        if permissions is not None:
            self._rbac = RBACMiddleware(
                inner,
                permissions=permissions,
                rules=rules,
                deny_unmatched=deny_unmatched,
                on_error=on_error,
            )
            inner = self._rbac
        self._jwt = JWTMiddleware(
            inner,
            authenticator=authenticator,
            public_paths=public_paths,
            cookie_name=cookie_name,
            websocket_subprotocol=websocket_subprotocol,
            fail_closed_paths=fail_closed_paths,
            on_error=on_error,
        )
        inner = self._jwt
        self._sessions: SessionMiddleware | None = None
        if sessions is not None:
            self._sessions = SessionMiddleware(
                inner,
                sessions=sessions,
                cookie=cookie,
                header_name=header_name,
                refresh_interval=refresh_interval,
                on_unavailable=on_unavailable,
                required_paths=required_paths,
                optional_paths=optional_paths,
                retry_after=retry_after,
                on_error=on_error,
            )
            inner = self._sessions
        self._chain = inner
        self._authenticator = authenticator
        self._session_cookie = self._sessions._cookie_marker if self._sessions else None
        self._session_header = self._sessions._header if self._sessions else None
        # A session header named like one the fast path reads itself: leave it to the chain.
        self._fast = self._session_header not in (b"authorization", b"cookie")
        # (Authorization, Cookie) header values -> _Ticket; bounded like the parse memos.
        self._tickets: dict[tuple[bytes, bytes | None], _Ticket] = {}
        self._jwt_entries = authenticator._l1.entries
        self._rbac_cache = permissions
        self._rbac_entries = permissions._l1.entries if permissions is not None else {}
        self._session_entries = sessions._l1.entries if sessions is not None else {}

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
        if ticket is None or not self._valid(ticket):
            ticket = self._issue(scope, authorization, cookie)
            if ticket is None:  # not all in L1 (or not a bearer token): the chain
                self._tickets.pop(key, None)
                await self._chain(scope, receive, send)
                return
            if len(authorization) + len(cookie or b"") <= _memo.MAX_KEY:
                if len(self._tickets) >= _memo.MAX_ENTRIES:
                    self._tickets.clear()
                self._tickets[key] = ticket
        claims = ticket.result.claims

        rbac = self._rbac
        context = ticket.context
        rbac_result: str | None = None
        if rbac is not None:
            required = rbac.required_for(scope)
            if context is None:  # a source that is not cached: asked (in process) every time
                granted = rbac._cache.cached(claims)
                if granted is None:
                    await self._chain(scope, receive, send)
                    return
                context = PermissionContext(rbac._cache, claims)
                context._granted = granted
                rbac_result = "uncached" if required else None
            else:
                granted = ticket.granted
                rbac_result = "l1" if required else None
            if required:
                if not granted_all(granted, required):
                    await self._chain(scope, receive, send)  # the 403, as the chain words it
                    return
            elif rbac._deny_unmatched:
                await self._chain(scope, receive, send)
                return

        # Served here: count and record what the three layers would have.
        _JWT_L1.value += 1
        if rbac_result == "l1":
            _RBAC_L1.value += 1
        session_entry = ticket.session
        if session_entry is not None:
            _SESSION_L1.value += 1
        if telemetry.tracing_enabled():
            telemetry.annotate_current_span(
                _SPAN_ATTRIBUTES[rbac_result, session_entry is not None]
            )
        scope["user"] = ticket.user
        scope["auth"] = AuthCredentials(ticket.scopes)
        scope[CLAIMS_KEY] = claims
        if context is not None:
            scope[PERMISSIONS_KEY] = context
        sessions = self._sessions
        if sessions is None:
            await self.app(scope, receive, send)
            return
        if session_entry is None:
            handle = SessionHandle(sessions._manager, None, True)
        else:
            handle = SessionHandle._warm(
                sessions._manager, session_entry.session, session_entry.flat
            )
        scope["session"] = handle.data
        scope[SESSION_KEY] = handle
        responder = _Responder(sessions, scope, receive, send, handle)
        try:
            await self.app(scope, receive, responder.wrapped_send)
        except ServiceUnavailable as error:
            if responder.started:
                raise
            await responder.fail(error)

    def _valid(self, ticket: _Ticket) -> bool:
        """Whether every L1 entry behind ``ticket`` is still the live one and in date."""
        if ticket.mono_until <= time.monotonic():
            return False
        clock = self._authenticator._clock
        now = clock()
        if now >= ticket.exp or now < ticket.nbf:
            return False
        if self._jwt_entries.get(ticket.token) is not ticket.jwt_slot:
            return False
        revoked = self._authenticator._revoked
        if revoked and ticket.revocation in revoked:
            return False
        if ticket.rbac_slot is not None:
            cache = self._rbac_cache
            if cache is None or cache._version != ticket.version:
                return False
            if self._rbac_entries.get(ticket.subject) is not ticket.rbac_slot:
                return False
        if ticket.session_slot is not None:
            if self._session_entries.get(ticket.digest) is not ticket.session_slot:
                return False
            sessions = self._sessions
            if sessions is None:
                return False
            session_clock = sessions._manager._clock
            if (now if session_clock is clock else session_clock()) >= ticket.session_until:
                return False
        return True

    def _issue(self, scope: Scope, authorization: bytes, cookie: bytes | None) -> _Ticket | None:
        """A ticket for these credentials when the token, the permissions (of a cached
        source) and the session (if any, with no touch due) are all in L1; else None."""
        tokens = self._jwt._tokens
        token = tokens.get(authorization)
        if token is None:
            token = bearer_token(authorization)
            if not token:  # not a bearer token, or an empty one: the chain answers
                return None
            remember(tokens, authorization, token)
        authenticator = self._authenticator
        result = authenticator.cached(token)
        jwt_slot = self._jwt_entries.get(token)
        if result is None or jwt_slot is None:
            return None
        claims = result.claims
        entry: _Verified = jwt_slot[0]
        ticket = _Ticket(token, result, jwt_slot, entry)
        deadlines = [jwt_slot[1]]

        rbac = self._rbac
        if rbac is not None:
            cache = rbac._cache
            granted = cache.cached(claims)
            if granted is None:
                return None
            if cache._source.cacheable:
                rbac_slot = self._rbac_entries.get(claims.sub)
                if rbac_slot is None or rbac_slot[0][1] is not granted:
                    return None
                ticket.subject = claims.sub
                ticket.rbac_slot = rbac_slot
                ticket.version = rbac_slot[0][0]
                ticket.granted = granted
                context = PermissionContext(cache, claims)
                context._granted = granted
                ticket.context = context  # pre-resolved: the same answer for every request
                deadlines.append(rbac_slot[1])

        sessions = self._sessions
        if sessions is not None and cookie is not None:
            session_id = sessions._simple_cookie(cookie)
            if session_id is None:
                session_id = sessions._parse_cookies(scope)
            if session_id is not None:
                manager = sessions._manager
                session_entry = manager._cached(session_id, sessions._refresh)
                digest = manager._key(session_id)
                session_slot = self._session_entries.get(digest)
                if (
                    session_entry is None
                    or session_slot is None
                    or session_slot[0] is not session_entry
                ):
                    return None
                ticket.session = session_entry
                ticket.digest = digest
                ticket.session_slot = session_slot
                ticket.session_until = min(
                    session_entry.ends_at,
                    session_entry.last + sessions._refresh,
                    session_entry.idle_touch_at,
                )
                deadlines.append(session_slot[1])
        ticket.mono_until = min(deadlines)
        return ticket


class _Ticket:
    """What a warm request with these exact credentials is served from, and the L1 entries
    it came from: valid while each is still the live entry of its cache and in date (see
    :meth:`GatewayMiddleware._valid`). Holds no per-request state."""

    __slots__ = (
        "context",
        "digest",
        "exp",
        "granted",
        "jwt_slot",
        "mono_until",
        "nbf",
        "rbac_slot",
        "result",
        "revocation",
        "scopes",
        "session",
        "session_slot",
        "session_until",
        "subject",
        "token",
        "user",
        "version",
    )  # fmt: skip

    def __init__(
        self, token: str, result: Authentication, jwt_slot: tuple[Any, float], entry: _Verified
    ) -> None:
        claims = result.claims
        self.token = token
        self.result = result
        self.jwt_slot = jwt_slot
        self.exp = entry.exp
        self.nbf = entry.nbf
        self.revocation = entry.revocation
        self.user = GatewayUser(claims)  # immutable: shared by the ticket's requests
        self.scopes = ("authenticated", *claims.scopes)
        self.mono_until = 0.0
        self.subject = ""
        self.rbac_slot: tuple[Any, float] | None = None
        self.version: int | None = None
        self.granted: frozenset[str] = frozenset()
        self.context: PermissionContext | None = None
        self.session: Any = None  # the session manager's L1 entry
        self.digest = ""
        self.session_slot: tuple[Any, float] | None = None
        self.session_until = math.inf
