"""The lone connections of pub/sub, all built by :func:`open_connection`.

Every connection the package opens itself (the classic and per-node subscribers, the
liveness publisher, the slot router's CLUSTER SLOTS lookups, the Sentinel watch) is a
raw connection outside the command pool: redis-py must never retry or reconnect it
behind our back, and a subscriber must be able to stay idle without a read timeout.
Their settings come from the driver's one builder; address, TLS and credentials from
the client's backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway_redis import _driver
from gateway_redis.pubsub._registry import Node

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

    from gateway_redis.client import RedisClient


def open_connection(
    client: RedisClient,
    *,
    name: str = "gateway-redis-pubsub",
    read_timeout: float | None = None,
    connect_timeout: float | None = None,
    node: Node = None,
    sentinel: tuple[str, int] | None = None,
    protocol: int | None = 2,
) -> AbstractConnection:
    """A new, unconnected connection outside the pool; by default the classic subscriber's.

    Never retried by redis-py (it must never reconnect behind our back), keepalive on: the
    settings of :func:`gateway_redis._driver.lone_connection_kwargs`, the driver's one
    builder. ``name`` is its CLIENT SETNAME; ``read_timeout`` (seconds, None: none, as a
    subscriber must be able to stay idle) and ``connect_timeout`` (seconds, default
    ``dial_timeout``). Address, TLS and credentials come from the client's backend: to
    ``node`` (cluster), or to the server (Sentinel: the current primary) when ``node`` is
    None; to the sentinel at ``sentinel`` instead when given. ``protocol`` 2 (RESP2:
    replies are plain arrays), or None for redis-py's default.
    """
    settings = _driver.lone_connection_kwargs(
        socket_timeout=read_timeout,
        socket_connect_timeout=(
            client.config.dial_timeout if connect_timeout is None else connect_timeout
        ),
        client_name=name,
        protocol=protocol,
    )
    if sentinel is not None:
        return client.backend.sentinel_connection(sentinel, **settings)
    conn = client.backend.lone_connection(**settings)
    if node is not None:
        assert isinstance(conn, _driver.ClusterSeedConnection)
        conn.pin(node)
    return conn
