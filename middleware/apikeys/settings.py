"""How API keys and opaque tokens are read, looked up and cached: :class:`APIKeySettings`.

Validated when built (``ValueError`` naming the field); frozen, so one value may be shared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from middleware.apikeys.records import KeyDigester, KeyLookup

__all__ = ["APIKeySettings"]


def _seconds(name: str, value: object, high: float = 1e9) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 < value <= high
    ):
        raise ValueError(f"{name} must be a positive number of seconds up to {high:g}")
    return float(value)


def _count(name: str, value: object) -> int:
    if type(value) is not int or not 0 < value <= 10_000_000:
        raise ValueError(f"{name} must be a positive int")
    return value


def _token(name: str, value: object) -> str:
    if (
        not isinstance(value, str)
        or not value
        or not value.isascii()
        or not all(c.isalnum() or c in "-_" for c in value)
    ):
        raise ValueError(f"{name} must be a header token (letters, digits, -, _), got {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class APIKeySettings:
    """API-key (or opaque-token) authentication.

    ``lookup`` answers for a presented credential (:data:`~middleware.apikeys.KeyLookup`;
    :class:`~middleware.apikeys.StaticKeys` for a fixed list). ``secret`` (at least 32
    bytes, the same on every instance) keys the credential digests and seals L2 entries.
    The credential comes from the ``header`` (default ``X-API-Key``; None: not read) or
    from ``Authorization: <scheme> <credential>`` when ``scheme`` is set (e.g.
    ``"ApiKey"``; never ``Bearer``, which is the JWT layer's). ``issuer`` is the ``iss`` of
    the claims built for a key. ``l1_ttl``/``l2_ttl`` cap how long a verdict is cached
    (never past the key's ``expires_at``); ``negative_ttl`` is how long an unknown key is
    remembered (by digest, ``negative_maxsize`` entries at most); ``max_key_bytes``
    refuses longer credentials before hashing; ``lookup_timeout`` bounds one lookup (then
    503); ``revocation_lifetime`` is how long :meth:`~APIKeyAuthenticator.revoke` refuses
    a key that has no ``expires_at`` (remove it from your store within that time).
    """

    lookup: KeyLookup
    secret: str | bytes = field(repr=False)
    header: str | None = "X-API-Key"
    scheme: str | None = None
    issuer: str = "gateway-redis/apikey"
    l1_ttl: float = 60.0
    l1_maxsize: int = 10_000
    l2_ttl: float = 300.0
    negative_ttl: float = 5.0
    negative_maxsize: int = 1_000
    max_key_bytes: int = 512
    lookup_timeout: float = 5.0
    revocation_lifetime: float = 30 * 86_400.0
    digester: KeyDigester = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not callable(self.lookup):
            raise ValueError("lookup must be an async callable: lookup(presented) -> KeyRecord")
        object.__setattr__(self, "digester", KeyDigester(self.secret))
        if self.header is not None:
            _token("header", self.header)
            if self.header.lower() in ("authorization", "cookie", "host"):
                raise ValueError(
                    f"header must not be {self.header} (use scheme= for Authorization)"
                )
        if self.scheme is not None:
            _token("scheme", self.scheme)
            if self.scheme.lower() == "bearer":
                raise ValueError("scheme must not be Bearer (bearer tokens are JWTs)")
        if self.header is None and self.scheme is None:
            raise ValueError("set header, scheme or both")
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ValueError("issuer must be a non-empty string")
        _seconds("l1_ttl", self.l1_ttl, 86_400)
        _seconds("l2_ttl", self.l2_ttl, 86_400)
        _seconds("negative_ttl", self.negative_ttl, 3_600)
        _seconds("lookup_timeout", self.lookup_timeout, 300)
        _seconds("revocation_lifetime", self.revocation_lifetime)
        _count("l1_maxsize", self.l1_maxsize)
        _count("negative_maxsize", self.negative_maxsize)
        if type(self.max_key_bytes) is not int or not 16 <= self.max_key_bytes <= 8192:
            raise ValueError("max_key_bytes must be an int in [16, 8192]")

    @property
    def header_name(self) -> bytes | None:
        """The header's name as ASGI spells it (lower-case bytes), or None."""
        return self.header.lower().encode("ascii") if self.header is not None else None

    @property
    def scheme_prefix(self) -> bytes | None:
        """``b"<scheme> "`` lower-case, the start of an ``Authorization`` value, or None."""
        return (self.scheme.lower() + " ").encode("ascii") if self.scheme is not None else None
