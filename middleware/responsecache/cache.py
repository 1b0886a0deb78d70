"""The response cache's state and invalidation: :class:`ResponseCache`.

L1 is a :class:`~gateway_redis.localcache.LocalCache` (bounded in entries and in bytes),
L2 the :class:`~gateway_redis.responsecache.ResponseCacheStore`. Unlike the
authentication caches, L1 keeps serving while the client's invalidation bus is out of sync
(Redis down: "serve from L1 and the app", so an outage does not send every request to the
app) and is flushed once the bus has regained sync (checked on each lookup against the
bus's resync count), since invalidations may have been missed meanwhile. While Redis is
down nobody can invalidate a tag (the call raises), so L1 serves what it would have served
anyway; an instance cut off from a Redis the others still reach keeps its entries until
their TTL ends or its bus is back.

:meth:`ResponseCache.invalidate_tags` gives the tags new versions in Redis (every stored
entry computed before is a miss from then on, see the store), drops the L1 entries carrying
them here, and publishes the tags on the bus: every other instance drops its own within
the bus's latency. The request flow is :class:`~middleware.responsecache.ResponseCacheMiddleware`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from gateway_redis import telemetry
from gateway_redis.client import RedisClient
from gateway_redis.localcache import LocalCache
from gateway_redis.responsecache import ResponseCacheStore, StoredResponse
from middleware._memo import Memo
from middleware.rbac.permissions import PermissionCache
from middleware.responsecache.flight import Flights
from middleware.responsecache.rules import CacheRule
from middleware.responsecache.settings import ResponseCacheSettings

__all__ = ["ATTR_RESULT", "ENTRY_OVERHEAD", "MAX_LIFETIME", "ResponseCache"]

_NS = "response"
MAX_LIFETIME = 60 * 86_400.0  # a rule's longest ttl plus its longest stale bound
ENTRY_OVERHEAD = 512  # bytes an L1 entry costs beyond its body and headers (about)
_NO_RULE = object()
_RESULTS = ("l1", "l2", "miss", "wait", "stale", "stale_error", "bypass", "coalesced")
_TALLY = {result: telemetry.lookup_tally("response", result) for result in _RESULTS}
ATTR_RESULT = "gateway.response.cache.result"  # on the request's (server) span
_SPAN_ATTRS = {result: {ATTR_RESULT: result} for result in _RESULTS}


class ResponseCache:
    """L1, L2, tag invalidation and the in-flight computations of the response cache.

    ``client``: the shared Redis client (not owned); its invalidation bus carries tag
    invalidations. ``settings``: :class:`ResponseCacheSettings`. ``permissions``: the RBAC
    :class:`PermissionCache`, whose policy version is part of every private key (None:
    version 0). Raises ``ValueError`` for bad arguments.
    """

    def __init__(
        self,
        client: RedisClient,
        settings: ResponseCacheSettings,
        *,
        permissions: PermissionCache | None = None,
    ) -> None:
        if not isinstance(client, RedisClient):
            raise ValueError("client must be a RedisClient")
        if not isinstance(settings, ResponseCacheSettings):
            raise ValueError("settings must be ResponseCacheSettings")
        self._client = client
        self._settings = settings
        self._permissions = permissions
        bus = client.invalidation
        self._bus = bus
        lifetime = MAX_LIFETIME  # each entry has its own; rules may be added later
        # Not bus.local_cache(): that one is bypassed while the bus is out of sync.
        self._l1: LocalCache[Hashable, StoredResponse] = LocalCache(
            maxsize=settings.l1_entries, ttl=lifetime, name="response", max_bytes=settings.l1_bytes
        )
        self._store = ResponseCacheStore(client, max_lifetime=lifetime)
        self._flights: Flights[StoredResponse] = Flights(
            max_waiters=settings.max_waiters, timeout=settings.wait_timeout
        )
        self._rule_list = list(settings.rules)
        self._rules: Memo[str, Any] = Memo(max_key=2048)
        bus.on_event(_NS, self._on_event)
        self._resyncs = bus.resyncs  # L1 holds nothing older than the bus's last resync

    @property
    def settings(self) -> ResponseCacheSettings:
        """The configuration."""
        return self._settings

    @property
    def client(self) -> RedisClient:
        """The Redis client of L2."""
        return self._client

    @property
    def store(self) -> ResponseCacheStore:
        """The Redis side (L2)."""
        return self._store

    @property
    def l1(self) -> LocalCache[Hashable, StoredResponse]:
        """The in-process tier."""
        return self._l1

    @property
    def flights(self) -> Flights[StoredResponse]:
        """The computations in flight on this instance."""
        return self._flights

    @staticmethod
    def tally(result: str) -> None:
        """Count one lookup in ``gateway.cache.lookups`` (cache ``response``) and set
        ``gateway.response.cache.result`` on the current span when tracing."""
        _TALLY[result].value += 1
        if telemetry.tracing_enabled():
            telemetry.annotate_current_span(_SPAN_ATTRS[result])

    def rule_for(self, path: str) -> CacheRule | None:
        """The first rule matching ``path`` (memoized, bounded), or None."""
        found = self._rules.entries.get(path, _NO_RULE)
        if found is _NO_RULE:
            found = next((r for r in self._rule_list if r.matches(path)), None)
            self._rules.remember(path, found, len(path))
        return found  # type: ignore[no-any-return]

    @property
    def rules(self) -> tuple[CacheRule, ...]:
        """The rules in force: the settings' rules, then those added."""
        return tuple(self._rule_list)

    def add_rules(self, rules: Iterable[CacheRule]) -> None:
        """Add ``rules`` after the present ones (raises ``ValueError`` for a non-rule)."""
        added = list(rules)
        if not all(isinstance(r, CacheRule) for r in added):
            raise ValueError("rules must be CacheRule instances")
        self._rule_list.extend(added)
        self._rules.entries.clear()

    def policy_version(self) -> int | None:
        """The RBAC policy version in private keys (None: unknown, do not cache)."""
        return 0 if self._permissions is None else self._permissions.policy_version

    @staticmethod
    def fingerprint(key: tuple[Any, ...]) -> str:
        """The L2 name of an L1 key ``(rule path, path, query, vary values, identity)``:
        SHA-256 over its JSON form."""
        rule, path, query, vary, identity = key
        parts = [rule, path, query.decode("latin-1"), [v.decode("latin-1") for v in vary]]
        data = json.dumps([*parts, identity], separators=(",", ":"))
        return hashlib.sha256(data.encode()).hexdigest()

    def lookup(self, key: Hashable) -> StoredResponse | None:
        """The L1 entry of ``key``, or None. L1 is flushed first when the bus has regained
        sync since the last lookup (it may hold responses invalidated meanwhile)."""
        resyncs = self._bus.resyncs
        if resyncs != self._resyncs:
            self._resyncs = resyncs
            self._l1.clear()
        return self._l1.get(key)

    def remember(self, key: Hashable, stored: StoredResponse, generation: int) -> None:
        """Put ``stored`` in L1 until its stale bound ends (dropped if L1 was invalidated
        since ``generation``)."""
        size = len(stored.body) + sum(len(n) + len(v) for n, v in stored.headers)
        self._l1.set(
            key,
            stored,
            ttl=stored.remaining(time.time()) + stored.stale,  # an L2 entry has aged
            generation=generation,
            size=size + ENTRY_OVERHEAD,
        )

    async def invalidate_tags(self, *tags: str) -> None:
        """Drop every cached response carrying one of ``tags``, on every instance.

        Applied here at once; other instances drop their L1 entries when the bus event
        arrives, and Redis entries are misses from now on. Raises ``ValueError`` for a tag
        that is not a non-empty string and :class:`~gateway_redis.RedisUnavailable` when
        Redis cannot be told (this instance's L1 is cleared of them already; the others
        flush their L1 when their bus regains sync).
        """
        if not tags or not all(isinstance(t, str) and t for t in tags):
            raise ValueError("tags must be non-empty strings")
        self._drop(tags)
        await self._store.invalidate(tags)
        await self._bus.publish(_NS, {"tags": list(tags)})

    def _drop(self, tags: tuple[str, ...] | list[str]) -> None:
        doomed = frozenset(tags)
        self._l1.discard_where(lambda _key, stored: not doomed.isdisjoint(stored.versions))

    def _on_event(self, event: Mapping[str, Any]) -> None:
        tags = event.get("tags")
        if isinstance(tags, list) and all(isinstance(t, str) for t in tags):
            self._drop(tags)
