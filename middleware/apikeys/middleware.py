"""API-key authentication middleware (pure ASGI) on :class:`APIKeyAuthenticator`.

::

    authenticator = APIKeyAuthenticator(settings, client=client)
    app.add_middleware(JWTMiddleware, authenticator=jwt_authn)       # inner
    app.add_middleware(APIKeyMiddleware, authenticator=authenticator)  # outer: runs first

It runs before the JWT layer (:meth:`Gateway.install <middleware.Gateway.install>` puts it
there). A request carrying an API key (the settings' header, default ``X-API-Key``, or
``Authorization: <scheme> <key>``) is authenticated here and gets what the JWT layer would
set: ``user`` (:class:`~middleware.jwt.GatewayUser`), ``auth``
(``AuthCredentials(["authenticated", *scopes])``) and the claims under
:data:`~middleware.scope.CLAIMS_KEY`, plus the key's id under
:data:`~middleware.scope.API_KEY_KEY`, which tells the JWT layer to pass the request on
(and the CSRF layer that its credentials are not ambient). A request without an API key
passes through untouched, to the JWT layer.

Precedence: one credential per request. A request with an API key and a bearer token, two
API-key headers, or a key both in the header and in ``Authorization``, is refused (401):
an ambiguous request is never guessed at. Only HTTP requests are read (WebSocket
handshakes go to the JWT layer and the bridge unchanged).

Hostile input: the value must be at most ``max_key_bytes`` long (checked before any
hashing) and visible ASCII; anything else is a 401 without a lookup. Refusals answer 401
through ``on_error`` with the generic body; the reason goes to debug logs only, and the
key itself never reaches a log line or a span attribute. The lookup failing answers 503
(``ServiceUnavailable("validator_unavailable")``). On ``public_paths`` a bad key leaves
the request anonymous; on ``fail_closed_paths`` a result whose revocation status could
not be checked in Redis answers 503.

Telemetry: an L1 hit sets ``gateway.apikey.cache.result = "l1"`` on the server span; a
miss gets a ``gateway.apikey authenticate`` span (``gateway.cache.result`` ``l2``/
``miss``, ``gateway.degraded``, ``gateway.reason`` on refusal); ``gateway.cache.lookups``
counts them under ``gateway.cache.name = "apikey"``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from starlette.authentication import AuthCredentials, UnauthenticatedUser
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway_redis import telemetry
from gateway_redis.support import log_fields
from middleware._paths import PathSet, route_path
from middleware.apikeys.authenticator import APIKeyAuthenticator
from middleware.authentication import CountedAuthentication
from middleware.errors import (
    ErrorHandler,
    MiddlewareError,
    NotAuthenticated,
    ServiceUnavailable,
    default_error_response,
)
from middleware.jwt.claims import TokenClaims
from middleware.jwt.middleware import GatewayUser
from middleware.scope import API_KEY_KEY, CLAIMS_KEY
from middleware.telemetry import ATTR_APIKEY_RESULT

__all__ = ["APIKeyMiddleware"]

_log = logging.getLogger(__name__)
_AUTHENTICATE = CountedAuthentication(
    "apikey", span_name="gateway.apikey authenticate", invalid="invalid api key",
    unavailable="api key lookup unavailable",
)  # fmt: skip
_L1_LOOKUP = _AUTHENTICATE.l1
_L1_SPAN_ATTRS = {ATTR_APIKEY_RESULT: "l1"}
_BEARER = b"bearer "


def _visible_ascii(value: bytes) -> bool:
    return value.isascii() and all(0x21 <= c <= 0x7E for c in value)


class APIKeyMiddleware:
    """Authenticates HTTP requests that carry an API key; see the module docstring.

    ``authenticator`` checks keys (cached). ``public_paths`` (exact, or ``/prefix/*``)
    stay reachable with a bad key (anonymous); ``fail_closed_paths`` answer 503 while
    revocation cannot be checked in Redis; ``on_error(scope, error)`` builds error
    responses (default :func:`~middleware.errors.default_error_response`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: APIKeyAuthenticator,
        public_paths: Iterable[str] = (),
        fail_closed_paths: Iterable[str] = (),
        on_error: ErrorHandler = default_error_response,
    ) -> None:
        if not isinstance(authenticator, APIKeyAuthenticator):
            raise ValueError("authenticator must be an APIKeyAuthenticator")
        if not callable(on_error):
            raise ValueError("on_error must be callable")
        self.app = app
        self._authenticator = authenticator
        settings = authenticator.settings
        self._header = settings.header_name
        self._scheme = settings.scheme_prefix
        self._max = settings.max_key_bytes
        self._public = PathSet(public_paths)
        self._fail_closed = PathSet(fail_closed_paths)
        self._on_error = on_error

    @property
    def authenticator(self) -> APIKeyAuthenticator:
        """The authenticator keys are checked with."""
        return self._authenticator

    def credential(self, scope: Scope) -> bytes | None:
        """The API key this request carries (raw bytes, unchecked), or None when it
        carries none. Raises :class:`NotAuthenticated` (``ambiguous``) for more than one
        credential."""
        header, scheme = self._header, self._scheme
        width = max(len(scheme or b""), len(_BEARER))
        found: bytes | None = None
        authorizations = 0
        bearer = False
        for name, value in scope["headers"]:
            if name == header:
                if found is not None:
                    raise NotAuthenticated("ambiguous")
                found = value
            elif name == b"authorization":
                authorizations += 1
                lead = value.lstrip(b" \t")
                start = lead[:width].lower()
                if scheme is not None and start.startswith(scheme):
                    if found is not None:
                        raise NotAuthenticated("ambiguous")
                    found = lead[len(scheme) :]
                elif start.startswith(_BEARER):
                    bearer = True
        if found is not None and (bearer or authorizations > 1):
            raise NotAuthenticated("ambiguous")
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            raw = self.credential(scope)
            if raw is None:
                await self.app(scope, receive, send)
                return
            raw = raw.strip(b" \t")
            if len(raw) > self._max:
                raise NotAuthenticated("too_large")
            if not raw or not _visible_ascii(raw):
                raise NotAuthenticated("malformed")
            key = raw.decode("ascii")
            result = self._authenticator.cached(key)
            if result is not None:
                _L1_LOOKUP.value += 1
                if telemetry.tracing_enabled():
                    telemetry.annotate_current_span(_L1_SPAN_ATTRS)
            else:
                result = await _AUTHENTICATE(self._authenticator, key)
                if result.degraded and self._fail_closed.matches(route_path(scope)):
                    raise ServiceUnavailable("revocation_unknown")
        except MiddlewareError as error:
            await self._refuse(scope, receive, send, error)
            return
        self._admit(scope, result.claims)
        await self.app(scope, receive, send)

    @staticmethod
    def _admit(scope: Scope, claims: TokenClaims) -> None:
        scope["user"] = GatewayUser(claims)
        scope["auth"] = AuthCredentials(["authenticated", *claims.scopes])
        scope[CLAIMS_KEY] = claims
        scope[API_KEY_KEY] = claims.jti

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, error: MiddlewareError
    ) -> None:
        """Anonymous on a public path, else the error response."""
        if self._public and self._public.matches(route_path(scope)):
            scope["user"], scope["auth"] = UnauthenticatedUser(), AuthCredentials()
            await self.app(scope, receive, send)
            return
        _log.debug(
            "api key rejected: %s",
            error.reason,
            extra=log_fields("apikey", "apikey_rejected", error.reason),
        )
        await self._on_error(scope, error)(scope, receive, send)
