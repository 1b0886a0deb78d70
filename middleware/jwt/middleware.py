"""JWT authentication middleware (pure ASGI) on top of :class:`JWTAuthenticator`.

::

    authenticator = JWTAuthenticator(JWTValidator(settings), client=client)
    app.add_middleware(JWTMiddleware, authenticator=authenticator, public_paths=["/health"])

The token comes from ``Authorization: Bearer <token>``; for WebSocket handshakes also from
``Sec-WebSocket-Protocol: bearer, <token>`` (browsers cannot set headers; the middleware then
selects the ``bearer`` subprotocol when the app accepts without choosing one); and, if
``cookie_name`` is set, from that cookie. On success the scope gets Starlette's ``user``
(:class:`GatewayUser`) and ``auth`` (``AuthCredentials(["authenticated", *token scopes])``)
plus the claims under :data:`~middleware.scope.CLAIMS_KEY`.

A request the API-key layer (:mod:`middleware.apikeys`, which runs first) has
authenticated, marked by :data:`~middleware.scope.API_KEY_KEY` in the scope, is passed on
untouched.

Failures answer 401 with ``WWW-Authenticate: Bearer error="invalid_token"`` and a generic
JSON body; an unreachable key source answers 503. A Redis outage is never a 401: tokens are
then validated locally and checked against the in-memory revocation mirror; paths in
``fail_closed_paths`` answer 503 instead while revocation status cannot be confirmed in
Redis. On ``public_paths`` a valid token still sets the user, and a missing or bad one
leaves the request anonymous.

The warm path (the token in L1, :meth:`JWTAuthenticator.cached`) awaits nothing and starts
no span: it sets ``gateway.jwt.cache.result = "l1"`` on the current (server) span. A token
that needs Redis or the validator gets a ``gateway.jwt authenticate`` span (tier ``l2`` or
``miss``, ``gateway.degraded``, ``gateway.reason`` on refusal).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from starlette.authentication import AuthCredentials, BaseUser, UnauthenticatedUser
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway_redis import telemetry
from gateway_redis.support import log_fields
from middleware._memo import Memo
from middleware._paths import PathSet, route_path
from middleware.authentication import CountedAuthentication
from middleware.errors import (
    ErrorHandler,
    MiddlewareError,
    NotAuthenticated,
    ServiceUnavailable,
    default_error_response,
)
from middleware.jwt.authenticator import JWTAuthenticator
from middleware.jwt.claims import TokenClaims
from middleware.scope import API_KEY_KEY, CLAIMS_KEY
from middleware.telemetry import ATTR_JWT_RESULT

__all__ = ["GatewayUser", "JWTMiddleware"]

_log = logging.getLogger(__name__)
_BEARER = "bearer"


class GatewayUser(BaseUser):
    """Starlette's user for a verified token: ``identity`` and ``display_name`` are ``sub``."""

    __slots__ = ("claims",)

    def __init__(self, claims: TokenClaims) -> None:
        self.claims = claims

    @property
    def is_authenticated(self) -> bool:
        """Always True."""
        return True

    @property
    def display_name(self) -> str:
        """The token's subject."""
        return self.claims.sub

    @property
    def identity(self) -> str:
        """The token's subject."""
        return self.claims.sub

    def __repr__(self) -> str:
        return f"GatewayUser(sub={self.claims.sub!r})"


def _extract(
    scope: Scope, cookie_name: str | None, subprotocol: bool, tokens: Memo[bytes, str]
) -> tuple[str | None, bool]:
    """``(token, from_subprotocol)``; raises :class:`NotAuthenticated` for ambiguous input.

    ``tokens`` memoizes bearer ``Authorization`` values (header bytes -> token).
    """
    authorization: bytes | None = None
    protocols: list[bytes] = []
    cookies: list[bytes] = []
    for name, value in scope["headers"]:
        if name == b"authorization":
            if authorization is not None:
                raise NotAuthenticated("malformed")
            authorization = value
        elif name == b"sec-websocket-protocol" and subprotocol:
            protocols.append(value)
        elif name == b"cookie" and cookie_name is not None:
            cookies.append(value)
    if authorization is not None:
        token = tokens.entries.get(authorization)
        if token is not None:
            return token, False
        token = bearer_token(authorization)
        if token is not None:
            if not token:
                raise NotAuthenticated("malformed")
            tokens.remember(authorization, token, len(authorization), len(token))
            return token, False
    if protocols and scope["type"] == "websocket":
        offered = [p.strip() for v in protocols for p in v.decode("latin-1").split(",")]
        if _BEARER in offered:
            position = offered.index(_BEARER)
            if position + 1 >= len(offered) or not offered[position + 1]:
                raise NotAuthenticated("malformed")
            return offered[position + 1], True
    if cookies and cookie_name is not None:
        value = cookie_parser("; ".join(c.decode("latin-1") for c in cookies)).get(cookie_name)
        if value:
            return value, False
    return None, False


def bearer_token(authorization: bytes) -> str | None:
    """The credentials of a ``Bearer`` ``Authorization`` value ("" when empty), else None."""
    scheme, _, credentials = authorization.decode("latin-1").strip().partition(" ")
    return credentials.strip() if scheme.lower() == _BEARER else None


class JWTMiddleware:
    """Authenticates ``http`` and ``websocket`` requests with a bearer JWT.

    ``authenticator`` does the (cached) validation. ``public_paths`` (exact, or ``/prefix/*``)
    do not require a token. ``cookie_name`` also accepts the token from that cookie.
    ``websocket_subprotocol`` accepts ``Sec-WebSocket-Protocol: bearer, <token>``.
    ``fail_closed_paths`` answer 503 while revocation cannot be checked in Redis.
    ``on_error(scope, error)`` builds the error response (default
    :func:`~middleware.errors.default_error_response`). Other scope types pass through.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: JWTAuthenticator,
        public_paths: Iterable[str] = (),
        cookie_name: str | None = None,
        websocket_subprotocol: bool = True,
        fail_closed_paths: Iterable[str] = (),
        on_error: ErrorHandler = default_error_response,
    ) -> None:
        if not isinstance(authenticator, JWTAuthenticator):
            raise ValueError("authenticator must be a JWTAuthenticator")
        if cookie_name is not None and (not isinstance(cookie_name, str) or not cookie_name):
            raise ValueError("cookie_name must be a non-empty string or None")
        if not callable(on_error):
            raise ValueError("on_error must be callable")
        self.app = app
        self._authenticator = authenticator
        self._public = PathSet(public_paths)
        self._fail_closed = PathSet(fail_closed_paths)
        self._cookie = cookie_name
        self._subprotocol = bool(websocket_subprotocol)
        self._on_error = on_error
        # Authorization value -> token (a pure parse); bounded in entries and bytes.
        self._tokens: Memo[bytes, str] = Memo()
        self._token_entries = self._tokens.entries  # read by bearer() on the fused hot path

    @property
    def authenticator(self) -> JWTAuthenticator:
        """The authenticator tokens are checked with."""
        return self._authenticator

    def bearer(self, authorization: bytes) -> str | None:
        """The token of one ``Authorization`` header value (memoized: a pure parse); None
        when it is not a ``Bearer`` value or the token is empty."""
        token = self._token_entries.get(authorization)
        if token is None:
            token = bearer_token(authorization)
            if not token:
                return None
            self._tokens.remember(authorization, token, len(authorization), len(token))
        return token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if (kind != "http" and kind != "websocket") or API_KEY_KEY in scope:
            await self.app(scope, receive, send)  # not ours, or an API key authenticated it
            return
        try:
            token, from_subprotocol = _extract(scope, self._cookie, self._subprotocol, self._tokens)
        except MiddlewareError as error:
            await self._refuse(scope, receive, send, error)
            return
        if token is not None:
            # The warm path: an L1 hit, no await, no span (attributes on the server span).
            result = self._authenticator.cached(token)
            if result is not None:
                _L1_LOOKUP.value += 1
                if telemetry.tracing_enabled():
                    telemetry.annotate_current_span(_L1_SPAN_ATTRS)
                self._admit(scope, result.claims)
                if from_subprotocol and kind == "websocket":
                    send = _select_bearer(send)
                await self.app(scope, receive, send)
                return
        try:
            if token is None:
                raise NotAuthenticated("missing_token")
            result = await _AUTHENTICATE(self._authenticator, token)
            if result.degraded and self._fail_closed.matches(route_path(scope)):
                raise ServiceUnavailable("revocation_unknown")
        except MiddlewareError as error:
            await self._refuse(scope, receive, send, error)
            return
        self._admit(scope, result.claims)
        if from_subprotocol and kind == "websocket":
            send = _select_bearer(send)
        await self.app(scope, receive, send)

    @staticmethod
    def _admit(scope: Scope, claims: TokenClaims) -> None:
        scope["user"] = GatewayUser(claims)
        scope["auth"] = AuthCredentials(["authenticated", *claims.scopes])
        scope[CLAIMS_KEY] = claims

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, error: MiddlewareError
    ) -> None:
        """Anonymous on a public path, else the error response."""
        if self._public and self._public.matches(route_path(scope)):
            scope["user"], scope["auth"] = UnauthenticatedUser(), AuthCredentials()
            await self.app(scope, receive, send)
            return
        if error.reason != "missing_token":
            _log.debug(
                "request rejected: %s",
                error.reason,
                extra=log_fields("jwt", "request_rejected", error.reason),
            )
        await self._on_error(scope, error)(scope, receive, send)


_AUTHENTICATE = CountedAuthentication(
    "jwt", span_name="gateway.jwt authenticate", invalid="invalid token",
    unavailable="validator unavailable",
)  # fmt: skip
_L1_LOOKUP = _AUTHENTICATE.l1
# An L1 hit is never degraded (degraded results are not cached): the tier says it all.
_L1_SPAN_ATTRS = {ATTR_JWT_RESULT: "l1"}


def _select_bearer(send: Send) -> Send:
    """Make ``websocket.accept`` select the ``bearer`` subprotocol if the app chose none."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "websocket.accept" and not message.get("subprotocol"):
            message = {**message, "subprotocol": _BEARER}
        await send(message)

    return wrapped
