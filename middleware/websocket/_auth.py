"""Handshake checks for the WebSocket bridge: who is connecting, and from which origin
(private).

The bridge authenticates with what the middleware in front of it put in the scope: the
claims of :class:`~middleware.jwt.JWTMiddleware` (a bearer header, a bearer subprotocol or
the JWT cookie) or the session of :class:`~middleware.sessions.SessionMiddleware` (the
session cookie). A bearer token that was presented but not accepted is a rejection, even
when a session cookie would have been good: an attacker's page must not be able to
downgrade a request to cookie authentication.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from starlette.types import Scope, Send

from gateway_redis.sessions import id_digest
from middleware.scope import SESSION_KEY, get_claims_or_none
from middleware.sessions.handle import SessionHandle

if TYPE_CHECKING:
    from gateway_redis.sessions import Session
    from middleware.jwt.claims import TokenClaims
    from middleware.rbac.middleware import PermissionContext
    from middleware.rbac.permissions import PermissionCache

__all__ = [
    "Identity",
    "Rejection",
    "SessionPermissions",
    "SessionPrincipal",
    "TokenPrincipal",
    "identify",
    "normalize_origins",
    "origin_allowed",
    "send_close_before_accept",
]

_BEARER: Final = "bearer"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
Origin = tuple[str, str, int]
SessionPermissions = Callable[["Session"], Awaitable[Collection[str]]]
"""``resolver(session) -> permissions`` for cookie-session principals."""


@dataclass(slots=True)
class Identity:
    """Who is connected and by what credential.

    ``method`` is ``"token"`` or ``"session"``; ``cookie`` is True when the credential
    came from a cookie (Origin checks apply). ``user`` is the SHA-256 digest of the
    subject (the key of the per-user index, as in session events). ``expires_at`` (epoch
    seconds) is when the credential ends (for a token: ``exp`` plus the authenticator's
    leeway); ``idle_check_at`` when an idle session must be looked at again;
    ``refresh_at`` when a token socket is to be sent ``refresh_required`` (None: not, or
    already sent).
    """

    subject: str
    user: str
    method: str
    cookie: bool
    claims: TokenClaims | None = None
    session: Session | None = None
    session_key: str | None = None
    expires_at: float | None = None
    idle_check_at: float | None = None
    refresh_at: float | None = None


class Rejection(Exception):
    """A refused handshake: ``reason`` for logs and spans; ``code`` the close code."""

    def __init__(self, reason: str, code: int = 1008) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def offered_subprotocols(scope: Scope) -> list[str]:
    """The subprotocols the client offered, in order."""
    offered = scope.get("subprotocols")
    if offered is not None:
        return [str(p).strip() for p in offered]
    found: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"sec-websocket-protocol":
            found.extend(p.strip() for p in value.decode("latin-1").split(","))
    return found


def _bearer_presented(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme = value.decode("latin-1").strip().partition(" ")[0]
            if scheme.lower() == _BEARER:
                return True
    return _BEARER in offered_subprotocols(scope)


def identify(scope: Scope) -> Identity:
    """The connecting principal, from the scope; raises :class:`Rejection`."""
    claims = get_claims_or_none(scope)
    bearer = _bearer_presented(scope)
    if claims is not None:
        if not claims.sub:
            raise Rejection("token_without_subject")
        return Identity(
            subject=claims.sub,
            user=id_digest(claims.sub),
            method="token",
            cookie=not bearer,  # no header, no subprotocol: it came from the JWT cookie
            claims=claims,
            expires_at=float(claims.exp),
        )
    if bearer:
        raise Rejection("invalid_token")
    handle = scope.get(SESSION_KEY)
    if isinstance(handle, SessionHandle):
        session = handle.session
        if session is not None:
            idle = session.idle_expires_at
            return Identity(
                subject=session.user_id,
                user=id_digest(session.user_id),
                method="session",
                cookie=True,
                session=session,
                session_key=id_digest(session.id),
                expires_at=session.expires_at.timestamp(),
                idle_check_at=idle.timestamp() if idle is not None else None,
            )
        if not handle.available:
            raise Rejection("session_unavailable", 1013)
    raise Rejection("missing_credentials")


def _parse_origin(value: str) -> Origin | None:
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def normalize_origins(origins: Iterable[str]) -> frozenset[Origin]:
    """Parse an allow-list (``"https://app.example.com"``, ``"http://localhost:3000"``);
    raises ``ValueError`` for anything that is not a plain http(s) origin."""
    if isinstance(origins, str):
        raise ValueError("allowed_origins must be a collection of origins, not one string")
    parsed = set()
    for origin in origins:
        found = _parse_origin(origin) if isinstance(origin, str) else None
        if found is None:
            raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
        parsed.add(found)
    return frozenset(parsed)


def _own_origin(scope: Scope) -> Origin | None:
    host = None
    for name, value in scope.get("headers", ()):
        if name == b"host":
            host = value.decode("latin-1")
            break
    if host is None:
        return None
    scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"
    return _parse_origin(f"{scheme}://{host}")


def origin_allowed(scope: Scope, allowed: frozenset[Origin]) -> bool:
    """No ``Origin`` (not a browser), the server's own origin, or an allowed one.

    Exact comparison of scheme, host and port (default ports filled in); ``null`` and
    anything unparsable are refused. Two ``Origin`` headers are refused.
    """
    values = [v for n, v in scope.get("headers", ()) if n == b"origin"]
    if not values:
        return True
    if len(values) > 1:
        return False
    origin = _parse_origin(values[0].decode("latin-1"))
    if origin is None:
        return False
    return origin in allowed or origin == _own_origin(scope)


class TokenPrincipal:
    """A token's principal: permissions from the cache, else the RBAC context."""

    __slots__ = ("_cache", "_claims", "_context", "subject")

    def __init__(self, claims: TokenClaims, cache: PermissionCache | None, context: Any) -> None:
        self.subject = claims.sub
        self._claims = claims
        self._cache = cache
        self._context: PermissionContext | None = context

    def with_claims(self, claims: TokenClaims) -> TokenPrincipal:
        """The same principal on a refreshed token's claims (same source of permissions)."""
        return TokenPrincipal(claims, self._cache, self._context)

    async def permissions(self) -> Collection[str]:
        # Asked per request (an L1 hit): a permission removed while the socket is open
        # takes effect on its next request.
        if self._cache is not None:
            return await self._cache.permissions(self._claims)
        if self._context is not None:
            return await self._context.permissions()
        return frozenset()


class SessionPrincipal:
    """A cookie session's principal: permissions from the resolver, if any."""

    __slots__ = ("_resolve", "_session", "subject")

    def __init__(self, session: Session, resolve: SessionPermissions | None) -> None:
        self.subject = session.user_id
        self._session = session
        self._resolve = resolve

    async def permissions(self) -> Collection[str]:
        if self._resolve is None:
            return frozenset()
        return await self._resolve(self._session)


async def send_close_before_accept(send: Send, code: int) -> None:
    """Reject a handshake: ``websocket.close`` before ``websocket.accept``."""
    with contextlib.suppress(OSError, RuntimeError):
        await send({"type": "websocket.close", "code": code})
