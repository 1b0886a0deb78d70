"""JWT: token validation (no Redis, no ASGI), the two-tier verdict cache, revocations, and
the middleware."""

from __future__ import annotations

from middleware.errors import InvalidToken, ValidatorUnavailable
from middleware.jwt.authenticator import Authentication, JWTAuthenticator
from middleware.jwt.claims import TokenClaims
from middleware.jwt.middleware import GatewayUser, JWTMiddleware
from middleware.jwt.revocation import TokenRevoked, parse_revoke_event
from middleware.jwt.settings import JWTSettings
from middleware.jwt.validator import JWTValidator, TokenValidator

__all__ = [
    "Authentication",
    "GatewayUser",
    "InvalidToken",
    "JWTAuthenticator",
    "JWTMiddleware",
    "JWTSettings",
    "JWTValidator",
    "TokenClaims",
    "TokenRevoked",
    "TokenValidator",
    "ValidatorUnavailable",
    "parse_revoke_event",
]
