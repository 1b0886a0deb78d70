"""How permissions are cached (L1 + L2, policy-versioned): :class:`PermissionCache`.

:class:`PermissionCache` sits in front of a *cacheable*
:class:`~middleware.rbac.sources.PermissionSource` (one whose answer depends only on the
subject, such as a database lookup): L1 in process, then L2 in Redis at
``<prefix>rbac:<policy version>:<sha256(subject)>``, then the source. Both tiers have a hard
TTL (default 60 s: an invalidation sent over pub/sub can be lost). The policy version lives
in Redis (``<prefix>rbac:policy-version``), is mirrored in memory and re-read whenever the
invalidation bus resyncs; :meth:`PermissionCache.bump_policy_version` and
:meth:`PermissionCache.invalidate` take effect on every instance through the bus, and
:meth:`PermissionCache.on_change` tells other components (the WebSocket bridge re-checks
live subscriptions). When Redis is down the source is asked directly, every time.

Built with ``client=None`` the cache works in this process only: L1 and a policy version
held in memory (starting at 0), no L2, and invalidations reach this process only
(:class:`middleware._local.LocalInvalidation`). That is for unit tests and single-process
tools: instances built so do not hear each other.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from gateway_redis import telemetry
from gateway_redis.authstore import PermissionStore
from gateway_redis.client import RedisClient
from gateway_redis.errors import GatewayRedisError
from gateway_redis.localcache import Stamp
from gateway_redis.support import log_fields
from middleware._local import Invalidation, LocalInvalidation
from middleware.errors import ServiceUnavailable
from middleware.jwt.claims import TokenClaims
from middleware.rbac.sources import PermissionSource

__all__ = ["PermissionCache", "PermissionPin"]

_log = logging.getLogger(__name__)
_RESULT = {
    result: telemetry.lookup_tally("rbac", result) for result in ("l1", "l2", "miss", "bypass")
}
_L1_HIT = _RESULT["l1"]
_NS = "rbac"


class PermissionPin:
    """An L1 answer of :meth:`PermissionCache.pin`, for a caller that remembers it across
    requests: ``granted`` may be used again while :meth:`PermissionCache.is_current` says
    so. Immutable."""

    __slots__ = ("_current", "_stamp", "_version", "granted")

    def __init__(
        self,
        granted: frozenset[str],
        version: int | None,
        stamp: Stamp,
        current: Callable[[Stamp], bool],
    ) -> None:
        self.granted = granted
        self._version = version
        self._stamp = stamp
        self._current = current  # the L1 cache's is_current, bound once


class PermissionCache:
    """Resolves a principal's permissions through L1, L2 and ``source``.

    ``client`` is the shared Redis client (not owned): L2 and the policy version live
    there, and its invalidation bus carries cross-instance invalidation. ``client=None``
    (given explicitly: leaving it out is an error, so that no deployment silently loses
    cross-instance invalidation) means in process only: L1 and the policy version live
    here, invalidations and version bumps reach this cache only. ``ttl`` (seconds,
    default 60) is the hard lifetime of cached permissions in both tiers; ``maxsize``
    bounds L1. Sources that are not ``cacheable`` are asked every time.
    """

    def __init__(
        self,
        source: PermissionSource,
        *,
        client: RedisClient | None,
        ttl: float = 60.0,
        maxsize: int = 10_000,
    ) -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl <= 86400:
            raise ValueError(f"ttl must be in (0, 86400] seconds, got {ttl!r}")
        self._source = source
        self._compute: Callable[[TokenClaims], Collection[str]] | None = getattr(
            source, "permissions_now", None
        )
        self._client = client
        bus: Invalidation = client.invalidation if client is not None else LocalInvalidation()
        self._bus = bus
        self._ttl_ms = max(1, int(ttl * 1000))
        self._l1 = bus.local_cache("rbac", maxsize=maxsize, ttl=float(ttl))
        # None in process-only mode: the cold path checks, where it awaits. The version
        # then lives here only, known from the start.
        self._store = PermissionStore(client) if client is not None else None
        self._version: int | None = None if client is not None else 0
        self._invalidations = 0  # subject invalidations heard (an L2 write must not race one)
        bus.on_event(_NS, self._on_event)
        bus.on_resync(self._reload_version)

    @property
    def source(self) -> PermissionSource:
        """The permission source."""
        return self._source

    @property
    def client(self) -> RedisClient | None:
        """The Redis client of L2 and the policy version; None in process-only mode."""
        return self._client

    @property
    def cacheable(self) -> bool:
        """Whether the source's answers are cached (see :class:`PermissionSource`)."""
        return self._source.cacheable

    @property
    def policy_version(self) -> int | None:
        """The policy version this instance knows (None until first read from Redis)."""
        return self._version

    def cached(self, claims: TokenClaims) -> frozenset[str] | None:
        """The principal's permissions if L1 holds them for the current policy version (or
        the source is not cacheable and answers synchronously, ``permissions_now``), else
        None (then await :meth:`permissions`). Synchronous: the warm hot path.

        L1 is empty and bypassed while the invalidation bus is out of sync. Counts nothing
        (the caller counts what it serves: ``gateway.cache.lookups``, result ``l1``).
        """
        if not self._source.cacheable:
            if self._compute is None:
                return None
            try:
                return frozenset(self._compute(claims))
            except Exception:  # the awaited path asks again and reports it
                return None
        hit: tuple[int, frozenset[str]] | None = self._l1.get(claims.sub)
        if hit is None or hit[0] != self._version:
            return None
        return hit[1]

    def pin(self, claims: TokenClaims) -> PermissionPin | None:
        """A :class:`PermissionPin` of the L1 entry holding the principal's permissions for
        the current policy version, or None (not in L1, or a source that is not
        ``cacheable``). Synchronous, no Redis."""
        if not self._source.cacheable:
            return None
        hit: tuple[int, frozenset[str]] | None = self._l1.get(claims.sub)
        stamp = self._l1.stamp(claims.sub)
        if hit is None or stamp is None or hit[0] != self._version:
            return None
        return PermissionPin(hit[1], hit[0], stamp, self._l1.is_current)

    def is_current(self, pin: PermissionPin) -> bool:
        """Whether ``pin.granted`` is still the answer: the policy version is unchanged and
        its L1 entry is still the live one and within its TTL. One dict lookup."""
        return pin._version == self._version and pin._current(pin._stamp)

    async def permissions(self, claims: TokenClaims) -> frozenset[str]:
        """The principal's permissions. Raises :class:`ServiceUnavailable` when the source
        fails (never an empty set in its place)."""
        if not self._source.cacheable:
            return await self._ask(claims)
        subject = claims.sub
        hit: tuple[int, frozenset[str]] | None = self._l1.get(subject)
        if hit is not None and hit[0] == self._version:
            _L1_HIT.value += 1
            return hit[1]
        generation = self._l1.generation
        invalidations = self._invalidations
        store = self._store
        if store is None:  # in process only: the source, remembered in L1
            _RESULT["miss"].value += 1
            version = self._version
            answer = await self._ask(claims)
            if version == self._version:
                self._l1.set(subject, (version, answer), generation=generation)
            return answer
        version = self._version if self._bus.healthy else None
        try:
            if version is None:
                version = await store.version()
            raw = await store.get(version, subject)
        except GatewayRedisError:
            _RESULT["bypass"].value += 1
            return await self._ask(claims)  # Redis down: the source, uncached
        except Exception as exc:
            _log.warning(
                "permission cache read failed: %s",
                type(exc).__name__,
                extra=log_fields("rbac", "rbac_cache_read_failed", type(exc).__name__),
            )
            _RESULT["bypass"].value += 1
            return await self._ask(claims)
        granted = self._decode(raw) if raw is not None else None
        _RESULT["l2" if granted is not None else "miss"].value += 1
        if granted is None:
            granted = await self._ask(claims)
            if self._invalidations != invalidations:
                # Invalidated while the source answered: this answer may predate it, and
                # written to L2 it would outlive the invalidation. Serve it, share nothing.
                return granted
            data = json.dumps(sorted(granted))
            try:
                await store.put(version, subject, data, self._ttl_ms)
            except Exception as exc:  # the answer is still good; it just is not shared
                _log.debug(
                    "permission cache write failed: %s",
                    type(exc).__name__,
                    extra=log_fields("rbac", "rbac_cache_write_failed", type(exc).__name__),
                )
        if version == self._version:
            self._l1.set(subject, (version, granted), generation=generation)
        return granted

    async def invalidate(self, subject: str) -> None:
        """Forget the cached permissions of ``subject`` on every instance.

        Raises :class:`~gateway_redis.RedisUnavailable` when Redis cannot be told (this
        instance has forgotten them already; others have L1 off while Redis is down).
        """
        if not isinstance(subject, str):
            raise TypeError("subject must be a string")
        self._l1.delete(subject)
        self._invalidations += 1
        # Removing permissions protects security: confirmed by a replica when there is one.
        if self._store is not None:
            await self._store.remove(await self._store.version(), subject)
        await self._bus.publish(_NS, {"op": "subject", "subject": subject})

    def on_change(self, callback: Callable[[str | None], None]) -> Callable[[], None]:
        """Call ``callback(subject)`` for each :meth:`invalidate` made on any instance (this
        one's at once), and ``callback(None)`` for each policy version bump (everyone's
        permissions may have changed), after this cache has applied it. Runs on the event
        loop and must not block. Events lost while the bus was out of sync are not replayed:
        a component that mirrors permissions also registers a resync hook on the bus.
        Returns a function that removes the callback (idempotent).
        """
        if not callable(callback):
            raise ValueError("callback must be callable")

        def on_event(event: Mapping[str, Any]) -> None:
            op = event.get("op")
            if op == "version" and isinstance(event.get("version"), int):
                callback(None)
            elif op == "subject" and isinstance(event.get("subject"), str):
                callback(event["subject"])

        return self._bus.on_event(_NS, on_event)

    async def bump_policy_version(self) -> int:
        """Start a new policy version: every cached permission set on every instance is
        dropped. Returns the new version. Raises :class:`~gateway_redis.RedisUnavailable`.
        """
        store = self._store
        version = await store.bump_version() if store is not None else (self._version or 0) + 1
        self._set_version(version)
        await self._bus.publish(_NS, {"op": "version", "version": version})
        return version

    # -- internals -----------------------------------------------------------------------

    async def _ask(self, claims: TokenClaims) -> frozenset[str]:
        try:
            return frozenset(await self._source.permissions(claims))
        except Exception as exc:
            _log.warning(
                "permission source failed: %s",
                type(exc).__name__,
                extra=log_fields("rbac", "rbac_source_failed", type(exc).__name__),
            )
            raise ServiceUnavailable("permission_source_unavailable") from exc

    @staticmethod
    def _decode(raw: Any) -> frozenset[str] | None:
        try:
            value = json.loads(raw)
        except (ValueError, TypeError, RecursionError):
            value = None
        if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
            _log.warning(
                "corrupt permission cache entry ignored",
                extra=log_fields("rbac", "rbac_cache_corrupt"),
            )
            return None
        return frozenset(value)

    async def _reload_version(self) -> None:
        """Resync hook (only registered on a client's bus): re-read the policy version."""
        if self._store is not None:
            self._set_version(await self._store.version())

    def _set_version(self, version: int) -> None:
        if version != self._version:
            self._version = version
            self._l1.clear()

    def _on_event(self, event: Mapping[str, Any]) -> None:
        op = event.get("op")
        if op == "version" and isinstance(event.get("version"), int):
            self._set_version(event["version"])
        elif op == "subject" and isinstance(event.get("subject"), str):
            self._invalidations += 1
            self._l1.delete(event["subject"])
