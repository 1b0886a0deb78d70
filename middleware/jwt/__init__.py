"""JWT: token validation, the two-tier verdict cache, revocations, and the middleware.

:mod:`~middleware.jwt.claims` (:class:`TokenClaims`, strict JSON),
:mod:`~middleware.jwt.settings` (:class:`JWTSettings`, key loading, weak-secret checks),
:mod:`~middleware.jwt.jwks` (the issuer's key set) and :mod:`~middleware.jwt.validator`
(:class:`TokenValidator`, :class:`JWTValidator`) use neither Redis nor ASGI;
:mod:`~middleware.jwt.revocation` (:class:`TokenRevoked` events, their parser, the
in-memory revocation mirror), :mod:`~middleware.jwt.cutoff` (per-subject cut-offs:
:class:`SubjectRevoked` events and their mirror), :mod:`~middleware.jwt.revoker` (writing,
mirroring and announcing both), :mod:`~middleware.jwt.sealed` (HMAC-sealed L2 verdicts),
:mod:`~middleware.jwt.authenticator` (:class:`JWTAuthenticator`: L1, L2 and revocation;
``client=None`` for in-process only) and
:mod:`~middleware.jwt.middleware` (:class:`JWTMiddleware`) build on them.
"""

from __future__ import annotations

from middleware.errors import InvalidToken, ValidatorUnavailable
from middleware.jwt.authenticator import Authentication, JWTAuthenticator
from middleware.jwt.claims import TokenClaims
from middleware.jwt.cutoff import SubjectRevoked, parse_subject_event
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
    "SubjectRevoked",
    "TokenClaims",
    "TokenRevoked",
    "TokenValidator",
    "ValidatorUnavailable",
    "parse_revoke_event",
    "parse_subject_event",
]
