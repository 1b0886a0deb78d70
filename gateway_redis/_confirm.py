"""Confirmed writes: a security write and its ``WAIT`` on the connection that wrote.

``WAIT`` counts the writes made on its own connection, so a write made through the pool
and a ``WAIT`` sent through the pool may meet on two different connections and confirm
nothing. :func:`confirmed_write` pins the connections itself: the caller's ``call(r)``
gets a ``Redis`` whose every command and pipeline runs on one connection to the primary
(standalone, Sentinel) or to the primary that owns ``key`` (Cluster; a redirection during
a slot migration pins a connection to the node it names, which is confirmed too). Then,
on each pinned connection, ``ROLE`` says how many replicas the primary has now (replicas
come and go) and, when it has any, ``WAIT 1`` must see one acknowledge within ``wait_ms``
or the write fails closed with ``RedisUnavailable(reason="unconfirmed")``. ``ROLE`` lists
the replicas the primary has put online, the ones ``WAIT`` counts: a replica still in its
full sync is not waited for, like one that is absent (failing closed meanwhile would fail
every security write for the whole sync, 5 s at least with Redis's default
``repl-diskless-sync-delay``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis import exceptions as rexc
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode

from gateway_redis._driver import no_retry
from gateway_redis.errors import RedisUnavailable

__all__ = ["confirmed_write"]

T = TypeVar("T")
_MAX_REDIRECTS = 3


class _Pins:
    """A connection pool interface over the connections one confirmed write holds.

    Every command goes out on ``current`` (the key's owner unless a redirection is being
    followed); nothing is returned to the real pool until :meth:`release_all`.
    ``reconnected`` is set when a held connection was re-established (redis-py's retry):
    the writes made on the old socket are beyond that connection's ``WAIT``.
    """

    def __init__(self, redis: Redis | RedisCluster) -> None:
        self.cluster = redis if isinstance(redis, RedisCluster) else None
        self.reconnected = False
        self._pool: Any = None if isinstance(redis, RedisCluster) else redis.connection_pool
        self._encoder = redis.get_encoder()
        self.connection_kwargs: dict[str, Any] = {}
        self.held: dict[str, tuple[Any, ClusterNode | None]] = {}
        self.current: Any = None

    def get_encoder(self) -> Any:
        return self._encoder

    async def get_connection(self, *_args: Any, **_options: Any) -> Any:
        return self.current

    async def release(self, _connection: Any) -> None:
        """Nothing: the pinned connection stays held until the write is confirmed."""

    async def pin_primary(self, key: str) -> None:
        if self.cluster is None:
            assert self._pool is not None
            self.connection_kwargs = self._pool.connection_kwargs
            self.current = await self._pool.get_connection()
            self.held["primary"] = (self.current, None)
            self.current.register_connect_callback(self.on_connect)
            return
        node = self.cluster.get_node_from_key(key)
        if node is None:
            raise rexc.ClusterDownError(f"no node serves the slot of {key!r}")
        await self.pin_node(node)

    async def pin_node(self, node: ClusterNode) -> None:
        held = self.held.get(node.name)
        if held is None:
            conn: Any = node.acquire_connection()
            held = (conn, node)
            self.held[node.name] = held
            self.connection_kwargs = node.connection_kwargs
            await conn.connect()
            # Node pools lend idle connections unchecked (RedisCluster retries instead;
            # a pinned write cannot): one the peer closed, or that holds an unread reply,
            # is replaced before use, as redis-py's own pools do.
            try:
                stale = await conn.can_read()
            except (rexc.ConnectionError, rexc.TimeoutError, OSError):
                stale = True
            if stale:
                await conn.disconnect()
                await conn.connect()
            conn.register_connect_callback(self.on_connect)
        self.current = held[0]

    def on_connect(self, _connection: Any) -> None:
        """redis-py's connect callback (a method: it keeps a weak reference)."""
        self.reconnected = True

    def node(self, host: str, port: int) -> ClusterNode:
        assert self.cluster is not None
        node = self.cluster.get_node(host=host, port=port)
        if node is None:  # the slot map does not know it yet: the caller retries later
            raise rexc.ClusterDownError(f"redirected to unknown node {host}:{port}")
        return node

    async def release_all(self, failed: bool) -> None:
        for conn, node in self.held.values():
            conn.deregister_connect_callback(self.on_connect)
            if failed:  # a reply may be unread: never lend this socket again as it is
                await conn.disconnect(nowait=True)
            if node is None:
                assert self._pool is not None
                await self._pool.release(conn)
            else:
                node.release(conn)
        self.held.clear()


class _PinnedRedis(Redis):
    """A ``Redis`` on :class:`_Pins` that follows Cluster redirections on pinned connections."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        pins: _Pins = self.connection_pool  # type: ignore[assignment]
        home = pins.current
        for _ in range(_MAX_REDIRECTS):
            try:
                return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
            except rexc.AskError as exc:  # MovedError is an AskError too
                if pins.cluster is None:
                    raise  # not a cluster: an error reply like any other
                await pins.pin_node(pins.node(exc.host, int(exc.port)))
                if not isinstance(exc, rexc.MovedError):
                    await super().execute_command("ASKING")  # type: ignore[no-untyped-call]
                try:
                    return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
                except rexc.AskError:
                    continue
                finally:
                    pins.current = home
        raise rexc.ClusterError(f"{args[0]!r}: too many redirections")


async def _confirm(conn_redis: Redis, wait_ms: int) -> bool:
    role: Any = await conn_redis.execute_command("ROLE")  # type: ignore[no-untyped-call]
    replicas = len(role[2]) if len(role) > 2 and isinstance(role[2], list) else 0
    if replicas == 0:
        return True
    acked: Any = await conn_redis.execute_command("WAIT", 1, wait_ms)  # type: ignore[no-untyped-call]
    return int(acked) >= 1


async def confirmed_write(
    redis: Redis | RedisCluster, key: str, call: Callable[[Redis], Awaitable[T]], wait_ms: int
) -> T:
    """Run ``call(r)`` on pinned connections, then confirm each by ``WAIT 1`` (``wait_ms``).

    ``redis`` is the client's redis-py object (``Redis`` on a pool, or ``RedisCluster``);
    ``key`` picks the Cluster node (``call`` may only touch keys of ``key``'s slot).
    Returns what ``call`` returned. Raises ``RedisUnavailable(reason="unconfirmed")`` when
    a primary with replicas got no acknowledgement or a pinned connection was
    re-established during ``call`` (what it wrote before is beyond the new socket's
    ``WAIT``), and whatever ``call`` or redis-py raise (the client's boundary translates
    those). The caller owns the deadline.
    """
    pins = _Pins(redis)
    failed = True
    try:
        await pins.pin_primary(key)
        pinned = _PinnedRedis(connection_pool=pins)  # type: ignore[arg-type]
        result = await call(pinned)
        if pins.reconnected:
            raise RedisUnavailable(
                "connection re-established during a write: it cannot be confirmed",
                reason="unconfirmed",
            )
        # No retry from here: a reconnected socket has made no write, and its WAIT would
        # "confirm" at once.
        with no_retry():
            for conn, _node in list(pins.held.values()):
                pins.current = conn
                if not await _confirm(pinned, wait_ms):
                    raise RedisUnavailable(
                        "write not confirmed by any replica within the deadline",
                        reason="unconfirmed",
                    )
        failed = False
        return result
    finally:
        await pins.release_all(failed)
