"""Everything that touches redis-py's connection machinery, one concept per module.

:mod:`.deadlines` (the time limit of every call), :mod:`.retry` (the retry policy and the
at-most-once switch), :mod:`.pool` (the capped blocking pools), :mod:`.connections` (how
every connection is configured), :mod:`.cluster` (node health, the ASK fix, the cluster
probe), :mod:`.backend` (the Redis side of one client: standalone and Sentinel) and
:mod:`.cluster_backend` (the same on Cluster). redis-py's errors
are classified and translated in :mod:`gateway_redis._translate`. Private: the rest of the
library speaks only our own types.
"""

from __future__ import annotations

from gateway_redis._driver.backend import (
    Backend,
    PoolBackend,
    make_backend,
    open_probe_connection,
)
from gateway_redis._driver.cluster import (
    ClusterNodeConnection,
    ClusterNodeSSLConnection,
    ClusterSeedConnection,
    ClusterSeedSSLConnection,
    NodeHealth,
    NodeUnreachable,
    probe_cluster,
)
from gateway_redis._driver.cluster_backend import ClusterBackend
from gateway_redis._driver.connections import lone_connection_kwargs
from gateway_redis._driver.deadlines import Deadline, wait_attentively
from gateway_redis._driver.pool import GatewayPool, GatewaySentinelPool, PoolExhausted
from gateway_redis._driver.retry import (
    GatewayRetry,
    LostConnectionHook,
    disable_retries,
    no_retry,
    probe_until_conclusive,
    restore_retries,
    retries_disabled,
)
from gateway_redis._translate import is_auth_error, is_outage_error

__all__ = [
    "Backend",
    "ClusterBackend",
    "ClusterNodeConnection",
    "ClusterNodeSSLConnection",
    "ClusterSeedConnection",
    "ClusterSeedSSLConnection",
    "Deadline",
    "GatewayPool",
    "GatewayRetry",
    "GatewaySentinelPool",
    "LostConnectionHook",
    "NodeHealth",
    "NodeUnreachable",
    "PoolBackend",
    "PoolExhausted",
    "disable_retries",
    "is_auth_error",
    "is_outage_error",
    "lone_connection_kwargs",
    "make_backend",
    "no_retry",
    "open_probe_connection",
    "probe_cluster",
    "probe_until_conclusive",
    "restore_retries",
    "retries_disabled",
    "wait_attentively",
]
