"""gateway-redis: the Redis side of a Starlette/FastAPI gateway.

One shared async client (:class:`RedisClient`) with a bounded pool, retries, fast failure
and health state; a cache API; pub/sub with bounded per-subscriber buffers; a session
store. Knows nothing about ASGI: see the ``middleware`` package for that.
"""

from __future__ import annotations

from gateway_redis.authstore import ClaimsStore, PermissionStore, Revocation, RevocationStore
from gateway_redis.client import ClientState, RedisClient
from gateway_redis.config import RedisConfig, parse_duration
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
from gateway_redis.health import HealthState
from gateway_redis.invalidation import InvalidationBus
from gateway_redis.localcache import LocalCache
from gateway_redis.pubsub import Message, PubSubHub, PubSubStats, Subscription
from gateway_redis.sessions import Session, SessionStore

__all__ = [
    "CacheKeyNotFound",
    "CacheUnavailable",
    "ClaimsStore",
    "ClientState",
    "CommandError",
    "ConfigurationError",
    "GatewayRedisError",
    "HealthState",
    "InvalidationBus",
    "LocalCache",
    "Message",
    "PermissionStore",
    "PubSubHub",
    "PubSubStats",
    "RedisClient",
    "RedisConfig",
    "RedisUnavailable",
    "Revocation",
    "RevocationStore",
    "SerializationError",
    "Session",
    "SessionNotFound",
    "SessionStore",
    "Subscription",
    "SubscriptionClosed",
    "parse_duration",
]
