"""JWT: token validation (no Redis, no ASGI), the two-tier verdict cache, and the middleware."""

from __future__ import annotations

from middleware.jwt.authenticator import Authentication, JWTAuthenticator
from middleware.jwt.middleware import GatewayUser, JWTMiddleware
from middleware.jwt.validator import (
    InvalidToken,
    JWTSettings,
    JWTValidator,
    TokenClaims,
    TokenValidator,
    ValidatorUnavailable,
)

__all__ = [
    "Authentication",
    "GatewayUser",
    "InvalidToken",
    "JWTAuthenticator",
    "JWTMiddleware",
    "JWTSettings",
    "JWTValidator",
    "TokenClaims",
    "TokenValidator",
    "ValidatorUnavailable",
]
