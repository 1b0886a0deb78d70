"""How tokens are verified: :class:`JWTSettings`, static key loading and weak-secret checks.

Keys come only from configuration: an HMAC secret (at least 32 bytes, not a known
tutorial/template value or a low-entropy pattern) or a PEM public key, loaded and checked
once here; HMAC and asymmetric algorithms are never mixed (algorithm confusion).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import Algorithm, get_default_algorithms

__all__ = ["PRIVATE_KEY_TYPES", "JWTSettings", "check_cache_key", "fit_key"]

_DEFAULT_REQUIRED: tuple[str, ...] = ("exp", "iat", "iss", "aud", "sub")
_ALGORITHMS: dict[str, Algorithm] = get_default_algorithms()


# Lower-cased values and markers of secrets copied from tutorials, templates and tools.
_WEAK_SECRETS = frozenset(
    {
        "secret", "changeme", "change-me", "password", "your-256-bit-secret",
        "your-384-bit-secret", "your-512-bit-secret", "a-string-secret-at-least-256-bits-long",
        "mysecret", "secretkey", "jwtsecret", "jwt_secret", "supersecret", "test", "key",
    }
)  # fmt: skip
_WEAK_MARKERS = (
    "changeme", "change-me", "change_me", "changeit", "replaceme", "replace-me", "replace_me",
    "your-256-bit", "your-384-bit", "your-512-bit", "secret-at-least", "insecure",
    "placeholder", "example", "notasecret", "not-a-secret", "supersecret", "secretkey",
)  # fmt: skip
_SEQUENCES = (
    "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz",
    "0123456789abcdefghijklmnopqrstuvwxyz0123456789",
    "01234567890123456789012345678901234567890123456789",
    "qwertyuiopasdfghjklzxcvbnm1234567890qwertyuiopasdfghjklzxcvbnm",
)
_MIN_HMAC_SECRET = 32


def _check_hmac_secret(secret: bytes) -> None:
    if len(secret) < _MIN_HMAC_SECRET:
        raise ValueError(f"HMAC secret must be at least {_MIN_HMAC_SECRET} bytes")
    lowered = secret.decode("latin-1").lower()
    weak = (
        lowered in _WEAK_SECRETS
        or any(marker in lowered for marker in _WEAK_MARKERS)
        or any(lowered in seq for seq in _SEQUENCES)
        or len(set(secret)) < 8
        or any(secret[p:] == secret[:-p] for p in range(1, len(secret) // 2 + 1))
    )
    if weak:
        raise ValueError("HMAC secret is a known weak or low-entropy value")


def _looks_asymmetric(key: bytes) -> bool:
    stripped = key.lstrip()
    if b"-----BEGIN" in key or stripped.startswith((b"ssh-", b"ecdsa-sha2-")):
        return True
    if stripped.startswith(b"{"):  # a JWK (or JWK set) pasted as the secret
        try:
            pasted = json.loads(stripped)
        except (ValueError, RecursionError):  # random bytes that start with "{"
            pasted = None
        if isinstance(pasted, dict) and ("kty" in pasted or "keys" in pasted):
            return True
    try:
        serialization.load_der_public_key(key)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


PRIVATE_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


def fit_key(alg: str, key: Any) -> Any:
    """The key prepared for `alg`; raises ValueError if the family, curve or size is wrong."""
    alg_obj = _ALGORITHMS[alg]
    try:
        prepared = alg_obj.prepare_key(key)
    except (jwt.InvalidKeyError, TypeError, ValueError) as exc:
        raise ValueError(f"the key does not fit algorithm {alg}") from exc
    problem = alg_obj.check_key_length(prepared)
    if problem:
        raise ValueError(problem)
    return prepared


def _load_static_key(algorithms: tuple[str, ...], key: str | bytes) -> tuple[Any, str]:
    """Load and check the configured key once; returns (verification key, key digest)."""
    if not isinstance(key, (str, bytes)):
        raise ValueError("key must be str or bytes")
    key_bytes = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if algorithms[0].startswith("HS"):
        if _looks_asymmetric(key_bytes):
            raise ValueError("an HMAC algorithm was configured with a public key (alg confusion)")
        _check_hmac_secret(key_bytes)
        for alg in algorithms:
            fit_key(alg, key_bytes)
        digest = hashlib.sha256(b"gateway-redis/hmac-key\0" + key_bytes).hexdigest()
        return key_bytes, digest
    if b"PRIVATE KEY" in key_bytes:
        raise ValueError("configure the public key, not the private key")
    try:
        public = serialization.load_pem_public_key(key_bytes)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError("key is not a PEM public key") from exc
    for alg in algorithms:
        fit_key(alg, public)
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public, hashlib.sha256(der).hexdigest()


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def check_cache_key(value: object) -> bytes:
    """``value`` (the L2 cache key) as bytes; ValueError unless it is str or bytes of at
    least 32 bytes."""
    if not isinstance(value, (str, bytes)):
        raise ValueError("cache_key must be str or bytes")
    key = _as_bytes(value)
    if len(key) < _MIN_HMAC_SECRET:
        raise ValueError(f"cache_key must be at least {_MIN_HMAC_SECRET} bytes")
    return key


def _check_number(name: str, value: float, low: float, high: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ValueError(f"{name} must be a number in [{low}, {high}]")


@dataclass(frozen=True, slots=True, kw_only=True)
class JWTSettings:
    """How tokens are verified. All durations are float seconds.

    Exactly one key source: `key` (an HMAC secret of at least 32 bytes for HS*, or a PEM
    public key for RS*/PS*/ES*/EdDSA, loaded once here) or `jwks_url` (the issuer's JWKS,
    asymmetric algorithms only). `issuer` must match `iss` exactly; `audience` matches when
    it shares one value with `aud`. `leeway` (0..60) applies to `exp`, `nbf` and `iat`.
    `jwks_refresh_interval` is how long a fetched key set is used before it is refetched;
    `jwks_min_refresh_interval` is the least time between two fetches (an unknown `kid`
    cannot force more); `jwks_timeout` bounds one fetch. `cache_key` (str or bytes, at
    least 32 bytes, the same on every instance, kept as secret as the other secrets)
    authenticates the verdicts :class:`~middleware.JWTAuthenticator` caches in Redis (L2,
    an HMAC per entry); without it L2 is not used for tokens. `max_token_lifetime` (1 s ..
    366 days, default a day) is the longest ``exp - iat`` of the tokens the issuer mints: a
    subject cut-off (:meth:`JWTAuthenticator.revoke_subject
    <middleware.JWTAuthenticator.revoke_subject>`) lasts that plus the leeway, so it must
    not be shorter than the real lifetime (it is not enforced on tokens). Raises
    `ValueError` on anything unsafe or inconsistent. Neither key is shown by `repr`.
    """

    algorithms: tuple[str, ...]
    key: str | bytes | None = field(default=None, repr=False)
    jwks_url: str | None = None
    issuer: str
    audience: str | tuple[str, ...]
    leeway: float = 0
    required_claims: tuple[str, ...] = _DEFAULT_REQUIRED
    max_token_bytes: int = 8192
    jwks_refresh_interval: float = 300.0
    jwks_min_refresh_interval: float = 10.0
    jwks_timeout: float = 1.0
    cache_key: str | bytes | None = field(default=None, repr=False)
    max_token_lifetime: float = 86_400.0
    _verify_key: Any = field(init=False, repr=False, compare=False, hash=False, default=None)
    _fingerprint: str = field(init=False, repr=False, compare=False, hash=False, default="")

    def __post_init__(self) -> None:
        algorithms = self._names(self.algorithms, "algorithms")
        if not algorithms:
            raise ValueError("algorithms must not be empty")
        for alg in algorithms:
            if alg.lower() == "none":
                raise ValueError("the 'none' algorithm is never allowed")
            if alg not in _ALGORITHMS:
                raise ValueError(f"unknown algorithm {alg!r}")
        if len({alg.startswith("HS") for alg in algorithms}) > 1:
            raise ValueError("never mix HMAC (HS*) and asymmetric algorithms in one verifier")
        object.__setattr__(self, "algorithms", algorithms)

        if not isinstance(self.issuer, str) or not self.issuer:
            raise ValueError("issuer must be a non-empty string")
        if isinstance(self.audience, str):
            audiences: tuple[str, ...] = (self.audience,)
        else:
            audiences = self._names(self.audience, "audience")
            object.__setattr__(self, "audience", audiences)
        if not audiences or not all(audiences):
            raise ValueError("audience must be one or more non-empty strings")
        required = self._names(self.required_claims, "required_claims")
        if "exp" not in required or not all(required):
            raise ValueError("required_claims must include 'exp'")
        object.__setattr__(self, "required_claims", required)

        _check_number("leeway", self.leeway, 0, 60)
        if type(self.max_token_bytes) is not int or not 0 < self.max_token_bytes <= 65536:
            raise ValueError("max_token_bytes must be an int in (0, 65536]")
        _check_number("jwks_refresh_interval", self.jwks_refresh_interval, 0.1, 86400)
        _check_number(
            "jwks_min_refresh_interval",
            self.jwks_min_refresh_interval,
            0,
            self.jwks_refresh_interval,
        )
        _check_number("jwks_timeout", self.jwks_timeout, 0.01, 30)
        _check_number("max_token_lifetime", self.max_token_lifetime, 1, 366 * 86_400)

        if self.cache_key is not None:
            cache_key = check_cache_key(self.cache_key)
            if self.key is not None and cache_key == _as_bytes(self.key):
                raise ValueError("cache_key must differ from key")
        if (self.key is None) == (self.jwks_url is None):
            raise ValueError("configure exactly one of key and jwks_url")
        if self.key is not None:
            verify_key, key_digest = _load_static_key(algorithms, self.key)
            object.__setattr__(self, "_verify_key", verify_key)
        else:
            url = self.jwks_url
            if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
                raise ValueError("jwks_url must be an http(s) URL")
            if algorithms[0].startswith("HS"):
                raise ValueError("a JWKS endpoint cannot serve HMAC secrets")
            key_digest = ""
        object.__setattr__(self, "_fingerprint", self._describe(key_digest))

    @property
    def verify_key(self) -> Any:
        """The static verification key loaded from `key` (None with `jwks_url`)."""
        return self._verify_key

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex over the verifier configuration (a digest of the key, never the key)."""
        return self._fingerprint

    @staticmethod
    def _names(value: Any, name: str) -> tuple[str, ...]:
        if isinstance(value, str) or not isinstance(value, (tuple, list)):
            raise ValueError(f"{name} must be a tuple of strings")
        if not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name} must be a tuple of strings")
        return tuple(value)

    def _describe(self, key_digest: str) -> str:
        audience = (self.audience,) if isinstance(self.audience, str) else self.audience
        description = {
            "v": 1,
            "algorithms": sorted(set(self.algorithms)),
            "key_sha256": key_digest,
            "jwks_url": self.jwks_url,
            "issuer": self.issuer,
            "audience": sorted(set(audience)),
            "leeway": float(self.leeway),
            "required_claims": sorted(set(self.required_claims)),
            "max_token_bytes": self.max_token_bytes,
        }
        canonical = json.dumps(description, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
