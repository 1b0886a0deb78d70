"""Cached token validation and revocation: L1 in process, L2 in Redis, a mirrored denylist.

:class:`JWTAuthenticator` wraps any :class:`~middleware.jwt.TokenValidator`:

1. L1 (:class:`~gateway_redis.localcache.LocalCache`, bounded, TTL): verified claims keyed
   by the token itself (process memory only, per authenticator: no hash on the hot path).
   A hit is re-checked against the clock (``exp``/``nbf``) and the in-memory denylist; it
   costs no Redis round trip and no await (:meth:`JWTAuthenticator.cached`).
2. L2 (Redis): ``<prefix>jwt:<digest>``, the digest being ``SHA-256(validator fingerprint +
   token)`` (no token ever appears in a key name), holds the claims JSON, sealed with an
   HMAC under the shared ``cache_key`` (:mod:`middleware.jwt.sealed`), for ``min(l2_ttl,
   exp + leeway - now)``. A hit is re-checked against the clock and the Redis denylist. A
   corrupt or forged value is a miss. Without a ``cache_key`` L2 is not used for tokens.
3. The validator. Verdicts on bad tokens are remembered in a small L1-only negative cache
   (keyed by the digest) for ``negative_ttl`` seconds; a validator outage
   (:class:`ValidatorUnavailable`) and Redis errors are never cached.

A token is accepted from ``nbf - leeway`` until ``exp + leeway`` (its *acceptance window*;
``leeway`` is the validator's, see :class:`JWTAuthenticator`): both cache tiers serve and
keep a verdict within that window only, and a revocation lasts exactly as long. A verdict
remembers the JWKS ``kid`` that verified it: once a refetch no longer lists the kid,
neither tier serves it (each instance at its own refetch: :mod:`middleware.jwt.jwks`).

Revocation is by (``iss``, ``jti``), never by token hash (an ECDSA signature has a second
valid encoding): ``<prefix>jwt-deny:<sha256(iss, jti)>`` lives until ``exp + leeway``, and
``<prefix>jwt-revocations`` (a sorted set scored by that end) lets each instance reload the
active list whenever the client's invalidation bus resyncs, including one started after
``exp``. Every instance mirrors active revocations in memory until ``exp + leeway``, so a
known-revoked token stays rejected while Redis is down. A revocation is broadcast on the
bus (namespace ``jwt``) as a :class:`~middleware.jwt.revocation.TokenRevoked` event
(:mod:`middleware.jwt.revocation`); other components follow revocations through
:meth:`JWTAuthenticator.on_revoked`. :meth:`JWTAuthenticator.revoke_subject` cuts off a
subject's tokens issued so far, the same way (:mod:`middleware.jwt.revoker`).

With ``client=None`` it works in this process only (L1, the negative cache, the mirror;
no L2, no Redis denylist; see :mod:`middleware._local`): for unit tests and tools.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

from gateway_redis.authstore import ClaimsStore
from gateway_redis.client import RedisClient
from gateway_redis.errors import GatewayRedisError, RedisUnavailable
from gateway_redis.support import log_fields
from middleware._local import Invalidation, LocalInvalidation
from middleware.errors import InvalidToken
from middleware.jwt._verdict import Authentication, AuthenticationPin, Verified
from middleware.jwt.claims import TokenClaims
from middleware.jwt.cutoff import SubjectRevoked
from middleware.jwt.revocation import TokenRevoked
from middleware.jwt.revoker import Revoker
from middleware.jwt.sealed import SealedVerdicts, header_kid
from middleware.jwt.validator import JWTValidator, TokenValidator

__all__ = ["Authentication", "AuthenticationPin", "JWTAuthenticator", "Verified"]

_log = logging.getLogger(__name__)
# Verdicts that may change with time or key rotation are not worth remembering.
_UNCACHEABLE_REASONS = frozenset({"not_yet_valid", "unknown_kid"})
_MAX_LEEWAY = 60.0  # JWTSettings' bound


def _check_seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _lifetime(validator: TokenValidator, given: float | None) -> float:
    if given is None and isinstance(validator, JWTValidator):
        given = validator.settings.max_token_lifetime
    return _check_seconds("max_token_lifetime", given if given is not None else 86_400.0)


class JWTAuthenticator:
    """Validates tokens through L1, L2 and ``validator``; revokes them on every instance.

    ``client`` is the shared Redis client (not owned): L2 and the denylist live there, and
    its invalidation bus keeps L1 coherent. ``client=None`` (given explicitly: leaving it
    out is an error, so that no deployment silently loses cross-instance revocation) means
    in process only: no L2 and no denylist in Redis; revocations are mirrored here and
    reach this authenticator's :meth:`on_revoked` callbacks only. ``l1_ttl`` / ``l2_ttl``
    (seconds) cap how long verified claims are cached (never past ``exp + leeway``);
    ``negative_ttl`` is how long a rejected token is remembered in L1; ``*_maxsize`` bound
    the caches. ``max_token_bytes`` rejects longer tokens before any lookup or hashing.
    ``max_revocation_lifetime`` (seconds) is how long a revocation given as ``(iss, jti)``
    without ``expires_at`` lasts. ``max_token_lifetime`` (seconds: the longest ``exp -
    iat`` of the issuer's tokens; a subject cut-off lasts that plus the leeway) and
    ``cache_key`` (str or bytes, at least 32 bytes, the same on every instance: it seals L2
    entries) default to a :class:`~middleware.JWTValidator`'s settings (else a day, and
    none); without a cache key, L2 is not used for tokens (logged once here).

    ``leeway`` (seconds, 0..60) is how long past ``exp`` (and before ``nbf``) the validator
    still accepts a token; None takes the validator's ``leeway`` attribute
    (:class:`~middleware.JWTValidator` has one: its settings' leeway), 0 when it has none.
    Caches and revocations cover exactly that window, so a validator with a leeway of its
    own and no ``leeway`` attribute needs it given here. Instances sharing one Redis must
    use the same leeway (they share the denylist). All arguments are validated
    (``ValueError``). Holds no per-request state.
    """

    def __init__(
        self,
        validator: TokenValidator,
        *,
        client: RedisClient | None,
        l1_ttl: float = 60.0,
        l1_maxsize: int = 10_000,
        l2_ttl: float = 300.0,
        negative_ttl: float = 5.0,
        negative_maxsize: int = 1_000,
        max_token_bytes: int = 8192,
        max_revocation_lifetime: float = 86_400.0,
        max_token_lifetime: float | None = None,
        cache_key: str | bytes | None = None,
        leeway: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if type(max_token_bytes) is not int or max_token_bytes < 1:
            raise ValueError("max_token_bytes must be a positive int")
        if leeway is None:
            leeway = getattr(validator, "leeway", 0.0)
        if (
            isinstance(leeway, bool)
            or not isinstance(leeway, (int, float))
            or not 0 <= leeway <= _MAX_LEEWAY
        ):
            raise ValueError(f"leeway must be a number of seconds in [0, {_MAX_LEEWAY}]")
        self._leeway = float(leeway)
        self._validator = validator
        self._client = client
        bus: Invalidation = client.invalidation if client is not None else LocalInvalidation()
        self._bus = bus
        self._fingerprint = validator.fingerprint.encode()
        self._l2_ttl = _check_seconds("l2_ttl", l2_ttl)
        self._max_revocation = _check_seconds("max_revocation_lifetime", max_revocation_lifetime)
        self._max_bytes = max_token_bytes
        self._clock = clock
        l1_ttl = _check_seconds("l1_ttl", l1_ttl)
        self._l1 = bus.local_cache("jwt", maxsize=l1_maxsize, ttl=l1_ttl)
        self._negative = bus.local_cache(
            "jwt-negative",
            maxsize=negative_maxsize,
            ttl=_check_seconds("negative_ttl", negative_ttl),
        )
        self._revoker = revoker = Revoker(
            client,
            bus,
            self._l1,
            leeway=self._leeway,
            max_token_lifetime=_lifetime(validator, max_token_lifetime),
            clock=clock,
        )
        # The same dicts for life: read on the hot path.
        self._revoked, self._cutoffs = revoker.revoked, revoker.cutoffs
        # None in process-only mode (client=None): the cold path checks, where it awaits.
        self._claims_store: ClaimsStore | None = None
        if client is not None and revoker.denylist is not None:
            self._claims_store = ClaimsStore(client, revoker.denylist)
        self._l2 = SealedVerdicts.for_validator(
            self._claims_store, validator, cache_key, self._leeway
        )
        if isinstance(validator, JWTValidator):
            validator.on_keys_removed(self._on_keys_removed)

    @property
    def validator(self) -> TokenValidator:
        """The validator behind the caches."""
        return self._validator

    @property
    def leeway(self) -> float:
        """Seconds past ``exp`` (and before ``nbf``) a token is still accepted, cached and
        kept revoked."""
        return self._leeway

    @property
    def client(self) -> RedisClient | None:
        """The Redis client of L2 and the denylist; None in process-only mode."""
        return self._client

    # -- authentication ----------------------------------------------------------------

    def cached(self, token: str) -> Authentication | None:
        """The L1 result for ``token`` when L1 holds it and it is still good now, else None.

        Synchronous (no Redis, no await): the hot path of a warm request. The acceptance
        window is re-checked against the clock and the revocation mirror is consulted on
        every hit. None means "ask :meth:`authenticate`", which also reports why a token is
        refused; the L1 cache is empty and bypassed while the invalidation bus is out of
        sync, so a None is also what every lookup gets then.
        """
        if len(token) > self._max_bytes:  # never valid: not even looked up
            return None
        entry: Verified | None = self._l1.get(token)
        if entry is None:
            return None
        now = self._clock()
        if entry.until <= now or entry.since > now:
            return None
        if self._revoked and entry.revocation in self._revoked:
            return None
        if self._cutoffs and self._cut_off(entry):
            return None
        return entry.result

    def pin(self, token: str) -> AuthenticationPin | None:
        """Like :meth:`cached`, but an :class:`AuthenticationPin` of the L1 entry the answer
        came from, or None. Synchronous, no Redis."""
        if self.cached(token) is None:
            return None
        entry: Verified | None = self._l1.get(token)
        stamp = self._l1.stamp(token)
        if entry is None or stamp is None:
            return None
        return AuthenticationPin(entry, stamp, self._l1.is_current)

    def is_current(self, pin: AuthenticationPin) -> bool:
        """Whether ``pin.result`` is still good now: its L1 entry is still the live one (no
        revocation, invalidation, eviction or flush since), within its TTL, and the token
        is within its acceptance window (the same one :meth:`cached` checks) and not
        revoked. Synchronous: one dict lookup, two clock reads."""
        if not pin._current(pin._stamp):
            return False
        entry = pin._entry
        now = self._clock()
        if entry.until <= now or entry.since > now:
            return False
        if self._cutoffs and self._cut_off(entry):
            return False
        return not (self._revoked and entry.revocation in self._revoked)

    def _cut_off(self, entry: Verified) -> bool:
        cutoff = self._cutoffs.get(entry.sub)
        return cutoff is not None and entry.iat <= cutoff

    async def authenticate(self, token: str) -> Authentication:
        """The verified claims of ``token``, from the fastest tier that has them.

        Raises :class:`InvalidToken` (including ``reason="revoked"``) and
        :class:`ValidatorUnavailable`; a Redis outage is never an error here.
        """
        if not isinstance(token, str) or not token:
            raise InvalidToken("malformed")
        if len(token) > self._max_bytes:
            raise InvalidToken("too_large")
        now = self._clock()
        entry: Verified | None = self._l1.get(token)
        if entry is not None:
            if self._revoked and entry.revocation in self._revoked:
                raise InvalidToken("revoked")
            if self._cutoffs and self._cut_off(entry):
                raise InvalidToken("revoked")
            if entry.until > now and entry.since <= now:
                return entry.result
        digest = hashlib.sha256(self._fingerprint + token.encode("utf-8", "replace")).hexdigest()
        # By digest: a bad token costs 64 characters in memory, not up to max_token_bytes.
        reason: str | None = self._negative.get(digest)
        if reason is not None:
            raise InvalidToken(reason)
        generation = self._l1.generation
        try:
            result, kid = await self._resolve(token, digest, now)
        except InvalidToken as exc:
            if exc.reason not in _UNCACHEABLE_REASONS:
                self._negative.set(digest, exc.reason)
            raise
        verified = Verified(result.claims, self._leeway, kid)
        if not result.degraded and verified.since <= now < verified.until:
            self._l1.set(token, verified, ttl=verified.until - now, generation=generation)
        return result

    def is_revoked(self, claims: TokenClaims) -> bool:
        """Whether this instance knows ``claims`` revoked or cut off (no Redis call)."""
        return self._revoker.refuses(claims)

    async def _resolve(
        self, token: str, digest: str, now: float
    ) -> tuple[Authentication, str | None]:
        """The result and the JWKS kid that verified the token (None: a static key)."""
        claims_store = self._claims_store
        degraded = False
        hit = None
        if self._l2.enabled:
            try:
                hit = await self._l2.get(digest, now)
            except RedisUnavailable:
                degraded = True
        if hit is not None:
            claims, kid = hit
        else:
            claims = await self._validator.validate(token)
            kid = header_kid(token) if self._l2.rotating else None
        if self.is_revoked(claims):
            raise InvalidToken("revoked")
        if claims_store is None:  # in process only: the validator and the mirrors
            return Authentication(claims, "validator", False), kid
        if not degraded:
            store_at = digest if hit is None and self._l2.enabled else None
            degraded = await self._check_denylist(claims_store, claims, store_at, kid)
        return Authentication(claims, "l2" if hit is not None else "validator", degraded), kid

    async def _check_denylist(
        self, claims_store: ClaimsStore, claims: TokenClaims, store_at: str | None, kid: str | None
    ) -> bool:
        """Ask Redis whether ``claims`` is revoked (and seal it into L2 at ``store_at``);
        True if Redis failed."""
        ttl_ms = int(min(self._l2_ttl, claims.exp + self._leeway - self._clock()) * 1000)
        deny = (claims.iss, claims.jti) if claims.jti is not None else None
        store = None
        if store_at is not None and ttl_ms > 0:
            store = (store_at, self._l2.seal(store_at, kid, claims), ttl_ms)
        if deny is None and store is None:
            return False
        try:
            revoked = await claims_store.check(deny, store)
        except GatewayRedisError:
            return True
        except Exception as exc:
            _log.warning(
                "jwt denylist check failed: %s",
                type(exc).__name__,
                extra=log_fields("jwt", "jwt_denylist_check_failed", type(exc).__name__),
            )
            return True
        if revoked:
            self._revoker.remember(claims.iss, str(claims.jti), float(claims.exp))
            raise InvalidToken("revoked")
        return False

    # -- revocation --------------------------------------------------------------------

    async def revoke(
        self, target: str | TokenClaims | tuple[str, str], *, expires_at: float | None = None
    ) -> None:
        """Revoke a token on every instance for as long as it is accepted.

        ``target`` is the token itself, its verified :class:`TokenClaims`, or an
        ``(iss, jti)`` pair with ``expires_at`` standing for its ``exp`` (epoch seconds,
        default now + ``max_revocation_lifetime``). The revocation lasts until ``exp +
        leeway``, so a token still inside the leeway is revoked too; one past it is
        accepted nowhere and nothing is written. This instance rejects the token at once,
        even if Redis is down; then the denylist entry is written, confirmed by a replica
        when the primary has one, and the event broadcast (in process-only mode: mirrored
        and announced here only). Raises :class:`RedisUnavailable` when that could not be
        done (``reason="unconfirmed"``: no replica acknowledged; the
        revocation then holds on this instance only), :class:`InvalidToken` for a token
        that is not valid for another reason than having expired or being revoked
        already, and ``ValueError`` for a token without ``jti``.
        """
        now = self._clock()
        if isinstance(target, str):
            try:
                target = await self._validator.validate(target)
            except InvalidToken as exc:
                if exc.reason in ("expired", "revoked"):
                    return
                raise
        if isinstance(target, TokenClaims):
            if target.jti is None:
                raise ValueError("a token without a jti claim cannot be revoked")
            iss, jti, exp = target.iss, target.jti, float(target.exp)
        else:
            iss, jti = target
            if not isinstance(iss, str) or not isinstance(jti, str) or not iss or not jti:
                raise ValueError("revoke((iss, jti)) needs two non-empty strings")
            exp = float(expires_at) if expires_at is not None else now + self._max_revocation
        if exp + self._leeway <= now:
            return
        await self._revoker.revoke(iss, jti, exp, now)

    async def revoke_subject(self, sub: str) -> float:
        """Refuse every token of ``sub`` issued up to now (``iat <= cutoff``; none without
        ``iat``), on every instance, for ``max_token_lifetime`` + leeway ("log out
        everywhere", :mod:`middleware.jwt.revoker`); returns the cut-off (epoch seconds).
        Applied here at once, then a confirmed write and a broadcast (WebSocket bridges
        close the subject's token sockets, 4401). Raises ``ValueError`` for an empty
        ``sub`` or one over 1024 bytes and :class:`RedisUnavailable` (``reason=
        "unconfirmed"``: the cut-off then holds on this instance only)."""
        return await self._revoker.revoke_subject(sub)

    def on_revoked(self, callback: Callable[[TokenRevoked], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for each revocation made on any instance (this one's at
        once), after this authenticator has applied it. Runs on the event loop and must
        not block. Returns a function that removes the callback."""
        return self._revoker.on_revoked(callback)

    def on_subject_revoked(self, callback: Callable[[SubjectRevoked], None]) -> Callable[[], None]:
        """Like :meth:`on_revoked`, for the cut-offs of :meth:`revoke_subject`."""
        return self._revoker.on_subject_revoked(callback)

    def _on_keys_removed(self, kids: frozenset[str]) -> None:
        """The issuer stopped listing ``kids``: drop the L1 verdicts they verified (L2
        ones are refused on read: :class:`SealedVerdicts` asks the validator)."""
        self._l1.discard_where(lambda _k, entry: entry.kid in kids)
