"""The Redis side of a client on Redis Cluster (:class:`ClusterBackend`; the other topologies
and the :class:`~gateway_redis._driver.backend.Backend` protocol it follows are in
:mod:`gateway_redis._driver.backend`).

redis-py's ``RedisCluster`` runs on our node connections; its per-node pools cannot wait
for a free connection (redis-py #3135), so calls queue for a slot of our own instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection

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
    probe_connection_kwargs,
    seed_connection,
    sentinel_connection,
    uses_tls,
)
from gateway_redis._driver.deadlines import Deadline
from gateway_redis._driver.pool import PoolExhausted
from gateway_redis._translate import Outage
from gateway_redis.config import RedisConfig

__all__ = ["ClusterBackend"]

T = TypeVar("T")


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
        # No socket timeouts: probe_cluster's time limit counts the loop's attention.
        self._probe_conn = seed_connection(config, **probe_connection_kwargs(None))

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

    async def read_info(self, section: str) -> dict[str, Any]:
        """``INFO section`` of every primary (all at once, within the probe timeout), by
        node name, each on a connection of its own that is closed afterwards (a primary
        that does not answer leaves nothing open in the cluster client's pools); a node's
        error reply stands in place of its answer. Primaries marked unreachable are left
        out: the probe deals with them."""
        timeout = self._probe_timeout

        async def ask(node: ClusterNode) -> Any:
            conn = seed_connection(self.config, **probe_connection_kwargs(timeout))
            conn.pin((node.host, int(node.port)))
            try:
                await conn.connect()
                await conn.send_command("INFO", section)
                return await conn.read_response()
            except rexc.ResponseError as exc:
                return exc
            finally:
                await conn.disconnect(nowait=True)

        unreachable = self.nodes.unreachable
        primaries = [n for n in self.cluster.get_primaries() if n.name not in unreachable]
        async with Deadline(timeout):
            replies = await asyncio.gather(*(ask(node) for node in primaries))
        return {node.name: reply for node, reply in zip(primaries, replies, strict=True)}

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

    def set_lost_observer(self, observer: Callable[[], bool]) -> None:
        """Not used: redis-py's cluster client retries with a loop of its own."""

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
