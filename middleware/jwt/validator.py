"""JWT verification: the `TokenValidator` seam and `JWTValidator` (no Redis, no ASGI).

`JWTValidator` checks a compact JWS token against keys that come only from configuration
(`JWTSettings.key`) or the issuer's JWKS endpoint (`JWTSettings.jwks_url`), never from the
token itself. Before PyJWT sees a token we enforce what PyJWT does not: a size cap applied
before any decoding, exactly three base64url segments (no JWE), an algorithm allow-list
checked on our own parse of the header, no `crit` header at all, no duplicate JSON names and
integer-only `exp`/`nbf`/`iat`. PyJWT then verifies the signature and the registered claims.

Every failure of a token surfaces as `InvalidToken` (with a short machine `reason`); a key
source that cannot be reached surfaces as `ValidatorUnavailable`, which callers must never
cache as a verdict on the token. Nothing else escapes `JWTValidator.validate`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable
from typing import Any, Protocol

import jwt
from jwt.exceptions import InvalidJTIError, InvalidSubjectError
from jwt.types import Options

from gateway_redis.support import log_fields
from middleware.errors import InvalidToken, ValidatorUnavailable
from middleware.jwt.claims import (
    DuplicateName,
    TokenClaims,
    build_claims,
    check_time_claims,
    strict_json_object,
)
from middleware.jwt.jwks import JWKSKeys
from middleware.jwt.settings import JWTSettings, fit_key

__all__ = ["JWTValidator", "TokenValidator"]

logger = logging.getLogger(__name__)

_JWS_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class TokenValidator(Protocol):
    """Something that turns a token string into verified claims."""

    @property
    def fingerprint(self) -> str:
        """Stable hex digest of the verifier configuration; part of every cache key."""
        ...

    async def validate(self, token: str) -> TokenClaims:
        """Verify `token`; raises `InvalidToken` or `ValidatorUnavailable`, nothing else."""


def _reason(exc: jwt.PyJWTError) -> str:
    # Order matters: several of these subclass DecodeError / InvalidTokenError.
    mapping: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
        (jwt.InvalidSignatureError, "bad_signature"),
        (jwt.ExpiredSignatureError, "expired"),
        (jwt.ImmatureSignatureError, "not_yet_valid"),
        (jwt.InvalidIssuerError, "bad_issuer"),
        (jwt.InvalidAudienceError, "bad_audience"),
        (jwt.MissingRequiredClaimError, "missing_claim"),
        (jwt.InvalidIssuedAtError, "bad_claim_type"),
        (InvalidSubjectError, "bad_claim_type"),
        (InvalidJTIError, "bad_claim_type"),
        (jwt.InvalidAlgorithmError, "algorithm_not_allowed"),
        (jwt.InvalidKeyError, "key_mismatch"),
    )
    for exc_type, reason in mapping:
        if isinstance(exc, exc_type):
            return reason
    return "malformed"


class JWTValidator:
    """Verifies compact JWS tokens against `JWTSettings`; implements `TokenValidator`.

    With a static key, verification runs inline (tens of microseconds). With a JWKS URL the
    key set is fetched in a worker thread, cached for `jwks_refresh_interval`, and refetched
    for an unknown `kid` at most once per `jwks_min_refresh_interval`; while a refetch fails
    the previous key set stays in use. Safe to share between tasks of one event loop.
    """

    def __init__(self, settings: JWTSettings) -> None:
        self._settings = settings
        self._jwt = jwt.PyJWT()
        self._options: Options = {
            "verify_signature": True,
            "verify_exp": True,
            "verify_nbf": True,
            "verify_iat": True,
            "verify_iss": True,
            "verify_aud": True,
            "verify_sub": True,
            "verify_jti": True,
            "require": list(settings.required_claims),
            "strict_aud": False,
            "enforce_minimum_key_length": True,
        }
        aud = settings.audience
        self._audience: str | list[str] = aud if isinstance(aud, str) else list(aud)
        url = settings.jwks_url
        self._jwks = JWKSKeys(settings, url) if url is not None else None

    @property
    def settings(self) -> JWTSettings:
        """The settings this validator was built from."""
        return self._settings

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex over the verifier configuration (not the secret itself)."""
        return self._settings.fingerprint

    @property
    def leeway(self) -> float:
        """Seconds past ``exp`` (and before ``nbf``) a token is still accepted (the
        settings'); :class:`~middleware.JWTAuthenticator` caches and revokes for as long."""
        return float(self._settings.leeway)

    @property
    def rotates_keys(self) -> bool:
        """Whether keys come from a JWKS endpoint (so a ``kid`` may be removed)."""
        return self._jwks is not None

    def has_key(self, kid: str) -> bool:
        """Whether the JWKS key set in use lists `kid` (always False with a static key)."""
        return self._jwks is not None and self._jwks.has(kid)

    async def refresh_keys(self) -> None:
        """Refetch the JWKS when it is due (nothing with a static key); never raises."""
        if self._jwks is not None:
            await self._jwks.refresh_if_stale()

    def on_keys_removed(self, callback: Callable[[frozenset[str]], None]) -> Callable[[], None]:
        """Call ``callback(kids)`` when a JWKS refetch no longer lists ``kids`` (never with a
        static key). Returns a function that removes the callback."""
        if self._jwks is None:
            return lambda: None
        return self._jwks.on_removed(callback)

    async def validate(self, token: str) -> TokenClaims:
        """Verify `token` and return its claims.

        Raises `InvalidToken` for every unacceptable input and `ValidatorUnavailable` when
        the JWKS endpoint cannot be reached; no other exception escapes.
        """
        try:
            header, payload = self._parse(token)
            alg: str = header["alg"]
            if self._jwks is None:
                key = self._settings.verify_key
            else:
                entry = await self._jwks.get(header.get("kid"))
                if entry.alg is not None and entry.alg != alg:
                    raise InvalidToken("key_mismatch")
                try:
                    key = fit_key(alg, entry.key)
                except ValueError:
                    raise InvalidToken("key_mismatch") from None
            try:
                self._jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    options=self._options,
                    audience=self._audience,
                    issuer=self._settings.issuer,
                    leeway=self._settings.leeway,
                )
            except jwt.PyJWTError as exc:
                raise InvalidToken(_reason(exc)) from exc
            claims = build_claims(payload)
        except InvalidToken as exc:
            logger.debug(
                "token rejected: %s",
                exc.reason,
                extra=log_fields("jwt", "token_rejected", exc.reason),
            )
            raise
        except ValidatorUnavailable:
            raise
        except Exception as exc:
            # Hostile input must never become a 500; the token itself is never logged.
            logger.debug(
                "token rejected: unexpected %s",
                type(exc).__name__,
                extra=log_fields("jwt", "token_rejected", type(exc).__name__),
            )
            raise InvalidToken("malformed") from exc
        return claims

    def _parse(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Our own strict parse of header and payload, before any signature work."""
        if not isinstance(token, str) or not token:
            raise InvalidToken("malformed")
        if len(token) > self._settings.max_token_bytes:
            raise InvalidToken("too_large")
        if not token.isascii() or _JWS_SHAPE.fullmatch(token) is None:
            raise InvalidToken("malformed")
        header_segment, payload_segment, _ = token.split(".")
        try:
            header = strict_json_object(_b64url(header_segment))
        except (ValueError, RecursionError):
            raise InvalidToken("malformed") from None
        if "crit" in header:
            raise InvalidToken("unsupported_crit")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._settings.algorithms:
            raise InvalidToken("algorithm_not_allowed")
        try:
            payload = strict_json_object(_b64url(payload_segment))
        except DuplicateName:
            raise InvalidToken("duplicate_claim") from None
        except (ValueError, RecursionError):
            raise InvalidToken("malformed") from None
        check_time_claims(payload)
        return header, payload


def _b64url(segment: str) -> bytes:
    if len(segment) % 4 == 1:
        raise ValueError("impossible base64 length")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error as exc:
        raise ValueError("bad base64url") from exc
