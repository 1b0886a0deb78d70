"""Cached API-key and opaque-token authentication: the JWT layer's tiers for a lookup.

:class:`APIKeyAuthenticator` answers a presented credential with the same
:class:`~middleware.jwt.Authentication` (and :class:`~middleware.jwt.TokenClaims`) as the
JWT authenticator, through the same machinery, under the namespace ``apikey``:

1. L1 (in process, bounded, TTL, flushed while the invalidation bus is out of sync), keyed
   by the credential's digest (:class:`~middleware.apikeys.KeyDigester`: HMAC-SHA256 under
   the settings' ``secret``), never by the credential.
2. L2 in Redis, ``<prefix>apikey:<digest>``: the claims sealed with an HMAC
   (:class:`~middleware.jwt.sealed.SealedVerdicts`, keyed by a key derived from the
   ``secret``), for ``min(l2_ttl, expires_at - now)``. A forged or foreign entry is a miss.
3. The application's lookup (``settings.lookup``), given the digest and the credential
   (:class:`~middleware.apikeys.Presented`), at most ``lookup_timeout`` seconds. Unknown
   keys are remembered by digest for ``negative_ttl`` (bounded); a lookup that raises or
   times out is :class:`~middleware.errors.ValidatorUnavailable` (the middleware answers
   503) and is never cached. Concurrent first requests with one key share one lookup
   (per instance).

The claims of a key: ``iss`` = ``settings.issuer``, ``sub`` = the record's subject,
``jti`` = its ``key_id``, ``roles``/``scope`` from the record, ``aud`` empty, ``iat`` the
lookup time, ``exp`` the record's ``expires_at`` or, without one, the end of the verdict's
L2 lifetime (a cache bound, not the key's).

Revocation (:meth:`APIKeyAuthenticator.revoke`) is the JWT revocation by ``(iss, jti)``
(:class:`~middleware.jwt.revoker.Revoker`): applied here at once, a confirmed write of
``<prefix>apikey-deny:...`` (and the ``apikey-revocations`` index every instance reloads on
resync), a bus event that drops the key from every instance's L1, and a Redis check on
every L2 hit or lookup. A changed record (a new role) is published with
:meth:`APIKeyAuthenticator.invalidate`: the L2 entry is deleted (confirmed) and every
instance drops its L1 and negative entries for the digest (a lookup in flight meanwhile
stores nothing in L2 if the event reached its instance first; one that finished between
the delete and the event may have cached the old record: call it again, or wait
``l2_ttl``, for a change that must not be missed). Redis down: L1 and the lookup
still answer (``degraded``), revocations known here still hold.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from gateway_redis.authstore import ClaimsStore
from gateway_redis.client import RedisClient
from gateway_redis.errors import GatewayRedisError, RedisUnavailable
from gateway_redis.support import log_fields
from middleware._local import Invalidation, LocalInvalidation
from middleware.apikeys.records import KeyRecord, Presented
from middleware.apikeys.settings import APIKeySettings
from middleware.errors import InvalidToken, ValidatorUnavailable
from middleware.jwt.authenticator import Authentication, Verified
from middleware.jwt.claims import TokenClaims, build_claims
from middleware.jwt.revoker import Revoker
from middleware.jwt.sealed import SealedVerdicts

__all__ = ["NAMESPACE", "APIKeyAuthenticator"]

NAMESPACE = "apikey"  # bus events, Redis keys, L1 cache names
_log = logging.getLogger(__name__)


class _LeaderGone(Exception):
    """The request doing a shared lookup was cancelled: a waiter does it instead."""


def record_claims(record: KeyRecord, issuer: str, now: float, horizon: float) -> TokenClaims:
    """The claims of ``record`` looked up at ``now``; ``exp`` at most ``now + horizon``."""
    end = now + horizon if record.expires_at is None else min(record.expires_at, now + horizon)
    payload: dict[str, Any] = {
        "iss": issuer,
        "sub": record.subject,
        "aud": [],
        "exp": math.ceil(end),
        "iat": int(now),
        "jti": record.key_id,
        "roles": list(record.roles),
        "scope": " ".join(record.scopes),
    }
    return build_claims(payload)


class APIKeyAuthenticator:
    """Authenticates API keys (or opaque tokens) with ``settings``; see the module
    docstring. ``client`` is the shared Redis client (not owned); None (given explicitly)
    keeps everything in this process (no L2, no shared denylist)."""

    def __init__(
        self,
        settings: APIKeySettings,
        *,
        client: RedisClient | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(settings, APIKeySettings):
            raise ValueError("settings must be APIKeySettings")
        self._settings = settings
        self._lookup = settings.lookup
        self._digest = settings.digester.digest
        self._issuer = settings.issuer
        self._max_bytes = settings.max_key_bytes
        self._clock = clock
        self._client = client
        bus: Invalidation = client.invalidation if client is not None else LocalInvalidation()
        self._bus = bus
        self._l1 = bus.local_cache(NAMESPACE, maxsize=settings.l1_maxsize, ttl=settings.l1_ttl)
        self._negative = bus.local_cache(
            f"{NAMESPACE}-negative", maxsize=settings.negative_maxsize, ttl=settings.negative_ttl
        )
        self._revoker = revoker = Revoker(
            client,
            bus,
            self._l1,
            leeway=0.0,
            max_token_lifetime=settings.revocation_lifetime,
            clock=clock,
            namespace=NAMESPACE,
        )
        self._revoked = revoker.revoked  # one dict for life: read on the hot path
        # Lookups in flight, by digest: bounded by the requests in flight.
        self._pending: dict[str, asyncio.Future[Authentication]] = {}
        self._store: ClaimsStore | None = None
        if client is not None and revoker.denylist is not None:
            self._store = ClaimsStore(client, revoker.denylist, NAMESPACE)
        self._l2 = SealedVerdicts(self._store, settings.digester.seal_key, None, 0.0)
        bus.on_event(NAMESPACE, self._on_event)

    @property
    def settings(self) -> APIKeySettings:
        """The settings this authenticator was built with."""
        return self._settings

    @property
    def client(self) -> RedisClient | None:
        """The Redis client of L2 and the denylist; None in process-only mode."""
        return self._client

    def digest(self, credential: str) -> str:
        """The digest of ``credential`` (what a key table stores; :meth:`invalidate`)."""
        return self._digest(credential)

    # -- authentication ----------------------------------------------------------------

    def cached(self, credential: str) -> Authentication | None:
        """The L1 result for ``credential`` when L1 holds it, in date and not revoked;
        else None (ask :meth:`authenticate`). Synchronous: no Redis, no await."""
        if len(credential) > self._max_bytes:
            return None
        entry: Verified | None = self._l1.get(self._digest(credential))
        if entry is None or entry.until <= self._clock():
            return None
        if self._revoked and entry.revocation in self._revoked:
            return None
        return entry.result

    async def authenticate(self, credential: str) -> Authentication:
        """The claims of ``credential``, from the fastest tier that has them.

        Raises :class:`InvalidToken` (``malformed``, ``too_large``, ``unknown_key``,
        ``expired``, ``revoked``) and :class:`ValidatorUnavailable` (the lookup failed or
        timed out); a Redis outage is never an error here (``degraded`` results).
        """
        if not isinstance(credential, str) or not credential:
            raise InvalidToken("malformed")
        if len(credential) > self._max_bytes:  # before hashing: bounded work per request
            raise InvalidToken("too_large")
        digest = self._digest(credential)
        now = self._clock()
        entry: Verified | None = self._l1.get(digest)
        if entry is not None:
            if self._revoked and entry.revocation in self._revoked:
                raise InvalidToken("revoked")
            if entry.until > now:
                return entry.result
        reason: str | None = self._negative.get(digest)
        if reason is not None:
            raise InvalidToken(reason)
        generation = self._l1.generation
        try:
            result = await self._shared(Presented(digest, credential), now, generation)
        except InvalidToken as exc:
            self._negative.set(digest, exc.reason)
            raise
        verified = Verified(result.claims, 0.0)
        if not result.degraded and verified.until > now:
            self._l1.set(digest, verified, ttl=verified.until - now, generation=generation)
        return result

    async def _shared(self, presented: Presented, now: float, generation: int) -> Authentication:
        """:meth:`_resolve`, once per digest at a time on this instance: the first request
        with a key looks it up in its own task; concurrent ones wait for its answer
        (shielded: a waiter that goes away cancels nothing). No task is started: if the
        first request is cancelled, a waiter takes over."""
        digest = presented.digest
        while (pending := self._pending.get(digest)) is not None:
            try:
                return await asyncio.shield(pending)
            except _LeaderGone:
                continue
        future: asyncio.Future[Authentication] = asyncio.get_running_loop().create_future()
        self._pending[digest] = future
        try:
            result = await self._resolve(presented, now, generation)
        except BaseException as exc:
            del self._pending[digest]
            future.set_exception(exc if isinstance(exc, Exception) else _LeaderGone())
            future.exception()  # retrieved: no warning when nobody was waiting
            raise
        del self._pending[digest]
        future.set_result(result)
        return result

    async def _resolve(self, presented: Presented, now: float, generation: int) -> Authentication:
        degraded = False
        hit = None
        if self._l2.enabled:
            try:
                hit = await self._l2.get(presented.digest, now)
            except RedisUnavailable:
                degraded = True
        if hit is not None:
            claims = hit[0]
        else:
            record = await self._ask(presented)
            if record is None:
                raise InvalidToken("unknown_key")
            if record.expires_at is not None and record.expires_at <= now:
                raise InvalidToken("expired")
            claims = record_claims(record, self._issuer, now, self._settings.l2_ttl)
        if self._revoker.refuses(claims):
            raise InvalidToken("revoked")
        source = "l2" if hit is not None else "validator"
        if self._store is None:
            return Authentication(claims, source, False)
        if not degraded:
            # Not into L2 when L1 saw an invalidation meanwhile: the record may have changed
            # while it was being looked up (an invalidate() racing this lookup).
            fresh = self._l1.generation == generation
            store_at = presented.digest if hit is None and self._l2.enabled and fresh else None
            degraded = await self._check(self._store, claims, store_at)
        return Authentication(claims, source, degraded)

    async def _ask(self, presented: Presented) -> KeyRecord | None:
        """The lookup's answer; ``ValidatorUnavailable`` when it fails or takes too long."""
        try:
            record = await asyncio.wait_for(self._lookup(presented), self._settings.lookup_timeout)
        except asyncio.TimeoutError:
            self._warn("timeout")
            raise ValidatorUnavailable("api key lookup timed out") from None
        except Exception as exc:  # the application's code: any failure is "cannot tell"
            self._warn(type(exc).__name__)
            raise ValidatorUnavailable("api key lookup failed") from None
        if record is not None and not isinstance(record, KeyRecord):
            self._warn("bad_answer")
            raise ValidatorUnavailable("api key lookup answered no KeyRecord")
        return record

    @staticmethod
    def _warn(what: str) -> None:
        _log.warning(
            "api key lookup failed: %s",
            what,
            extra=log_fields(NAMESPACE, "apikey_lookup_failed", what),
        )

    async def _check(self, store: ClaimsStore, claims: TokenClaims, store_at: str | None) -> bool:
        """Ask Redis whether ``claims`` is revoked (sealing it into L2 at ``store_at``);
        True when Redis could not answer."""
        ttl_ms = int(min(self._settings.l2_ttl, claims.exp - self._clock()) * 1000)
        put = None
        if store_at is not None and ttl_ms > 0:
            put = (store_at, self._l2.seal(store_at, None, claims), ttl_ms)
        try:
            revoked = await store.check((claims.iss, claims.jti), put)
        except GatewayRedisError:
            return True
        except Exception as exc:  # an odd reply: degraded, never a 500
            _log.warning(
                "api key denylist check failed: %s",
                type(exc).__name__,
                extra=log_fields(NAMESPACE, "apikey_denylist_check_failed", type(exc).__name__),
            )
            return True
        if revoked:
            self._revoker.remember(claims.iss, str(claims.jti), float(claims.exp))
            raise InvalidToken("revoked")
        return False

    # -- revocation and invalidation ---------------------------------------------------

    async def revoke(self, key_id: str, *, expires_at: float | None = None) -> None:
        """Refuse the key ``key_id`` on every instance until ``expires_at`` (epoch seconds;
        default now + ``revocation_lifetime``). Applied here at once (even when Redis is
        down), then a confirmed denylist write and a bus event. Raises ``ValueError`` for
        an empty ``key_id`` and :class:`~gateway_redis.RedisUnavailable` (``reason=
        "unconfirmed"``: the revocation then holds on this instance only)."""
        if not isinstance(key_id, str) or not key_id:
            raise ValueError("key_id must be a non-empty string")
        now = self._clock()
        lifetime = self._settings.revocation_lifetime
        until = float(expires_at) if expires_at is not None else now + lifetime
        if until <= now:
            return
        await self._revoker.revoke(self._issuer, key_id, until, now)

    def is_revoked(self, key_id: str) -> bool:
        """Whether this instance knows ``key_id`` revoked (no Redis call)."""
        return (self._issuer, key_id) in self._revoked

    async def invalidate(self, digest: str) -> None:
        """Forget every cached verdict on the key with this ``digest`` (its record changed:
        a new role, a new expiry) on every instance: L1 and the negative cache here at once,
        then the L2 entry (a confirmed delete), then a bus event. Raises ``ValueError`` for
        a malformed digest and :class:`~gateway_redis.RedisUnavailable`."""
        if not isinstance(digest, str) or len(digest) != 64 or not digest.isalnum():
            raise ValueError("digest must be a hex SHA-256 digest (APIKeyAuthenticator.digest)")
        self._drop(digest)
        if self._store is not None:
            await self._store.remove(digest)
        await self._bus.publish(NAMESPACE, {"op": "invalidate", "digest": digest})

    def _drop(self, digest: str) -> None:
        self._l1.delete(digest)
        self._negative.delete(digest)

    def _on_event(self, event: Mapping[str, Any]) -> None:
        if event.get("op") != "invalidate":
            return
        digest = event.get("digest")
        if isinstance(digest, str) and len(digest) == 64:
            self._drop(digest)
