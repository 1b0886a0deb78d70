"""JWT validation core: settings, verified claims and a verifier (no Redis, no ASGI).

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

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol
from urllib.parse import urlsplit

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import InvalidJTIError, InvalidSubjectError
from jwt.types import Options

from gateway_redis.support import log_fields

__all__ = [
    "InvalidToken",
    "JWTSettings",
    "JWTValidator",
    "TokenClaims",
    "TokenValidator",
    "ValidatorUnavailable",
]

logger = logging.getLogger(__name__)

_DEFAULT_REQUIRED: tuple[str, ...] = ("exp", "iat", "iss", "aud", "sub")
_TIME_CLAIMS = ("exp", "nbf", "iat")
# NumericDate values outside [0, 2**53) are nonsense and break arithmetic in other languages.
_MAX_NUMERIC_DATE = 2**53 - 1
_JWS_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_ALGORITHMS: dict[str, Algorithm] = get_default_algorithms()


class InvalidToken(Exception):
    """The token is not acceptable; `reason` says why, in a short machine-readable word.

    Reasons: ``malformed``, ``too_large``, ``algorithm_not_allowed``, ``unsupported_crit``,
    ``bad_signature``, ``key_mismatch`` (the JWKS key does not fit the token's `alg`),
    ``unknown_kid``, ``expired``, ``not_yet_valid`` (`nbf` or `iat` in the future),
    ``bad_issuer``, ``bad_audience``, ``missing_claim``, ``duplicate_claim``,
    ``bad_claim_type`` and ``revoked`` (raised by callers that check a denylist).
    The message never contains the token.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"invalid token: {self.reason}"


class ValidatorUnavailable(Exception):
    """The verifier could not reach its key source (JWKS endpoint down, timeout, bad reply).

    A transient condition: it says nothing about the token, so it must never be cached.
    """


class _DuplicateName(ValueError):
    pass


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise _DuplicateName(name)
        result[name] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _strict_json_object(data: bytes) -> dict[str, Any]:
    """Parse UTF-8 JSON that must be an object; duplicate names raise `_DuplicateName`."""
    value = json.loads(
        data.decode("utf-8"),
        object_pairs_hook=_reject_duplicates,
        parse_constant=_reject_constant,
    )
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, MappingProxyType):
        return dict(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _check_time_claims(payload: Mapping[str, Any]) -> None:
    for name in _TIME_CLAIMS:
        if name not in payload:
            continue
        value = payload[name]
        # bool is an int subclass; floats and strings are what PyJWT would silently int().
        if type(value) is not int or not 0 <= value <= _MAX_NUMERIC_DATE:
            raise InvalidToken("bad_claim_type")


def _str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InvalidToken("bad_claim_type")
    return tuple(value)


def _build_claims(payload: Mapping[str, Any]) -> TokenClaims:
    """Turn a verified payload into `TokenClaims`; wrong shapes raise `InvalidToken`."""
    _check_time_claims(payload)
    if "exp" not in payload:
        raise InvalidToken("missing_claim")
    iss = payload.get("iss")
    if not isinstance(iss, str) or not iss:
        raise InvalidToken("missing_claim" if iss in (None, "") else "bad_claim_type")
    sub = payload.get("sub")
    if sub is None:
        sub = ""
    elif not isinstance(sub, str):
        raise InvalidToken("bad_claim_type")
    aud_value = payload.get("aud")
    if aud_value is None:
        raise InvalidToken("missing_claim")
    aud = (aud_value,) if isinstance(aud_value, str) else _str_list(aud_value)
    jti = payload.get("jti")
    if jti is not None and not isinstance(jti, str):
        raise InvalidToken("bad_claim_type")
    roles = _str_list(payload["roles"]) if payload.get("roles") is not None else ()
    scope = payload.get("scope")
    if scope is None:
        scope = payload.get("scp")
    if scope is None:
        scopes: tuple[str, ...] = ()
    elif isinstance(scope, str):
        scopes = tuple(scope.split())
    else:
        scopes = _str_list(scope)
    return TokenClaims(
        sub=sub,
        iss=iss,
        aud=aud,
        exp=payload["exp"],
        iat=payload.get("iat", 0),
        nbf=payload.get("nbf"),
        jti=jti,
        roles=roles,
        scopes=scopes,
        raw=_freeze(dict(payload)),
    )


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """The verified claims of a token, immutable and safe to share between requests.

    `exp`, `iat` and `nbf` are integer seconds since the epoch. `iat` is 0 and `sub` is ""
    only when the verifier was configured not to require them. `roles` comes from a `roles`
    list of strings; `scopes` from a space-separated `scope` string or else an `scp` list
    (or string). `raw` is a read-only deep view of every claim (lists become tuples).
    """

    sub: str
    iss: str
    aud: tuple[str, ...]
    exp: int
    iat: int
    nbf: int | None
    jti: str | None
    roles: tuple[str, ...]
    scopes: tuple[str, ...]
    raw: Mapping[str, Any] = field(hash=False)

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON of the raw claims, for storing in a cache."""
        return json.dumps(self.raw, separators=(",", ":"), default=_thaw).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> TokenClaims:
        """Rebuild claims serialised by `to_json`; raises `ValueError` on corrupt input.

        The result compares equal to the original. It does not re-check `exp` or `nbf`
        against the clock: callers serving from a cache must do that themselves.
        """
        try:
            payload = _strict_json_object(bytes(data))
            return _build_claims(payload)
        except InvalidToken as exc:
            raise ValueError(f"corrupt claims: {exc.reason}") from None
        except (ValueError, TypeError, RecursionError) as exc:
            raise ValueError(f"corrupt claims: {type(exc).__name__}") from None


class TokenValidator(Protocol):
    """Something that turns a token string into verified claims."""

    @property
    def fingerprint(self) -> str:
        """Stable hex digest of the verifier configuration; part of every cache key."""
        ...

    async def validate(self, token: str) -> TokenClaims:
        """Verify `token`; raises `InvalidToken` or `ValidatorUnavailable`, nothing else."""
        ...


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
    if stripped.startswith(b"{"):  # a JWK pasted as the secret
        return True
    try:
        serialization.load_der_public_key(key)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


_PRIVATE_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


def _fit_key(alg: str, key: Any) -> Any:
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
            _fit_key(alg, key_bytes)
        digest = hashlib.sha256(b"gateway-redis/hmac-key\0" + key_bytes).hexdigest()
        return key_bytes, digest
    if b"PRIVATE KEY" in key_bytes:
        raise ValueError("configure the public key, not the private key")
    try:
        public = serialization.load_pem_public_key(key_bytes)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError("key is not a PEM public key") from exc
    for alg in algorithms:
        _fit_key(alg, public)
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public, hashlib.sha256(der).hexdigest()


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
    cannot force more); `jwks_timeout` bounds one fetch. Raises `ValueError` on anything
    unsafe or inconsistent. The key is never shown by `repr`.
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


@dataclass(frozen=True, slots=True)
class _JWKSEntry:
    key: Any
    alg: str | None


class _JWKSKeys:
    """The issuer's signing keys by `kid`, fetched off the event loop, with refresh limits."""

    def __init__(self, settings: JWTSettings, url: str) -> None:
        self._host = urlsplit(url).hostname or "?"
        self._allowed = frozenset(settings.algorithms)
        self._client = jwt.PyJWKClient(
            url, cache_keys=False, cache_jwk_set=False, timeout=settings.jwks_timeout
        )
        self._timeout = settings.jwks_timeout
        self._refresh_interval = settings.jwks_refresh_interval
        self._min_interval = settings.jwks_min_refresh_interval
        # After a failed fetch retry sooner than the usual minimum, so a blip at start-up
        # does not deny service for the whole interval.
        self._retry_backoff = min(1.0, settings.jwks_min_refresh_interval)
        self._keys: dict[str, _JWKSEntry] = {}
        self._loaded = False
        self._failed = False
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._lock = asyncio.Lock()

    def _fresh(self, now: float) -> bool:
        return self._loaded and now - self._fetched_at < self._refresh_interval

    async def get(self, kid: Any) -> _JWKSEntry:
        """The key for `kid`; `InvalidToken("unknown_kid")` or `ValidatorUnavailable`."""
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("unknown_kid")
        if self._fresh(time.monotonic()):
            entry = self._keys.get(kid)
            if entry is not None:
                return entry
        # One fetch at a time; waiters re-check and usually find the fresh set.
        async with self._lock:
            now = time.monotonic()
            if not self._fresh(now) or kid not in self._keys:
                wait = self._retry_backoff if self._failed else self._min_interval
                if now - self._attempted_at >= wait:
                    await self._refresh()
            entry = self._keys.get(kid)
            if entry is not None:
                return entry
            if not self._loaded or self._failed:
                raise ValidatorUnavailable("JWKS endpoint unavailable")
            raise InvalidToken("unknown_kid")

    async def _refresh(self) -> None:
        self._attempted_at = time.monotonic()
        try:
            # urllib's timeout is per socket operation; bound the whole fetch too. On timeout
            # the worker thread finishes on its own and its result is dropped.
            data = await asyncio.wait_for(
                asyncio.to_thread(self._client.fetch_data), timeout=self._timeout
            )
            keys = self._parse(data)
        except Exception as exc:
            # Stale keys (if any) stay in use: an IdP outage must not log everyone out.
            self._failed = True
            logger.warning(
                "JWKS fetch from %s failed: %s",
                self._host,
                type(exc).__name__,
                extra=log_fields("jwt", "jwks_fetch_failed", type(exc).__name__),
            )
            return
        self._keys = keys
        self._loaded = True
        self._failed = False
        self._fetched_at = time.monotonic()
        logger.debug(
            "JWKS from %s: %d usable keys",
            self._host,
            len(keys),
            extra=log_fields("jwt", "jwks_loaded"),
        )

    def _parse(self, data: Any) -> dict[str, _JWKSEntry]:
        raw_keys = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(raw_keys, list):
            raise ValueError("JWKS has no keys list")
        keys: dict[str, _JWKSEntry] = {}
        for jwk_data in raw_keys:
            if not isinstance(jwk_data, dict):
                continue
            kid, alg = jwk_data.get("kid"), jwk_data.get("alg")
            if not isinstance(kid, str) or not kid or kid in keys:
                continue
            if jwk_data.get("use") not in (None, "sig"):
                continue
            if jwk_data.get("kty") not in ("RSA", "EC", "OKP"):
                continue  # never accept symmetric keys from a URL
            if alg is not None and alg not in self._allowed:
                continue
            try:
                key = jwt.PyJWK.from_dict(jwk_data).key
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                continue
            if isinstance(key, _PRIVATE_KEY_TYPES):
                key = key.public_key()
            if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
                continue
            keys[kid] = _JWKSEntry(key=key, alg=alg)
        if not keys:
            raise ValueError("JWKS has no usable signing keys")
        return keys


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
        self._jwks = _JWKSKeys(settings, url) if url is not None else None

    @property
    def settings(self) -> JWTSettings:
        """The settings this validator was built from."""
        return self._settings

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex over the verifier configuration (not the secret itself)."""
        return self._settings._fingerprint

    async def validate(self, token: str) -> TokenClaims:
        """Verify `token` and return its claims.

        Raises `InvalidToken` for every unacceptable input and `ValidatorUnavailable` when
        the JWKS endpoint cannot be reached; no other exception escapes.
        """
        try:
            header, payload = self._parse(token)
            alg: str = header["alg"]
            if self._jwks is None:
                key = self._settings._verify_key
            else:
                entry = await self._jwks.get(header.get("kid"))
                if entry.alg is not None and entry.alg != alg:
                    raise InvalidToken("key_mismatch")
                try:
                    key = _fit_key(alg, entry.key)
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
            claims = _build_claims(payload)
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
            header = _strict_json_object(_b64url(header_segment))
        except (ValueError, RecursionError):
            raise InvalidToken("malformed") from None
        if "crit" in header:
            raise InvalidToken("unsupported_crit")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._settings.algorithms:
            raise InvalidToken("algorithm_not_allowed")
        try:
            payload = _strict_json_object(_b64url(payload_segment))
        except _DuplicateName:
            raise InvalidToken("duplicate_claim") from None
        except (ValueError, RecursionError):
            raise InvalidToken("malformed") from None
        _check_time_claims(payload)
        return header, payload


def _b64url(segment: str) -> bytes:
    if len(segment) % 4 == 1:
        raise ValueError("impossible base64 length")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error as exc:
        raise ValueError("bad base64url") from exc
