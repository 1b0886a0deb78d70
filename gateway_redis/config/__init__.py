"""Connection settings: :class:`RedisConfig` and its grouped views.

- :mod:`~gateway_redis.config.settings`: :class:`RedisConfig` and the frozen groups
  (:class:`Timeouts`, :class:`PoolLimits`, :class:`RetryPolicy`, :class:`TLSSettings`,
  :class:`SentinelSettings`);
- ``_url``: URL and address parsing, :class:`Topology`, redaction;
- ``_env``: ``RedisConfig.from_env`` (one table of variables) and :func:`parse_duration`;
- ``_fields``: the per-field checks.
"""

from __future__ import annotations

from gateway_redis.config._env import parse_duration
from gateway_redis.config._url import Topology
from gateway_redis.config.settings import (
    PoolLimits,
    RedisConfig,
    RetryPolicy,
    SentinelSettings,
    Timeouts,
    TLSSettings,
)

__all__ = [
    "PoolLimits",
    "RedisConfig",
    "RetryPolicy",
    "SentinelSettings",
    "TLSSettings",
    "Timeouts",
    "Topology",
    "parse_duration",
]
