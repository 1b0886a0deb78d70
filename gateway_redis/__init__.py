"""gateway-redis: the Redis side of a Starlette/FastAPI gateway.

One shared async client (:class:`RedisClient`) with a bounded pool, retries, fast failure
and health state; a cache API; pub/sub with bounded per-subscriber buffers; a session
store. Knows nothing about ASGI: see the ``middleware`` package for that.
"""

from __future__ import annotations

from gateway_redis.authstore import ClaimsStore, PermissionStore, Revocation, RevocationStore
from gateway_redis.client import ClientState, RedisClient
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
    Message,
    MessageCallback,
    PubSubHub,
    PubSubStats,
    ReconnectListener,
    Subscription,
)
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
    "ClaimsStore",
    "ClientState",
    "CommandError",
    "ConfigurationError",
    "EventHandler",
    "GatewayRedisError",
    "HealthMonitor",
    "HealthState",
    "InvalidationBus",
    "LocalCache",
    "Message",
    "MessageCallback",
    "PermissionStore",
    "PoolLimits",
    "PubSubHub",
    "PubSubStats",
    "ReconnectListener",
    "RedisClient",
    "RedisConfig",
    "RedisUnavailable",
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
    "Subscription",
    "SubscriptionClosed",
    "TLSSettings",
    "Timeouts",
    "Topology",
    "UserSessionsDropped",
    "id_digest",
    "parse_duration",
    "parse_session_event",
    "slot_tag",
]
