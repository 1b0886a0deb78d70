"""The Redis side of one client, per topology: :class:`PoolBackend` and :class:`ClusterBackend`.

Standalone and Sentinel share one shape (a capped blocking pool behind a ``Redis`` facade);
Cluster uses redis-py's ``RedisCluster``, whose per-node pools cannot wait for a free
connection (redis-py #3135), so calls queue for a slot of our own instead. The client
programs against :class:`Backend` only and never asks which topology it runs on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, cast

from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection

from gateway_redis._driver.cluster import (
    ClusterNodeConnection,
    ClusterNodeSSLConnection,
    ClusterSeedConnection,
    NodeHealth,
    probe_cluster,
    take_waited_on_node,
)
from gateway_redis._driver.connections import (
    connection_kwargs,
    make_pool,
    make_sentinel,
    pool_connection,
    probe_connection_kwargs,
    seed_connection,
    sentinel_connection,
    uses_tls,
)
from gateway_redis._driver.deadlines import Deadline
from gateway_redis._driver.pool import PoolExhausted
from gateway_redis._translate import Outage
from gateway_redis.config import RedisConfig

__all__ = [
    "Backend",
    "ClusterBackend",
    "PoolBackend",
    "make_backend",
    "open_probe_connection",
]

T = TypeVar("T")


class Backend(Protocol):
    """The Redis side of one :class:`~gateway_redis.RedisClient`: its command pool (or
    cluster client), its lone connections and its health probe. The client owns it and
    closes it with :meth:`aclose`."""

    @property
    def redis(self) -> Redis:
        """The command facade handed to ``execute``'s callables (``RedisCluster`` answers
        the same commands in cluster mode)."""

    @property
    def cluster(self) -> RedisCluster | None:
        """The ``RedisCluster`` client in cluster mode (pub/sub routes sharded channels by
        it), else None."""

    @property
    def nodes(self) -> NodeHealth | None:
        """The record of unreachable cluster nodes in cluster mode, else None."""

    @property
    def in_use(self) -> int:
        """Connections lent out (all nodes together in cluster mode)."""

    @property
    def idle(self) -> int:
        """Open connections waiting for work."""

    def run(self, call: Callable[[Redis], Awaitable[T]]) -> Awaitable[T]:
        """``call(redis)``, after waiting (at most ``pool_timeout``, then
        :class:`PoolExhausted`) for a call slot where the topology needs one."""

    def call_failed(self, outage: Outage) -> bool:
        """A call failed with ``outage``: True when that means Redis as a whole is
        unavailable (the client reports it), False when only a probe can tell (one cluster
        node may be down: the node the call waited on is marked)."""

    async def probe(self) -> bool:
        """Check that Redis is usable, over a lone connection with short timeouts; raises
        the driver's error when it is not (an auth error when credentials are refused).
        Returns whether something short of an outage needs probing often (a cluster node
        down)."""

    def set_wait_observer(self, observer: Callable[[float], None]) -> None:
        """Report each call's wait for a connection or slot (seconds) to ``observer``."""

    async def warm(self, count: int) -> None:
        """Open connections until ``count`` are idle (cluster: discover the nodes)."""

    async def drop_idle(self) -> None:
        """Close idle connections (they may point at a restarted or demoted server);
        cluster: reload the slot map, after which connections reconnect lazily."""

    def lone_connection(self, **overrides: Any) -> AbstractConnection:
        """A new, unconnected connection outside the pool, to the primary (cluster: to any
        seed node). ``overrides`` replace connection settings (see
        :func:`~gateway_redis._driver.connections.lone_connection_kwargs`)."""

    def sentinel_connection(self, address: tuple[str, int], **overrides: Any) -> Connection:
        """A new, unconnected connection to the sentinel at ``address``."""

    async def aclose(self) -> None:
        """Close every connection this backend opened."""


def open_probe_connection(backend: Backend, timeout: float) -> AbstractConnection:
    """A lone connection for health probes: no retries, ``timeout`` seconds to connect and
    to read."""
    return backend.lone_connection(**probe_connection_kwargs(timeout))


class PoolBackend:
    """Standalone or Sentinel: a :class:`~gateway_redis._driver.pool.GatewayPool` (Sentinel:
    a pool that follows the current primary) behind one ``Redis`` facade.

    The Sentinel client is created once and shared by every pool (redis-py #3259).
    """

    cluster: None = None
    nodes: None = None

    def __init__(self, config: RedisConfig, *, probe_timeout: float) -> None:
        self.config = config
        self.sentinel = make_sentinel(config) if config.topology.mode == "sentinel" else None
        """The Sentinel client (None for a standalone server)."""
        self.pool = make_pool(config, self.sentinel, config.pool_size)
        self.redis = Redis(connection_pool=self.pool)
        self._probe_timeout = probe_timeout
        self._probe_conn = open_probe_connection(self, probe_timeout)

    def run(self, call: Callable[[Redis], Awaitable[T]]) -> Awaitable[T]:
        """``call(redis)``: the pool itself makes callers wait for a connection."""
        return call(self.redis)

    def call_failed(self, outage: Outage) -> bool:
        """Any outage of the one primary is an outage of Redis."""
        return True

    async def probe(self) -> bool:
        """``ROLE`` on the probe connection: answers like ``PING`` and also says whether the
        server is a primary. Raises ``ConnectionError`` when it is not. Returns False:
        nothing short of an outage needs probing often here."""
        conn = self._probe_conn
        try:
            async with Deadline(self._probe_timeout):
                if not conn.is_connected:
                    await conn.connect()
                await conn.send_command("ROLE")
                reply = await conn.read_response()
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        if isinstance(reply, list) and reply and reply[0] in (b"master", "master"):
            return False
        if isinstance(reply, list):
            raise rexc.ConnectionError(f"connected to a {reply[0]!r}, not a primary")
        raise rexc.ConnectionError(f"unexpected probe reply {reply!r}")

    @property
    def in_use(self) -> int:
        """Connections lent out."""
        return self.pool.in_use

    @property
    def idle(self) -> int:
        """Open connections waiting for work."""
        return self.pool.idle

    def set_wait_observer(self, observer: Callable[[float], None]) -> None:
        """Report pool wait times (seconds) to ``observer``."""
        self.pool.wait_observer = observer

    async def warm(self, count: int) -> None:
        """Open connections until ``count`` are idle."""
        conns = []
        try:
            for _ in range(count - self.pool.idle):
                conns.append(await self.pool.get_connection())
        finally:
            for conn in conns:
                await self.pool.release(conn)

    async def drop_idle(self) -> None:
        """Close idle connections (they may point at a restarted or demoted server)."""
        await self.pool.disconnect(inuse_connections=False)

    def lone_connection(self, **overrides: Any) -> AbstractConnection:
        """A new, unconnected connection to the server (Sentinel: the current primary)."""
        return pool_connection(self.config, self.sentinel, **overrides)

    def sentinel_connection(self, address: tuple[str, int], **overrides: Any) -> Connection:
        """A new, unconnected connection to the sentinel at ``address``."""
        return sentinel_connection(self.config, address, **overrides)

    async def aclose(self) -> None:
        """Close the probe connection, the pool and the Sentinel client."""
        await self._probe_conn.disconnect()
        await self.redis.aclose()
        await self.pool.disconnect()
        if self.sentinel is not None:
            await self.sentinel.aclose()


class ClusterBackend:
    """Redis Cluster: redis-py's ``RedisCluster`` on our node connections, a cap on
    concurrent calls, and :class:`~gateway_redis._driver.cluster.NodeHealth`.

    Node pools cannot wait for a free connection (redis-py #3135), so at most
    ``pool_size`` calls run at once and the others queue (at most ``pool_timeout``, then
    :class:`PoolExhausted`) instead of failing.
    """

    def __init__(self, config: RedisConfig, *, probe_timeout: float) -> None:
        self.config = config
        self.nodes = NodeHealth()
        self.cluster = self._make_cluster()
        # RedisCluster is no Redis subclass but answers the same commands.
        self.redis = cast(Redis, self.cluster)
        self._limiter = asyncio.Semaphore(config.pool_size)
        self._wait_observer: Callable[[float], None] | None = None
        self._probe_timeout = probe_timeout
        self._probe_conn = seed_connection(config, **probe_connection_kwargs(probe_timeout))

    def _make_cluster(self) -> RedisCluster:
        config = self.config
        tls = uses_tls(config)
        kwargs = connection_kwargs(config)
        if tls:
            kwargs["ssl"] = True
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in config.topology.nodes],
            max_connections=config.pool_size,
            require_full_coverage=True,
            # redis-py's periodic full reset on MOVED closes connections that concurrent
            # commands are using ("Connection closed", AttributeError). The slot map is
            # still patched on every MOVED without it.
            reinitialize_steps=0,
            **kwargs,
        )
        # RedisCluster takes no connection_class; every node it creates later reads it
        # from connection_kwargs, the startup nodes already exist.
        connection_class = ClusterNodeSSLConnection if tls else ClusterNodeConnection
        cluster.connection_kwargs["connection_class"] = connection_class
        cluster.connection_kwargs["node_health"] = self.nodes
        for node in cluster.nodes_manager.startup_nodes.values():
            node.connection_class = connection_class
            node.connection_kwargs["node_health"] = self.nodes
        return cluster

    async def run(self, call: Callable[[Redis], Awaitable[T]]) -> T:
        """``call(redis)`` in one of ``pool_size`` call slots."""
        config, limiter = self.config, self._limiter
        started = time.perf_counter()
        try:
            async with Deadline(config.pool_timeout):
                await limiter.acquire()
        except asyncio.TimeoutError:
            raise PoolExhausted(
                f"no connection free within {config.pool_timeout}s ({config.pool_size} per client)"
            ) from None
        if self._wait_observer is not None:
            self._wait_observer(time.perf_counter() - started)
        try:
            return await call(self.redis)
        finally:
            limiter.release()

    def call_failed(self, outage: Outage) -> bool:
        """One node not answering is not the cluster down: calls routed to it fail fast from
        now on (the node a timed-out call waited on is marked), and the probe
        (``CLUSTER INFO``) decides about the rest. Refused credentials are an outage."""
        if outage is Outage.DEADLINE:
            name = take_waited_on_node()
            if name is not None:
                self.nodes.mark(name, "no reply within the operation deadline")
        return outage is Outage.CREDENTIALS

    async def probe(self) -> bool:
        """``CLUSTER INFO`` on a seed node (down when the nodes say so or none answers);
        then ping the nodes marked unreachable, so that one answering again is cleared."""
        await probe_cluster(self._probe_conn, self._probe_timeout)
        return await self.check_nodes(self._probe_timeout)

    async def check_nodes(self, timeout: float) -> bool:
        """PING every cluster node marked unreachable (``timeout`` seconds, all at once);
        clear those that answer. Returns whether some node is still marked.

        A marked node that is no longer part of the cluster (a failed primary, once its
        replica took over) and is no seed either is forgotten.
        """
        nodes, cluster = self.nodes, self.cluster
        if not nodes.unreachable:
            return False
        seeds = set(cluster.nodes_manager.startup_nodes)

        async def check(name: str) -> None:
            if cluster.get_node(node_name=name) is None and name not in seeds:
                nodes.forget(name)
                return
            host, _, port = name.rpartition(":")
            conn = seed_connection(self.config, **probe_connection_kwargs(timeout))
            conn.pin((host, int(port)))
            try:
                async with Deadline(timeout):
                    await conn.connect()
                    await conn.send_command("PING")
                    await conn.read_response()
            except rexc.ResponseError:
                nodes.answered(name, "probe")  # an error reply is an answer too
            except (asyncio.TimeoutError, rexc.ConnectionError, rexc.TimeoutError, OSError):
                pass  # still marked
            else:
                nodes.answered(name, "probe")
            finally:
                await conn.disconnect(nowait=True)

        await asyncio.gather(*(check(name) for name in nodes.unreachable))
        return bool(nodes.unreachable)

    @property
    def in_use(self) -> int:
        """Connections lent out, all nodes together."""
        return sum(len(node._connections) - len(node._free) for node in self.cluster.get_nodes())

    @property
    def idle(self) -> int:
        """Open connections waiting for work, all nodes together."""
        return sum(
            sum(1 for c in node._free if c.is_connected) for node in self.cluster.get_nodes()
        )

    def set_wait_observer(self, observer: Callable[[float], None]) -> None:
        """Report waits for a call slot (seconds) to ``observer``."""
        self._wait_observer = observer

    async def warm(self, count: int) -> None:
        """Discover the nodes and slots (connections open lazily, per node)."""
        await self.cluster.initialize()

    async def drop_idle(self) -> None:
        """Reload the slot map; redis-py then reconnects every connection lazily, once it
        is back in its node's pool."""
        await self.cluster.nodes_manager.initialize()

    def lone_connection(self, **overrides: Any) -> ClusterSeedConnection:
        """A new, unconnected connection to whichever seed node answers first."""
        return seed_connection(self.config, **overrides)

    def sentinel_connection(self, address: tuple[str, int], **overrides: Any) -> Connection:
        """A new, unconnected connection to the sentinel at ``address``."""
        return sentinel_connection(self.config, address, **overrides)

    async def aclose(self) -> None:
        """Close the probe connection and every node connection."""
        await self._probe_conn.disconnect()
        await self.cluster.aclose()


def make_backend(config: RedisConfig, *, probe_timeout: float) -> Backend:
    """The backend for ``config``'s topology; probes wait ``probe_timeout`` seconds."""
    if config.topology.mode == "cluster":
        return ClusterBackend(config, probe_timeout=probe_timeout)
    return PoolBackend(config, probe_timeout=probe_timeout)
