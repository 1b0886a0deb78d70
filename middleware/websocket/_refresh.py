"""Live token refresh for token-authenticated sockets (private).

A socket authenticated by a token lives until the token's ``exp`` plus the authenticator's
leeway (the end of the window in which :class:`~middleware.jwt.JWTAuthenticator` accepts
the token) and is then closed with 4401 by the housekeeping sweep (twice a second).
:data:`NOTICE` seconds before ``exp`` (at once when less is left) the socket is sent
``{"type": "refresh_required"}``, once per token. The client answers with
``{"type": "refresh", "token": "...", "id": n}``; the token is verified exactly like a
handshake token (:meth:`JWTAuthenticator.authenticate
<middleware.jwt.JWTAuthenticator.authenticate>`: signature, issuer, audience, time window,
the ``max_token_bytes`` cap, revocations and subject cut-offs) and must carry the socket's
subject (``sub``). Accepted: the socket's claims, expiry and permissions become the new
token's, and the client gets ``{"type": "refreshed", "id": n}``. Refused: an ``error``
frame (``invalid_token``; ``unavailable`` while the key source is down) and nothing
changes: the socket still ends at the old token's expiry, unless a later refresh succeeds.

Revocation after a refresh: the socket is tracked under the new token's ``(iss, jti)`` only.
Revoking the new token closes it (4401); revoking the old token no longer does, since the
old token no longer authenticates anything on this socket (revoke the new one, or cut the
subject off with :meth:`~middleware.jwt.JWTAuthenticator.revoke_subject`, which covers
every token issued so far).

Bounded: a ``refresh`` is a client frame like any other, so it counts against the socket's
rate limit, and a token over the authenticator's ``max_token_bytes`` is refused before any
lookup or hashing (the frame itself is capped by ``max_message_bytes``). Requests of one
socket are handled one at a time, so two refreshes never race. Without an authenticator
the bridge cannot verify a new token: token sockets then get no ``refresh_required`` and
a ``refresh`` is answered ``unavailable``; they still close at ``exp``. Cookie-session
sockets are not concerned (a ``refresh`` from one is a ``bad_request``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from gateway_redis.support import log_fields
from middleware.errors import InvalidToken, ValidatorUnavailable
from middleware.websocket import _protocol as proto
from middleware.websocket._auth import TokenPrincipal

if TYPE_CHECKING:
    from middleware.jwt.authenticator import JWTAuthenticator
    from middleware.jwt.claims import TokenClaims
    from middleware.websocket._connection import Connection
    from middleware.websocket._registry import Registry

__all__ = ["NOTICE", "Refresher"]

_log = logging.getLogger("middleware.websocket.bridge")
_COMPONENT = "websocket"
NOTICE: Final = 10.0  # seconds before exp that refresh_required is sent
_REFUSED = "The token was not accepted."
_UNAVAILABLE = "Temporarily unavailable; retry shortly."


class Refresher:
    """Arms token sockets for refresh and serves ``refresh`` frames; see the module
    docstring. ``requeue(conn)`` re-authorizes a socket's channels (the new token may
    carry fewer permissions)."""

    def __init__(
        self,
        *,
        authenticator: JWTAuthenticator | None,
        registry: Registry,
        requeue: Callable[[Connection], None],
    ) -> None:
        self._authenticator = authenticator
        self._registry = registry
        self._requeue = requeue
        self.leeway = authenticator.leeway if authenticator is not None else 0.0

    def arm(self, conn: Connection, claims: TokenClaims | None = None) -> None:
        """Set the token socket's expiry (``exp`` + leeway) and when it is told to refresh;
        ``refresh_required`` goes out at once when less than :data:`NOTICE` is left."""
        identity = conn.identity
        claims = identity.claims if claims is None else claims
        if claims is None:
            return
        exp = float(claims.exp)
        identity.expires_at = exp + self.leeway
        if self._authenticator is None:
            identity.expires_at = exp  # no refresh possible: as before
            identity.refresh_at = None
            return
        identity.refresh_at = exp - NOTICE
        if identity.refresh_at <= time.time():
            identity.refresh_at = None
            conn.push_control(proto.REFRESH_REQUIRED_FRAME)

    async def refresh(self, conn: Connection, request: proto.Request) -> None:
        """Serve one ``refresh`` frame (already counted by the rate limit)."""
        identity = conn.identity
        if identity.claims is None:
            conn.push_control(
                proto.error_frame(
                    "bad_request", "Only a token-authenticated socket can refresh.", request.id
                )
            )
            return
        authenticator = self._authenticator
        if authenticator is None:
            conn.push_control(proto.error_frame("unavailable", _UNAVAILABLE, request.id))
            return
        token = request.data
        assert isinstance(token, str)
        try:
            claims = (await authenticator.authenticate(token)).claims
        except ValidatorUnavailable:
            conn.push_control(proto.error_frame("unavailable", _UNAVAILABLE, request.id))
            return
        except InvalidToken as exc:
            self._refuse(conn, request, exc.reason)
            return
        if conn.closing is not None:
            return
        if claims.sub != identity.subject:
            self._refuse(conn, request, "other_subject")
            return
        if authenticator.is_revoked(claims):  # revoked while it was being verified
            self._refuse(conn, request, "revoked")
            return
        self._registry.retoken(conn, claims)
        principal = conn.principal
        if isinstance(principal, TokenPrincipal):
            conn.principal = principal.with_claims(claims)
            self._requeue(conn)  # the new token may grant less
        conn.push_control(proto.reply_frame("refreshed", request.id))
        self.arm(conn, claims)  # after the reply: a short-lived token is told at once

    @staticmethod
    def _refuse(conn: Connection, request: proto.Request, reason: str) -> None:
        _log.info(
            "websocket token refresh refused: %s",
            reason,
            extra=log_fields(_COMPONENT, "websocket_refresh_refused", reason),
        )
        conn.push_control(proto.error_frame("invalid_token", _REFUSED, request.id))
