"""The Redis side of one client, per topology: the :class:`Backend` protocol, and
:class:`PoolBackend` for standalone and Sentinel.

Standalone and Sentinel share one shape (a capped blocking pool behind a ``Redis`` facade);
Cluster (:class:`~gateway_redis._driver.cluster_backend.ClusterBackend`) uses redis-py's
``RedisCluster``. The client programs against :class:`Backend` only and never asks which
topology it runs on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection

from gateway_redis._driver.cluster import NodeHealth
from gateway_redis._driver.cluster_backend import ClusterBackend
from gateway_redis._driver.connections import (
    make_pool,
    make_sentinel,
    pool_connection,
    probe_connection_kwargs,
    sentinel_connection,
)
from gateway_redis._driver.deadlines import Deadline, wait_attentively
from gateway_redis._driver.retry import GatewayRetry, probe_until_conclusive
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
        unavailable (the client reports it), False when only a probe can tell (a broken
        connection; one cluster node may be down: the node the call waited on is marked)."""

    async def probe(self) -> bool:
        """Check that Redis is usable, over a lone connection with short timeouts; raises
        the driver's error when it is not (an auth error when credentials are refused).
        Returns whether something short of an outage needs probing often (a cluster node
        down)."""

    async def read_info(self, section: str) -> dict[str, Any]:
        """``INFO section`` of the server (cluster: of every primary) within the probe
        timeout, by address; a server's error reply stands in place of its answer. Raises
        when a server cannot be reached."""

    def set_wait_observer(self, observer: Callable[[float], None]) -> None:
        """Report each call's wait for a connection or slot (seconds) to ``observer``."""

    def set_lost_observer(self, observer: Callable[[], bool]) -> None:
        """Tell ``observer()`` at once when a command connection breaks (reset, closed
        mid-reply) and it is retried; its answer False (Redis is down) ends the retries.
        Cluster: not used (redis-py's cluster client retries on its own)."""

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


def open_probe_connection(backend: Backend) -> AbstractConnection:
    """A lone connection for health probes: no retries, and no socket timeouts (each use
    of it has a time limit: the probe's counts the loop's attention, see
    :meth:`PoolBackend.probe`)."""
    return backend.lone_connection(**probe_connection_kwargs(None))


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
        self._probe_conn = open_probe_connection(self)

    def run(self, call: Callable[[Redis], Awaitable[T]]) -> Awaitable[T]:
        """``call(redis)``: the pool itself makes callers wait for a connection."""
        return call(self.redis)

    def call_failed(self, outage: Outage) -> bool:
        """An outage of the one primary is an outage of Redis. A broken connection is not,
        by itself, and neither is a deadline that passed: a loop too busy to read the
        reply in time (thousands of handshakes at once) looks the same from here as a
        server that stopped answering. The probe decides, counting only the time the loop
        could spend on it (:meth:`probe`)."""
        return outage is not Outage.LOST and outage is not Outage.DEADLINE

    async def _ask(self, *command: str) -> Any:
        conn = self._probe_conn
        try:
            if not conn.is_connected:
                await conn.connect()
            await conn.send_command(*command)
            return await conn.read_response()
        except BaseException:
            await conn.disconnect(nowait=True)
            raise

    async def probe(self) -> bool:
        """``ROLE`` on the probe connection: answers like ``PING`` and also says whether the
        server is a primary. Raises ``ConnectionError`` when it is not. A broken connection
        is tried again on a fresh one (:func:`probe_until_conclusive`): one reset is no
        outage. The time limit counts the loop's attention (:func:`wait_attentively`): a
        loop too busy to read the answer is no outage either. Returns False: nothing short
        of an outage needs probing often here."""
        reply = await wait_attentively(
            probe_until_conclusive(lambda: self._ask("ROLE")), self._probe_timeout
        )
        if isinstance(reply, list) and reply and reply[0] in (b"master", "master"):
            return False
        if isinstance(reply, list):
            raise rexc.ConnectionError(f"connected to a {reply[0]!r}, not a primary")
        raise rexc.ConnectionError(f"unexpected probe reply {reply!r}")

    async def read_info(self, section: str) -> dict[str, Any]:
        """``INFO section`` on the probe connection, by the server's address."""
        try:
            async with Deadline(self._probe_timeout):
                reply: Any = await self._ask("INFO", section)
        except rexc.ResponseError as exc:
            reply = exc
        conn: Any = self._probe_conn
        address = getattr(conn, "path", None) or f"{conn.host}:{conn.port}"
        return {address: reply}

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

    def set_lost_observer(self, observer: Callable[[], bool]) -> None:
        """Hand ``observer`` to the pool's retry policy (shared by every connection)."""
        retry = self.pool.connection_kwargs.get("retry")
        if isinstance(retry, GatewayRetry):
            retry.on_lost.callback = observer

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


def make_backend(config: RedisConfig, *, probe_timeout: float) -> Backend:
    """The backend for ``config``'s topology; probes wait ``probe_timeout`` seconds."""
    if config.topology.mode == "cluster":
        return ClusterBackend(config, probe_timeout=probe_timeout)
    return PoolBackend(config, probe_timeout=probe_timeout)
