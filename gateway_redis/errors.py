"""The error tree of :mod:`gateway_redis`.

::

    GatewayRedisError
    ├── ConfigurationError          bad settings, or Redis rejected our credentials
    ├── CacheKeyNotFound            the key does not exist (a cache miss)
    │   └── CacheUnavailable        ...because Redis is unavailable (also a RedisUnavailable)
    ├── RedisUnavailable            Redis cannot be reached, timed out, or the pool is exhausted
    │   └── CacheUnavailable
    ├── CommandError                Redis answered with an error (WRONGTYPE, not an integer...)
    ├── SessionNotFound             no such session (unknown, malformed, expired or deleted)
    ├── SubscriptionClosed          a subscription ended (closed, or the listener gave up)
    └── SerializationError          a message could not be serialized to JSON (also a TypeError)

redis-py's exceptions are translated into these at one boundary
(:func:`gateway_redis._translate.translate`); callers never need to import ``redis``.
"""

from __future__ import annotations

__all__ = [
    "CacheKeyNotFound",
    "CacheUnavailable",
    "CommandError",
    "ConfigurationError",
    "GatewayRedisError",
    "RedisUnavailable",
    "SerializationError",
    "SessionNotFound",
    "SubscriptionClosed",
]


class GatewayRedisError(Exception):
    """Root of every error raised by :mod:`gateway_redis`."""


class ConfigurationError(GatewayRedisError, ValueError):
    """A setting is invalid, or Redis refused our credentials (wrong password, ACL).

    Raised by :class:`~gateway_redis.RedisConfig` and ``from_env()`` with the variable
    and the problem named, and by :meth:`RedisClient.connect` when Redis rejects the
    credentials. Never retried.
    """


class RedisUnavailable(GatewayRedisError):
    """Redis could not serve the call: down, frozen, misconfigured or pool exhausted.

    ``reason`` is a short machine-readable word: ``"down"``, ``"timeout"``,
    ``"pool_exhausted"``, ``"misconfigured"``, ``"unconfirmed"`` (a confirmed write reached
    no replica in time), ``"closed"`` or ``"not_connected"``.
    """

    def __init__(self, message: str, *, reason: str = "down") -> None:
        super().__init__(message)
        self.reason = reason


class CacheKeyNotFound(GatewayRedisError, KeyError):
    """The key does not exist: a cache miss."""

    def __str__(self) -> str:
        # KeyError's __str__ quotes its argument; keep plain messages.
        return str(self.args[0]) if self.args else "cache key not found"


class CacheUnavailable(CacheKeyNotFound, RedisUnavailable):
    """A cache read could not reach Redis.

    It is both a miss (code written for misses degrades gracefully) and an outage
    (code that cares can tell the difference).
    """

    def __init__(self, message: str, *, reason: str = "down") -> None:
        RedisUnavailable.__init__(self, message, reason=reason)


class CommandError(GatewayRedisError):
    """Redis refused the command with an error reply (``WRONGTYPE``, ``ERR value is not an
    integer``...). Redis itself is fine; the call was wrong for the data. The reply text
    is the message; redis-py's exception is the ``__cause__``.
    """


class SessionNotFound(GatewayRedisError, KeyError):
    """No such session: never issued, malformed, expired or deleted."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "session not found"


class SubscriptionClosed(GatewayRedisError):
    """The subscription ended: closed by its owner, the client closed, or delivery failed.

    ``reason`` is ``"closed"`` (closed on purpose) or ``"failed"`` (the listener could
    not keep the subscription alive).
    """

    def __init__(self, message: str, *, reason: str = "closed") -> None:
        super().__init__(message)
        self.reason = reason


class SerializationError(GatewayRedisError, TypeError):
    """A value could not be serialized to JSON; nothing was sent."""
