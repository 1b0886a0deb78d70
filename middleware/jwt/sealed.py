"""Sealed L2 verdicts: what :class:`~middleware.JWTAuthenticator` keeps in Redis, and how
it knows the entry is its own.

For RS/ES/JWKS tokens the L2 key (a digest of public configuration and the token) is
computable by anyone, so a value in Redis must not be trusted as it is: write access to
Redis alone would yield any identity. Every L2 value is sealed with an HMAC-SHA256 under
the server-side ``cache_key`` (:attr:`JWTSettings.cache_key
<middleware.JWTSettings.cache_key>`, shared by every instance) over the entry's digest
(so an entry cannot be moved to another token's key), the ``kid`` that verified the token
and the claims JSON. Wire form: ``gr1:<hex mac>:<kid as JSON>\\n<claims JSON>``.

A value that fails the check (forged, another cache key, an old format) is a miss: the
token goes to the validator again. It is logged once per :class:`SealedVerdicts` (a
warning; later ones are only counted in :attr:`SealedVerdicts.rejected`), never per
request. Without a cache key L2 is not used for tokens at all (L1 still is).

A verdict of a token verified with a JWKS key remembers the key's ``kid``; it is served
only while the key set this instance uses still lists that kid (``key_known``), so a key
the issuer removed stops being honoured from L2 at this instance's next JWKS refetch; an
L2 hit of such a verdict makes that refetch when it is due (an L1 hit cannot: it is
synchronous; L1 entries go back through L2 within ``l1_ttl``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable

from gateway_redis.authstore import ClaimsStore
from gateway_redis.errors import RedisUnavailable
from gateway_redis.support import log_fields
from middleware.jwt.claims import TokenClaims
from middleware.jwt.settings import check_cache_key
from middleware.jwt.validator import JWTValidator, TokenValidator

__all__ = ["SealedVerdicts", "header_kid"]

_log = logging.getLogger(__name__)
_MAGIC = b"gr1:"
_CONTEXT = b"gateway-redis/jwt-l2\0"
_MAC_HEX = 64


def header_kid(token: str) -> str | None:
    """The ``kid`` of a compact JWS ``token``'s header (a string), or None. For a token
    the validator has just verified: its header is known to be well-formed."""
    segment = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


class SealedVerdicts:
    """L2 on ``store``, sealed with ``cache_key``; ``enabled`` is False (L2 unused) when
    either is None. ``key_known(kid)`` says whether a JWKS key is still listed (None: keys
    do not rotate) and ``refresh()`` refetches the key set when due (so that verdicts
    served from L2 do not postpone it). ``leeway`` widens the acceptance window a hit is
    checked against."""

    __slots__ = (
        "_key",
        "_key_known",
        "_leeway",
        "_refresh",
        "_store",
        "enabled",
        "rejected",
        "rotating",
    )

    @classmethod
    def for_validator(
        cls,
        store: ClaimsStore | None,
        validator: TokenValidator,
        cache_key: str | bytes | None,
        leeway: float,
    ) -> SealedVerdicts:
        """L2 for ``validator``: ``cache_key`` (checked: ``ValueError``) or else a
        :class:`~middleware.JWTValidator`'s ``settings.cache_key``; a JWKS validator's key
        set decides which kids stay trusted. With a ``store`` and no key, L2 is disabled
        and that is logged (once: at construction)."""
        jwks = isinstance(validator, JWTValidator) and validator.rotates_keys
        if cache_key is None and isinstance(validator, JWTValidator):
            cache_key = validator.settings.cache_key
        if store is not None and cache_key is None:
            _log.warning(
                "no jwt cache_key configured: verified tokens are not cached in Redis (L2)",
                extra=log_fields("jwt", "jwt_l2_disabled"),
            )
        key = check_cache_key(cache_key) if cache_key is not None else None
        if jwks and isinstance(validator, JWTValidator):
            return cls(store, key, validator.has_key, leeway, validator.refresh_keys)
        return cls(store, key, None, leeway)

    def __init__(
        self,
        store: ClaimsStore | None,
        cache_key: bytes | None,
        key_known: Callable[[str], bool] | None,
        leeway: float,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._key = cache_key
        self._key_known = key_known
        self._leeway = leeway
        self._refresh = refresh
        self.enabled = store is not None and cache_key is not None
        self.rotating = key_known is not None  # verdicts carry the kid that verified them
        self.rejected = 0  # values that failed the check, since start

    def _mac(self, digest: str, body: bytes) -> bytes:
        assert self._key is not None
        message = _CONTEXT + digest.encode("ascii") + b"\0" + body
        return hmac.new(self._key, message, hashlib.sha256).hexdigest().encode("ascii")

    def seal(self, digest: str, kid: str | None, claims: TokenClaims) -> bytes:
        """The sealed L2 value of ``claims`` verified with ``kid`` under ``digest``."""
        body = json.dumps(kid).encode("utf-8") + b"\n" + claims.to_json()
        return _MAGIC + self._mac(digest, body) + b":" + body

    async def get(self, digest: str, now: float) -> tuple[TokenClaims, str | None] | None:
        """The claims and kid stored under ``digest`` when the value is authentic, its kid
        still listed and the token within its acceptance window at ``now``; else None.

        Raises :class:`~gateway_redis.RedisUnavailable` when Redis cannot be asked.
        """
        if self._store is None or self._key is None:
            return None
        try:
            raw = await self._store.get(digest)
        except RedisUnavailable:
            raise
        except Exception as exc:  # an odd reply (WRONGTYPE...) is a miss, never a 500
            _log.warning(
                "jwt cache read failed: %s",
                type(exc).__name__,
                extra=log_fields("jwt", "jwt_cache_read_failed", type(exc).__name__),
            )
            return None
        if raw is None:
            return None
        opened = self._open(digest, raw)
        if opened is None:
            self._reject(digest)
            return None
        kid, claims = opened
        if kid is not None and self._key_known is not None:
            if self._refresh is not None:  # a hit must not postpone the JWKS refetch
                await self._refresh()
            if not self._key_known(kid):
                return None  # verified with a key the issuer no longer lists
        leeway = self._leeway
        if claims.exp + leeway > now and (claims.nbf is None or claims.nbf - leeway <= now):
            return claims, kid
        return None

    def _open(self, digest: str, raw: bytes) -> tuple[str | None, TokenClaims] | None:
        head = len(_MAGIC) + _MAC_HEX
        if not raw.startswith(_MAGIC) or raw[head : head + 1] != b":":
            return None
        body = raw[head + 1 :]
        if not hmac.compare_digest(raw[len(_MAGIC) : head], self._mac(digest, body)):
            return None
        kid_json, _, claims_json = body.partition(b"\n")
        try:
            kid = json.loads(kid_json)
            claims = TokenClaims.from_json(claims_json)
        except ValueError:
            return None
        return (kid if isinstance(kid, str) else None), claims

    def _reject(self, digest: str) -> None:
        self.rejected += 1
        if self.rejected == 1:
            _log.warning(
                "jwt cache entry %s failed its integrity check and was ignored (a forged "
                "entry, or instances with different cache keys); later ones are counted only",
                digest[:8],
                extra=log_fields("jwt", "jwt_cache_forged"),
            )
