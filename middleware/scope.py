"""Typed access to what the middleware put in the ASGI scope.

Starlette's own keys are filled too, so ``request.user``, ``request.auth.scopes``,
``@requires(...)`` and ``request.session`` work as usual; these accessors give the typed
objects behind them. Each takes a Starlette ``Request``/``WebSocket`` (any
``HTTPConnection``) or a raw scope.

============================  =========================================================
scope key                     value
============================  =========================================================
``"user"``, ``"auth"``        :class:`~middleware.jwt.GatewayUser`, ``AuthCredentials``
``"gateway.claims"``          :class:`~middleware.jwt.TokenClaims` (JWT or API-key layer)
``"gateway.api_key"``         the ``key_id`` of the API key that authenticated the request
``"gateway.permissions"``     :class:`~middleware.rbac.PermissionContext` (RBAC)
``"session"``                 a ``dict`` of the session's metadata (sessions)
``"gateway.session"``         :class:`~middleware.sessions.SessionHandle` (sessions)
============================  =========================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from starlette.requests import HTTPConnection
from starlette.types import Scope

from middleware.errors import NotAuthenticated

if TYPE_CHECKING:
    from gateway_redis.sessions import Session
    from middleware.jwt.claims import TokenClaims
    from middleware.rbac.middleware import PermissionContext
    from middleware.sessions.handle import SessionHandle

# The *_KEY constants are the scope keys the middleware write (see the table above); they
# are importable for the package's own modules, while applications use the accessors.
__all__ = [
    "get_auth_kind",
    "get_claims",
    "get_claims_or_none",
    "get_permission_context",
    "get_session",
    "get_session_handle",
]

CLAIMS_KEY = "gateway.claims"
# Set by the API-key layer: the JWT layer then passes the request on, and CSRF exempts it.
API_KEY_KEY = "gateway.api_key"
PERMISSIONS_KEY = "gateway.permissions"
SESSION_KEY = "gateway.session"


def _scope(conn: HTTPConnection | Scope) -> Scope:
    if type(conn) is dict:  # an ASGI scope: no isinstance check against an ABC (hot path)
        return conn
    return conn.scope if isinstance(conn, HTTPConnection) else conn


def get_claims_or_none(conn: HTTPConnection | Scope) -> TokenClaims | None:
    """The verified token claims of this request, or None (public path, no token)."""
    return cast("TokenClaims | None", _scope(conn).get(CLAIMS_KEY))


def get_auth_kind(conn: HTTPConnection | Scope) -> str | None:
    """How this request was authenticated: ``"apikey"`` (the API-key layer), ``"jwt"``
    (token claims from the JWT or fused layer), ``"user:<module>.<class>"`` for a
    ``request.user`` set by another authentication layer, or None when anonymous.

    Subjects are only unique within one kind: a token's ``sub`` may read
    ``apikey:<name>``, and a session backend's user id may equal a token subject. Whatever
    is kept per caller (cached responses, rate-limit budgets) is keyed by kind and subject.
    """
    scope = _scope(conn)
    if scope.get(CLAIMS_KEY) is not None:
        return "apikey" if scope.get(API_KEY_KEY) is not None else "jwt"
    user = scope.get("user")
    if user is not None and getattr(user, "is_authenticated", False):
        kind = type(user)
        return f"user:{kind.__module__}.{kind.__qualname__}"
    return None


def get_claims(conn: HTTPConnection | Scope) -> TokenClaims:
    """The verified token claims; raises :class:`NotAuthenticated` when there are none."""
    claims = get_claims_or_none(conn)
    if claims is None:
        raise NotAuthenticated("missing_token")
    return claims


def get_permission_context(conn: HTTPConnection | Scope) -> PermissionContext:
    """The request's permission context; raises ``RuntimeError`` without the RBAC middleware."""
    context: Any = _scope(conn).get(PERMISSIONS_KEY)
    if context is None:
        raise RuntimeError("RBACMiddleware is not installed for this route")
    return cast("PermissionContext", context)


def get_session_handle(conn: HTTPConnection | Scope) -> SessionHandle:
    """The request's session handle (create, regenerate, delete); ``RuntimeError`` without
    the session middleware."""
    handle: Any = _scope(conn).get(SESSION_KEY)
    if handle is None:
        raise RuntimeError("SessionMiddleware is not installed for this route")
    return cast("SessionHandle", handle)


def get_session(conn: HTTPConnection | Scope) -> Session | None:
    """The full :class:`~gateway_redis.sessions.Session` as loaded (or last saved), or None."""
    handle: Any = _scope(conn).get(SESSION_KEY)
    return None if handle is None else cast("SessionHandle", handle).session
