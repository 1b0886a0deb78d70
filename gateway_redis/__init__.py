"""gateway-redis: the Redis side of a Starlette/FastAPI gateway.

Knows nothing about ASGI: :mod:`middleware` is built on the public names exported here,
and this package on redis-py. Everything below is re-exported at the top level.

- :mod:`~gateway_redis.client`: :class:`RedisClient`, the one shared client (bounded pool,
  a deadline per call, retries, fast failure, the cache API); it owns the pub/sub hub, the
  invalidation bus and the session store, and runs confirmed writes
  (:meth:`RedisClient.confirmed`).
- :mod:`~gateway_redis.config`: :class:`RedisConfig`, its grouped views and ``from_env``.
- :mod:`~gateway_redis.health`: the availability state machine and :class:`ClientState`.
- :mod:`~gateway_redis.errors`: the error tree.
- :mod:`~gateway_redis.pubsub`: :class:`PubSubHub` and :class:`Subscription`; its
  ``envelope`` module is the wire format for other publishers and subscribers.
- :mod:`~gateway_redis.invalidation` (:class:`InvalidationBus`) and
  :mod:`~gateway_redis.localcache` (:class:`LocalCache`, the in-process L1).
- :mod:`~gateway_redis.sessions`: :class:`SessionStore`, :class:`Session`, change events.
- :mod:`~gateway_redis.authstore`: the Redis commands of the JWT and RBAC caches.
- :mod:`~gateway_redis.ratelimit`: :class:`RateLimitStore` (GCRA rate limits, exact across
  instances) and :class:`Limit`.
- :mod:`~gateway_redis.responsecache`: the Redis side of the response cache.
- Used by their module path: :mod:`~gateway_redis.support` (log fields, task ending),
  :mod:`~gateway_redis.telemetry`, :mod:`~gateway_redis.embedded` (a server for development
  and tests).
- Private: ``_driver`` (redis-py's connection machinery), ``_translate`` (redis-py's
  errors become ours there) and ``_confirm`` (a write and its ``WAIT`` on one connection).
"""

from __future__ import annotations

from gateway_redis.authstore import (
    ClaimsStore,
    PermissionStore,
    Revocation,
    RevocationStore,
    SubjectCutoff,
    SubjectCutoffStore,
)
from gateway_redis.client import ClientState, RedisClient, WindowHits
from gateway_redis.config import (
    PoolLimits,
    RedisConfig,
    RetryPolicy,
    SentinelSettings,
    Timeouts,
    TLSSettings,
    Topology,
    parse_duration,
)
from gateway_redis.errors import (
    CacheKeyNotFound,
    CacheUnavailable,
    CommandError,
    ConfigurationError,
    GatewayRedisError,
    RedisUnavailable,
    SerializationError,
    SessionNotFound,
    SubscriptionClosed,
)
from gateway_redis.health import HealthMonitor, HealthState, StateListener
from gateway_redis.invalidation import EventHandler, InvalidationBus, ResyncHook
from gateway_redis.localcache import LocalCache, Stamp
from gateway_redis.pubsub import (
    ChannelHistory,
    ChannelPresence,
    HistoryPage,
    Message,
    MessageCallback,
    PayloadPage,
    Position,
    PresenceChange,
    PresenceMember,
    PresenceStats,
    Published,
    PubSubHub,
    PubSubStats,
    ReconnectListener,
    Subscription,
)
from gateway_redis.ratelimit import Limit, LimitState, RateDecision, RateLimitStore
from gateway_redis.responsecache import ResponseCacheStore, StoredResponse
from gateway_redis.sessions import (
    Session,
    SessionDropped,
    SessionEvent,
    SessionEventHandler,
    SessionStore,
    UserSessionsDropped,
    id_digest,
    parse_session_event,
    slot_tag,
)

__all__ = [
    "CacheKeyNotFound",
    "CacheUnavailable",
    "ChannelHistory",
    "ChannelPresence",
    "ClaimsStore",
    "ClientState",
    "CommandError",
    "ConfigurationError",
    "EventHandler",
    "GatewayRedisError",
    "HealthMonitor",
    "HealthState",
    "HistoryPage",
    "InvalidationBus",
    "Limit",
    "LimitState",
    "LocalCache",
    "Message",
    "MessageCallback",
    "PayloadPage",
    "PermissionStore",
    "PoolLimits",
    "Position",
    "PresenceChange",
    "PresenceMember",
    "PresenceStats",
    "PubSubHub",
    "PubSubStats",
    "Published",
    "RateDecision",
    "RateLimitStore",
    "ReconnectListener",
    "RedisClient",
    "RedisConfig",
    "RedisUnavailable",
    "ResponseCacheStore",
    "ResyncHook",
    "RetryPolicy",
    "Revocation",
    "RevocationStore",
    "SentinelSettings",
    "SerializationError",
    "Session",
    "SessionDropped",
    "SessionEvent",
    "SessionEventHandler",
    "SessionNotFound",
    "SessionStore",
    "Stamp",
    "StateListener",
    "StoredResponse",
    "SubjectCutoff",
    "SubjectCutoffStore",
    "Subscription",
    "SubscriptionClosed",
    "TLSSettings",
    "Timeouts",
    "Topology",
    "UserSessionsDropped",
    "WindowHits",
    "id_digest",
    "parse_duration",
    "parse_session_event",
    "slot_tag",
]
