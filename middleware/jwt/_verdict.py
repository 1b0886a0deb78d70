"""What :class:`~middleware.jwt.JWTAuthenticator` answers and keeps in L1: the
:class:`Authentication` result, the L1 entry (:class:`Verified`, with the token's
acceptance window precomputed) and the :class:`AuthenticationPin` a caller may hold."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from gateway_redis.localcache import Stamp
from middleware.jwt.claims import TokenClaims

__all__ = ["Authentication", "AuthenticationPin", "Verified"]


@dataclass(frozen=True, slots=True)
class Authentication:
    """The outcome of :meth:`JWTAuthenticator.authenticate`.

    ``source`` is ``"l1"``, ``"l2"`` or ``"validator"``. ``degraded`` is True when Redis
    could not be asked, so revocation was checked against the in-memory mirror only.
    """

    claims: TokenClaims
    source: str
    degraded: bool


class Verified:
    """An L1 entry: the claims with their ready-made L1 result and what a hit re-checks:
    the token is accepted from ``since`` (``nbf - leeway``) until ``until`` (``exp +
    leeway``), epoch seconds, unless ``revocation`` (``(iss, jti)``) is revoked or ``sub``
    has a cut-off at or after ``iat``. ``kid`` is the JWKS key that verified the token
    (None with a static key): the entry leaves L1 when the issuer stops listing it."""

    __slots__ = ("iat", "kid", "result", "revocation", "since", "sub", "until")

    def __init__(self, claims: TokenClaims, leeway: float, kid: str | None = None) -> None:
        self.result = Authentication(claims, "l1", False)
        # The acceptance window, precomputed: a hit compares, never adds.
        self.until: float = claims.exp + leeway
        self.since: float = claims.nbf - leeway if claims.nbf is not None else -math.inf
        self.revocation = (claims.iss, claims.jti) if claims.jti is not None else None
        self.sub = claims.sub
        self.iat = claims.iat
        self.kid = kid


class AuthenticationPin:
    """An L1 answer of :meth:`JWTAuthenticator.pin`, for a caller that remembers it across
    requests: ``result`` may be served again while :meth:`JWTAuthenticator.is_current`
    says so. Immutable; holds no per-request state."""

    __slots__ = ("_current", "_entry", "_stamp", "result")

    def __init__(self, entry: Verified, stamp: Stamp, current: Callable[[Stamp], bool]) -> None:
        self.result = entry.result
        self._entry = entry
        self._stamp = stamp
        self._current = current  # the L1 cache's is_current, bound once
