"""JWT authentication middleware (pure ASGI) on top of :class:`JWTAuthenticator`.

::

    authenticator = JWTAuthenticator(JWTValidator(settings), bus=bus)
    app.add_middleware(JWTMiddleware, authenticator=authenticator, public_paths=["/health"])

The token comes from ``Authorization: Bearer <token>``; for WebSocket handshakes also from
``Sec-WebSocket-Protocol: bearer, <token>`` (browsers cannot set headers; the middleware then
selects the ``bearer`` subprotocol when the app accepts without choosing one); and, if
``cookie_name`` is set, from that cookie. On success the scope gets Starlette's ``user``
(:class:`GatewayUser`) and ``auth`` (``AuthCredentials(["authenticated", *token scopes])``)
plus the claims under :data:`~middleware.scope.CLAIMS_KEY`.

Failures answer 401 with ``WWW-Authenticate: Bearer error="invalid_token"`` and a generic
JSON body; an unreachable key source answers 503. A Redis outage is never a 401: tokens are
then validated locally and checked against the in-memory revocation mirror; paths in
``fail_closed_paths`` answer 503 instead while revocation status cannot be confirmed in
Redis. On ``public_paths`` a valid token still sets the user, and a missing or bad one
leaves the request anonymous.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from opentelemetry.trace import StatusCode
from starlette.authentication import AuthCredentials, BaseUser, UnauthenticatedUser
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway_redis import telemetry
from middleware._paths import PathSet, route_path
from middleware.errors import (
    ErrorHandler,
    MiddlewareError,
    NotAuthenticated,
    ServiceUnavailable,
    default_error_response,
)
from middleware.scope import CLAIMS_KEY
from middleware.tokencache import Authentication, JWTAuthenticator
from middleware.tokens import InvalidToken, TokenClaims, ValidatorUnavailable

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


def _extract(scope: Scope, cookie_name: str | None, subprotocol: bool) -> tuple[str | None, bool]:
    """``(token, from_subprotocol)``; raises :class:`NotAuthenticated` for ambiguous input."""
    authorization: list[bytes] = []
    protocols: list[bytes] = []
    cookies: list[bytes] = []
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization.append(value)
        elif name == b"sec-websocket-protocol" and subprotocol:
            protocols.append(value)
        elif name == b"cookie" and cookie_name is not None:
            cookies.append(value)
    if len(authorization) > 1:
        raise NotAuthenticated("malformed")
    if authorization:
        scheme, _, credentials = authorization[0].decode("latin-1").strip().partition(" ")
        if scheme.lower() == _BEARER:
            token = credentials.strip()
            if not token:
                raise NotAuthenticated("malformed")
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        public = self._public.matches(path)
        try:
            token, from_subprotocol = _extract(scope, self._cookie, self._subprotocol)
            if token is None:
                raise NotAuthenticated("missing_token")
            result = await _authenticate(self._authenticator, token)
            if result.degraded and self._fail_closed.matches(path):
                raise ServiceUnavailable("revocation_unknown")
        except MiddlewareError as error:
            if public:
                scope["user"], scope["auth"] = UnauthenticatedUser(), AuthCredentials()
                await self.app(scope, receive, send)
                return
            if error.reason != "missing_token":
                _log.debug("request rejected: %s", error.reason)
            await self._on_error(scope, error)(scope, receive, send)
            return
        claims = result.claims
        scope["user"] = GatewayUser(claims)
        scope["auth"] = AuthCredentials(["authenticated", *claims.scopes])
        scope[CLAIMS_KEY] = claims
        if from_subprotocol and scope["type"] == "websocket":
            send = _select_bearer(send)
        await self.app(scope, receive, send)


_TIER = {"l1": "l1", "l2": "l2", "validator": "miss"}
_LOOKUP_ATTRS = {
    tier: {telemetry.ATTR_CACHE: "jwt", telemetry.ATTR_RESULT: result}
    for tier, result in (*_TIER.items(), ("invalid", "invalid"))
}


async def _authenticate(authenticator: JWTAuthenticator, token: str) -> Authentication:
    """Authenticate, counting the cache tier, with a span when tracing is on."""
    metrics = telemetry.instruments()
    if not telemetry.tracing_enabled():
        try:
            result = await authenticator.authenticate(token)
        except InvalidToken as exc:
            metrics.cache_lookups.add(1, _LOOKUP_ATTRS["invalid"])
            raise NotAuthenticated(exc.reason) from None
        except ValidatorUnavailable:
            raise ServiceUnavailable("validator_unavailable") from None
        metrics.cache_lookups.add(1, _LOOKUP_ATTRS[result.source])
        return result
    with telemetry.tracer.start_as_current_span(
        "gateway.jwt authenticate", record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            result = await authenticator.authenticate(token)
        except InvalidToken as exc:
            metrics.cache_lookups.add(1, _LOOKUP_ATTRS["invalid"])
            if span.is_recording():
                span.set_attribute(telemetry.ATTR_REASON, exc.reason)
                span.set_status(StatusCode.ERROR, "invalid token")
            raise NotAuthenticated(exc.reason) from None
        except ValidatorUnavailable:
            if span.is_recording():
                span.set_status(StatusCode.ERROR, "validator unavailable")
            raise ServiceUnavailable("validator_unavailable") from None
        metrics.cache_lookups.add(1, _LOOKUP_ATTRS[result.source])
        if span.is_recording():
            span.set_attribute(telemetry.ATTR_RESULT, _TIER[result.source])
            span.set_attribute(telemetry.ATTR_DEGRADED, result.degraded)
        return result


def _select_bearer(send: Send) -> Send:
    """Make ``websocket.accept`` select the ``bearer`` subprotocol if the app chose none."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "websocket.accept" and not message.get("subprotocol"):
            message = {**message, "subprotocol": _BEARER}
        await send(message)

    return wrapped
